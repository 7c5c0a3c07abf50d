"""Staging: a submission becomes a revision in a content-addressed folder, with its checks
and preview; the sweep of folders nothing names; staging under concurrency."""

import json
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client, TransactionTestCase

from gallery import services
from gallery.models import (
    Example,
    Job,
    Preview,
    Revision,
    Submission,
)
from gallery.previews import revision_preview_key

from .base import GalleryTestCase, make_user, notebook_bytes, stage

pytestmark = pytest.mark.postgres  # run again on PostgreSQL by `make test`


def staging_entries() -> list[str]:
    staging = Path(settings.GALLERY_STAGING_DIR)
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


def age(path: Path, days: float = 2) -> None:
    """Make a staged folder look as if it was last stored `days` ago."""
    then = time.time() - days * 86400
    os.utime(path, (then, then))


def run_together(**calls: Callable[[], Any]) -> dict[str, Any]:
    """Run each call in a thread of its own (its own database connection and transaction);
    returns what each call returned or raised, by name."""
    results: dict[str, Any] = {}

    def run(name: str, call: Callable[[], Any]) -> None:
        try:
            results[name] = call()
        except Exception as exc:
            results[name] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(name, call), name=name)
               for name, call in calls.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


class StageTests(GalleryTestCase):
    def test_it_stages_a_notebook_with_checks_and_preview(self):
        with self.captureOnCommitCallbacks(execute=True):
            submission = stage(self.contributor)
        submission.refresh_from_db()
        self.assertEqual(submission.state, Submission.State.STAGED)
        self.assertEqual(submission.checks_state, "done")
        names = {c["name"]: c["status"] for c in submission.checks}
        self.assertEqual(names["notebook"], "pass")
        self.assertEqual(names["environment"], "pass")
        preview = Preview.objects.get(sha256=revision_preview_key(submission.revision))
        self.assertEqual(preview.state, "ready")
        html = services.preview_path(preview.sha256).read_text()
        self.assertIn("hello", html)
        self.assertNotIn("<script", html)
        self.assertEqual(submission.example.state, Example.State.STAGED)

    def test_it_refuses_an_invalid_notebook_and_stores_nothing(self):
        bad = (b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, '
               b'"cells": [{"cell_type": "code"}]}')
        with self.assertRaises(services.GalleryError) as ctx:
            stage(self.contributor, notebook=bad)
        self.assertIn("cell 1", str(ctx.exception))
        self.assertEqual(Example.objects.count(), 0)
        self.assertFalse(Path(settings.GALLERY_STAGING_DIR).exists()
                         and any(Path(settings.GALLERY_STAGING_DIR).iterdir()))

    def test_it_refuses_a_path_that_is_a_file_and_a_folder_at_once(self):
        for files in ({"a": b"x", "a/b": b"y"}, {"a/b/c": b"x", "a/b": b"y"},
                      {"hello.ipynb/x": b"x"}, {"requirements.txt/x": b"x"},
                      {"example.toml/x": b"x"}):
            with self.subTest(files=files), self.assertRaises(services.GalleryError) as ctx:
                stage(self.contributor, files=files)
            self.assertRegex(str(ctx.exception), "both a file and a folder|reserved")
        self.assertEqual(Example.objects.count(), 0)
        self.assertEqual(staging_entries(), [])

    def test_it_refuses_a_notebook_with_half_a_character_and_stores_nothing(self):
        good = notebook_bytes(text="HALF")
        for place in (b'"x = \\ud800"', b'"\\udfff tail"', b'"a\\udc00\\ud800b"'):
            bad = good.replace(b'"HALF"', place)
            with self.subTest(place=place), self.assertRaises(services.GalleryError) as ctx:
                stage(self.contributor, notebook=bad)
            self.assertIn("not valid Unicode", str(ctx.exception))
        in_metadata = good.replace(b'"metadata": {', b'"metadata": {"\\ud800": 1, ', 1)
        with self.assertRaises(services.GalleryError):
            stage(self.contributor, notebook=in_metadata)
        self.assertEqual(Example.objects.count(), 0)
        self.assertEqual(staging_entries(), [])

    def test_it_accepts_a_character_written_as_a_pair_of_escapes(self):
        nb = notebook_bytes(text="SMILE").replace(b'"SMILE"', b'"print(\\"\\ud83d\\ude00\\")"')
        submission = stage(self.contributor, notebook=nb)
        self.assertIn("print(\"\U0001f600\")", submission.example.search_text)

    def test_it_indexes_a_notebook_whose_cells_hold_nul_characters(self):
        nb = notebook_bytes(text="NUL").replace(b'"NUL"', b'"before\\u0000after"')
        submission = self.stage_and_approve(notebook=nb)
        example = Example.objects.get(pk=submission.example_id)
        self.assertEqual(example.current_revision, submission.revision)
        self.assertNotIn("\x00", example.search_text)
        self.assertIn("before after", example.search_text)
        stored = services.staged_folder(submission.revision) / "hello.ipynb"
        self.assertEqual(stored.read_bytes(), nb)  # the notebook itself is kept as sent

    def test_it_takes_the_next_slug_when_another_staging_took_it_meanwhile(self):
        first = stage(self.contributor)
        looks = iter([first.example.slug])  # the first look misses the other's new row
        real = services.staging._unique_slug
        with mock.patch.object(services.staging, "_unique_slug",
                               lambda base: next(looks, real(base))):
            second = stage(self.user, notebook=notebook_bytes(5))
        self.assertEqual(second.example.slug, f"{first.example.slug}-2")
        self.assertEqual(Example.objects.count(), 2)

    def test_it_upgrades_a_version_3_notebook(self):
        v3 = (b'{"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": [{"cells": '
              b'[{"cell_type": "code", "input": "1+1", "language": "python", "outputs": []}]}]}')
        submission = stage(self.contributor, notebook=v3)
        self.assertEqual(submission.revision.notebook_name, "hello.ipynb")

    def test_it_refuses_paths_that_leave_the_folder(self):
        for name in ("../evil.py", "/etc/passwd", "a/../../b", "x\x00y", ".git/config"):
            with self.subTest(name=name), self.assertRaises(services.GalleryError):
                stage(self.contributor, files={name: b"x"})
        self.assertEqual(Example.objects.count(), 0)

    def test_it_flags_secrets_in_code_and_outputs(self):
        nb = notebook_bytes(text="token = 'ghp_" + "a" * 36 + "'")
        with self.captureOnCommitCallbacks(execute=True):
            submission = stage(self.contributor, notebook=nb)
        submission.refresh_from_db()
        secrets = next(c for c in submission.checks if c["name"] == "secrets")
        self.assertEqual(secrets["status"], "fail")
        self.assertIn("GitHub token", secrets["message"])

    def test_it_checks_that_data_link_paths_exist(self):
        with self.captureOnCommitCallbacks(execute=True):
            submission = stage(self.contributor, data_links=[
                {"name": "missing", "target": "/no/such/place"}])
        submission.refresh_from_db()
        links = next(c for c in submission.checks if c["name"] == "data links")
        self.assertEqual(links["status"], "fail")



class StagingSweepTests(GalleryTestCase):
    def test_it_removes_only_unnamed_folders_stored_longer_ago_than_the_grace(self):
        named = services.staged_folder(stage(self.contributor).revision)
        _, unnamed_old = services.store_folder({"a.txt": b"old"})
        _, unnamed_new = services.store_folder({"a.txt": b"new"})
        staging = named.parent
        half_written_old, half_written_new = staging / ".tmp-crashed", staging / ".tmp-writing"
        for tmp in (half_written_old, half_written_new):
            (tmp / "sub").mkdir(parents=True)
        for path in (named, unnamed_old, half_written_old):
            age(path)
        self.assertEqual(services.sweep_staging(), 2)
        self.assertEqual(staging_entries(), sorted([named.name, unnamed_new.name, ".tmp-writing"]))
        self.assertTrue((named / "hello.ipynb").is_file())

    def test_it_keeps_an_old_folder_that_is_stored_again(self):
        digest, folder = services.store_folder({"a.txt": b"x"})
        age(folder)
        self.assertEqual(services.store_folder({"a.txt": b"x"}), (digest, folder))
        self.assertEqual(services.sweep_staging(), 0)
        self.assertEqual((folder / "a.txt").read_bytes(), b"x")

    def test_it_settles_folders_an_interrupted_sweep_took_out_of_reach(self):
        named = services.staged_folder(stage(self.contributor).revision)
        _, recent = services.store_folder({"a.txt": b"recent"})
        _, unused = services.store_folder({"a.txt": b"unused"})
        for folder in (named, unused):
            age(folder)
        taken = {}
        for folder in (named, recent, unused):
            taken[folder] = folder.with_name(f".trash-{folder.name}-0123456789ab")
            os.rename(folder, taken[folder])
        self.assertEqual(services.sweep_staging(), 1)
        self.assertEqual(staging_entries(), sorted([named.name, recent.name]))
        self.assertTrue((named / "hello.ipynb").is_file())

    def test_it_leaves_the_folder_of_a_submission_refused_under_the_lock_to_the_sweep(self):
        example = Example.objects.get(pk=self.stage_and_approve().example_id)

        def retire_meanwhile(files: dict[str, bytes]) -> tuple[str, Path]:
            services.retire_example(example=example, actor=self.reviewer, reason="outdated")
            return real(files)

        real = services.store_folder
        with mock.patch.object(services.staging, "store_folder", retire_meanwhile), \
                self.assertRaises(services.Conflict):
            stage(self.contributor, notebook=notebook_bytes(7), example_slug=example.slug)
        self.assertEqual(Revision.objects.count(), 1)
        self.assertEqual(Submission.objects.count(), 1)
        self.assertEqual(len(staging_entries()), 2)
        for entry in staging_entries():
            age(Path(settings.GALLERY_STAGING_DIR) / entry)
        self.assertEqual(services.sweep_staging(), 1)
        self.assertEqual(staging_entries(), [example.current_revision.content_hash])

    def test_it_sweeps_every_hour_under_celery_beat(self):
        from gallery import tasks

        every = {entry["task"]: entry["schedule"]
                 for entry in settings.CELERY_BEAT_SCHEDULE.values()}
        self.assertEqual(every["gallery.tasks.sweep_staging"], 3600)
        _, folder = services.store_folder({"a.txt": b"x"})
        age(folder)
        self.assertEqual(tasks.sweep_staging.delay().get(), 1)



class ConcurrentStagingTests(TransactionTestCase):
    """Two people send the same content at the same moment; one of them is refused."""

    BODY = {"title": "Twins", "notebook": json.loads(notebook_bytes(2)),
            "environment": {"path": "requirements.txt", "content": "numpy\n"}}

    def setUp(self) -> None:
        self.alice, self.bob = make_user("alice"), make_user("bob")
        self.reviewer = make_user("rita", reviewer=True)

    def post(self, user: Any, **extra: Any) -> Any:
        client = Client()
        client.force_login(user)
        return client.post("/api/v1/submissions", data=json.dumps({**self.BODY, **extra}),
                           content_type="application/json")

    def race(self, twin_example: str, meanwhile: Callable[[], Any] = lambda: None
             ) -> dict[str, Any]:
        """Alice's submission stores its folder and waits; Bob's, with the same content, runs
        to its refusal (`meanwhile` runs once his folder is stored); then Alice's commits."""
        alice_stored, bob_done = threading.Event(), threading.Event()
        real = services.store_folder

        def store_folder(files: dict[str, bytes]) -> tuple[str, Path]:
            if threading.current_thread().name == "bob":
                alice_stored.wait(30)
                stored = real(files)
                meanwhile()
                return stored
            stored = real(files)
            alice_stored.set()
            bob_done.wait(30)
            return stored

        def bob() -> Any:
            try:
                return self.post(self.bob, example=twin_example)
            finally:
                bob_done.set()

        with mock.patch.object(services.staging, "store_folder", store_folder):
            return run_together(alice=lambda: self.post(self.alice), bob=bob)

    def assert_alice_complete(self, results: dict[str, Any]) -> None:
        self.assertEqual(results["alice"].status_code, 201, results["alice"].content)
        submission = Submission.objects.get(contributor=self.alice)
        folder = services.staged_folder(submission.revision)
        self.assertTrue((folder / "notebook.ipynb").is_file())
        self.assertEqual(submission.checks_state, Submission.ChecksState.DONE)
        self.assertEqual(Preview.objects.get(sha256=revision_preview_key(submission.revision)).state,
                         Preview.State.READY)
        self.assertFalse(Job.objects.filter(revision=submission.revision).exclude(
            state=Job.State.DONE).exists())
        self.assertEqual(services.sweep_staging(grace=timedelta(0)), 0)
        self.assertTrue(folder.is_dir())

    def test_it_keeps_the_shared_folder_when_a_twin_names_no_such_example(self):
        results = self.race("no-such")
        self.assertEqual(results["bob"].status_code, 404, results["bob"].content)
        self.assert_alice_complete(results)
        self.assertFalse(Submission.objects.filter(contributor=self.bob).exists())

    def test_it_keeps_the_shared_folder_when_a_twin_is_refused_under_the_lock(self):
        first = stage(self.bob, title="Bob's", notebook=notebook_bytes(1))
        services.approve_submission(submission=first, reviewer=self.reviewer)  # jobs run at commit
        example = Example.objects.get(pk=first.example_id)
        results = self.race(example.slug, meanwhile=lambda: services.retire_example(
            example=example, actor=self.reviewer, reason="outdated"))
        self.assertEqual(results["bob"].status_code, 409, results["bob"].content)
        self.assert_alice_complete(results)
        self.assertEqual(Submission.objects.filter(contributor=self.bob).count(), 1)

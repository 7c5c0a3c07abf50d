"""Use: the plan shown before copying, the job's progress and result, retries and the sweep."""

from __future__ import annotations

import errno
import json
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from unittest import mock

from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from gallery import homes, repo, services
from gallery.models import Example, Job

from .base import GalleryTestCase


class UseTestCase(GalleryTestCase):
    """Every test approves the same notebook: render its preview once for the whole class."""

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.previews = tempfile.mkdtemp(prefix="gallery-test-previews-")
        cls.addClassCleanup(shutil.rmtree, cls.previews, True)

    def setUp(self) -> None:
        shared = override_settings(GALLERY_PREVIEW_DIR=Path(self.previews))
        shared.enable()
        self.addCleanup(shared.disable)


class UsePlanTests(UseTestCase):
    def setUp(self) -> None:
        super().setUp()
        submission = self.stage_and_approve(data_links=[
            {"name": "docs", "target": "https://example.org/data", "licence": "CC0-1.0"},
            {"name": "shared", "target": "/srv/shared/data", "size": 1024}])
        self.example = Example.objects.get(pk=submission.example_id)
        self.client.force_login(self.user)

    def test_it_shows_the_plan_before_copying_and_writes_nothing(self):
        r = self.client.get(f"/api/v1/examples/{self.example.slug}/use-plan?folder=mine")
        self.assertEqual(r.status_code, 200, r.content)
        plan = self.json(r)
        self.assertEqual(plan["target"], "~/examples/mine")
        self.assertEqual({f["path"] for f in plan["files"]},
                         {"hello.ipynb", "requirements.txt", "example.toml"})
        self.assertEqual(plan["environment"], "requirements.txt")
        self.assertIn("pip install -r requirements.txt", plan["environment_commands"]["pip"])
        links = {d["name"]: d for d in plan["data_links"]}
        self.assertEqual((links["shared"]["kind"], links["shared"]["where"]),
                         ("symlink", "data/shared"))
        self.assertEqual((links["docs"]["kind"], links["docs"]["licence"]),
                         ("manifest", "CC0-1.0"))
        self.assertEqual(plan["commit"], self.example.current_revision.git_commit)
        self.assertFalse(homes.home_of("ursula").exists())
        self.assertEqual(Job.objects.filter(kind=Job.Kind.USE).count(), 0)

    def test_it_refuses_a_folder_name_that_is_a_path(self):
        for bad in ("../x", "a/b", ".hidden", "x" * 101):
            with self.subTest(folder=bad):
                r = self.client.get(f"/api/v1/examples/{self.example.slug}/use-plan",
                                    {"folder": bad})
                self.assertEqual(r.status_code, 400, r.content)
                self.assertIn("folder name", self.json(r)["error"])

    def test_it_needs_a_login_for_the_plan(self):
        self.client.logout()
        r = self.client.get(f"/api/v1/examples/{self.example.slug}/use-plan")
        self.assertEqual(r.status_code, 401)

    def test_it_answers_409_for_an_example_without_an_approved_version(self):
        # Retired: still seen by those who hold a copy, but no version to use any more.
        Job.objects.create(kind=Job.Kind.USE, state=Job.State.DONE, user=self.user,
                           revision=self.example.current_revision)
        self.example.state = Example.State.RETIRED
        self.example.save()
        r = self.client.get(f"/api/v1/examples/{self.example.slug}/use-plan")
        self.assertEqual(r.status_code, 409)


class UseJobTests(UseTestCase):
    def setUp(self) -> None:
        super().setUp()
        submission = self.stage_and_approve()
        self.example = Example.objects.get(pk=submission.example_id)

    def use(self, folder: str = "") -> Job:
        with self.captureOnCommitCallbacks(execute=True):
            job = services.queue_use(example=self.example, user=self.user, folder_name=folder)
        job.refresh_from_db()
        return job

    def test_it_ends_done_with_a_lab_link_and_a_provenance_file(self):
        job = self.use("workshop")
        self.assertEqual(job.state, Job.State.DONE, job.message)
        self.assertEqual(job.result["path"], "~/examples/workshop")
        self.assertEqual(job.result["lab_url"],
                         "/user/ursula/lab/tree/examples/workshop/hello.ipynb")
        copy = homes.use_parent("ursula") / "workshop"
        provenance = json.loads((copy / homes.PROVENANCE_FILE).read_text())
        revision = self.example.current_revision
        self.assertEqual((provenance["slug"], provenance["version"], provenance["commit"],
                          provenance["job"]),
                         (self.example.slug, revision.number, revision.git_commit, str(job.pk)))
        self.assertTrue(provenance["copied_at"])

    def test_it_fails_with_a_message_a_person_can_act_on(self):
        parent = homes.use_parent("ursula")
        parent.parent.mkdir(parents=True)
        parent.write_text("not a folder")
        job = self.use()
        self.assertEqual(job.state, Job.State.FAILED)
        self.assertIn("~/examples is not a folder; move it away", job.message)
        self.assertEqual(parent.read_text(), "not a folder")

    def test_it_keeps_the_gallerys_own_errors_and_paths_out_of_the_message(self):
        full = OSError(errno.ENOSPC, "No space left on device",
                       "/srv/gallery/exports/0123abcd/hello/hello.ipynb")
        with mock.patch.object(repo, "export_example", side_effect=full):
            job = self.use()
        self.assertEqual(job.state, Job.State.FAILED)
        self.assertEqual(job.message, "The copy could not be made (an error in the gallery: "
                                      "OSError). Try again; if it keeps failing, tell the "
                                      "centre's support.")

    def test_it_finds_the_copy_an_interrupted_attempt_finished(self):
        job = self.use()
        copy = homes.use_parent("ursula") / self.example.slug
        # The worker died after the rename but before recording "done": the sweep rings again.
        Job.objects.filter(pk=job.pk).update(state=Job.State.RUNNING,
                                             lease_until=timezone.now() - timedelta(seconds=1))
        done = services.perform_job(str(job.pk))
        self.assertEqual(done.state, Job.State.DONE)
        self.assertEqual(done.attempts, 2)
        self.assertEqual(done.result["folder"], self.example.slug)
        self.assertEqual(sorted(p.name for p in copy.parent.iterdir()), [self.example.slug])

    def test_it_does_not_touch_a_job_another_attempt_holds(self):
        job = self.use()
        Job.objects.filter(pk=job.pk).update(state=Job.State.RUNNING, worker="other",
                                             lease_until=timezone.now() + timedelta(minutes=1))
        self.assertIsNone(services.perform_job(str(job.pk)))
        job.refresh_from_db()
        self.assertEqual((job.state, job.worker), (Job.State.RUNNING, "other"))

    def test_it_refuses_to_renew_a_lease_another_attempt_took(self):
        job = self.use()
        Job.objects.filter(pk=job.pk).update(state=Job.State.RUNNING, worker="other")
        job.worker = "me"
        with self.assertRaises(services.LeaseLost):
            services.renew_lease(job)


class SweepTests(UseTestCase):
    def setUp(self) -> None:
        super().setUp()
        submission = self.stage_and_approve()
        self.example = Example.objects.get(pk=submission.example_id)
        self.job = services.queue_use(example=self.example, user=self.user)  # never rung

    def test_it_rings_a_lost_job_again_and_keeps_the_click_time(self):
        clicked = timezone.now() - timedelta(seconds=settings.GALLERY_REQUEUE_AFTER + 1)
        Job.objects.filter(pk=self.job.pk).update(queued_at=clicked)
        self.assertEqual(services.sweep_jobs(), 1)  # eager here: the job runs at once
        job = Job.objects.get(pk=self.job.pk)
        self.assertEqual(job.state, Job.State.DONE, job.message)
        self.assertEqual(job.queued_at, clicked)
        self.assertIsNotNone(job.rung_at)

    def test_it_leaves_a_job_it_rang_lately_alone(self):
        clicked = timezone.now() - timedelta(seconds=settings.GALLERY_REQUEUE_AFTER + 1)
        Job.objects.filter(pk=self.job.pk).update(queued_at=clicked, rung_at=timezone.now())
        self.assertEqual(services.sweep_jobs(), 0)
        self.assertEqual(Job.objects.get(pk=self.job.pk).state, Job.State.QUEUED)

    def test_it_rings_a_running_job_whose_lease_expired(self):
        Job.objects.filter(pk=self.job.pk).update(
            state=Job.State.RUNNING, worker="dead", attempts=1,
            lease_until=timezone.now() - timedelta(seconds=1))
        self.assertEqual(services.sweep_jobs(), 1)
        job = Job.objects.get(pk=self.job.pk)
        self.assertEqual((job.state, job.attempts), (Job.State.DONE, 2))
        self.assertTrue((homes.use_parent("ursula") / self.example.slug).is_dir())

    def test_it_gives_up_on_a_job_interrupted_too_often(self):
        Job.objects.filter(pk=self.job.pk).update(
            state=Job.State.RUNNING, attempts=services.MAX_ATTEMPTS + 2,
            lease_until=timezone.now() - timedelta(seconds=1))
        services.sweep_jobs()
        job = Job.objects.get(pk=self.job.pk)
        self.assertEqual(job.state, Job.State.FAILED)
        self.assertIn("try again", job.message)
        self.assertFalse(Path(homes.use_parent("ursula")).exists())

    def test_it_clears_what_a_use_it_gives_up_on_left_half_written(self):
        parent = homes.use_parent("ursula")
        plan = homes.CopyPlan(username="ursula", source=Path(), parent=parent,
                              folder_name=self.job.params["folder"], job_id=str(self.job.pk),
                              provenance={})
        leftover = parent / (plan.temp_prefix + "dead")  # of an attempt killed mid-copy
        (leftover / "lib").mkdir(parents=True)
        (leftover / "hello.ipynb").write_text('{"cel')
        Job.objects.filter(pk=self.job.pk).update(
            state=Job.State.RUNNING, attempts=services.MAX_ATTEMPTS + 2,
            lease_until=timezone.now() - timedelta(seconds=1))
        services.sweep_jobs()  # eager here: the last ring runs at once
        job = Job.objects.get(pk=self.job.pk)
        self.assertEqual(job.state, Job.State.FAILED)
        self.assertIn("interrupted too many times", job.message)
        self.assertEqual(list(parent.iterdir()), [])  # nothing half-written, and no new copy

    def test_it_fails_a_use_whose_last_ring_was_cut_short_too(self):
        Job.objects.filter(pk=self.job.pk).update(
            state=Job.State.RUNNING, attempts=services.MAX_ATTEMPTS + 3,
            lease_until=timezone.now() - timedelta(seconds=1))
        self.assertEqual(services.sweep_jobs(), 0)
        job = Job.objects.get(pk=self.job.pk)
        self.assertEqual((job.state, job.attempts), (Job.State.FAILED, services.MAX_ATTEMPTS + 3))


class UseCountTests(UseTestCase):
    def test_it_counts_the_copies_made_not_the_clicks(self):
        submission = self.stage_and_approve()
        example = Example.objects.get(pk=submission.example_id)
        for _ in range(2):
            with self.captureOnCommitCallbacks(execute=True):
                services.queue_use(example=example, user=self.user)
        services.queue_use(example=example, user=self.user)  # not carried out yet
        example.refresh_from_db()
        self.assertEqual(example.use_count, 0)  # no write to the example at each click
        self.assertEqual(services.count_uses(), 1)
        example.refresh_from_db()
        self.assertEqual(example.use_count, 2)
        self.assertEqual(services.count_uses(), 0)  # nothing changed since


class UseTests(GalleryTestCase):
    def test_it_copies_the_approved_revision_into_the_home(self):
        submission = self.stage_and_approve(data_links=[
            {"name": "docs", "target": "https://example.org/data"},
            {"name": "shared", "target": str(Path(settings.GALLERY_DATA_DIR).parent)}])
        example = Example.objects.get(pk=submission.example_id)
        with self.captureOnCommitCallbacks(execute=True):
            job = services.queue_use(example=example, user=self.user)
        job.refresh_from_db()
        self.assertEqual(job.state, Job.State.DONE, job.message)
        home = Path(settings.GALLERY_HOME_TEMPLATE.format(username="ursula"))
        copy = home / "examples" / example.slug
        self.assertTrue((copy / "hello.ipynb").is_file())
        self.assertTrue((copy / "data" / "shared").is_symlink())
        self.assertIn("https://example.org/data", (copy / "DATA.md").read_text())
        self.assertEqual(job.result["folder"], example.slug)
        self.assertIn("pip install -r requirements.txt", job.result["environment"]["pip"])
        # Run from anywhere: the commands go to the copy first.
        self.assertTrue(job.result["environment"]["pip"].startswith(
            f"cd ~/examples/{example.slug} && python3 -m venv"))

    def test_it_never_overwrites_and_names_the_second_copy(self):
        submission = self.stage_and_approve()
        example = Example.objects.get(pk=submission.example_id)
        folders = []
        for _ in range(2):
            with self.captureOnCommitCallbacks(execute=True):
                job = services.queue_use(example=example, user=self.user)
            job.refresh_from_db()
            folders.append(job.result["folder"])
        self.assertEqual(folders, [example.slug, f"{example.slug}-2"])

    def test_it_runs_a_job_only_once(self):
        submission = self.stage_and_approve()
        example = Example.objects.get(pk=submission.example_id)
        with self.captureOnCommitCallbacks(execute=True):
            job = services.queue_use(example=example, user=self.user)
        self.assertIsNone(services.perform_job(str(job.pk)))  # already done: nothing to do
        home = Path(settings.GALLERY_HOME_TEMPLATE.format(username="ursula")) / "examples"
        self.assertEqual(sorted(p.name for p in home.iterdir()), [example.slug])

from pathlib import Path

import git
from django.conf import settings

from gallery import services
from gallery.models import Example, IllegalTransition, Job, Preview, StateChange, Submission

from .base import GalleryTestCase, notebook_bytes, stage


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
        preview = Preview.objects.get(sha256=submission.revision.notebook_sha256)
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


class ReviewTests(GalleryTestCase):
    def test_it_approves_into_a_commit_with_author_committer_and_trailers(self):
        submission = self.stage_and_approve()
        example = Example.objects.get(pk=submission.example_id)
        self.assertEqual(example.state, Example.State.APPROVED)
        revision = example.current_revision
        commit = git.Repo(settings.GALLERY_REPO_PATH).commit(revision.git_commit)
        self.assertEqual(commit.author.name, "connor")
        self.assertEqual(commit.committer.name, "rita")
        self.assertIn(f"Gallery-Submission: {submission.pk}", commit.message)
        self.assertIn("Gallery-Review: ", commit.message)
        tree = commit.tree / example.slug
        self.assertEqual({b.name for b in tree.blobs},
                         {"hello.ipynb", "requirements.txt", "example.toml"})

    def test_it_refuses_illegal_transitions_with_a_clear_message(self):
        submission = self.stage_and_approve()
        with self.assertRaises(IllegalTransition) as ctx:
            services.reject_submission(submission=submission, reviewer=self.reviewer,
                                       comment="no")
        self.assertIn("approved", str(ctx.exception))

    def test_it_refuses_a_decision_from_a_non_reviewer(self):
        submission = stage(self.contributor)
        with self.assertRaises(services.NotAllowed):
            services.approve_submission(submission=submission, reviewer=self.user)

    def test_it_records_who_when_and_why_for_every_transition(self):
        submission = stage(self.contributor)
        services.request_changes(submission=submission, reviewer=self.reviewer,
                                 comment="Add a summary")
        change = StateChange.objects.filter(submission=submission).last()
        self.assertEqual((change.from_state, change.to_state), ("staged", "changes_requested"))
        self.assertEqual(change.actor, self.reviewer)
        self.assertEqual(change.reason, "Add a summary")
        self.assertIsNotNone(change.at)

    def test_it_makes_a_new_revision_of_the_same_example(self):
        first = self.stage_and_approve()
        with self.captureOnCommitCallbacks(execute=True):
            second = stage(self.contributor, notebook=notebook_bytes(5),
                           example_slug=first.example.slug)
        self.assertEqual(second.example_id, first.example_id)
        self.assertEqual(second.revision.number, 2)
        example = Example.objects.get(pk=first.example_id)
        self.assertEqual(example.current_revision.number, 1)  # until approved

    def test_it_retires_and_hides_an_example_from_new_uses(self):
        submission = self.stage_and_approve()
        example = Example.objects.get(pk=submission.example_id)
        services.retire_example(example=example, actor=self.reviewer, reason="outdated")
        example.refresh_from_db()
        self.assertEqual(example.state, Example.State.RETIRED)
        self.assertNotIn(example, Example.objects.visible())
        with self.assertRaises(services.Conflict):
            services.queue_use(example=example, user=self.user)


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

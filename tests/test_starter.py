"""The starter collection goes through the normal approval path."""

from io import StringIO
from pathlib import Path

import git
from django.conf import settings
from django.core.management import CommandError, call_command

from gallery import notebooks
from gallery.models import Example, Submission

from .base import GalleryTestCase

STARTER = Path(settings.BASE_DIR) / "examples_repo"


class StarterTests(GalleryTestCase):
    def test_it_has_at_least_four_complete_examples(self):
        folders = [p for p in STARTER.iterdir() if (p / notebooks.EXAMPLE_FILE).is_file()]
        self.assertGreaterEqual(len(folders), 4)
        for folder in folders:
            meta = notebooks.read_example_toml((folder / notebooks.EXAMPLE_FILE).read_bytes())
            notebooks.read_notebook((folder / meta["notebook"]).read_bytes())
            self.assertIn(meta["environment"], notebooks.ENV_FILES)
            self.assertTrue((folder / meta["environment"]).is_file())
            self.assertGreaterEqual(len(meta["data"]), 1, folder.name)

    def test_it_imports_them_through_staging_and_approval(self):
        out = StringIO()
        with self.captureOnCommitCallbacks(execute=True):
            call_command("import_starter_examples", reviewer="rita", stdout=out)
        approved = Example.objects.curated()
        self.assertGreaterEqual(approved.count(), 4)
        repo = git.Repo(settings.GALLERY_REPO_PATH)
        for example in approved:
            submission = Submission.objects.get(revision=example.current_revision)
            self.assertEqual(submission.state, "approved")
            self.assertEqual(submission.reviews.get().reviewer.username, "rita")
            self.assertTrue({c["status"] for c in submission.checks} <= {"pass", "warn"},
                            submission.checks)
            commit = repo.commit(example.current_revision.git_commit)
            self.assertIn(f"Gallery-Submission: {submission.pk}", commit.message)
        # Running it again changes nothing.
        call_command("import_starter_examples", reviewer="rita", stdout=out)
        self.assertEqual(Example.objects.count(), approved.count())

    def test_it_refuses_a_user_name_too_long_to_keep_with_a_plain_error(self):
        for option in ("reviewer", "contributor"):
            with self.subTest(option=option), self.assertRaises(CommandError) as raised:
                call_command("import_starter_examples", **{option: "r" * 151}, stdout=StringIO())
            self.assertIn("is longer than the 150 characters", str(raised.exception))
        self.assertFalse(Example.objects.exists())

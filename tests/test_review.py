"""Review: decisions, publishing into the repository, retirement."""


import git
from django.conf import settings

from gallery import services
from gallery.models import (
    Example,
    IllegalTransition,
    StateChange,
)

from .base import GalleryTestCase, notebook_bytes, stage


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

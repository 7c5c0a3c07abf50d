"""The reviewer's desk: the queue, a submission's checks, preview and diff, decisions,
retiring examples and bulk import, all through the Django admin."""

import json
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gallery import diff, previews
from gallery.models import Example, Notification, Submission
from gallery.previews import revision_preview_key

from .base import GalleryTestCase, make_user, notebook_bytes, stage


def notebook_of(*sources: str) -> bytes:
    nb = json.loads(notebook_bytes(0))
    nb["cells"] = [{"cell_type": "code", "metadata": {}, "source": s, "outputs": [],
                    "execution_count": None, "id": f"c{i}"} for i, s in enumerate(sources)]
    return json.dumps(nb).encode()


class DiffTests(GalleryTestCase):
    def test_it_aligns_cells_and_diffs_the_edited_one(self):
        old = notebook_of("import numpy as np", "x = np.arange(3)", "print(x)")
        new = notebook_of("import numpy as np", "x = np.arange(10)", "print(x)", "x.sum()")
        result = diff.diff_notebooks(old, new)
        self.assertEqual([c.kind for c in result.cells], ["same", "changed", "same", "added"])
        changed = result.cells[1]
        self.assertIn(("-", "x = np.arange(3)"), changed.lines)
        self.assertIn(("+", "x = np.arange(10)"), changed.lines)
        self.assertEqual(result.counts, {"same": 2, "changed": 1, "added": 1, "removed": 0})

    def test_it_reports_removed_cells_and_changed_outputs(self):
        old = json.loads(notebook_of("a = 1", "b = 2"))
        new = json.loads(notebook_of("a = 1"))
        new["cells"][0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "1\n"}]
        result = diff.diff_notebooks(json.dumps(old).encode(), json.dumps(new).encode())
        self.assertEqual([c.kind for c in result.cells], ["same", "removed"])
        self.assertTrue(result.cells[0].outputs_changed)
        self.assertFalse(result.unchanged)

    def test_it_treats_every_cell_as_added_without_an_earlier_version(self):
        result = diff.diff_notebooks(None, notebook_of("a", "b"))
        self.assertEqual(result.counts["added"], 2)


class DeskTests(GalleryTestCase):
    def setUp(self) -> None:
        self.client.force_login(self.reviewer)

    def test_it_lists_open_submissions_longest_waiting_first(self):
        older = stage(self.contributor, title="Older one")
        Submission.objects.filter(pk=older.pk).update(created=timezone.now() - timedelta(days=3))
        stage(self.user, title="Newer one")
        done = self.stage_and_approve(title="Already approved")
        page = self.client.get(reverse("admin:gallery_submission_changelist"))
        html = page.content.decode()
        self.assertLess(html.index("Older one"), html.index("Newer one"))
        self.assertNotIn("Already approved", html)
        self.assertIn("3\xa0days", html)
        self.assertIn("Reviewer&#x27;s desk · Examples gallery", html)  # not Django's name
        everything = self.client.get(reverse("admin:gallery_submission_changelist"),
                                     {"queue": "all"})
        self.assertContains(everything, done.example.title)

    def test_it_shows_checks_preview_and_the_diff_against_the_approved_revision(self):
        first = self.stage_and_approve(notebook=notebook_of("x = 1", "print(x)"))
        with self.captureOnCommitCallbacks(execute=True):
            second = stage(self.contributor, example_slug=first.example.slug,
                           notebook=notebook_of("x = 2", "print(x)", "x * 2"))
        page = self.client.get(reverse("admin:gallery_submission_change", args=[second.pk]))
        self.assertContains(page, "Changes since approved version 1")
        self.assertContains(page, "Cells: 1 changed, 1 added, 0 removed, 1 unchanged.")
        self.assertContains(page, "<del>- x = 1</del>")
        self.assertContains(page, "<ins>+ x = 2</ins>")
        self.assertContains(page, "✓ pass")
        self.assertContains(page, f"/previews/{revision_preview_key(second.revision)}.html")
        self.assertContains(page, f'sandbox="{previews.FRAME_SANDBOX}"')
        self.assertContains(page, 'id="decision-form"')

    def test_it_requests_changes_with_a_comment_the_contributor_sees(self):
        submission = stage(self.contributor)
        url = reverse("admin:gallery_submission_decide", args=[submission.pk])
        response = self.client.post(url, {"decision": "request_changes", "comment": ""})
        submission.refresh_from_db()
        self.assertEqual(submission.state, "staged")  # a comment is required
        response = self.client.post(url, {"decision": "request_changes",
                                          "comment": "Add a data licence."})
        self.assertRedirects(response, reverse("admin:gallery_submission_changelist"),
                             fetch_redirect_response=False)
        submission.refresh_from_db()
        self.assertEqual(submission.state, "changes_requested")
        self.assertEqual(submission.reviews.get().comment, "Add a data licence.")
        self.assertTrue(Notification.objects.filter(user=self.contributor,
                                                    message__contains="Add a data licence.")
                        .exists())

    def test_it_approves_and_publishes(self):
        submission = stage(self.contributor)
        with self.captureOnCommitCallbacks(execute=True):
            self.client.post(reverse("admin:gallery_submission_decide", args=[submission.pk]),
                             {"decision": "approve", "comment": "Nice."})
        submission.example.refresh_from_db()
        self.assertEqual(submission.example.state, Example.State.APPROVED)
        self.assertTrue(submission.example.current_revision.git_commit)

    def test_it_does_not_let_reviewers_decide_on_their_own_work_or_users_decide_at_all(self):
        own = stage(self.reviewer)
        page = self.client.get(reverse("admin:gallery_submission_change", args=[own.pk]))
        self.assertNotContains(page, 'id="decision-form"')
        self.client.post(reverse("admin:gallery_submission_decide", args=[own.pk]),
                         {"decision": "approve"})
        own.refresh_from_db()
        self.assertEqual(own.state, "staged")
        self.client.force_login(self.user)
        other = stage(self.contributor)
        response = self.client.post(
            reverse("admin:gallery_submission_decide", args=[other.pk]), {"decision": "approve"})
        self.assertIn(response.status_code, (302, 403))
        other.refresh_from_db()
        self.assertEqual(other.state, "staged")

    def test_it_retires_an_example_with_a_reason(self):
        example = self.stage_and_approve().example
        url = reverse("admin:gallery_example_changelist")
        ask = self.client.post(url, {"action": "retire", "_selected_action": [example.pk]})
        self.assertContains(ask, "Reason")
        example.refresh_from_db()
        self.assertEqual(example.state, "approved")
        self.client.post(url, {"action": "retire", "_selected_action": [example.pk],
                               "reason": "Replaced by the 2025 tutorial."})
        example.refresh_from_db()
        self.assertEqual(example.state, "retired")
        self.assertEqual(example.history.last().reason, "Replaced by the 2025 tutorial.")
        self.client.post(url, {"action": "restore", "_selected_action": [example.pk]})
        example.refresh_from_db()
        self.assertEqual(example.state, "approved")

    def test_it_lists_examples_without_reading_their_notebook_text(self):
        # search_text holds up to 100 kB an example: a page of 100 would read 10 MB.
        example = self.stage_and_approve().example
        url = reverse("admin:gallery_example_changelist")
        with CaptureQueriesContext(connection) as queries:
            self.assertContains(self.client.get(url), example.title)
        reads = [q["sql"] for q in queries if '"gallery_example"."title"' in q["sql"]]
        self.assertTrue(reads)
        self.assertFalse([sql for sql in reads if "search_text" in sql])
        # The actions still work on the examples so listed.
        self.client.post(url, {"action": "retire", "_selected_action": [example.pk],
                               "reason": "Replaced."})
        example.refresh_from_db()
        self.assertEqual(example.state, "retired")
        self.assertTrue(example.search_text)  # kept, as a retired example may come back

    def test_it_imports_a_folder_into_the_queue(self):
        root = Path(settings.GALLERY_DATA_DIR).parent / "to-import"
        (root / "mpi").mkdir(parents=True)
        (root / "mpi" / "pi.ipynb").write_bytes(notebook_of("from mpi4py import MPI"))
        (root / "other.ipynb").write_bytes(notebook_of("1 + 1"))
        url = reverse("admin:gallery_submission_import")
        refused = self.client.post(url, {"source": str(root)})
        self.assertContains(refused, "GALLERY_IMPORT_ROOTS")
        with override_settings(GALLERY_IMPORT_ROOTS=[str(root)]):
            response = self.client.post(url, {"source": str(root)})
        self.assertContains(response, "staged <a")
        self.assertEqual(Submission.objects.filter(state="staged").count(), 2)
        queue = self.client.get(reverse("admin:gallery_submission_changelist"))
        self.assertContains(queue, "Import notebooks")
        self.assertContains(queue, "Pi")

    def test_it_keeps_plain_users_out(self):
        self.client.force_login(make_user("visitor"))
        response = self.client.get(reverse("admin:gallery_submission_changelist"))
        self.assertIn(response.status_code, (302, 403))
        self.assertIn(self.client.get(reverse("admin:gallery_submission_import")).status_code,
                      (302, 403))


class TamperedSelectionTests(GalleryTestCase):
    def test_it_refuses_a_selection_that_is_not_row_ids_with_a_message(self):
        example = self.stage_and_approve().example
        self.client.force_login(self.reviewer)
        for tampered in ["x", str(10**30), "-1e9"]:
            with self.subTest(selection=tampered):
                response = self.client.post("/admin/gallery/example/", {
                    "action": "retire", "_selected_action": [str(example.pk), tampered],
                    "index": "0"}, follow=True)
                self.assertEqual(response.status_code, 200)
                self.assertContains(response, "select the rows again")
        example.refresh_from_db()
        self.assertEqual(example.state, Example.State.APPROVED)
        # A real selection still reaches the action.
        response = self.client.post("/admin/gallery/example/", {
            "action": "retire", "_selected_action": [str(example.pk)], "index": "0"})
        self.assertContains(response, "Retire examples")

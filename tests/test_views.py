"""The pages people use: the gallery, an example, staging, my submissions, notifications."""

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.urls import reverse

from gallery import previews, services
from gallery.models import Example, Job, Notification, Revision, Tag
from gallery.previews import revision_preview_key

from .base import GalleryTestCase, notebook_bytes, stage

pytestmark = pytest.mark.postgres  # run again on PostgreSQL by `make test`


def bulk_examples(n: int, *, state: str = "approved", prefix: str = "ex") -> None:
    """Many examples at once, as a large centre has them (no files: the cards need none)."""
    owner, _ = get_user_model().objects.get_or_create(username=f"{prefix}-owner")
    tags = [Tag.objects.get_or_create(name=f"{prefix}-tag-{i}")[0] for i in range(3)]
    made = Example.objects.bulk_create(
        Example(slug=f"{prefix}-{i}", title=f"{prefix.title()} number {i}", state=state,
                summary=f"Summary {i}", contributor=owner, search_text=f"words{i}")
        for i in range(n))
    through = Example.tags.through
    through.objects.bulk_create(through(example=e, tag=tags[i % 3]) for i, e in enumerate(made))
    revisions = Revision.objects.bulk_create(
        Revision(example=e, number=1, content_hash=f"{i:064x}", notebook_sha256=f"{i:064x}",
                 notebook_name="nb.ipynb", git_commit="a" * 40 if state == "approved" else "")
        for i, e in enumerate(made))
    for e, r in zip(made, revisions, strict=True):
        e.current_revision = r if state == "approved" else None
    Example.objects.bulk_update(made, ["current_revision"])


class GalleryPageTests(GalleryTestCase):
    def setUp(self) -> None:
        cache.clear()
        self.client.force_login(self.user)

    def test_it_shows_both_sections_with_preview_and_use_on_every_card(self):
        approved = self.stage_and_approve(title="Broadcasting in NumPy")
        stage(self.contributor, title="Dask on the cluster")
        response = self.client.get(reverse("index"))
        self.assertContains(response, "Curated, reviewed examples")
        self.assertContains(response, "Staged examples still under review")
        self.assertContains(response, "Broadcasting in NumPy")
        self.assertContains(response, "Dask on the cluster")
        html = response.content.decode()
        self.assertEqual(html.count(">Preview</a>"), 2)
        self.assertEqual(html.count(">Use</a>"), 2)
        self.assertContains(response, "by connor")
        self.assertContains(response, "used 0 times")
        self.assertContains(response, f'href="/examples/{approved.example.slug}/#use"')
        self.assertContains(response, 'href="?tag=demo"')

    def test_it_searches_title_summary_tags_and_notebook_text(self):
        self.stage_and_approve(title="Signal filtering",
                               notebook=notebook_bytes(text="scipy.signal.butter(4, 0.1)"))
        self.stage_and_approve(title="Time zones")
        for q, expected in (("filtering", "Signal filtering"), ("butter", "Signal filtering"),
                            ("zones", "Time zones"), ("demo", "Time zones")):
            with self.subTest(q=q):
                response = self.client.get(reverse("index"), {"q": q})
                self.assertContains(response, expected)
        response = self.client.get(reverse("index"), {"q": "butter"})
        self.assertNotContains(response, "Time zones")
        response = self.client.get(reverse("index"), {"q": "nothing-matches-this"})
        self.assertContains(response, "Nothing here for this search.", count=2)

    def test_it_searches_with_postgresql_full_text_search(self):
        from django.db import connection

        if connection.vendor != "postgresql":
            self.skipTest("PostgreSQL full-text search needs a PostgreSQL database "
                          "(GALLERY_DATABASE_URL); SQLite uses the substring fallback")
        bulk_examples(5)
        Example.objects.filter(slug="ex-1").update(title="Filtering signals",
                                                   search_text="butterworth lowpass")
        Example.objects.filter(slug="ex-2").update(summary="How signals are filtered",
                                                   search_text="")
        Example.objects.filter(slug="ex-3").update(search_text="a filter in passing")
        found = list(Example.objects.find(q="filter").values_list("slug", flat=True))
        # Stems and prefixes match ("filtering", "filtered"); title outranks summary and text.
        self.assertEqual(found, ["ex-1", "ex-2", "ex-3"])
        self.assertEqual(list(Example.objects.find(q="butter low").values_list(
            "slug", flat=True)), ["ex-1"])
        self.assertEqual(list(Example.objects.find(q="(! & |").values_list("slug", flat=True)),
                         list(Example.objects.find().values_list("slug", flat=True)))

    def test_it_filters_by_tag_and_pages(self):
        bulk_examples(30)
        response = self.client.get(reverse("index"), {"tag": "ex-tag-1"})
        self.assertContains(response, "(10)")
        response = self.client.get(reverse("index"), {"approved_page": "2"})
        self.assertContains(response, "page 2 of 2")
        self.assertContains(response, 'rel="prev"')
        self.assertEqual(response.content.decode().count('class="card"'), 6)
        # A bad page number shows a page, not an error.
        self.assertEqual(self.client.get(reverse("index"), {"approved_page": "x"}).status_code,
                         200)

    def test_it_needs_a_fixed_number_of_queries_however_many_examples(self):
        bulk_examples(30)
        bulk_examples(30, state="staged", prefix="st")
        self.client.get(reverse("index"))  # the session and the user, as on every later page
        cache.clear()
        # ... and the groups whose examples the person sees (none here: the public page);
        # per section: the count, the page's ids, then its cards' rows and their tags
        with self.assertNumQueries(14) as small:
            self.client.get(reverse("index"), {"q": "number"})
        bulk_examples(200, prefix="more")
        cache.clear()
        with self.assertNumQueries(len(small.captured_queries)):
            response = self.client.get(reverse("index"), {"q": "number"})
        self.assertEqual(response.content.decode().count('class="card"'), 48)
        # The cards are rendered once for everyone until an example changes.
        with self.assertNumQueries(5):
            again = self.client.get(reverse("index"), {"q": "number"})
        self.assertEqual(again.content, response.content)
        # Another page with the same cards (another audience's, say): only the frame is new
        # (no rows or tags of cards, the popular tags of the audience kept too).
        with self.assertNumQueries(len(small.captured_queries) - 5):
            other = self.client.get(reverse("index"), {"q": "number", "approved_page": "1"})
        self.assertEqual(other.content.decode().count('class="card"'), 48)

    def test_it_shows_a_change_at_once_despite_the_cached_cards(self):
        self.stage_and_approve(title="First one")
        self.assertNotContains(self.client.get(reverse("index")), "Second one")
        stage(self.contributor, title="Second one")
        self.assertContains(self.client.get(reverse("index")), "Second one")

    def test_it_lists_a_change_in_the_json_list_at_once_despite_the_cache(self):
        self.stage_and_approve(title="First one")
        url = "/api/v1/examples"
        self.assertEqual(self.client.get(url).json()["count"], 1)
        # session, user, the groups seen, the stamp: the page itself is cached
        with self.assertNumQueries(4):
            self.client.get(url)
        stage(self.contributor, title="Second one")
        titles = [e["title"] for e in self.client.get(url).json()["results"]]
        self.assertEqual(titles, ["Second one", "First one"])

    def test_it_asks_for_a_login(self):
        self.client.logout()
        response = self.client.get(reverse("index"))
        self.assertEqual(response.status_code, 302)


class ExamplePageTests(GalleryTestCase):
    def setUp(self) -> None:
        self.client.force_login(self.user)

    def test_it_shows_the_preview_manifest_checks_and_use_plan(self):
        submission = self.stage_and_approve(data_links=[{
            "name": "era5", "target": "https://example.org/era5", "size": 3_000_000_000,
            "licence": "CC-BY-4.0", "description": "Reanalysis"}])
        response = self.client.get(reverse("example", args=[submission.example.slug]))
        self.assertContains(response, f"/previews/{revision_preview_key(submission.revision)}.html")
        self.assertContains(response, f'sandbox="{previews.FRAME_SANDBOX}"')
        self.assertContains(response, "<code>hello.ipynb</code> (main notebook)")
        self.assertContains(response, "numpy&gt;=1.24")  # the environment spec itself
        self.assertContains(response, "2.8\xa0GB")
        self.assertContains(response, "CC-BY-4.0")
        self.assertContains(response, "✓ pass")
        self.assertContains(response, "Use this example")
        self.assertContains(response, "~/examples/hello-example")
        self.assertContains(response, "Version 1")
        self.assertContains(response, "First version.")

    def test_it_says_what_changed_between_versions(self):
        first = self.stage_and_approve()
        self.stage_and_approve(example_slug=first.example.slug,
                               notebook=notebook_bytes(5), files={"helper.py": b"x = 1\n"})
        response = self.client.get(reverse("example", args=[first.example.slug]))
        self.assertContains(response, "Version 2")
        self.assertContains(response, "Changed: <code>hello.ipynb</code>")
        self.assertContains(response, "Added: <code>helper.py</code>")

    def test_it_tells_users_their_copy_is_older(self):
        first = self.stage_and_approve()
        Job.objects.create(kind="use", state="done", user=self.user, revision=first.revision,
                           result={"path": "~/examples/hello-example"})
        url = reverse("example", args=[first.example.slug])
        self.assertNotContains(self.client.get(url), 'id="outdated"')
        self.stage_and_approve(example_slug=first.example.slug, notebook=notebook_bytes(4))
        response = self.client.get(url)
        self.assertContains(response, 'id="outdated"')
        self.assertContains(response, "is of version 1; version 2 is approved now")

    def test_it_explains_that_a_staged_example_cannot_be_used_yet(self):
        submission = stage(self.contributor)
        response = self.client.get(reverse("example", args=[submission.example.slug]))
        self.assertContains(response, "Use opens once a reviewer approves")
        self.assertNotContains(response, "Use this example")

    def test_it_queues_a_use_and_shows_its_progress_page(self):
        first = self.stage_and_approve()
        response = self.client.post(reverse("use", args=[first.example.slug]),
                                    {"folder": "my-copy"})
        job = Job.objects.get(kind="use")
        self.assertRedirects(response, reverse("job", args=[job.pk]), fetch_redirect_response=False)
        page = self.client.get(reverse("job", args=[job.pk]))
        self.assertContains(page, "Use of “Hello example”")
        self.assertEqual(self.client.get(reverse("job", args=[job.pk]),
                                         HTTP_ACCEPT="application/json").json()["id"], str(job.pk))


class ContributorPageTests(GalleryTestCase):
    def setUp(self) -> None:
        self.client.force_login(self.contributor)

    def test_it_lists_submissions_with_checks_and_comments_and_offers_a_new_revision(self):
        with self.captureOnCommitCallbacks(execute=True):
            submission = stage(self.contributor)
        services.request_changes(submission=submission, reviewer=self.reviewer,
                                 comment="Explain the second cell.")
        response = self.client.get(reverse("my-submissions"))
        self.assertContains(response, "changes requested")
        self.assertContains(response, "rita: Explain the second cell.")
        self.assertContains(response, "passed")
        self.assertContains(response, f"/stage/?example={submission.example.slug}")

    def test_it_prefills_the_stage_form_for_a_new_revision_and_stages_it(self):
        submission = stage(self.contributor)
        services.request_changes(submission=submission, reviewer=self.reviewer, comment="More.")
        slug = submission.example.slug
        page = self.client.get(reverse("stage"), {"example": slug})
        self.assertContains(page, "New revision of “Hello example”")
        self.assertContains(page, 'value="demo, python"')
        self.assertContains(page, f'name="example" value="{slug}"')
        from django.core.files.uploadedfile import SimpleUploadedFile

        response = self.client.post(reverse("stage") + f"?example={slug}", {
            "notebook": SimpleUploadedFile("hello.ipynb", notebook_bytes(2)),
            "title": "Hello example", "summary": "Better.", "tags": "demo", "licence": "MIT",
            "example": slug, "data_links": ""})
        self.assertEqual(response.status_code, 302, response.content[:2000])
        self.assertEqual(submission.example.revisions.count(), 2)
        self.assertEqual(submission.example.submissions.first().state, "staged")

    def test_it_refuses_an_upload_over_the_limit_with_a_page_saying_so(self):
        # With CSRF enforced, as in production, the CSRF check reads the body before the view.
        from django.core.files.uploadedfile import SimpleUploadedFile
        from django.test import Client

        client = Client(enforce_csrf_checks=True)
        client.force_login(self.contributor)
        client.get(reverse("stage"))
        token = client.cookies[settings.CSRF_COOKIE_NAME].value
        with self.settings(GALLERY_MAX_UPLOAD_BYTES=10_000):
            response = client.post(reverse("stage"), {
                "notebook": SimpleUploadedFile("big.ipynb", b"x" * 50_000), "title": "Big",
                "csrfmiddlewaretoken": token})
        self.assertContains(response, "larger than the limit", status_code=413)
        self.assertEqual(Example.objects.count(), 0)

    def test_it_shows_and_clears_notifications(self):
        submission = stage(self.contributor)
        services.reject_submission(submission=submission, reviewer=self.reviewer,
                                   comment="Out of scope.")
        page = self.client.get(reverse("my-submissions"))
        self.assertContains(page, '<span class="badge">')
        response = self.client.get(reverse("notifications"))
        self.assertContains(response, "rejected revision 1")
        self.assertContains(response, "Out of scope.")
        self.client.post(reverse("notifications"))
        self.assertFalse(Notification.objects.filter(user=self.contributor).unread().exists())
        self.assertNotContains(self.client.get(reverse("my-submissions")), 'class="badge"')

    def test_it_hides_other_peoples_submissions(self):
        other = stage(self.reviewer)
        self.assertEqual(self.client.get(reverse("submission", args=[other.pk])).status_code, 404)


class VisibilityPageTests(GalleryTestCase):
    """Pages show an example only to those who may see it (`ExampleQuerySet.visible_to`)."""

    def rejected(self):  # type: ignore[no-untyped-def]
        with self.captureOnCommitCallbacks(execute=True):
            submission = stage(self.contributor, title="Refused walrus",
                               data_links=[{"name": "d", "target": "https://example.org/walrus"}])
        services.reject_submission(submission=submission, reviewer=self.reviewer,
                                   comment="Walrus is out of scope.")
        return submission

    def test_it_hides_a_rejected_example_from_everyone_but_its_contributor_and_reviewers(self):
        submission = self.rejected()
        slug = submission.example.slug
        self.client.force_login(self.user)
        for response in (self.client.get(reverse("example", args=[slug])),
                         self.client.get(reverse("stage"), {"example": slug}),
                         self.client.post(reverse("use", args=[slug]), {"folder": ""})):
            self.assertEqual(response.status_code, 404)
            self.assertNotContains(response, "walrus", status_code=404)
        for person in (self.contributor, self.reviewer):
            self.client.force_login(person)
            page = self.client.get(reverse("example", args=[slug]))
            self.assertContains(page, "Refused walrus")
            self.assertContains(page, "Walrus is out of scope.")

    def test_it_offers_a_new_revision_only_to_the_contributor_and_reviewers(self):
        approved = self.stage_and_approve()
        slug = approved.example.slug
        refused = stage(self.contributor, title="Secret second try", example_slug=slug)
        services.reject_submission(submission=refused, reviewer=self.reviewer, comment="No.")
        self.client.force_login(self.user)
        response = self.client.get(reverse("stage"), {"example": slug})
        self.assertEqual(response.status_code, 403)
        self.assertNotContains(response, "Secret second try", status_code=403)
        self.client.force_login(self.reviewer)
        self.assertContains(self.client.get(reverse("stage"), {"example": slug}),
                            "Secret second try")

    def test_it_keeps_a_reviewers_words_on_a_refused_revision_from_other_people(self):
        approved = self.stage_and_approve()
        slug = approved.example.slug
        refused = stage(self.contributor, example_slug=slug)
        services.reject_submission(submission=refused, reviewer=self.reviewer,
                                   comment="The second cell leaks a password.")
        self.client.force_login(self.user)
        page = self.client.get(reverse("example", args=[slug]))
        self.assertContains(page, "submission staged → rejected by rita</li>")
        self.assertNotContains(page, "leaks a password")
        self.client.force_login(self.contributor)
        self.assertContains(self.client.get(reverse("example", args=[slug])),
                            "The second cell leaks a password.")

    def test_it_keeps_a_retired_example_for_those_who_hold_a_copy_only(self):
        approved = self.stage_and_approve()
        Job.objects.create(kind="use", state="done", user=self.user, revision=approved.revision)
        services.retire_example(example=approved.example, actor=self.reviewer, reason="Old.")
        url = reverse("example", args=[approved.example.slug])
        self.client.force_login(self.user)
        self.assertContains(self.client.get(url), "This example is retired")
        self.client.force_login(get_user_model().objects.create_user("newcomer"))
        self.assertEqual(self.client.get(url).status_code, 404)

    def test_it_takes_decisions_from_reviewers_only(self):
        submission = stage(self.contributor)
        self.client.force_login(self.user)
        response = self.client.post(reverse("review", args=[submission.pk]),
                                    {"decision": "approve"})
        self.assertEqual(response.status_code, 403)
        submission.refresh_from_db()
        self.assertEqual(submission.state, "staged")

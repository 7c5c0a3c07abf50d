"""Examples of hub groups: only members see them, on every surface; a project's reviewers
review their group's; a cached page never crosses groups; the hub is the truth about
membership; the repository keeps an example's groups."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from django.conf import settings
from django.core.cache import cache
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase as HypothesisTestCase

from gallery import caching, login, notebooks, services
from gallery.models import Example, HubGroup, Job, Notification, Revision, Tag, audience_of
from gallery.previews import revision_preview_key
from gallery.views import PreviewFiles

from .base import GalleryTestCase, make_user, notebook_bytes
from .test_caching import shared_cache
from .test_hub import ACCESS, FakeHub
from .test_login import NO_HUB, HubRequests

pytestmark = pytest.mark.postgres  # run again on PostgreSQL by `make test`

PHYSICS, CHEMISTRY = "physics", "chemistry"


def hub_model(name: str, *groups: str, scopes: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"name": name, "kind": "user", "groups": list(groups),
            "scopes": ["access:services", *scopes]}


def stage_for(contributor: Any, title: str, *groups: str, text: str = "print('hi')",
              tags: tuple[str, ...] = ("demo",)) -> Any:
    return services.stage_submission(
        contributor=contributor,
        staged=services.StagedFiles(notebook_name="nb.ipynb", notebook=notebook_bytes(text=text)),
        meta=services.ExampleMeta(title=title, summary="About it.", tags=list(tags),
                                  groups=list(groups)))


class GroupCast(GalleryTestCase):
    """Two groups; people in neither, one, the other, both; a physics reviewer; the centre's
    reviewer. A public example and one of each group, approved, and a physics one staged."""

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.people = {
            "nobody": services.sync_hub_user(hub_model("nora")),
            "physicist": services.sync_hub_user(hub_model("paul", PHYSICS)),
            "chemist": services.sync_hub_user(hub_model("chloe", CHEMISTRY)),
            "both": services.sync_hub_user(hub_model("bea", PHYSICS, CHEMISTRY)),
            "physics-reviewer": services.sync_hub_user(hub_model("peter", "physics-reviewers")),
            "reviewer": cls.reviewer,
        }
        cls.sees = {
            "public": set(cls.people),
            PHYSICS: {"physicist", "both", "physics-reviewer", "reviewer"},
            CHEMISTRY: {"chemist", "both", "reviewer"},
        }

    def setUp(self) -> None:
        self.examples: dict[str, Example] = {}
        for audience, who, title, text in [
            ("public", self.contributor, "Open otter", "print('otter')"),
            (PHYSICS, self.people["physicist"], "Photon puzzle", "print('photon')"),
            (CHEMISTRY, self.people["chemist"], "Catalyst crumble", "print('catalyst')"),
        ]:
            groups = () if audience == "public" else (audience,)
            with self.captureOnCommitCallbacks(execute=True):
                submission = stage_for(who, title, *groups, text=text,
                                       tags=("demo", f"tag-{audience}"))
            with self.captureOnCommitCallbacks(execute=True):
                services.approve_submission(submission=submission, reviewer=self.reviewer)
            self.examples[audience] = Example.objects.get(pk=submission.example_id)
        with self.captureOnCommitCallbacks(execute=True):
            self.staged = stage_for(self.people["physicist"], "Staged spectrometer", PHYSICS,
                                    text="print('spectrometer')")
        self.titles = {"public": "Open otter", PHYSICS: "Photon puzzle",
                       CHEMISTRY: "Catalyst crumble"}

    def as_(self, who: str) -> Client:
        client = Client()
        client.force_login(self.people[who])
        return client


class VisibilityTests(GroupCast):
    def test_it_keeps_the_groups_when_staging(self) -> None:
        self.assertEqual(self.examples[PHYSICS].group_names(), [PHYSICS])
        self.assertTrue(self.examples["public"].is_public)
        toml = self.examples[PHYSICS].current_revision.metadata  # type: ignore[union-attr]
        self.assertEqual(toml["groups"], [PHYSICS])
        self.assertNotIn("groups", self.examples["public"].current_revision.metadata)  # type: ignore[union-attr]

    def test_it_answers_each_example_to_those_who_see_it_and_404_to_the_others(self) -> None:
        for who in self.people:
            client = self.as_(who)
            for audience, example in self.examples.items():
                sha = revision_preview_key(example.current_revision)  # type: ignore[union-attr]
                ok = who in self.sees[audience]
                with self.subTest(who=who, example=audience):
                    urls = [reverse("example", args=[example.slug]),
                            f"/api/v1/examples/{example.slug}",
                            f"/api/v1/examples/{example.slug}/use-plan",
                            f"/api/v1/examples/{example.slug}/copies",
                            reverse("group-preview", args=[example.slug, sha])]
                    for url in urls:
                        self.assertEqual(client.get(url).status_code, 200 if ok else 404, url)
                    use = client.post(f"/api/v1/examples/{example.slug}/use", "{}",
                                      content_type="application/json")
                    self.assertEqual(use.status_code, 202 if ok else 404)
                    page = client.post(reverse("use", args=[example.slug]), {"folder": ""})
                    self.assertEqual(page.status_code, 302 if ok else 404)
                    revises = (who == "reviewer" or example.contributor == self.people[who]
                               or (who, audience) == ("physics-reviewer", PHYSICS))
                    self.assertEqual(client.get(f"/stage/?example={example.slug}").status_code,
                                     404 if not ok else 200 if revises else 403)
        made = Job.objects.filter(kind=Job.Kind.USE).values_list("user__username",
                                                                  "revision__example__slug")
        for username, slug in made:
            who = next(k for k, u in self.people.items() if u.get_username() == username)
            audience = next(a for a, e in self.examples.items() if e.slug == slug)
            self.assertIn(who, self.sees[audience])

    def test_it_runs_again_and_shows_runs_only_to_those_who_see_the_example(self) -> None:
        from gallery.models import Run

        for example in self.examples.values():  # a verified run for each, so badges show
            revision = example.current_revision
            run = Run.objects.create(revision=revision, kind=Run.Kind.SCHEDULED,
                                     state=Run.State.PASSED, account="runner",
                                     kernel="python3", finished=timezone.now())
            Example.objects.filter(pk=example.pk).update(last_run=run,
                                                         verdict_since=run.queued)
        for who in self.people:
            client = self.as_(who)
            verified = client.get("/", {"verified": "1"}).content.decode()
            listed = [e["title"] for e in client.get("/api/v1/examples").json()["results"]]
            for audience, example in self.examples.items():
                ok = who in self.sees[audience]
                revises = (who == "reviewer" or example.contributor == self.people[who]
                           or (who, audience) == ("physics-reviewer", PHYSICS))
                with self.subTest(who=who, example=audience):
                    self.assertEqual(self.titles[audience] in verified, ok)
                    self.assertEqual(self.titles[audience] in listed, ok)
                    before = Run.objects.count()
                    response = client.post(reverse("rerun", args=[example.slug]))
                    self.assertEqual(response.status_code,
                                     404 if not ok else 302 if revises else 403)
                    if not (ok and revises):
                        self.assertEqual(Run.objects.count(), before)
                    else:  # one queued (a rerun already queued is not queued twice)
                        self.assertTrue(Run.objects.filter(revision=example.current_revision,
                                                           state=Run.State.QUEUED).exists())

    def test_it_lists_searches_and_counts_only_what_each_person_sees(self) -> None:
        for who in self.people:
            client = self.as_(who)
            index = client.get("/").content.decode()
            listed = client.get("/api/v1/examples").json()
            tags = {t.name for t in Tag.objects.popular(audience_of(self.people[who]))}
            with self.subTest(who=who):
                for audience, title in self.titles.items():
                    ok = who in self.sees[audience]
                    self.assertEqual(title in index, ok, title)
                    self.assertEqual(f"tag-{audience}" in index, ok)
                    self.assertEqual(f"tag-{audience}" in tags, ok)
                    self.assertEqual(title in [e["title"] for e in listed["results"]], ok)
                    for word in title.split():
                        found = client.get("/api/v1/examples", {"q": word}).json()
                        self.assertEqual(found["count"], 1 if ok else 0, word)
                        searched = client.get("/", {"q": word}).content.decode()
                        self.assertEqual(f'href="/examples/{self.examples[audience].slug}/"'
                                         in searched, ok, word)
                seen = [a for a in self.titles if who in self.sees[a]]
                staged = 1 if who in self.sees[PHYSICS] else 0
                self.assertEqual(listed["count"], len(seen) + staged)

    def test_it_keeps_a_group_preview_out_of_the_public_previews(self) -> None:
        sha = revision_preview_key(self.examples[PHYSICS].current_revision)  # type: ignore[union-attr]
        self.assertFalse((settings.GALLERY_PREVIEW_DIR / f"{sha}.html").exists())
        self.assertTrue((settings.GALLERY_GROUP_PREVIEW_DIR / f"{sha}.html").exists())
        public_sha = revision_preview_key(self.examples["public"].current_revision)  # type: ignore[union-attr]
        self.assertTrue((settings.GALLERY_PREVIEW_DIR / f"{public_sha}.html").exists())
        # Whoever knows the hash: nothing through Django, nothing through the WSGI front.
        self.assertEqual(self.as_("physicist").get(f"/previews/{sha}.html").status_code, 404)
        started: list[str] = []
        app = PreviewFiles(lambda environ, start: start("418 Passed on", []) or [b""])
        app({"PATH_INFO": f"/previews/{sha}.html", "REQUEST_METHOD": "GET"},
            lambda status, headers: started.append(status))
        self.assertEqual(started, ["418 Passed on"])
        # Through the example, to members only; its page links there.
        url = reverse("group-preview", args=[self.examples[PHYSICS].slug, sha])
        self.assertContains(self.as_("physicist").get(
            reverse("example", args=[self.examples[PHYSICS].slug])), url)
        response = self.as_("physicist").get(url)
        self.assertEqual(response["Cache-Control"], "private, max-age=3600")
        self.assertIn("sandbox", response["Content-Security-Policy"])
        self.assertEqual(self.as_("chemist").get(url).status_code, 404)
        # Another example's address does not open it either.
        other = reverse("group-preview", args=[self.examples["public"].slug, sha])
        self.assertEqual(self.as_("chemist").get(other).status_code, 404)

    def test_it_links_a_group_preview_to_its_other_notebooks_through_the_example(self) -> None:
        import json

        from nbformat.v4 import new_markdown_cell, new_notebook

        part2 = json.dumps(new_notebook(cells=[new_markdown_cell("# Part two")])).encode()
        main = json.dumps(new_notebook(cells=[new_markdown_cell("[part two](part2.ipynb)")]))
        with self.captureOnCommitCallbacks(execute=True):
            submission = services.stage_submission(
                contributor=self.people["physicist"],
                staged=services.StagedFiles(notebook_name="nb.ipynb", notebook=main.encode(),
                                            files={"part2.ipynb": part2}),
                meta=services.ExampleMeta(title="Two parts", summary="About it.",
                                          tags=["demo"], groups=[PHYSICS]))
        revision, slug = submission.revision, submission.example.slug
        key2 = revision_preview_key(revision, notebook="part2.ipynb",
                                    notebook_sha256=notebooks.sha256(part2))
        url = reverse("group-preview", args=[slug, key2])
        page = (settings.GALLERY_GROUP_PREVIEW_DIR
                / f"{revision_preview_key(revision)}.html").read_text()
        self.assertIn(f'href="{url}"', page)
        self.assertContains(self.as_("physicist").get(url), "Part two")
        self.assertEqual(self.as_("chemist").get(url).status_code, 404)
        self.assertFalse((settings.GALLERY_PREVIEW_DIR / f"{key2}.html").exists())

    def test_it_refuses_a_group_the_contributor_is_not_in(self) -> None:
        with self.assertRaises(services.NotAllowed):
            stage_for(self.people["chemist"], "Sneaky", PHYSICS)
        response = self.as_("chemist").post(
            "/api/v1/submissions", content_type="application/json",
            data=json.dumps({"title": "Sneaky", "groups": [PHYSICS],
                             "notebook": notebook_bytes().decode()}))
        self.assertEqual(response.status_code, 403)
        self.assertFalse(Example.objects.filter(title="Sneaky").exists())
        response = self.as_("both").post(
            "/api/v1/submissions", content_type="application/json",
            data=json.dumps({"title": "Shared", "groups": [PHYSICS, CHEMISTRY],
                             "notebook": notebook_bytes().decode()}))
        self.assertEqual(response.status_code, 201)
        self.assertEqual(Example.objects.get(title="Shared").group_names(),
                         [CHEMISTRY, PHYSICS])

    def test_it_takes_the_groups_from_a_multipart_staging(self) -> None:
        from django.core.files.uploadedfile import SimpleUploadedFile

        notebook = SimpleUploadedFile("nb.ipynb", notebook_bytes())
        response = self.as_("both").post("/api/v1/submissions", {
            "notebook": notebook, "title": "From the stage button",
            "groups": f"{PHYSICS}, {CHEMISTRY}"})
        self.assertEqual(response.status_code, 201, response.content)
        self.assertEqual(Example.objects.get(title="From the stage button").group_names(),
                         [CHEMISTRY, PHYSICS])

    def test_it_tells_the_caller_which_groups_they_can_stage_for(self) -> None:
        for who, groups in [("nobody", []), ("physicist", [PHYSICS]), ("chemist", [CHEMISTRY]),
                            ("both", [CHEMISTRY, PHYSICS]),
                            ("physics-reviewer", [PHYSICS, "physics-reviewers"])]:
            with self.subTest(who=who):
                answer = self.as_(who).get("/api/v1/me")
                self.assertEqual(answer.status_code, 200)
                self.assertEqual(answer.json(), {"username": self.people[who].get_username(),
                                                 "groups": groups, "reviewer": False})
        self.assertTrue(self.as_("reviewer").get("/api/v1/me").json()["reviewer"])
        self.assertEqual(Client().get("/api/v1/me").status_code, 401)
        schema = Client().get("/api/v1/schema").json()
        self.assertIn("groups", json.dumps(schema["paths"]["/api/v1/me"]["get"]["responses"])
                      + json.dumps(schema["components"]["schemas"]["MeOut"]))
        # What it names is what staging takes.
        for name in self.as_("both").get("/api/v1/me").json()["groups"]:
            self.assertEqual(stage_for(self.people["both"], f"For {name}", name)
                             .example.group_names(), [name])

    def test_it_offers_the_contributors_own_groups_on_the_stage_page(self) -> None:
        page = self.as_("both").get("/stage/").content.decode()
        self.assertIn(f'value="{PHYSICS}"', page)
        self.assertIn(f'value="{CHEMISTRY}"', page)
        page = self.as_("chemist").get("/stage/").content.decode()
        self.assertNotIn(f'value="{PHYSICS}"', page)
        self.assertNotIn("Audience", self.as_("nobody").get("/stage/").content.decode())

    def test_it_tells_only_members_of_a_group_example(self) -> None:
        example = self.examples[PHYSICS]
        for who in ("physicist", "chemist"):
            Job.objects.create(kind=Job.Kind.USE, state=Job.State.DONE, user=self.people[who],
                               revision=example.current_revision)
        told = services.notify_users_of(example, kind=Notification.Kind.UPDATED, message="new")
        self.assertEqual(told, 0)  # the contributor is not told; the chemist never
        Job.objects.create(kind=Job.Kind.USE, state=Job.State.DONE, user=self.people["both"],
                           revision=example.current_revision)
        services.notify_users_of(example, kind=Notification.Kind.UPDATED, message="new")
        self.assertEqual(set(Notification.objects.filter(example=example, message="new")
                             .values_list("user__username", flat=True)), {"bea"})
        self.assertIsNone(services.notify(user=self.people["chemist"], example=example,
                                          kind=Notification.Kind.UPDATED, message="x"))

    def test_it_hides_the_news_of_a_group_once_its_member_leaves(self) -> None:
        services.notify(user=self.people["both"], example=self.examples[PHYSICS],
                        kind=Notification.Kind.UPDATED, message="Photon puzzle news")
        client = self.as_("both")
        self.assertContains(client.get("/notifications/"), "Photon puzzle news")
        self.assertEqual(caching.unread_count(self.people["both"]), 1)
        services.sync_hub_user(hub_model("bea", CHEMISTRY))
        self.assertNotContains(client.get("/notifications/"), "Photon puzzle news")
        self.assertEqual(caching.unread_count(self.people["both"]), 0)  # nor in the badge
        self.assertEqual(client.get(reverse("example",
                                            args=[self.examples[PHYSICS].slug])).status_code, 404)

    def test_it_names_no_group_example_in_the_metrics(self) -> None:
        from gallery import metrics

        text = metrics.exposition().decode()
        for audience in (PHYSICS, CHEMISTRY):
            self.assertNotIn(self.examples[audience].slug, text)
            self.assertNotIn(self.titles[audience], text)


class SignedPreviewLinkTests(GroupCast):
    """The API's detail gives a member a signed address of a group's example's preview that
    works without the gallery's session (the JupyterLab tab frames it), for minutes, for that
    example and notebook, while the member still sees it."""

    def signed(self, who: str = "physicist", audience: str = PHYSICS) -> str:
        detail = self.as_(who).get(f"/api/v1/examples/{self.examples[audience].slug}").json()
        return str(detail["preview_url"])

    def test_it_opens_the_preview_to_whoever_holds_a_members_link(self) -> None:
        example = self.examples[PHYSICS]
        sha = revision_preview_key(example.current_revision)  # type: ignore[arg-type]
        url = self.signed()
        self.assertTrue(url.startswith(reverse("group-preview", args=[example.slug, sha])
                                       + "?token="), url)
        response = Client().get(url)  # no session at all
        self.assertEqual(response.status_code, 200)
        self.assertIn(b"photon", b"".join(response.streaming_content))  # type: ignore[attr-defined]
        self.assertEqual(response["Cache-Control"], "private, no-store")
        self.assertEqual(response["Referrer-Policy"], "no-referrer")
        self.assertIn("sandbox", response["Content-Security-Policy"])
        # Each caller gets their own; the list (the same for everyone) and public examples
        # are never signed.
        self.assertNotEqual(self.signed("both").split("?")[1], url.split("?")[1])
        listed = {e["slug"]: e["preview_url"] for e in
                  self.as_("physicist").get("/api/v1/examples").json()["results"]}
        self.assertNotIn("?", listed[example.slug])
        self.assertNotIn("?", self.signed("physicist", "public"))
        self.assertTrue(self.signed("physicist", "public").startswith("/previews/"))
        # Without a link or a session: the login, as for every page.
        self.assertEqual(Client().get(url.split("?")[0]).status_code, 302)

    def test_it_refuses_a_link_once_it_expired(self) -> None:
        from gallery.previews.links import signed_preview_url

        example = self.examples[PHYSICS]
        sha = revision_preview_key(example.current_revision)  # type: ignore[arg-type]
        paul = self.people["physicist"]
        lifetime = settings.GALLERY_PREVIEW_LINK_SECONDS
        fresh = signed_preview_url(example, sha, paul, now=time.time() - lifetime + 60)
        stale = signed_preview_url(example, sha, paul, now=time.time() - lifetime - 1)
        self.assertEqual(Client().get(fresh).status_code, 200)
        self.assertEqual(Client().get(stale).status_code, 404)
        with override_settings(GALLERY_PREVIEW_LINK_SECONDS=0):  # expires as it is made
            self.assertEqual(Client().get(self.signed()).status_code, 404)

    def test_it_refuses_a_link_of_someone_the_hub_removed_from_the_group(self) -> None:
        url = self.signed()
        self.assertEqual(Client().get(url).status_code, 200)
        services.sync_hub_user(hub_model("paul", CHEMISTRY))
        self.assertEqual(Client().get(url).status_code, 404)
        services.sync_hub_user(hub_model("paul", PHYSICS))  # back in: the link works again
        self.assertEqual(Client().get(url).status_code, 200)
        paul = self.people["physicist"]
        paul.is_active = False
        paul.save()
        self.assertEqual(Client().get(url).status_code, 404)

    def test_it_opens_only_the_example_and_notebook_it_was_signed_for(self) -> None:
        url = self.signed("both", PHYSICS)
        path, _, query = url.partition("?")
        physics, chemistry = self.examples[PHYSICS], self.examples[CHEMISTRY]
        sha = revision_preview_key(physics.current_revision)  # type: ignore[arg-type]
        other_sha = revision_preview_key(chemistry.current_revision)  # type: ignore[arg-type]
        staged_sha = revision_preview_key(self.staged.revision)  # another notebook of physics'
        for wrong in [reverse("group-preview", args=[chemistry.slug, other_sha]),
                      reverse("group-preview", args=[chemistry.slug, sha]),
                      reverse("group-preview", args=[self.staged.example.slug, staged_sha]),
                      reverse("group-preview", args=[physics.slug, other_sha])]:
            with self.subTest(wrong=wrong):
                self.assertEqual(Client().get(f"{wrong}?{query}").status_code, 404)
        self.assertEqual(Client().get(url).status_code, 200)

    def test_it_answers_a_changed_link_as_nothing_there(self) -> None:
        url = self.signed()
        path, _, query = url.partition("?")
        nothing = Client().get(reverse("group-preview", args=["no-such-example", "0" * 64])
                               + "?" + query)
        self.assertEqual(nothing.status_code, 404)
        token = query.removeprefix("token=")
        for changed in [token[:-1] + ("A" if token[-1] != "A" else "B"), token[1:], "x",
                        token.replace(":", ":0", 1), ""]:
            with self.subTest(changed=changed):
                response = Client().get(path, {"token": changed})
                if not changed:  # no link at all: the login
                    self.assertEqual(response.status_code, 302)
                    continue
                self.assertEqual(response.status_code, 404)
                self.assertEqual(response.content, nothing.content)
        # A non-member's session does not help a changed link either.
        self.assertEqual(self.as_("chemist").get(path, {"token": token[:-2]}).status_code, 404)


class ProjectReviewerTests(GroupCast):
    def test_it_makes_a_project_reviewer_of_the_named_hub_group(self) -> None:
        peter = self.people["physics-reviewer"]
        self.assertTrue(peter.is_staff)
        self.assertFalse(services.is_reviewer(peter))
        self.assertEqual(list(peter.reviewed_groups.values_list("name", flat=True)), [PHYSICS])
        self.assertTrue(services.may_review(peter, self.examples[PHYSICS]))
        self.assertFalse(services.may_review(peter, self.examples[CHEMISTRY]))
        self.assertFalse(services.may_review(peter, self.examples["public"]))
        # Out of the reviewers' group: the desk closes.
        peter = services.sync_hub_user(hub_model("peter"))
        self.assertFalse(peter.is_staff)
        self.assertFalse(services.reviews_a_group(peter))

    def test_it_shows_a_project_reviewer_their_groups_queue_alone(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            chem = stage_for(self.people["chemist"], "Chem queue item", CHEMISTRY)
        with self.captureOnCommitCallbacks(execute=True):
            public = stage_for(self.contributor, "Public queue item")
        client = self.as_("physics-reviewer")
        desk = client.get("/admin/gallery/submission/").content.decode()
        self.assertIn("Staged spectrometer", desk)
        self.assertNotIn("Chem queue item", desk)
        self.assertNotIn("Public queue item", desk)
        for other in (chem, public):
            url = f"/admin/gallery/submission/{other.pk}/change/"
            self.assertIn(client.get(url).status_code, (302, 404))
            response = client.post(f"/admin/gallery/submission/{other.pk}/decide/",
                                   {"decision": "approve"})
            self.assertEqual(response.status_code, 404)
            self.assertEqual(client.get(f"/api/v1/submissions/{other.pk}").status_code, 404)
        examples = client.get("/admin/gallery/example/").content.decode()
        self.assertIn("Photon puzzle", examples)
        self.assertNotIn("Catalyst crumble", examples)
        # The centre's reviewer sees the whole queue.
        desk = self.as_("reviewer").get("/admin/gallery/submission/").content.decode()
        for title in ("Staged spectrometer", "Chem queue item", "Public queue item"):
            self.assertIn(title, desk)

    def test_it_lets_a_project_reviewer_decide_on_their_groups_submission(self) -> None:
        client = self.as_("physics-reviewer")
        response = client.post(f"/admin/gallery/submission/{self.staged.pk}/decide/",
                               {"decision": "approve", "comment": ""})
        self.assertEqual(response.status_code, 302)
        self.staged.refresh_from_db()
        self.assertEqual(self.staged.state, "approved")
        with self.captureOnCommitCallbacks(execute=True):
            chem = stage_for(self.people["chemist"], "Chem queue item", CHEMISTRY)
        with self.assertRaises(services.NotAllowed):
            services.approve_submission(submission=chem, reviewer=self.people["physics-reviewer"])


@shared_cache
class CachedPagesTests(GroupCast):
    """With the shared cache, a page rendered for one set of groups reaches only people with
    the same set."""

    def setUp(self) -> None:
        cache.clear()
        super().setUp()

    def test_it_never_serves_a_cached_page_across_groups(self) -> None:
        order = ["both", "physicist", "chemist", "nobody", "physics-reviewer", "reviewer",
                 "physicist", "nobody"]
        for who in order:
            client = self.as_(who)
            for _ in range(2):  # the second from the cache
                index = client.get("/", {"q": ""}).content.decode()
                listed = [e["title"] for e in client.get("/api/v1/examples").json()["results"]]
                for audience, title in self.titles.items():
                    ok = who in self.sees[audience]
                    self.assertEqual(title in index, ok, (who, title))
                    self.assertEqual(title in listed, ok, (who, title))

    def test_it_forgets_a_members_groups_when_the_hub_changes_them(self) -> None:
        client = self.as_("physicist")
        self.assertContains(client.get("/"), "Photon puzzle")
        services.sync_hub_user(hub_model("paul", CHEMISTRY))
        index = client.get("/").content.decode()
        self.assertNotIn("Photon puzzle", index)
        self.assertIn("Catalyst crumble", index)
        self.assertEqual(caching.audience(self.people["physicist"]),
                         (HubGroup.objects.get(name=CHEMISTRY).pk,))

    def test_it_counts_no_unread_news_of_a_group_its_member_left(self) -> None:
        services.notify(user=self.people["both"], example=self.examples[PHYSICS],
                        kind=Notification.Kind.UPDATED, message="Photon puzzle news")
        client = self.as_("both")
        badge = '1<span class="visually-hidden"> unread)'
        self.assertContains(client.get("/"), badge)
        self.assertContains(client.get("/"), badge)  # from the cache
        services.sync_hub_user(hub_model("bea", CHEMISTRY))
        self.assertNotContains(client.get("/"), badge)


@override_settings(**NO_HUB, **ACCESS)
class HubRecheckTests(HubRequests):
    """The hub is the truth: a member it removes from a group loses the group's examples at
    the next recheck of their session."""

    def setUp(self) -> None:
        self.groups = [PHYSICS]

        def answer(method: str, path: str, token: str) -> tuple[int, str, bytes]:
            return 200, "application/json", json.dumps(hub_model("paul", *self.groups)).encode()

        fake = self.enterContext(FakeHub(answer))
        self.enterContext(override_settings(JUPYTERHUB_API_URL=fake.api_url))
        paul = services.sync_hub_user(hub_model("paul", PHYSICS))
        with self.captureOnCommitCallbacks(execute=True):
            submission = stage_for(paul, "Photon puzzle", PHYSICS)
        with self.captureOnCommitCallbacks(execute=True):
            services.approve_submission(submission=submission, reviewer=self.reviewer)
        self.slug = submission.example.slug
        self.client.force_login(paul)
        session = self.client.session
        session[login.TOKEN], session[login.CHECKED] = "hub-token", time.time()
        session.save()

    def test_it_ends_access_within_the_recheck_interval(self) -> None:
        url = f"/examples/{self.slug}/"
        self.assertEqual(self.get(url).status_code, 200)
        self.groups = []  # the hub removes paul from physics
        self.assertEqual(self.get(url).status_code, 200)  # not rechecked yet
        session = self.client.session
        session[login.CHECKED] = time.time() - settings.GALLERY_HUB_RECHECK_SECONDS - 1
        session.save()
        self.assertEqual(self.get(url).status_code, 404)
        self.assertNotIn("Photon puzzle", self.get("/").content.decode())
        self.assertEqual(self.get(f"/api/v1/examples/{self.slug}").status_code, 404)

    def test_a_remembered_token_answer_never_brings_back_a_group_the_hub_took_away(self) -> None:
        # One web process asked the hub about paul's token while he was in physics, and
        # remembers the answer; then another process hears from the hub that he left.
        api = Client()
        header = {"HTTP_AUTHORIZATION": "token pauls-token"}
        url = f"/api/v1/examples/{self.slug}"
        self.assertEqual(api.get(url, **header).status_code, 200)  # asked, and remembered
        services.sync_hub_user(hub_model("paul"))  # the hub's newer word, seen elsewhere
        for _ in range(2):  # answered from the remembered model: still out
            self.assertEqual(api.get(url, **header).status_code, 404)
            self.assertEqual(api.post(f"{url}/use", "{}", content_type="application/json",
                                      **header).status_code, 404)
        self.assertFalse(HubGroup.objects.filter(name=PHYSICS, members__username="paul")
                         .exists())


class RebuildTests(GroupCast):
    def test_it_restores_an_examples_groups_from_the_repository(self) -> None:
        slugs = {a: e.slug for a, e in self.examples.items()}
        Example.objects.all().delete()
        HubGroup.objects.filter(name=CHEMISTRY).delete()
        with self.captureOnCommitCallbacks(execute=True):
            services.rebuild_index()
        for audience, slug in slugs.items():
            example = Example.objects.get(slug=slug)
            self.assertEqual(example.group_names(), [] if audience == "public" else [audience])
        self.assertFalse(Example.objects.get(slug=slugs[CHEMISTRY]).is_visible_to(
            self.people["physicist"]))
        # The group was gone with its memberships: the hub names its members again at login.
        self.assertFalse(Example.objects.get(slug=slugs[CHEMISTRY]).is_visible_to(
            self.people["chemist"]))
        services.sync_hub_user(hub_model("chloe", CHEMISTRY))
        self.assertTrue(Example.objects.get(slug=slugs[CHEMISTRY]).is_visible_to(
            self.people["chemist"]))


# --- every listing and search reaches exactly what a person's groups allow -----------------

GROUP_NAMES = ["g0", "g1", "g2"]
WORDS = ["alpha", "beta", "gamma"]


class ListingPropertyTests(HypothesisTestCase):
    """Random memberships and examples: the examples a person reaches through the gallery
    page, the list API (every page), search and tags are those their groups allow."""

    @given(
        memberships=st.lists(st.sets(st.sampled_from(GROUP_NAMES)), min_size=1, max_size=3),
        examples=st.lists(st.tuples(st.sets(st.sampled_from(GROUP_NAMES), max_size=2),
                                    st.sampled_from(["approved", "staged", "rejected"]),
                                    st.sampled_from(WORDS)), min_size=1, max_size=8),
    )
    @hypothesis_settings(max_examples=25, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])
    def test_it_reaches_exactly_what_the_groups_allow(
            self, memberships: list[set[str]], examples: list[tuple[set[str], str, str]]) -> None:
        cache.clear()
        owner = make_user("owner")
        groups = {n: HubGroup.objects.create(name=n) for n in GROUP_NAMES}
        made = []
        for i, (audience, state, word) in enumerate(examples):
            example = Example.objects.create(slug=f"ex-{i}", title=f"Example {i} {word}",
                                             summary=word, state=state, contributor=owner)
            example.groups.set([groups[n] for n in audience])
            example.tags.set([Tag.objects.get_or_create(name=word)[0]])
            Revision.objects.create(example=example, number=1, content_hash=f"{i:064x}",
                                    notebook_sha256=f"{i:064x}", notebook_name="nb.ipynb",
                                    git_commit="c" * 40 if state == "approved" else "")
            if state == "approved":
                example.current_revision = example.revisions.get()
                example.save()
            made.append((example.slug, audience, state, word))
        for n, member_of in enumerate(memberships):
            person = make_user(f"person-{n}")
            services.set_hub_groups(person, member_of=member_of, reviews=set())
            allowed = {slug for slug, audience, state, _ in made
                       if state != "rejected" and (not audience or audience & member_of)}
            client = Client()
            client.force_login(person)
            self.assertEqual(self.reached(client), allowed)
            for word in WORDS:
                self.assertEqual(self.reached(client, q=word),
                                 {s for s, _, _, w in made if w == word} & allowed)
                self.assertEqual(self.reached(client, tag=word),
                                 {s for s, _, _, w in made if w == word} & allowed)
            self.assertEqual(self.on_page(client), allowed)
            self.assertEqual({e.slug for e in Example.objects.visible_to(person)
                              .filter(state__in=Example.PUBLIC_STATES)}, allowed)
            approved_words = {w for s, _, st_, w in made if s in allowed and st_ == "approved"}
            self.assertEqual({t.name for t in Tag.objects.popular(audience_of(person))},
                             approved_words)

    @staticmethod
    def reached(client: Client, **query: str) -> set[str]:
        found, page = set(), 1
        while True:
            answer = client.get("/api/v1/examples", {**query, "page": page}).json()
            found |= {e["slug"] for e in answer["results"]}
            if page >= answer["pages"]:
                assert answer["count"] == len(found)
                return found
            page += 1

    @staticmethod
    def on_page(client: Client) -> set[str]:
        import re

        html = client.get("/").content.decode()
        return set(re.findall(r'href="/examples/(ex-\d+)/"', html))

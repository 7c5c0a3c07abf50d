"""Changing who sees an example after staging: who may, what moves with it (previews, the
repository), and that nobody but the centre's reviewers widens an example past its review."""

from __future__ import annotations

import json

import git
import pytest
from django.conf import settings
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase as HypothesisTestCase

from gallery import notebooks, services
from gallery.models import Example, Job, Preview, StateChange
from gallery.previews import revision_preview_key

from .test_caching import shared_cache
from .test_groups import CHEMISTRY, PHYSICS, GroupCast, stage_for

pytestmark = pytest.mark.postgres  # run again on PostgreSQL by `make test`


class AudienceTests(GroupCast):
    def put(self, who: str, example: Example, groups: list[str]) -> tuple[int, dict]:
        client = self.as_(who)
        response = client.put(f"/api/v1/examples/{example.slug}/groups",
                              json.dumps({"groups": groups}), content_type="application/json")
        return response.status_code, response.json()

    def repo_groups(self, example: Example) -> list[str]:
        head = git.Repo(settings.GALLERY_REPO_PATH).head.commit
        data = (head.tree / example.slug / notebooks.EXAMPLE_FILE).data_stream.read()
        return notebooks.read_example_toml(data).get("groups", [])

    def test_a_centre_reviewer_makes_a_group_example_public_and_the_repository_says_so(self
                                                                                     ) -> None:
        example = self.examples[PHYSICS]
        self.assertEqual(self.put("chemist", example, [])[0], 404)
        with self.captureOnCommitCallbacks(execute=True):
            status, body = self.put("reviewer", example, [])
        self.assertEqual((status, body["groups"]), (200, []))
        for who in self.people:
            self.assertEqual(self.as_(who).get(reverse("example", args=[example.slug]))
                             .status_code, 200, who)
        self.assertIn("Photon puzzle", self.as_("nobody").get("/").content.decode())
        self.assertEqual(self.repo_groups(example), [])
        change = StateChange.objects.get(example=example, subject="audience")
        self.assertEqual((change.from_state, change.to_state), ("groups", "public"))
        self.assertTrue(Job.objects.filter(
            kind=Job.Kind.PREVIEW, params__private=False,
            params__sha256=revision_preview_key(example.current_revision)).exists())  # type: ignore[arg-type]

    def test_a_public_example_made_private_leaves_no_public_preview_behind(self) -> None:
        example = self.examples["public"]
        revision = example.current_revision
        assert revision is not None
        key = revision_preview_key(revision)
        public = services.preview_path(key)
        public.parent.mkdir(parents=True, exist_ok=True)
        public.write_text("<p>preview</p>")
        other = self.examples[PHYSICS].current_revision  # another example's stays
        assert other is not None
        kept = services.preview_path(revision_preview_key(other))
        kept.write_text("<p>another</p>")
        Preview.objects.update_or_create(sha256=key, defaults={"state": Preview.State.READY})
        with self.captureOnCommitCallbacks(execute=True):
            status, body = self.put("reviewer", example, [CHEMISTRY])
        self.assertEqual((status, body["groups"]), (200, [CHEMISTRY]))
        self.assertFalse(public.exists())
        self.assertTrue(kept.exists())
        self.assertEqual(self.as_("physicist").get(reverse("example", args=[example.slug]))
                         .status_code, 404)
        self.assertEqual(self.as_("chemist").get(reverse("example", args=[example.slug]))
                         .status_code, 200)
        self.assertEqual(self.repo_groups(example), [CHEMISTRY])
        # Its private preview is rendered where members read it, and served to them alone.
        self.assertTrue(services.preview_path(key, private=True).exists())
        url = reverse("group-preview", args=[example.slug, key])
        self.assertEqual(self.as_("chemist").get(url).status_code, 200)
        self.assertEqual(self.as_("physicist").get(url).status_code, 404)

    def test_a_project_reviewer_changes_only_the_groups_they_review_and_never_to_public(self
                                                                                      ) -> None:
        example = self.examples[PHYSICS]
        self.assertEqual(self.put("physics-reviewer", example, [])[0], 403)
        self.assertEqual(self.put("physics-reviewer", example, [CHEMISTRY])[0], 403)
        self.assertEqual(self.put("physics-reviewer", example, [PHYSICS, CHEMISTRY])[0], 403)
        with self.captureOnCommitCallbacks(execute=True):
            self.assertEqual(self.put("reviewer", example, [PHYSICS, CHEMISTRY])[0], 200)
        # Both groups now: the physics reviewer may take physics away, leaving chemistry's.
        with self.captureOnCommitCallbacks(execute=True):
            status, body = self.put("physics-reviewer", example, [CHEMISTRY])
        self.assertEqual((status, body["groups"]), (200, [CHEMISTRY]))
        self.assertEqual(self.put("physics-reviewer", example, [PHYSICS])[0], 404)  # gone

    def test_a_contributor_only_narrows(self) -> None:
        example = self.examples[PHYSICS]
        with self.captureOnCommitCallbacks(execute=True):
            self.put("reviewer", example, [PHYSICS, CHEMISTRY])
        self.assertEqual(self.put("physicist", example, [])[0], 403)
        self.assertEqual(self.put("physicist", example, [PHYSICS, CHEMISTRY, "g9"])[0], 403)
        with self.captureOnCommitCallbacks(execute=True):
            self.assertEqual(self.put("physicist", example, [PHYSICS])[0], 200)
        self.assertEqual(self.put("physicist", example, [PHYSICS, CHEMISTRY])[0], 403)
        # A public example's contributor may keep it to groups they belong to, no others.
        mine = stage_for(self.people["both"], "Bea's bench")
        with self.captureOnCommitCallbacks(execute=True):
            services.approve_submission(submission=mine, reviewer=self.reviewer)
        public = Example.objects.get(pk=mine.example_id)
        self.assertEqual(self.put("both", public, ["g9"])[0], 403)
        with self.captureOnCommitCallbacks(execute=True):
            self.assertEqual(self.put("both", public, [CHEMISTRY])[0], 200)

    def test_others_get_a_403_when_they_see_it_and_a_404_when_they_do_not(self) -> None:
        self.assertEqual(self.put("chemist", self.examples["public"], [CHEMISTRY])[0], 403)
        self.assertEqual(self.put("chemist", self.examples[PHYSICS], [CHEMISTRY])[0], 404)
        self.assertEqual(self.put("nobody", self.examples[CHEMISTRY], [])[0], 404)
        response = Client().put(f"/api/v1/examples/{self.examples['public'].slug}/groups",
                                json.dumps({"groups": []}), content_type="application/json")
        self.assertIn(response.status_code, (401, 403))
        self.assertEqual(self.put("reviewer", self.examples["public"], ["a b"])[0], 400)
        self.assertEqual(self.examples["public"].group_names(), [])

    def test_the_page_offers_the_change_to_those_who_may(self) -> None:
        example = self.examples[PHYSICS]
        url = reverse("example", args=[example.slug])
        self.assertContains(self.as_("reviewer").get(url), 'id="audience-form"')
        self.assertContains(self.as_("physics-reviewer").get(url), 'id="audience-form"')
        self.assertNotContains(self.as_("physicist").get(url), 'id="audience-form"')  # one group
        self.assertContains(self.as_("both").get(url), "Members of the hub group physics")
        self.assertNotContains(self.as_("both").get(url), 'id="audience-form"')
        forbidden = self.as_("both").post(reverse("audience", args=[example.slug]),
                                          {"groups": [PHYSICS, CHEMISTRY]})
        self.assertEqual(forbidden.status_code, 403)
        with self.captureOnCommitCallbacks(execute=True):
            done = self.as_("reviewer").post(reverse("audience", args=[example.slug]),
                                             {"groups": [PHYSICS, CHEMISTRY]})
        self.assertEqual(done.status_code, 302)
        self.assertEqual(Example.objects.get(pk=example.pk).group_names(), [CHEMISTRY, PHYSICS])
        self.assertEqual(self.as_("chemist").get(url).status_code, 200)
        self.assertEqual(self.as_("nobody").post(reverse("audience", args=[example.slug]),
                                                 {"groups": []}).status_code, 404)

    def test_a_rebuilt_index_keeps_the_changed_groups(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            self.put("reviewer", self.examples[PHYSICS], [])
            self.put("reviewer", self.examples["public"], [CHEMISTRY])
        slugs = {a: e.slug for a, e in self.examples.items()}
        Example.objects.all().delete()
        with self.captureOnCommitCallbacks(execute=True):
            services.rebuild_index()
        self.assertEqual(Example.objects.get(slug=slugs[PHYSICS]).group_names(), [])
        self.assertEqual(Example.objects.get(slug=slugs["public"]).group_names(), [CHEMISTRY])
        self.assertEqual(Example.objects.get(slug=slugs[CHEMISTRY]).group_names(), [CHEMISTRY])

    def test_a_version_approved_after_a_change_does_not_bring_the_old_groups_back(self) -> None:
        example = self.examples[PHYSICS]
        with self.captureOnCommitCallbacks(execute=True):
            revision = services.stage_submission(
                contributor=self.people["physicist"], example_slug=example.slug,
                staged=services.StagedFiles(notebook_name="nb.ipynb",
                                            notebook=notebooks_bytes("v2")),
                meta=services.ExampleMeta(title="Photon puzzle", summary="v2", tags=["demo"]))
        with self.captureOnCommitCallbacks(execute=True):
            self.put("reviewer", example, [PHYSICS, CHEMISTRY])
        with self.captureOnCommitCallbacks(execute=True):
            services.approve_submission(submission=revision, reviewer=self.reviewer)
        self.assertEqual(self.repo_groups(example), [CHEMISTRY, PHYSICS])
        Example.objects.all().delete()
        with self.captureOnCommitCallbacks(execute=True):
            services.rebuild_index()
        self.assertEqual(Example.objects.get(slug=example.slug).group_names(),
                         [CHEMISTRY, PHYSICS])


def notebooks_bytes(text: str) -> bytes:
    from .base import notebook_bytes

    return notebook_bytes(text=f"print({text!r})")


class AudienceFuzzTests(HypothesisTestCase, GroupCast):
    """Whatever anyone asks, no answer is a 5xx and nobody but the centre's reviewers makes
    an example reach people outside the groups it was reviewed for."""

    @hypothesis_settings(max_examples=40, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.function_scoped_fixture])
    @given(who=st.sampled_from(["nobody", "physicist", "chemist", "both", "physics-reviewer"]),
           audience=st.sampled_from(["public", PHYSICS, CHEMISTRY]),
           groups=st.lists(st.one_of(st.sampled_from([PHYSICS, CHEMISTRY, "g9", ""]),
                                     st.text(max_size=30)), max_size=4))
    def test_nobody_widens_what_was_reviewed(self, who: str, audience: str,
                                             groups: list[str]) -> None:
        example = Example.objects.get(pk=self.examples[audience].pk)
        before = set(example.group_names())
        reviewed = before | set(self.people[who].reviewed_groups.values_list("name", flat=True))
        client = self.as_(who)
        response = client.put(f"/api/v1/examples/{example.slug}/groups",
                              json.dumps({"groups": groups}), content_type="application/json")
        self.assertIn(response.status_code, (200, 400, 403, 404))
        after = set(Example.objects.get(pk=example.pk).group_names())
        if response.status_code != 200:
            self.assertEqual(after, before)
        elif before:
            self.assertTrue(after, "a group example became public")
            self.assertLessEqual(after, reviewed)
        else:  # a public example's contributor kept it to their own groups
            self.assertLessEqual(after, set(self.people[who].hub_groups.values_list(
                "name", flat=True)))



@shared_cache
class AudienceCacheTests(GroupCast):
    def setUp(self) -> None:
        cache.clear()
        super().setUp()

    def test_no_cached_page_shows_an_example_to_its_old_audience(self) -> None:
        example = self.examples["public"]
        for _ in range(2):  # the second from the cache
            self.assertIn("Open otter", self.as_("nobody").get("/").content.decode())
            self.assertIn("Open otter", [e["title"] for e in self.as_("nobody").get(
                "/api/v1/examples").json()["results"]])
        client = self.as_("reviewer")
        with self.captureOnCommitCallbacks(execute=True):
            self.assertEqual(client.put(f"/api/v1/examples/{example.slug}/groups",
                                        json.dumps({"groups": [PHYSICS]}),
                                        content_type="application/json").status_code, 200)
        self.assertNotIn("Open otter", self.as_("nobody").get("/").content.decode())
        self.assertNotIn("Open otter", [e["title"] for e in self.as_("nobody").get(
            "/api/v1/examples").json()["results"]])
        self.assertIn("Open otter", self.as_("physicist").get("/").content.decode())

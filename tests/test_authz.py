"""Who may do what: the visibility of examples through the API, and the authorisation matrix
of every URL of the gallery."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.contenttypes.models import ContentType
from django.core.cache import cache
from django.db import transaction
from django.http import HttpResponse
from django.test import Client, override_settings
from django.urls import URLResolver, get_resolver

from gallery import previews, services
from gallery.api import api as ninja_api
from gallery.models import Example, Job, Revision, Run, Submission
from gallery.previews import revision_preview_key

from .base import GalleryTestCase, make_user, notebook_bytes, stage
from .test_hub import FakeHub

pytestmark = pytest.mark.postgres  # run again on PostgreSQL by `make test`


class ApiVisibilityTests(GalleryTestCase):
    """The API finds an example only for those who may see it, as the pages do."""

    def setUp(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            self.refused = stage(self.contributor, title="Refused walrus")
        services.reject_submission(submission=self.refused, reviewer=self.reviewer,
                                   comment="Walrus is out of scope.")
        self.slug = self.refused.example.slug
        self.client.force_login(self.user)

    def test_it_answers_404_for_a_rejected_example_in_every_call(self) -> None:
        for method, path in (("get", ""), ("get", "/use-plan"), ("post", "/use")):
            response = getattr(self.client, method)(f"/api/v1/examples/{self.slug}{path}",
                                                    content_type="application/json")
            self.assertEqual(response.status_code, 404, path)
            self.assertEqual(response.json(), {"error": "There is no such example."}, path)
        self.assertFalse(Job.objects.filter(kind=Job.Kind.USE).exists())

    def test_it_refuses_a_revision_of_an_example_the_caller_does_not_see_as_absent(self) -> None:
        response = self.client.post("/api/v1/submissions", content_type="application/json",
                                    data=json.dumps({"title": "Mine now", "example": self.slug,
                                                     "notebook": notebook_bytes().decode()}))
        self.assertEqual(response.status_code, 404)
        self.assertNotIn("connor", response.content.decode())  # nor who owns it

    def test_it_still_answers_the_contributor(self) -> None:
        self.client.force_login(self.contributor)
        response = self.client.get(f"/api/v1/examples/{self.slug}")
        self.assertEqual(response.json()["state"], "rejected")
        self.assertEqual(self.client.get(f"/api/v1/examples/{self.slug}/use-plan").status_code,
                         409)


# --- the matrix ---------------------------------------------------------------------------
#
# The cast: `user` holds copies of the approved and the retired example (and owns the jobs
# that made them), `contributor` contributed every example, `other` is anyone else logged in,
# `reviewer` reviews. The examples: `approved` (with a later revision the reviewer refused),
# `staged` (its first revision was returned with changes requested, then withdrawn by a
# second one, still in review), `rejected`, `retired`, and a `missing` one.

ACTORS = ("anonymous", "user", "contributor", "other", "reviewer")
LOGGED_IN = frozenset(ACTORS[1:])
SEES_EXAMPLE: dict[str, Collection[str]] = {
    "approved": LOGGED_IN, "staged": LOGGED_IN, "rejected": {"contributor", "reviewer"},
    "retired": {"user", "contributor", "reviewer"}, "missing": ()}
SEES_SUBMISSION = {"contributor", "reviewer"}  # theirs, and the reviewers': with the reviews
# A reviewer sees everyone's jobs but the acceptance of a copy someone sent.
SEES_JOB = {"approved": {"user", "reviewer"}, "retired": {"user", "reviewer"},
            "accepted": {"user"}}
# A copy `contributor` sent `user`: the send is the sender's, the offer the recipient's.
SENDS = {"sent": {"contributor"}}
OFFERS = {"offer": {"user"}}
REVISES = {"contributor", "reviewer"}
NOT_5XX = range(200, 500)


@dataclass(frozen=True)
class Case:
    actor: str
    target: str  # the example, submission, job or preview the request is about ("" for none)


Expected = int | Collection[int]
Rule = Callable[[Case], Expected]


def always(status: Expected) -> Rule:
    return lambda case: status


def page(rule: Rule) -> Rule:
    """Pages send strangers to the login; the rule says what the others get."""
    return lambda case: 302 if case.actor == "anonymous" else rule(case)


def api(rule: Rule) -> Rule:
    """The API answers strangers 401; the rule says what the others get."""
    return lambda case: 401 if case.actor == "anonymous" else rule(case)


def seen(sees: dict[str, Collection[str]] | Collection[str],
         ok: Expected | Callable[[str], Expected]) -> Rule:
    """`ok` for those who may see the target (by the target, or the same for all), else 404."""
    def rule(case: Case) -> Expected:
        who = sees.get(case.target, ()) if isinstance(sees, dict) else (
            () if case.target == "missing" else sees)
        if case.actor not in who:
            return 404
        return ok(case.target) if callable(ok) else ok
    return rule


def revising(ok: Expected | Callable[[str], Expected]) -> Rule:
    """Staging: a new example for anyone; a new revision of an example for its contributor
    and the reviewers, 403 for others who see it, 404 for those who do not."""
    def rule(case: Case) -> Expected:
        if case.target and case.actor not in SEES_EXAMPLE[case.target]:
            return 404
        if case.target and case.actor not in REVISES:
            return 403
        return ok(case.target) if callable(ok) else ok
    return rule


def audience(ok: Expected) -> Rule:
    """Who sees an example: its reviewers change it (here: a public example made one of a
    group nobody of the cast is in), 403 for others who see it, 404 for those who do not."""
    def rule(case: Case) -> Expected:
        if case.actor not in SEES_EXAMPLE[case.target]:
            return 404
        return ok if case.actor == "reviewer" else 403
    return rule


def use(target: str) -> int:
    return 202 if target == "approved" else 409  # only an approved version can be used


def plan(target: str) -> int:
    return 200 if target == "approved" else 409


def revision(target: str) -> int:
    return 409 if target == "retired" else 201  # a retired example must be restored first


@dataclass(frozen=True)
class Entry:
    """The rules of one URL, a rule per method, and what a request sends."""

    GET: Rule
    POST: Rule
    PUT: Rule | None = None  # the API's changes; None: no such method
    data: dict[str, Any] = field(default_factory=dict)
    json: bool = False  # the API: JSON bodies; every 4xx but 405 is JSON {"error": ...}
    revises: bool = False  # about an example named in ?example= (the body for the API)


MATRIX: dict[str, Entry] = {
    "": Entry(GET=page(always(200)), POST=page(always(405))),
    "examples/<slug:slug>/": Entry(GET=page(seen(SEES_EXAMPLE, 200)), POST=page(always(405))),
    # Use: on to the job, or back to the example saying why not.
    "examples/<slug:slug>/use": Entry(GET=page(always(405)), POST=page(seen(SEES_EXAMPLE, 302)),
                                      data={"folder": ""}),
    # Update my copy: the plan or the update queued (the caller's own home only), or back.
    "examples/<slug:slug>/update": Entry(GET=page(always(405)),
                                         POST=page(seen(SEES_EXAMPLE, 302)),
                                         data={"folder": "demo"}),
    # Run again: its contributor and the reviewers; others who see it are refused.
    "examples/<slug:slug>/run": Entry(GET=page(always(405)), POST=page(revising(302))),
    "examples/<slug:slug>/audience": Entry(GET=page(always(405)), POST=page(audience(302)),
                                           data={"groups": ["physics"]}),
    "jobs/<uuid:job_id>/": Entry(GET=page(seen(SEES_JOB, 200)), POST=page(always(405))),
    # The form sent empty is refused (400) once the example it revises is allowed.
    "stage/": Entry(GET=page(revising(200)), POST=page(revising(400)), revises=True),
    "submissions/": Entry(GET=page(always(200)), POST=page(always(405))),
    "notifications/": Entry(GET=page(always(200)), POST=page(always(302))),
    # Send a copy: the pages of one's own copies for everyone; a send for its sender and an
    # offer for its recipient, the 404 of nothing for anyone else.
    "copies/": Entry(GET=page(always(200)), POST=page(always(405))),
    "copies/send/": Entry(GET=page(always(200)), POST=page(always(400))),  # sent empty
    "copies/sent/": Entry(GET=page(always(200)), POST=page(always(405))),
    "copies/sent/<uuid:sent_id>/withdraw": Entry(GET=page(always(405)),
                                                 POST=page(seen(SENDS, 302))),
    "copies/settings": Entry(GET=page(always(405)), POST=page(always(302)),
                             data={"refuse_all": "0"}),
    "copies/<uuid:delivery_id>/": Entry(GET=page(seen(OFFERS, 200)), POST=page(always(405))),
    "copies/<uuid:delivery_id>/accept": Entry(GET=page(always(405)),
                                              POST=page(seen(OFFERS, 302)),
                                              data={"folder": ""}),
    "copies/<uuid:delivery_id>/decline": Entry(GET=page(always(405)),
                                               POST=page(seen(OFFERS, 302))),
    "submissions/<int:pk>/": Entry(GET=page(seen(SEES_SUBMISSION, 200)),
                                   POST=page(always(405))),
    "submissions/<int:pk>/review": Entry(
        GET=page(always(405)), POST=page(lambda case: 403 if case.actor != "reviewer"
                                         else 404 if case.target == "missing" else 302),
        data={"decision": "approve"}),
    # Previews are immutable files named by the sha256 of the notebook: whoever knows the
    # hash has the notebook, or a page that shows it. WSGI serves them ahead of Django
    # (views.PreviewFiles), without a login, by design.
    r"^previews/(?P<sha256>[0-9a-f]{64})\.html$": Entry(
        GET=lambda case: 404 if case.target == "missing" else 200, POST=always(405)),
    r"^previews/(?P<name>preview-[0-9a-f]{12}\.css)$": Entry(
        GET=lambda case: 404 if case.target == "missing" else 200, POST=always(405)),
    # A group's example's preview: through the example, to those who see it (any example's
    # notebook answers; only a group's example's page links here). Its stylesheet is the
    # shared one. Not only a page: a signed address opens it without a session
    # (tests/test_groups.py), so a POST is refused as such before any login.
    r"^examples/(?P<slug>[-a-zA-Z0-9_]+)/previews/(?P<sha256>[0-9a-f]{64})\.html$": Entry(
        GET=page(seen(SEES_EXAMPLE, 200)), POST=always(405)),
    r"^examples/[-a-zA-Z0-9_]+/previews/(?P<name>preview-[0-9a-f]{12}\.css)$": Entry(
        GET=lambda case: 404 if case.target == "missing" else 200, POST=always(405)),
    "health": Entry(GET=always(200), POST=always(405)),
    "health/detail": Entry(GET=lambda case: 200 if case.actor == "reviewer" else 403,
                           POST=always(405)),
    "metrics": Entry(GET=always(403), POST=always(405)),  # for the operators' token only
    # The API described, no data (django-ninja's own views answer any method alike).
    "api/v1/schema": Entry(GET=always(200), POST=always(200)),
    "api/v1/docs": Entry(GET=always(200), POST=always(200)),
    "api/v1/": Entry(GET=always(404), POST=always(404)),  # django-ninja's root: nothing there
    "api/v1/me": Entry(GET=api(always(200)), POST=always(405), json=True),
    "api/v1/examples": Entry(GET=api(always(200)), POST=always(405), json=True),
    "api/v1/examples/<slug>": Entry(GET=api(seen(SEES_EXAMPLE, 200)), POST=always(405),
                                    json=True),
    "api/v1/examples/<slug>/use": Entry(GET=always(405), POST=api(seen(SEES_EXAMPLE, use)),
                                        json=True),
    "api/v1/examples/<slug>/use-plan": Entry(GET=api(seen(SEES_EXAMPLE, plan)),
                                             POST=always(405), json=True),
    # Always about the caller's own copies: nothing of another's home to ask for.
    "api/v1/examples/<slug>/groups": Entry(GET=always(405), POST=always(405),
                                           PUT=api(audience(200)), json=True,
                                           data={"groups": ["physics"]}),
    "api/v1/examples/<slug>/copies": Entry(GET=api(seen(SEES_EXAMPLE, 200)), POST=always(405),
                                           json=True),
    "api/v1/examples/<slug>/update-plan": Entry(GET=api(seen(SEES_EXAMPLE, use)),
                                                POST=always(405), json=True,
                                                data={"folder": "demo"}),
    "api/v1/examples/<slug>/update": Entry(GET=always(405), POST=api(seen(SEES_EXAMPLE, use)),
                                           json=True, data={"folder": "demo"}),
    "api/v1/jobs/<job_id>": Entry(GET=api(seen(SEES_JOB, 200)), POST=always(405), json=True),
    # Send a copy (an empty body is refused); one's own sends and offers; the setting.
    "api/v1/copies": Entry(GET=always(405), POST=api(always(400)), json=True),
    "api/v1/copies/sent": Entry(GET=api(always(200)), POST=always(405), json=True),
    "api/v1/copies/sent/<sent_id>": Entry(GET=api(seen(SENDS, 200)), POST=always(405),
                                          json=True),
    "api/v1/copies/sent/<sent_id>/withdraw": Entry(GET=always(405), POST=api(seen(SENDS, 200)),
                                                   json=True),
    "api/v1/copies/received": Entry(GET=api(always(200)), POST=always(405), json=True),
    "api/v1/copies/received/<delivery_id>": Entry(GET=api(seen(OFFERS, 200)),
                                                  POST=always(405), json=True),
    "api/v1/copies/received/<delivery_id>/plan": Entry(GET=api(seen(OFFERS, 200)),
                                                       POST=always(405), json=True),
    "api/v1/copies/received/<delivery_id>/accept": Entry(GET=always(405),
                                                         POST=api(seen(OFFERS, 202)),
                                                         json=True),
    "api/v1/copies/received/<delivery_id>/decline": Entry(GET=always(405),
                                                          POST=api(seen(OFFERS, 200)),
                                                          json=True),
    "api/v1/copies/settings": Entry(GET=api(always(200)), POST=api(always(200)), json=True,
                                    data={"refuse_all": True}),
    # GET: the caller's own submissions. POST: staging (an empty body is refused with 400).
    "api/v1/submissions": Entry(
        GET=api(always(200)),
        POST=api(lambda case: revising(revision)(case) if case.target else 400),
        json=True, revises=True),
    "api/v1/submissions/<submission_id>": Entry(GET=api(seen(SEES_SUBMISSION, 200)),
                                                POST=always(405), json=True),
    "accounts/login/": Entry(GET=always(200), POST=always(200),  # the form, with its error
                             data={"username": "nobody", "password": "wrong"}),
    "accounts/logout/": Entry(GET=always(405), POST=always(302)),
    "login/": Entry(GET=always(302), POST=always(405)),  # on to Django's login: no hub here
    "oauth_callback": Entry(GET=always(404), POST=always(405)),
    "logout/": Entry(GET=always(405), POST=always(302)),
    # The desk's login: the form for strangers, the desk for reviewers, 403 for the rest.
    "admin/login/": Entry(GET=lambda case: {"anonymous": 200, "reviewer": 302}.get(case.actor, 403),
                          POST=lambda case: 403 if case.actor in ACTORS[1:4] else 200),
}
# Every other URL of the desk (the admin, all enumerated): strangers are sent to its login,
# people who do not review get 403, reviewers get their desk (whatever the page, never 5xx).
ADMIN = "admin/"
ADMIN_ENTRY = Entry(GET=lambda case: {"anonymous": 302, "reviewer": NOT_5XX}.get(case.actor, 403),
                    POST=lambda case: {"anonymous": 302, "reviewer": NOT_5XX}.get(case.actor, 403))
# Routes written as regular expressions, as a request path to fill in.
REGEX_PATHS = {
    r"^previews/(?P<sha256>[0-9a-f]{64})\.html$": "previews/{sha256}.html",
    r"^previews/(?P<name>preview-[0-9a-f]{12}\.css)$": "previews/{name}",
    r"^examples/(?P<slug>[-a-zA-Z0-9_]+)/previews/(?P<sha256>[0-9a-f]{64})\.html$":
        "examples/{slug}/previews/{sha256}.html",
    r"^examples/[-a-zA-Z0-9_]+/previews/(?P<name>preview-[0-9a-f]{12}\.css)$":
        "examples/any/previews/{name}",
    r"admin/^(?P<app_label>auth|gallery)/$": "admin/{app_label}/",
    r"admin/(?P<url>.*)$": "admin/{url}",
}
# Strangers sent elsewhere than a login: after a logout, and to the desk's index (thence the
# login) from its logout.
NOT_TO_LOGIN = {"logout/", "accounts/logout/", "admin/logout/"}


def url_routes() -> list[str]:
    """Every route of the gallery as Django resolves it: its pages, the API, the desk."""
    def walk(patterns: list[Any], prefix: str) -> Iterator[str]:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
            else:
                yield prefix + str(pattern.pattern)
    return list(dict.fromkeys(walk(get_resolver().url_patterns, "")))


def api_operations() -> dict[str, set[str]]:
    """The API's routes and their methods, as django-ninja declares them."""
    paths = ninja_api.get_openapi_schema()["paths"]
    return {re.sub(r"\{(\w+)\}", r"<\1>", path.lstrip("/")): {m.upper() for m in methods}
            for path, methods in paths.items()}


def arguments(route: str) -> list[str]:
    return [a or b for a, b in re.findall(r"<(?:\w+:)?(\w+)>|\(\?P<(\w+)>", route)]


def request_path(route: str, args: dict[str, str]) -> str:
    template = REGEX_PATHS.get(route)
    if template is None:
        assert "(?P<" not in route, f"give /{route} a request path in REGEX_PATHS"
        template = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
    return "/" + template.format(**args)


def body_text(response: HttpResponse) -> str:
    content = (b"".join(response.streaming_content) if response.streaming
               else response.content)
    return content.decode("utf-8", "replace")


# A wrong password at the login costs a full hash each time; that is not what is tested here.
@override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"])
class AuthorisationMatrixTests(GalleryTestCase):
    """Every URL and method, as everyone, about examples in every state: the status the
    rules give, and nothing of what the person may not see in any answer."""

    @pytest.fixture(autouse=True)
    def _record(self, authz_cases: Counter[tuple[str, str]]) -> None:
        self.recorded = authz_cases

    def setUp(self) -> None:
        self.people = {"user": self.user, "contributor": self.contributor,
                       "other": make_user("olga"), "reviewer": self.reviewer}

    def stage(self, title: str, *, slug: str = "", example: str = "", text: str,
              env: bytes = b"numpy\n", link: str = "") -> Submission:
        with self.captureOnCommitCallbacks(execute=True):
            return services.stage_submission(
                contributor=self.contributor, example_slug=example,
                staged=services.StagedFiles(notebook_name="nb.ipynb",
                                            notebook=notebook_bytes(text=text),
                                            environment=("requirements.txt", env)),
                meta=services.ExampleMeta(title=title, slug=slug, summary="About it.",
                                          data_links=[{"name": "data", "target": link}]
                                          if link else []))

    def decide(self, decision: Callable[..., Any], submission: Submission, comment: str) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            decision(submission=submission, reviewer=self.reviewer, comment=comment)

    def build_world(self) -> None:
        """The examples, submissions, jobs and previews of the cast; what each may not see."""
        sub = {"approved": self.stage("Approved aurora", slug="approved-aurora",
                                      text="print('aurora')")}
        self.decide(services.approve_submission, sub["approved"], "")
        sub["refused-revision"] = self.stage("Quokka second try", example="approved-aurora",
                                             text="print('quokka')",
                                             link="https://example.org/quokka-data")
        self.decide(services.reject_submission, sub["refused-revision"],
                    "The quokka cell leaks a password.")
        sub["withdrawn"] = self.stage("Walrus first draft", slug="staged-sloth",
                                      text="print('walrus')")
        self.decide(services.request_changes, sub["withdrawn"], "Walrus needs a summary.")
        sub["staged"] = self.stage("Staged sloth", example="staged-sloth", text="print('sloth')")
        sub["rejected"] = self.stage("Rejected raccoon", slug="rejected-raccoon",
                                     text="print('raccoon')", env=b"raccoon-only-package==1\n",
                                     link="https://example.org/raccoon-data")
        self.decide(services.reject_submission, sub["rejected"], "Raccoons are out of scope.")
        sub["retired"] = self.stage("Retired tapir", slug="retired-tapir", text="print('tapir')")
        self.decide(services.approve_submission, sub["retired"], "")
        jobs = {name: Job.objects.create(
            kind=Job.Kind.USE, state=Job.State.DONE, user=self.user,
            revision=Revision.objects.get(pk=sub[name].revision_id),
            result={"path": f"~/examples/{name}"}) for name in ("approved", "retired")}
        sent = services.send_copy(
            sender=self.contributor, to=[self.user.get_username()], name="parcel-notebook",
            message="A private parcel message",
            staged=services.StagedFiles(notebook_name="parcel.ipynb",
                                        notebook=notebook_bytes(text="print('parcel')")))
        offer = sent.deliveries.get()
        jobs["accepted"] = Job.objects.create(
            kind=Job.Kind.ACCEPT, state=Job.State.DONE, user=self.user,
            params={"username": self.user.get_username(), "folder": "parcel-notebook",
                    "delivery": str(offer.pk)},
            result={"path": "~/examples/parcel-notebook", "name": "parcel-notebook",
                    "sent_by": self.contributor.get_username()})
        rejected = Example.objects.get(slug="rejected-raccoon")
        services.retire_example(example=Example.objects.get(slug="retired-tapir"),
                                actor=self.reviewer, reason="Tapirs moved to another gallery.")
        for submission in sub.values():
            submission.refresh_from_db()
        self.assertEqual(rejected.state, Example.State.REJECTED)
        self.assertEqual(sub["withdrawn"].state, Submission.State.WITHDRAWN)
        sha = {name: revision_preview_key(s.revision) for name, s in sub.items()}
        self.args: dict[str, dict[str, str]] = {
            "slug": {"approved": "approved-aurora", "staged": "staged-sloth",
                     "rejected": "rejected-raccoon", "retired": "retired-tapir",
                     "missing": "no-such-example"},
            "pk": {**{n: str(s.pk) for n, s in sub.items()}, "missing": "99999"},
            "job_id": {**{n: str(j.pk) for n, j in jobs.items()}, "missing": str(uuid.uuid4())},
            "sha256": {**sha, "missing": "0" * 64},
            "name": {"approved": previews.preview_css_name(),
                     "missing": f"preview-{'0' * 12}.css"},
        }
        self.args["submission_id"] = self.args["pk"]
        self.args["sent_id"] = {"sent": str(sent.pk), "missing": str(uuid.uuid4())}
        self.args["delivery_id"] = {"offer": str(offer.pk), "missing": str(uuid.uuid4())}
        # The desk's pages are about the rejected example, its submission, its history...
        self.admin_args = {
            "example": str(rejected.pk), "submission": str(sub["rejected"].pk),
            "job": str(jobs["retired"].pk), "user": str(self.contributor.pk), "group": "1",
            "hubgroup": "1",
            "pk": str(sub["rejected"].pk),
            "statechange": str(rejected.history.last().pk),  # type: ignore[union-attr]
            "notification": str(self.contributor.notifications.first().pk),  # type: ignore[union-attr]
            "run": str(Run.objects.create(revision=rejected.latest_revision,
                                          kind=Run.Kind.STAGING, state=Run.State.FAILED).pk),
            "content_type_id": str(ContentType.objects.get_for_model(Example).pk),
            "app_label": "gallery", "url": "no-such-page/"}
        # What must not show, and who may see it.
        self.secrets: list[tuple[set[str], Collection[str]]] = [
            ({"rejected-raccoon", "Rejected raccoon", "Raccoons are out of scope",
              "raccoon-only-package", "https://example.org/raccoon-data", sha["rejected"]},
             SEES_EXAMPLE["rejected"]),
            ({"retired-tapir", "Retired tapir", "Tapirs moved to another gallery",
              sha["retired"]}, SEES_EXAMPLE["retired"]),
            ({"Quokka second try", "The quokka cell leaks a password",
              "https://example.org/quokka-data", sha["refused-revision"]}, SEES_SUBMISSION),
            ({"Walrus first draft", "Walrus needs a summary", sha["withdrawn"]},
             SEES_SUBMISSION),
            ({"approved-aurora", "Approved aurora", "staged-sloth", "Staged sloth"}, LOGGED_IN),
            ({"parcel-notebook", "A private parcel message"}, {"user", "contributor"}),
        ]

    def targets(self, route: str, entry: Entry) -> dict[str, dict[str, str]]:
        """What a route is asked about: each target with the path arguments naming it."""
        names = arguments(route)
        if route.startswith(ADMIN) and route not in MATRIX:
            parts = route.split("/")  # admin/<app>/<model>/<path:object_id>/change/
            model = parts[2] if parts[1] in ("auth", "gallery") and len(parts) > 3 else "example"
            return {"rejected": {name: self.admin_args[model if name in ("object_id", "id")
                                                       else name] for name in names}}
        if entry.revises:
            return {"": {}, **{target: {} for target in self.args["slug"]}}
        if not names:
            return {"": {}}
        return {target: {name: self.args[name][target] for name in names}
                for target in self.args[names[0]]}

    def ask(self, case: Case, method: str, route: str, entry: Entry, args: dict[str, str],
            *, token: bool) -> tuple[HttpResponse, str]:
        """One request, whose changes are rolled back; returns the answer and what was said."""
        client, headers = self.clients[case.actor], {}
        if case.actor != "anonymous" and token:
            headers["HTTP_AUTHORIZATION"] = f"token hub-token-of-{case.actor}"
        elif case.actor != "anonymous" and "_auth_user_id" not in client.session:
            client.force_login(self.people[case.actor])  # again, after a logout
        path, data = request_path(route, args), dict(entry.data)
        slug = self.args["slug"][case.target] if entry.revises and case.target else ""
        if slug and entry.json and method == "POST":
            data.update(title="A new revision", example=slug, notebook=notebook_bytes().decode())
        elif slug:
            path += f"?example={slug}"
        with transaction.atomic():
            if method == "GET":
                response = client.get(path, **headers)
            elif entry.json:
                send = client.put if method == "PUT" else client.post
                response = send(path, json.dumps(data), content_type="application/json",
                                **headers)
            else:
                response = client.post(path, data, **headers)
            transaction.set_rollback(True)
        cache.clear()  # nothing rendered from a change rolled back stays
        client.cookies.pop("messages", None)  # nor a message for the next page
        return response, path + json.dumps(data)

    def check(self, case: Case, method: str, route: str, entry: Entry, response: HttpResponse,
              asked: str) -> list[str]:
        """What is wrong with an answer: its status, a secret it tells, its form."""
        where = f"{method} /{route} as {case.actor} about {case.target or '-'}"
        wrong = []
        expected = getattr(entry, method)(case)
        if response.status_code not in ([expected] if isinstance(expected, int) else expected):
            wrong.append(f"{where}: {response.status_code}, not {expected}")
        said = body_text(response) + response.get("Location", "")
        for words, seen_by in self.secrets:
            leaked = sorted(w for w in words if w in said and w not in asked)
            if leaked and case.actor not in seen_by:
                wrong.append(f"{where}: tells {leaked}")
        if (case.actor == "anonymous" and response.status_code == 302
                and route not in NOT_TO_LOGIN and not response["Location"].startswith(
                    ("/accounts/login/", "/admin/login/"))):
            wrong.append(f"{where}: sends a stranger to {response['Location']}, not the login")
        if entry.json and 400 <= response.status_code < 500 and response.status_code != 405:
            try:
                error = json.loads(said).get("error")
            except (ValueError, AttributeError):
                error = None
            if not isinstance(error, str):
                wrong.append(f"{where}: answers {said[:80]!r}, not JSON with an error")
        return wrong

    def run_matrix(self, routes: list[str], *, token: bool = False) -> None:
        self.build_world()
        self.clients = {actor: Client() for actor in ACTORS}  # each loads the middleware
        wrong: list[str] = []
        how = " (hub token)" if token else ""
        for route in routes:
            entry = MATRIX.get(route, ADMIN_ENTRY)
            for method in ("GET", "POST", "PUT")[:3 if entry.PUT else 2]:
                for target, args in self.targets(route, entry).items():
                    for actor in ACTORS:
                        case = Case(actor, target)
                        response, asked = self.ask(case, method, route, entry, args, token=token)
                        wrong += self.check(case, method, route, entry, response, asked)
                        self.recorded[(f"/{route}", method + how)] += 1
        self.assertEqual(wrong, [], "\n" + "\n".join(wrong))

    def test_it_has_rules_for_every_url_and_api_method(self) -> None:
        routes = url_routes()
        self.assertEqual([r for r in routes if r not in MATRIX and not r.startswith(ADMIN)], [],
                         "give each new URL its rules in MATRIX")
        self.assertEqual([r for r in MATRIX if r not in routes], [], "rules of no URL")
        self.assertGreater(len([r for r in routes if r.startswith(ADMIN)]), 40)
        for route, methods in api_operations().items():
            self.assertIn(route, MATRIX)
            ruled = {"GET", "POST"} | ({"PUT"} if MATRIX[route].PUT else set())
            self.assertLessEqual(methods, ruled, f"/{route}: give the method rules")

    def test_it_answers_every_page_and_api_call_as_the_rules_say(self) -> None:
        self.run_matrix([r for r in url_routes() if r in MATRIX])

    def test_it_keeps_every_page_of_the_desk_to_reviewers(self) -> None:
        self.run_matrix([r for r in url_routes() if r.startswith(ADMIN) and r not in MATRIX])

    def test_it_answers_the_api_alike_with_a_hub_token(self) -> None:
        def answer(method: str, path: str, token: str) -> tuple[int, str, bytes]:
            actor = token.removeprefix("hub-token-of-")
            if not path.endswith("/user") or actor not in self.people:
                return 403, "application/json", b'{"status": 403}'
            scopes = ["access:services!service=gallery"] + (
                ["custom:gallery:review"] if actor == "reviewer" else [])
            return 200, "application/json", json.dumps({
                "kind": "user", "name": self.people[actor].get_username(), "scopes": scopes,
                "groups": []}).encode()

        hub = self.enterContext(FakeHub(answer))
        self.enterContext(override_settings(
            HUB_ENABLED=True, JUPYTERHUB_API_URL=hub.api_url, JUPYTERHUB_API_TOKEN="secret",
            JUPYTERHUB_OAUTH_ACCESS_SCOPES={"access:services!service=gallery"}))
        self.run_matrix([r for r in url_routes() if MATRIX.get(r, ADMIN_ENTRY).json],
                        token=True)

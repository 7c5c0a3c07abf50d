"""Rules of the rows and reads of many: what a reader sees while a worker commits."""

import threading

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection, connections

from gallery import services
from gallery.models import Example, Job, StateChange

from .base import GalleryTestCase, make_user, stage

pytestmark = pytest.mark.postgres  # run again on PostgreSQL by `make test`


def publish_in_another_connection(revision, reviewer) -> None:  # type: ignore[no-untyped-def]
    """What a worker does when its commit lands: one transaction, in a connection of its own."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            services.publish_revision(revision=revision, commit="c0ffee" * 6 + "abcd",
                                      actor=reviewer)
        except BaseException as exc:  # noqa: BLE001 - reported in the test's thread
            failure.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not failure, failure


@pytest.mark.django_db(transaction=True)
def test_it_never_shows_an_approved_commit_on_a_staged_example(client) -> None:  # type: ignore[no-untyped-def]
    # PostgreSQL gives each statement its own snapshot: a detail read in several statements
    # can straddle a worker's commit. (SQLite's read transaction keeps the writer out instead.)
    if connection.vendor != "postgresql":
        pytest.skip("the straddled read needs a database where writers commit during reads")
    contributor, reviewer = make_user("carla"), make_user("rhea", reviewer=True)
    submission = stage(contributor)
    slug = submission.example.slug
    client.force_login(make_user("uma"))

    published = []

    def commit_after_the_example_is_read(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        result = execute(sql, params, many, context)
        if not published and 'FROM "gallery_example"' in sql and slug in str(params):
            published.append(True)
            publish_in_another_connection(submission.revision, reviewer)
        return result

    with connection.execute_wrapper(commit_after_the_example_is_read):
        body = client.get(f"/api/v1/examples/{slug}").json()

    assert published, "the detail never read the example"
    assert Example.objects.get(slug=slug).state == Example.State.APPROVED  # the commit landed
    # One moment of the database: before the commit (staged, no commit) or after it.
    assert (body["state"], bool(body["commit"])) in (("staged", False), ("approved", True)), body


class VisibleToTests(GalleryTestCase):
    """Who sees which example: the one rule every page and API call follows."""

    def setUp(self) -> None:
        self.holder, self.newcomer = make_user("holly"), make_user("newt")
        approved = self.stage_and_approve(title="Approved one")
        retired = self.stage_and_approve(title="Retired one")
        Job.objects.create(kind=Job.Kind.USE, state=Job.State.DONE, user=self.holder,
                           revision=retired.revision)
        Job.objects.create(kind=Job.Kind.USE, state=Job.State.FAILED, user=self.newcomer,
                           revision=retired.revision)  # tried, holds no copy
        services.retire_example(example=retired.example, actor=self.reviewer, reason="Old.")
        staged = stage(self.contributor, title="Staged one")
        rejected = stage(self.contributor, title="Rejected one")
        services.reject_submission(submission=rejected, reviewer=self.reviewer, comment="No.")
        self.slugs = {name: s.example.slug for name, s in (
            ("approved", approved), ("retired", retired), ("staged", staged),
            ("rejected", rejected))}

    def seen_by(self, user) -> set[str]:  # type: ignore[no-untyped-def]
        slugs = set(Example.objects.visible_to(user).values_list("slug", flat=True))
        for example in Example.objects.all():
            self.assertEqual(example.is_visible_to(user), example.slug in slugs, example)
        return {name for name, slug in self.slugs.items() if slug in slugs}

    def test_it_shows_curated_and_staged_examples_to_everyone_logged_in(self) -> None:
        self.assertEqual(self.seen_by(self.newcomer), {"approved", "staged"})
        self.assertEqual(self.seen_by(self.user), {"approved", "staged"})

    def test_it_keeps_rejected_and_retired_examples_with_their_contributor_and_reviewers(
            self) -> None:
        everything = {"approved", "staged", "rejected", "retired"}
        self.assertEqual(self.seen_by(self.contributor), everything)
        self.assertEqual(self.seen_by(self.reviewer), everything)

    def test_it_still_shows_a_retired_example_to_those_who_hold_a_copy(self) -> None:
        self.assertEqual(self.seen_by(self.holder), {"approved", "staged", "retired"})

    def test_it_shows_nothing_to_strangers(self) -> None:
        self.assertEqual(self.seen_by(AnonymousUser()), set())


def test_it_keeps_a_reviewers_words_on_a_refused_revision_out_of_the_public_history() -> None:
    for state, public in (("rejected", False), ("changes_requested", False), ("approved", True),
                          ("withdrawn", True), ("retired", True)):
        change = StateChange(subject="submission", to_state=state, reason="Because.")
        assert change.public_reason == ("Because." if public else ""), state

"""Rules of the rows and reads of many: what a reader sees while a worker commits."""

import threading

import pytest
from django.db import connection, connections

from gallery import services
from gallery.models import Example

from .base import make_user, stage


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

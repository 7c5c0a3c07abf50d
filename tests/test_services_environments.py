"""An approved revision's environment: locked once, built once per key by its own job, shown
on the example's page. Builds run the real uv offline, from the tiny wheels of
tests/test_environments.py, as the real unprivileged build account."""

from __future__ import annotations

import io
import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import redis
from django.core.management import call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from gallery import environments, services
from gallery.models import Environment, Example, Job, Revision

from .base import GalleryTestCase, make_user, stage
from .conftest import BROKER_URL, QUEUES, start_worker, wait_for, worker_env
from .test_environments import builder, shared, wheels, write_stand_in  # noqa: F401

pytestmark = pytest.mark.postgres  # run again on PostgreSQL by `make test`

SPEC = ("requirements.txt", b"galleryfake-a\n")  # a package of the tests' own index


def builds() -> Any:
    """Environment jobs that build (not those resolving a submission's spec at staging)."""
    return Job.objects.exclude(params__has_key="resolve")


class OfflineBuilds(GalleryTestCase):
    """Builds with the real uv, offline from the tests' wheels, as the build account."""

    @pytest.fixture(autouse=True)
    def _offline_builds(self, settings, shared: Path, wheels: Path, builder: str,  # noqa: F811
                        tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
        settings.GALLERY_ENV_DIR = shared / f"store-{tmp_path.name}"
        settings.GALLERY_BUILD_USER = builder
        settings.GALLERY_BUILD_INDEX_OPTIONS = f"--no-index --find-links {wheels}"
        self.store = settings.GALLERY_ENV_DIR

    def approve(self, title: str, environment: tuple[str, bytes] | None) -> Revision:
        with self.captureOnCommitCallbacks(execute=True):
            submission = stage(self.contributor, title=title, environment=environment)
        with self.captureOnCommitCallbacks(execute=True):
            services.approve_submission(submission=submission, reviewer=self.reviewer)
        return Revision.objects.select_related("environment", "example").get(
            pk=submission.revision_id)

    def built(self) -> list[str]:
        return sorted(p.name for p in self.store.iterdir() if not p.name.startswith("."))


class EnvironmentJobTests(OfflineBuilds):
    def test_it_locks_and_builds_the_environment_of_an_approved_revision(self) -> None:
        revision = self.approve("Fake A", ("requirements.txt", b"galleryfake-a\n"))
        self.assertEqual(environments.pins(revision.environment_lock),
                         ["galleryfake-a==1.0", "galleryfake-b==1.2", "ipykernel==6.0.0"])
        env = revision.environment
        self.assertEqual((env.state, env.reason), (Environment.State.READY, ""))
        self.assertEqual(self.built(), [env.key])
        self.assertTrue((Path(env.path) / environments.RECORD_FILE).is_file())
        job = builds().get(kind=Job.Kind.ENVIRONMENT, revision=revision)
        self.assertEqual((job.state, job.result["state"]), (Job.State.DONE, "ready"))

    def test_it_builds_one_environment_for_revisions_with_the_same_spec(self) -> None:
        real_build = environments.build
        calls: list[str] = []

        def counting(lock_text: str, **kwargs: Any) -> Path:
            calls.append(lock_text)
            return real_build(lock_text, **kwargs)

        with mock.patch.object(environments, "build", counting):
            first = self.approve("First", ("requirements.txt", b"galleryfake-a\n"))
            second = self.approve("Second", ("requirements.txt", b"galleryfake-a\n"))
        self.assertEqual(first.environment_id, second.environment_id)
        self.assertEqual((Environment.objects.count(), len(calls), len(self.built())), (1, 1, 1))
        self.assertEqual(second.environment.state, Environment.State.READY)

    def test_it_fails_with_the_reason_when_a_package_is_unknown(self) -> None:
        revision = self.approve("Unknown", ("requirements.txt", b"galleryfake-zz\n"))
        env = revision.environment
        self.assertEqual(env.state, Environment.State.FAILED)
        self.assertIn("galleryfake-zz was not found", env.reason)
        self.assertIn("No solution found", env.log)
        self.assertEqual(revision.environment_lock, "")
        job = builds().get(kind=Job.Kind.ENVIRONMENT, revision=revision)
        self.assertEqual(job.state, Job.State.FAILED)
        self.assertIn("galleryfake-zz was not found", job.message)
        self.assertEqual(self.built(), [])

    def test_it_says_plainly_that_it_cannot_build_conda_dependencies(self) -> None:
        revision = self.approve("Conda", ("environment.yml", b"dependencies:\n  - hdf5\n"))
        self.assertEqual(revision.environment.state, Environment.State.CANNOT_BUILD)
        self.assertIn("conda-compatible executable", revision.environment.reason)
        self.assertIn("a centre can name one with GALLERY_CONDA. Use a kernel of the centre "
                      "that already has hdf5 instead.", revision.environment.reason)
        job = builds().get(kind=Job.Kind.ENVIRONMENT, revision=revision)
        self.assertEqual(job.state, Job.State.DONE)

    def test_it_builds_conda_dependencies_with_the_centres_conda(self) -> None:
        with self.settings(GALLERY_CONDA=str(write_stand_in(self.store.parent))):
            revision = self.approve("Conda", ("environment.yml", b"dependencies:\n"
                                              b"  - galleryconda-hdf\n  - pip:\n"
                                              b"    - galleryfake-a\n"))
        env = revision.environment
        self.assertEqual((env.state, env.reason), (Environment.State.READY, ""))
        pins = environments.pins(revision.environment_lock)
        self.assertIn("conda: galleryconda-hdf=1.14.3=nompi_h2d575fe_105 conda-forge", pins)
        self.assertIn("galleryfake-a==1.0", pins)
        self.assertTrue(env.python.startswith("3."))
        self.assertTrue((Path(env.path) / "bin" / "python").exists())
        self.client.force_login(self.user)
        page = self.client.get(reverse("example", args=[revision.example.slug]))
        self.assertContains(page, "<li><code>conda: galleryconda-hdf=1.14.3=nompi_h2d575fe_105 "
                                  "conda-forge</code></li>", html=False)

    def test_it_queues_nothing_without_an_environment_file(self) -> None:
        revision = self.approve("Bare", None)
        self.assertIsNone(revision.environment)
        self.assertFalse(builds().filter(kind=Job.Kind.ENVIRONMENT).exists())
        self.assertIsNone(services.queue_environment(revision))

    def test_it_builds_again_from_the_revisions_lock_on_demand(self) -> None:
        revision = self.approve("Again", ("requirements.txt", b"galleryfake-a\n"))
        Revision.objects.filter(pk=revision.pk).update(
            environment_lock="galleryfake-b==0.5\nipykernel==6.0.0\n")
        revision.refresh_from_db()
        with self.captureOnCommitCallbacks(execute=True):
            services.queue_environment(revision)
        revision.refresh_from_db()
        self.assertEqual(environments.pins(revision.environment.lock),
                         ["galleryfake-b==0.5", "ipykernel==6.0.0"])
        self.assertEqual(revision.environment.state, Environment.State.READY)
        self.assertEqual(len(self.built()), 2)

    def test_it_shows_the_resolved_packages_on_the_example_page(self) -> None:
        revision = self.approve("Shown", ("requirements.txt", b"galleryfake-a\n"))
        self.client.force_login(self.user)
        page = self.client.get(reverse("example", args=[revision.example.slug]))
        self.assertContains(page, "Its environment is built and ready (Python ")
        self.assertContains(page, '<h4 id="h-pins">Resolved packages</h4>', html=False)
        for pin in ("galleryfake-a==1.0", "galleryfake-b==1.2", "ipykernel==6.0.0"):
            self.assertContains(page, f"<li><code>{pin}</code></li>", html=False)
        detail = self.client.get(f"/api/v1/examples/{revision.example.slug}").json()
        self.assertEqual(detail["environment_state"], "ready")

    def test_it_shows_why_an_environment_could_not_be_built(self) -> None:
        revision = self.approve("Broken", ("requirements.txt", b"galleryfake-zz\n"))
        self.client.force_login(self.user)
        page = self.client.get(reverse("example", args=[revision.example.slug]))
        self.assertContains(page, "Its environment could not be built: ")
        self.assertContains(page, "galleryfake-zz was not found")
        self.assertNotContains(page, "Resolved packages")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_it_builds_on_a_worker_of_the_environments_queue(
        settings, tmp_path: Path, shared: Path, wheels: Path, builder: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    settings.GALLERY_ENV_DIR = shared / f"store-{tmp_path.name}"
    settings.GALLERY_BUILD_INDEX_OPTIONS = f"--no-index --find-links {wheels}"
    redis.Redis.from_url(BROKER_URL).delete(*QUEUES.values())
    env = worker_env(settings, GALLERY_BUILD_USER=builder)
    others = [q for kind, q in QUEUES.items() if kind != "envs"]
    workers = [start_worker(env, tmp_path / "worker.log", queues=others, hostname="rest@%h"),
               start_worker(env, tmp_path / "envs.log", queues=[QUEUES["envs"]],
                            hostname="envs@%h", concurrency=1)]
    try:
        contributor, reviewer = make_user("carla"), make_user("rhea", reviewer=True)
        submission = stage(contributor, title="On a worker", environment=SPEC)
        services.approve_submission(submission=submission, reviewer=reviewer)
        job = wait_for(lambda: builds().filter(
            kind=Job.Kind.ENVIRONMENT, state__in=[Job.State.DONE, Job.State.FAILED]).first(),
            timeout=180, what="the environment job")
        assert (job.state, job.message) == (Job.State.DONE, "")
        assert job.worker.startswith("envs@")
        revision = Revision.objects.select_related("environment").get(pk=submission.revision_id)
        assert revision.environment.state == Environment.State.READY
        assert "galleryfake-b==1.2" in environments.pins(revision.environment_lock)
    finally:
        for worker in workers:
            worker.stop()


@pytest.mark.django_db(transaction=True)
def test_it_keeps_the_jobs_lease_while_a_build_runs(
        settings, tmp_path: Path, shared: Path, wheels: Path, builder: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    settings.GALLERY_ENV_DIR = shared / f"store-{tmp_path.name}"
    settings.GALLERY_BUILD_USER = builder
    settings.GALLERY_BUILD_INDEX_OPTIONS = f"--no-index --find-links {wheels}"
    settings.GALLERY_JOB_LEASE = 1  # renewed every half second while the build runs
    real_build = environments.build

    def slow_build(lock_text: str, **kwargs: Any) -> Path:
        job = builds().get(kind=Job.Kind.ENVIRONMENT)
        wait_for(lambda: Job.objects.get(pk=job.pk).lease_until > job.lease_until,
                 what="the lease to be renewed")
        return real_build(lock_text, **kwargs)

    contributor, reviewer = make_user("carla"), make_user("rhea", reviewer=True)
    with mock.patch.object(environments, "build", slow_build):
        submission = stage(contributor, title="Long build", environment=SPEC)
        services.approve_submission(submission=submission, reviewer=reviewer)
    job = builds().get(kind=Job.Kind.ENVIRONMENT)
    assert (job.state, job.revision_id) == (Job.State.DONE, submission.revision_id)


@pytest.mark.django_db(transaction=True)
def test_it_never_leaves_an_environment_building_after_an_error(
        settings, tmp_path: Path, shared: Path, wheels: Path, builder: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    settings.GALLERY_ENV_DIR = shared / f"store-{tmp_path.name}"
    settings.GALLERY_BUILD_USER = builder
    settings.GALLERY_BUILD_INDEX_OPTIONS = f"--no-index --find-links {wheels}"
    contributor, reviewer = make_user("carla"), make_user("rhea", reviewer=True)
    with mock.patch.object(environments, "build", side_effect=OSError("disk full")):
        submission = stage(contributor, title="Broken disk", environment=SPEC)
        services.approve_submission(submission=submission, reviewer=reviewer)
        job = builds().get(kind=Job.Kind.ENVIRONMENT)
        while job.state == Job.State.QUEUED:  # the runner's retries, as the sweep would ring
            services.perform_job(str(job.pk))
            job.refresh_from_db()
    assert job.state == Job.State.FAILED
    env = Revision.objects.get(pk=submission.revision_id).environment
    assert (env.state, env.reason) == (
        Environment.State.FAILED, "The build stopped on an error in the gallery (OSError).")


@pytest.mark.django_db(transaction=True)
def test_it_builds_once_when_two_jobs_of_one_key_run_at_once(
        settings, tmp_path: Path, shared: Path, wheels: Path, builder: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    if connection.vendor == "sqlite":
        pytest.skip("two writers at once need PostgreSQL (SQLite serialises them)")
    settings.GALLERY_ENV_DIR = shared / f"store-{tmp_path.name}"
    settings.GALLERY_BUILD_USER = builder
    settings.GALLERY_BUILD_INDEX_OPTIONS = f"--no-index --find-links {wheels}"
    contributor, reviewer = make_user("carla"), make_user("rhea", reviewer=True)
    revisions = []
    with mock.patch("gallery.services.review.queue_environment"):  # queued by hand below
        for title in ("Left", "Right"):
            submission = stage(contributor, title=title, environment=SPEC)
            services.approve_submission(submission=submission, reviewer=reviewer)
            revisions.append(Revision.objects.get(pk=submission.revision_id))
    jobs = [Job.objects.create(kind=Job.Kind.ENVIRONMENT, revision=r) for r in revisions]
    real_key, together = environments.store_key, threading.Barrier(2, timeout=60)

    def meeting(lock_text: str, **kwargs: Any) -> tuple[str, str]:
        found = real_key(lock_text, **kwargs)
        together.wait()  # both jobs reach the row of their key at once
        return found

    def run(job: Job) -> None:
        try:
            services.perform_job(str(job.pk))
        finally:
            connection.close()

    with mock.patch.object(environments, "store_key", meeting):
        threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert [Job.objects.get(pk=j.pk).state for j in jobs] == [Job.State.DONE] * 2
    envs = {Revision.objects.get(pk=r.pk).environment_id for r in revisions}
    assert len(envs) == 1 and Environment.objects.count() == 1
    assert Environment.objects.get().state == Environment.State.READY
    store = settings.GALLERY_ENV_DIR
    assert len([p for p in store.iterdir() if not p.name.startswith(".")]) == 1


@pytest.mark.django_db
def test_it_says_why_when_the_sweep_gives_up_on_a_build() -> None:
    contributor, reviewer = make_user("carla"), make_user("rhea", reviewer=True)
    with mock.patch("gallery.services.review.queue_environment"):  # queued by hand below
        submission = stage(contributor, title="Killed", environment=SPEC)
        services.approve_submission(submission=submission, reviewer=reviewer)
    env = Environment.objects.create(key="k" * 64, state=Environment.State.BUILDING)
    Revision.objects.filter(pk=submission.revision_id).update(environment=env)
    job = Job.objects.create(kind=Job.Kind.ENVIRONMENT, revision_id=submission.revision_id,
                             state=Job.State.RUNNING, attempts=services.GIVE_UP_AFTER,
                             lease_until=timezone.now() - timedelta(seconds=1))
    services.sweep_jobs()
    assert Job.objects.get(pk=job.pk).state == Job.State.FAILED
    env.refresh_from_db()
    assert (env.state, env.reason) == (Environment.State.FAILED, services.GAVE_UP)


class RemoveUnusedTests(OfflineBuilds):
    """`remove_unused_environments`: only what no approved example uses, after the grace."""

    def test_it_removes_only_environments_unused_past_the_grace(self) -> None:
        kept = self.approve("Kept", SPEC)
        retired = self.approve("Retired", ("requirements.txt", b"galleryfake-b==0.5\n"))
        recent = self.approve("Recent", ("requirements.txt", b"galleryfake-big\n"))
        for revision in (retired, recent):
            services.retire_example(example=revision.example, actor=self.reviewer,
                                    reason="superseded")
        long_ago = timezone.now() - timedelta(days=40)
        Environment.objects.exclude(pk=recent.environment_id).update(last_used=long_ago)
        self.assertEqual(len(self.built()), 3)
        self.assertEqual(services.remove_unused_environments(
            unused_for=timedelta(days=30), dry_run=True), [retired.environment.key])
        self.assertEqual(len(self.built()), 3)
        out = io.StringIO()
        call_command("remove_unused_environments", "--days", "30", stdout=out)
        self.assertIn(f"removed {retired.environment.key}", out.getvalue())
        self.assertIn("1 environment removed", out.getvalue())
        self.assertEqual(self.built(), sorted([kept.environment.key, recent.environment.key]))
        self.assertFalse(Environment.objects.filter(pk=retired.environment_id).exists())
        self.assertIsNone(Revision.objects.get(pk=retired.pk).environment_id)
        # The one in use was seen in use: its clock starts again.
        self.assertGreater(Environment.objects.get(pk=kept.environment_id).last_used, long_ago)

    def test_it_never_removes_one_being_built(self) -> None:
        env = Environment.objects.create(key="b" * 64, state=Environment.State.BUILDING,
                                         last_used=timezone.now() - timedelta(days=90))
        self.assertEqual(services.remove_unused_environments(unused_for=timedelta(0)), [])
        self.assertTrue(Environment.objects.filter(pk=env.pk).exists())

    def test_a_use_after_removal_builds_it_again(self) -> None:
        revision = self.approve("Again", SPEC)
        Environment.objects.update(last_used=timezone.now() - timedelta(days=40))
        Example.objects.filter(pk=revision.example_id).update(state=Example.State.RETIRED)
        self.assertEqual(len(services.remove_unused_environments(
            unused_for=timedelta(days=30))), 1)
        self.assertEqual(self.built(), [])
        Example.objects.filter(pk=revision.example_id).update(state=Example.State.APPROVED)
        with self.captureOnCommitCallbacks(execute=True):
            job = services.queue_use(example=revision.example, user=self.user)
        with self.captureOnCommitCallbacks(execute=True):
            services.perform_job(str(job.pk))  # parks and queues the build, run here
        services.perform_job(str(job.pk))
        job.refresh_from_db()
        self.assertEqual(job.state, Job.State.DONE, job.message)
        self.assertTrue(job.result["kernel"]["installed"])
        self.assertEqual(len(self.built()), 1)


class ResolveAtStagingTests(OfflineBuilds):
    """A submitted spec is resolved with uv before a reviewer sees it: its checks say what it
    resolves to or why not, and the lock is the one the approved build installs."""

    def staged(self, text: bytes) -> Any:
        with self.captureOnCommitCallbacks(execute=True):
            submission = stage(self.contributor, title="Resolved",
                               environment=("requirements.txt", text))
        submission.refresh_from_db()
        return submission

    def check(self, submission: Any) -> dict[str, str]:
        return next(c for c in submission.checks if c["name"] == "environment resolves")

    def test_an_unknown_package_fails_the_checks_with_uvs_reason(self) -> None:
        check = self.check(self.staged(b"galleryfake-zz\n"))
        self.assertEqual(check["status"], "fail")
        self.assertIn("requirements.txt does not resolve: ", check["message"])
        self.assertIn("galleryfake-zz was not found", check["message"])

    def test_conflicting_pins_fail_the_checks(self) -> None:
        check = self.check(self.staged(b"galleryfake-a\ngalleryfake-b==0.5\n"))
        self.assertEqual(check["status"], "fail")
        self.assertIn("galleryfake-b", check["message"])
        self.assertIn("unsatisfiable", check["message"])

    def test_a_good_spec_shows_its_packages_and_the_build_installs_that_lock(self) -> None:
        real_lock, calls = environments.lock, []

        def counting(*args: Any, **kwargs: Any) -> str:
            calls.append(args)
            return real_lock(*args, **kwargs)

        with mock.patch.object(environments, "lock", counting):
            submission = self.staged(b"galleryfake-a\n")
            check = self.check(submission)
            self.assertEqual(check["status"], "pass", check)
            self.assertIn("galleryfake-a==1.0, galleryfake-b==1.2, ipykernel==6.0.0",
                          check["message"])
            with self.captureOnCommitCallbacks(execute=True):
                services.approve_submission(submission=submission, reviewer=self.reviewer)
        revision = Revision.objects.select_related("environment").get(pk=submission.revision_id)
        self.assertEqual(len(calls), 1)  # resolved once, at staging
        self.assertEqual(revision.environment.state, Environment.State.READY)
        self.assertEqual(revision.environment.lock, revision.environment_lock)
        self.client.force_login(self.reviewer)
        page = self.client.get(reverse("submission", args=[submission.pk]))
        self.assertContains(page, "environment resolves")

    def test_it_warns_when_this_gallery_cannot_resolve(self) -> None:
        with self.settings(GALLERY_BUILD_USER=""):
            check = self.check(self.staged(b"galleryfake-a\n"))
        if os.geteuid() == 0:
            self.assertEqual(check["status"], "warn")
            self.assertIn("Not resolved here: Environments are never built as root",
                          check["message"])

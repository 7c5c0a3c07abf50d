"""Use hands over a kernel: the example's environment, built once, installed as a kernel in
the user's home and named by the copied notebook. Builds run the real uv offline, from the
tiny wheels of tests/test_environments.py, as the real unprivileged build account."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import redis
from django.conf import settings
from django.urls import reverse

from gallery import environments, kernels, services
from gallery.models import Environment, Example, Job, Revision

from .base import make_user, stage
from .conftest import BROKER_URL, QUEUES, start_worker, wait_for, worker_env
from .test_environments import builder, shared, wheels  # noqa: F401  (fixtures)
from .test_services_environments import SPEC, OfflineBuilds, builds


def kernel_json(username: str, name: str) -> dict[str, Any]:
    home = Path(settings.GALLERY_HOME_TEMPLATE.format(username=username))
    path = home.joinpath(*kernels.KERNELS_DIR, name, "kernel.json")
    return dict(json.loads(path.read_text()))


class UseKernelTests(OfflineBuilds):
    def approve(self, environment: tuple[str, bytes] | None = SPEC, *,
                build: bool = True) -> Example:
        with self.captureOnCommitCallbacks(execute=True):
            submission = stage(self.contributor, title="Fake A", environment=environment)
        with mock.patch("gallery.services.review.queue_environment",
                        wraps=None if build else (lambda revision: None)) as queued:
            if build:
                queued.side_effect = services.queue_environment
            with self.captureOnCommitCallbacks(execute=True):
                services.approve_submission(submission=submission, reviewer=self.reviewer)
        return Example.objects.get(pk=submission.example_id)

    def use(self, example: Example) -> Job:
        with self.captureOnCommitCallbacks(execute=True):
            job = services.queue_use(example=example, user=self.user)
        return Job.objects.get(pk=job.pk)

    def test_it_copies_with_the_kernel_of_the_built_environment(self) -> None:
        example = self.approve()
        env = Revision.objects.get(pk=example.current_revision_id).environment
        plan = services.use_plan(example=example, user=self.user)
        self.assertEqual(plan["environment_state"], "ready")
        self.assertIn("Environment ready", plan["environment_text"])
        job = self.use(example)
        self.assertEqual((job.state, job.message), (Job.State.DONE, ""))
        name = kernels.kernel_name(example.slug, env.key)
        self.assertEqual(plan["kernel"], name)
        self.assertEqual(job.result["kernel"]["name"], name)
        self.assertTrue(job.result["kernel"]["installed"])
        self.assertEqual(job.result["environment"]["pip"], "")  # nothing left to do by hand
        spec = kernel_json("ursula", name)
        self.assertEqual(spec["argv"][:3], [f"{env.path}/bin/python", "-m", "ipykernel_launcher"])
        self.assertIn("Fake A", spec["display_name"])
        home = Path(settings.GALLERY_HOME_TEMPLATE.format(username="ursula"))
        copy = home / "examples" / job.result["folder"]
        nb = json.loads((copy / "hello.ipynb").read_text())
        self.assertEqual(nb["metadata"]["kernelspec"]["name"], name)
        self.assertEqual(nb["metadata"]["kernelspec"]["display_name"], spec["display_name"])
        self.assertEqual("".join(nb["cells"][1]["source"]), "print('hello')")  # as it was
        record = json.loads((copy / ".gallery-provenance.json").read_text())
        self.assertEqual(record["kernel"], name)
        # The environment's Python has the packages of the spec.
        self.assertTrue((Path(env.path) / "lib").is_dir())
        client = self.client_for_user()
        page = client.get(reverse("job", args=[job.pk]))
        self.assertContains(page, name)
        self.assertContains(page, "Fake A (Python ")
        api = client.get(f"/api/v1/examples/{example.slug}/use-plan").json()
        self.assertEqual((api["environment_state"], api["kernel"]), ("ready", name))
        self.assertContains(client.get(reverse("example", args=[example.slug])),
                            "Environment ready: the copy comes with a kernel")

    def client_for_user(self):  # type: ignore[no-untyped-def]
        self.client.force_login(self.user)
        return self.client

    def test_a_use_waits_in_the_queue_for_the_build_and_is_rung_when_it_ends(self) -> None:
        example = self.approve(build=False)
        revision = Revision.objects.get(pk=example.current_revision_id)
        plan = services.use_plan(example=example, user=self.user)
        self.assertEqual(plan["environment_state"], "waiting")
        self.assertIn("will be built first (about 60 s)", plan["environment_text"])
        with mock.patch("gallery.services.use.queue_environment",
                        wraps=services.queue_environment) as queued, \
                mock.patch.object(services.jobs, "enqueue") as rung:
            # The Use's own ring and the build's are run by hand below.
            job = services.queue_use(example=example, user=self.user)
            services.perform_job(str(job.pk))
            job.refresh_from_db()
            self.assertEqual((job.state, job.attempts), (Job.State.QUEUED, 0))
            self.assertIn("Building the example's environment first", job.message)
            page = self.client_for_user().get(reverse("job", args=[job.pk]))
            self.assertContains(page, '<li class="current">Its environment</li>', html=True)
            self.assertEqual(queued.call_count, 1)
            build = builds().get(kind=Job.Kind.ENVIRONMENT, revision=revision)
            # A second Use waits on the same build.
            second = services.queue_use(example=example, user=self.contributor)
            services.perform_job(str(second.pk))
            self.assertEqual(builds().filter(kind=Job.Kind.ENVIRONMENT).count(), 1)
            self.assertFalse(rung.called)
            services.perform_job(str(build.pk))
            self.assertEqual(sorted(str(c.args[0].pk) for c in rung.call_args_list),
                             sorted([str(job.pk), str(second.pk)]))
        build.refresh_from_db()
        self.assertTrue(build.result["built"])
        for waiting in (job, second):
            services.perform_job(str(waiting.pk))
            waiting.refresh_from_db()
            self.assertEqual(waiting.state, Job.State.DONE, waiting.message)
            self.assertTrue(waiting.result["kernel"]["installed"])
            self.assertEqual(waiting.attempts, 1)
            self.assertIn("waited_for_environment", waiting.result)

    def test_a_use_parked_just_as_the_build_ends_rings_itself(self) -> None:
        example = self.approve(build=False)
        answers = iter([services.ForUse("waiting", estimate=5)])

        def for_use(revision: Revision) -> services.ForUse:  # the build ends meanwhile
            return next(answers, services.ForUse("failed", reason="gone"))

        with mock.patch("gallery.services.use.for_use", for_use), \
                mock.patch("gallery.services.use.queue_environment"), \
                mock.patch.object(services.jobs, "enqueue") as rung:
            job = services.queue_use(example=example, user=self.user)
            services.perform_job(str(job.pk))
        self.assertEqual([str(c.args[0].pk) for c in rung.call_args_list], [str(job.pk)])
        self.assertEqual(Job.objects.get(pk=job.pk).state, Job.State.QUEUED)

    def test_a_failed_build_still_gives_the_copy_and_says_why(self) -> None:
        example = self.approve(("requirements.txt", b"galleryfake-zz\n"))
        plan = services.use_plan(example=example, user=self.user)
        self.assertEqual(plan["environment_state"], "failed")
        self.assertIn("galleryfake-zz was not found", plan["environment_text"])
        job = self.use(example)
        self.assertEqual(job.state, Job.State.DONE, job.message)
        self.assertEqual(job.result["environment"]["state"], "failed")
        self.assertIn("galleryfake-zz was not found", job.result["environment"]["reason"])
        self.assertIn("pip install -r requirements.txt", job.result["environment"]["pip"])
        self.assertEqual(job.result["kernel"], {})
        page = self.client_for_user().get(reverse("job", args=[job.pk]))
        self.assertContains(page, "could not be built")
        self.assertContains(page, "galleryfake-zz was not found")

    def test_it_says_plainly_that_conda_dependencies_cannot_be_built(self) -> None:
        example = self.approve(("environment.yml", b"dependencies:\n  - hdf5\n"))
        plan = services.use_plan(example=example, user=self.user)
        self.assertEqual(plan["environment_state"], "cannot_build")
        self.assertIn("conda-compatible executable", plan["environment_text"])
        self.assertIn("use one of the centre's kernels", plan["environment_text"])
        Revision.objects.filter(pk=example.current_revision_id).update(
            metadata={**example.current_revision.metadata, "kernel": "hdf5-2024"})
        example = Example.objects.get(pk=example.pk)
        plan = services.use_plan(example=example, user=self.user)
        self.assertIn("use the kernel “hdf5-2024” that the example names",
                      plan["environment_text"])
        job = self.use(example)
        self.assertEqual((job.state, job.result["environment"]["state"]),
                         (Job.State.DONE, "cannot_build"))

    def test_a_use_stops_waiting_for_a_build_that_never_ends(self) -> None:
        example = self.approve(build=False)
        settings_override = self.settings(GALLERY_USE_WAIT_FOR_BUILD=0)
        with settings_override, mock.patch.object(services.jobs, "enqueue"):
            job = services.queue_use(example=example, user=self.user)
            services.perform_job(str(job.pk))  # parks, notes when it began to wait
            services.perform_job(str(job.pk))
        job.refresh_from_db()
        self.assertEqual(job.state, Job.State.DONE, job.message)
        self.assertIn("still being built", job.result["environment"]["reason"])

    def test_an_example_without_an_environment_is_copied_as_before(self) -> None:
        example = self.approve(None)
        plan = services.use_plan(example=example, user=self.user)
        self.assertEqual((plan["environment_state"], plan["kernel"]), ("none", ""))
        job = self.use(example)
        self.assertEqual((job.state, job.result["kernel"]), (Job.State.DONE, {}))
        self.assertFalse(builds().filter(kind=Job.Kind.ENVIRONMENT).exists())


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_concurrent_uses_on_real_workers_cause_one_build(
        settings, tmp_path: Path, shared: Path, wheels: Path, builder: str) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    settings.GALLERY_ENV_DIR = shared / f"store-{tmp_path.name}"
    settings.GALLERY_BUILD_INDEX_OPTIONS = f"--no-index --find-links {wheels}"
    redis.Redis.from_url(BROKER_URL).delete(*QUEUES.values())
    env = worker_env(settings, GALLERY_BUILD_USER=builder)
    others = [q for kind, q in QUEUES.items() if kind != "envs"]
    workers = [start_worker(env, tmp_path / "worker.log", queues=others, hostname="rest@%h")]
    try:
        contributor, reviewer = make_user("carla"), make_user("rhea", reviewer=True)
        submission = stage(contributor, title="Busy example", environment=SPEC)
        services.approve_submission(submission=submission, reviewer=reviewer)
        example = wait_for(lambda: Example.objects.filter(
            pk=submission.example_id, state=Example.State.APPROVED).first(),
            timeout=120, what="the approval's commit")
        # The build is queued at approval, but no worker of its queue runs yet: every Use
        # arrives while the environment is not built.
        users = [make_user(f"user{i:02d}") for i in range(12)]
        jobs = [services.queue_use(example=example, user=user) for user in users]
        wait_for(lambda: Job.objects.filter(
            pk__in=[j.pk for j in jobs], state=Job.State.QUEUED,
            message__startswith="Building the example's environment").count() == len(jobs),
            timeout=120, what="every Use to wait for the build")
        workers.append(start_worker(env, tmp_path / "envs.log", queues=[QUEUES["envs"]],
                                    hostname="envs@%h", concurrency=2))
        wait_for(lambda: Job.objects.filter(
            pk__in=[j.pk for j in jobs], state__in=[Job.State.DONE, Job.State.FAILED],
        ).count() == len(jobs), timeout=300, what="every Use to end")
    finally:
        for worker in workers:
            worker.stop()
    finished = Job.objects.filter(pk__in=[j.pk for j in jobs])
    assert {(j.state, j.message) for j in finished} == {(Job.State.DONE, "")}
    ran = builds().filter(kind=Job.Kind.ENVIRONMENT)
    assert [j.result.get("built") for j in ran if j.result.get("built")] == [True]
    assert Environment.objects.count() == 1
    store = settings.GALLERY_ENV_DIR
    assert len([p for p in store.iterdir() if not p.name.startswith(".")]) == 1
    names = {j.result["kernel"]["name"] for j in finished}
    assert len(names) == 1
    name, env_path = next(iter(names)), Environment.objects.get().path
    for user in users:
        assert kernel_json(user.username, name)["argv"][0] == f"{env_path}/bin/python"
    assert (Path(env_path) / environments.RECORD_FILE).is_file()

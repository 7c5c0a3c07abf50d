"""Runs as jobs: queued at staging (as the contributor) and after approval (as the runner),
recorded per revision, shown with the checks and as the example's badge; a change of verdict
notifies; the schedule spreads runs over the interval. Real kernels, real run_accounts."""

from __future__ import annotations

import io
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from gallery import previews, services
from gallery.models import Environment, Example, Job, Notification, Revision, Run
from gallery.services.runs import next_slot

from .base import GalleryTestCase, make_user, stage
from .conftest import BROKER_URL, QUEUES, start_worker, wait_for, worker_env
from .runkit import install_kernels, notebook

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs switch to real run_accounts: root")
PASSING = notebook("import os\nprint('hello from', os.getuid())", outputs={0: "hello\n"})
FAILING = notebook("x = 1", "import numpy_that_is_not_here", "print(x)")


class RunJobTests(GalleryTestCase):
    @pytest.fixture(autouse=True)
    def _runs(self, settings, run_root, kernel_env, run_accounts, tmp_path,  # noqa: F811
              monkeypatch) -> None:  # type: ignore[no-untyped-def]
        settings.GALLERY_RUN_DIR = run_root / f"scratch-{tmp_path.name}"
        settings.GALLERY_RUNNER_USER = run_accounts["runner"].name
        settings.GALLERY_RUN_CELL_TIMEOUT = 20
        # Approved examples run after approval; a run at staging only where a test says so.
        settings.GALLERY_RUN_AT_STAGING = False
        self.settings_ = settings
        monkeypatch.setenv("JUPYTER_PATH", install_kernels(run_root, kernel_env))
        self.kernel_env, self.run_accounts, self.run_root = kernel_env, run_accounts, run_root
        self.tag = tmp_path.name

    def setUp(self) -> None:
        self.owner = make_user(self.run_accounts["contributor"].name)

    def stage_run(self, nb: bytes, *, title: str = "Runs", data_links=None) -> Revision:  # type: ignore[no-untyped-def]
        with self.captureOnCommitCallbacks(execute=True):
            submission = services.stage_submission(
                contributor=self.owner,
                staged=services.StagedFiles(notebook_name="hello.ipynb", notebook=nb),
                meta=services.ExampleMeta(title=title, summary="Runs.", licence="CC-BY-4.0",
                                          kernel="gallery-test", data_links=data_links or []))
        return Revision.objects.get(pk=submission.revision_id)

    def approve(self, revision: Revision) -> Revision:
        with self.captureOnCommitCallbacks(execute=True):
            services.approve_submission(submission=revision.submission, reviewer=self.reviewer)
        return Revision.objects.get(pk=revision.pk)

    def run_again(self, revision: Revision, kind: str = Run.Kind.STAGING) -> Run:
        with self.captureOnCommitCallbacks(execute=True):
            run = services.queue_run(revision, kind=kind)
        return Run.objects.get(pk=run.pk)

    def test_it_runs_a_submission_as_its_contributor_and_shows_it_with_the_checks(self) -> None:
        self.settings_.GALLERY_RUN_AT_STAGING = True
        revision = self.stage_run(PASSING)
        run = Run.objects.get(revision=revision)
        assert (run.state, run.kind, run.account) == (
            Run.State.PASSED, Run.Kind.STAGING, self.run_accounts["contributor"].name)
        assert run.kernel == "gallery-test" and run.job.state == Job.State.DONE
        assert run.differences == [{"notebook": "hello.ipynb", "cell": 0}]
        executed = services.executed_notebook(run, "hello.ipynb").decode()
        assert f"hello from {self.run_accounts['contributor'].uid}" in executed
        self.client.force_login(self.owner)
        page = self.client.get(reverse("submission", args=[revision.submission.pk]))
        self.assertContains(page, "Ran top to bottom")
        self.assertContains(page, self.run_accounts["contributor"].name)

    def test_it_records_where_a_failing_example_broke_and_shows_it(self) -> None:
        revision = self.approve(self.stage_run(FAILING, title="Broken one"))
        run = revision.runs.filter(kind=Run.Kind.SCHEDULED).get()
        assert (run.state, run.failed_cell, run.error_name) == (
            Run.State.FAILED, 1, "ModuleNotFoundError")
        assert run.account == self.run_accounts["runner"].name
        assert "No module named 'numpy_that_is_not_here'" in run.error_text
        example = Example.objects.get(pk=revision.example_id)
        assert example.run_badge().startswith(
            f"Broken since {example.verdict_since:%Y-%m-%d}: cell 2, ModuleNotFoundError")
        self.client.force_login(self.user)
        page = self.client.get(reverse("example", args=[example.slug]))
        self.assertContains(page, "Broken since")
        self.assertContains(page, "numpy_that_is_not_here")
        self.assertContains(self.client.get(reverse("index")), "Broken since")

    def test_it_verifies_an_approved_example_in_its_built_environment(self) -> None:
        revision = self.stage_run(PASSING, title="In its environment")
        env = Environment.objects.create(key="e" * 64, state=Environment.State.READY,
                                         path=str(self.kernel_env), python="3.11")
        Revision.objects.filter(pk=revision.pk).update(environment=env)
        revision = self.approve(Revision.objects.get(pk=revision.pk))
        run = revision.runs.filter(kind=Run.Kind.SCHEDULED).get()
        assert run.state == Run.State.PASSED, run.reason
        assert (run.environment_id, run.kernel) == (
            env.pk, "environment eeeeeeeeeeee (Python 3.11)")
        example = Example.objects.get(pk=revision.example_id)
        assert example.run_badge() == (f"Verified {run.finished:%Y-%m-%d} in environment "
                                       "eeeeeeeeeeee (Python 3.11)")
        self.client.force_login(self.user)
        self.assertContains(self.client.get(reverse("index") + "?verified=1"), example.title)
        detail = self.client.get(f"/api/v1/examples/{example.slug}").json()
        assert (detail["run_state"], detail["run"]) == ("passed", example.run_badge())
        assert services.verified_notebook(revision)[0] == run

    def test_it_previews_a_notebook_saved_without_outputs_with_those_of_its_run(self) -> None:
        revision = self.approve(self.stage_run(notebook("print(6 * 7)"), title="Bare"))
        run = revision.runs.get(kind=Run.Kind.SCHEDULED)
        assert run.state == Run.State.PASSED and run.outputs_sha256
        assert services.verified_preview(revision) == run
        key = previews.revision_preview_key(revision, notebook_sha256=run.outputs_sha256)
        html = Path(services.preview_path(key)).read_text()
        assert "42" in html
        self.client.force_login(self.user)
        page = self.client.get(reverse("example", args=[revision.example.slug]))
        self.assertContains(page, "The notebook was saved without outputs: shown here with "
                                  "the outputs of its verified run")
        self.assertContains(page, f"{key}.html")
        with_outputs = self.approve(self.stage_run(PASSING, title="Saved with outputs"))
        assert with_outputs.runs.get(kind=Run.Kind.SCHEDULED).outputs_sha256 == ""

    def test_it_tells_contributor_and_reviewers_when_an_example_breaks(self) -> None:
        data = self.run_root / f"data-{self.tag}"
        data.mkdir(mode=0o755)
        (data / "numbers.txt").write_text("1 2 3\n")
        (data / "numbers.txt").chmod(0o644)
        revision = self.approve(self.stage_run(
            notebook("print(open('numbers/numbers.txt').read())"), title="Will break",
            data_links=[{"name": "numbers", "target": str(data)}]))
        assert revision.runs.get(kind=Run.Kind.SCHEDULED).state == Run.State.PASSED
        assert not Notification.objects.filter(kind=Notification.Kind.RUN).exists()
        (data / "numbers.txt").unlink()  # the data moved away: the example breaks
        # A week and a half later (past any slot of the interval), the schedule runs it again.
        Run.objects.filter(revision=revision).update(queued=timezone.now() - timedelta(days=11))
        with self.captureOnCommitCallbacks(execute=True):
            assert services.schedule_verifications() == 1
        run = revision.runs.order_by("-queued").first()
        assert (run.state, run.error_name) == (Run.State.FAILED, "FileNotFoundError")
        told = Notification.objects.filter(kind=Notification.Kind.RUN)
        assert {n.user_id for n in told} == {self.owner.pk, self.reviewer.pk}
        assert "is broken: cell 1, FileNotFoundError" in told.first().message
        (data / "numbers.txt").write_text("back\n")
        again = self.run_again(revision, Run.Kind.SCHEDULED)
        assert again.state == Run.State.PASSED
        # The executed notebooks of older runs are forgotten, but those of the last pass.
        assert services.verified_notebook(revision)[0] == again
        assert services.executed_notebook(run, "hello.ipynb") is None
        told = Notification.objects.filter(kind=Notification.Kind.RUN)
        assert told.count() == 4
        assert "runs again" in told.first().message

    def test_it_says_why_no_run_was_made_without_a_runner_account(self) -> None:
        revision = self.approve(self.stage_run(PASSING, title="No runner"))
        with self.settings(GALLERY_RUNNER_USER=""):
            run = self.run_again(revision, Run.Kind.SCHEDULED)
        assert run.state == Run.State.NOT_RUN
        assert "set GALLERY_RUNNER_USER" in run.reason
        self.client.force_login(self.user)
        self.assertContains(self.client.get(reverse("example", args=[revision.example.slug])),
                            "set GALLERY_RUNNER_USER")

    def test_it_lets_the_contributor_and_reviewers_run_it_again(self) -> None:
        revision = self.stage_run(PASSING, title="Again")
        self.client.force_login(self.user)
        url = reverse("rerun", args=[revision.example.slug])
        assert self.client.post(url).status_code == 403
        self.client.force_login(self.owner)
        before = revision.runs.count()
        with self.captureOnCommitCallbacks(execute=True):
            response = self.client.post(url)
        assert response.status_code == 302
        assert revision.runs.count() == before + 1

    def test_it_checks_a_candidate_stack_without_changing_any_badge(self) -> None:
        uses = self.approve(self.stage_run(notebook("import gallery_today\n"
                                                    "print(gallery_today.ANSWER)"),
                                           title="Uses today"))
        plain = self.approve(self.stage_run(PASSING, title="Plain"))
        badges = {e.pk: (e.last_run_id, e.verdict_since) for e in Example.objects.all()}
        assert {e.last_run.state for e in Example.objects.all()} == {Run.State.PASSED}
        report_path = Path(self.run_root) / f"report-{self.tag}.json"
        out = io.StringIO()
        call_command("verify_examples", "--kernel", "gallery-candidate", "--report",
                     str(report_path), stdout=out)
        report = json.loads(report_path.read_text())
        assert (report["examples"], report["passing"]) == (2, 1)
        assert [(e["slug"], e["today"], e["candidate"]) for e in report["regressions"]] == [
            (uses.example.slug, "passed", "failed")]
        assert report["regressions"][0]["where"].startswith(
            "cell 1, ModuleNotFoundError: No module named 'gallery_today'")
        assert "1 of 2 pass in kernel:gallery-candidate; 1 pass today and fail in it" \
            in out.getvalue()
        assert {e.pk: (e.last_run_id, e.verdict_since) for e in Example.objects.all()} == badges
        self.client.force_login(self.reviewer)
        self.assertContains(self.client.get(reverse("admin:gallery_run_changelist")),
                            reverse("admin:gallery_run_candidates"))
        page = self.client.get(reverse("admin:gallery_run_candidates") + "?batch="
                               + report["batch"])
        self.assertContains(page, "Pass today, fail in the candidate")
        self.assertContains(page, "No module named")
        call_command("verify_examples", "--python", str(self.kernel_env / "bin" / "python"),
                     "--only", plain.example.slug, "--report", str(report_path),
                     stdout=io.StringIO())
        assert json.loads(report_path.read_text())["passing"] == 1
        with pytest.raises(CommandError, match="No approved example is named nope"):
            call_command("verify_examples", "--kernel", "x", "--only", "nope")


@pytest.mark.django_db
def test_it_lists_broken_examples_first_on_the_desk(client) -> None:  # type: ignore[no-untyped-def]
    contributor, reviewer = make_user("carla"), make_user("rhea", reviewer=True)
    for title, state in (("Zebra broken", Run.State.FAILED), ("Alpha fine", Run.State.PASSED),
                         ("Beta broken", Run.State.FAILED)):
        revision = stage(contributor, title=title, environment=None).revision
        run = Run.objects.create(revision=revision, kind=Run.Kind.STAGING, state=state,
                                 finished=timezone.now(), failed_cell=0, error_name="ValueError",
                                 kernel="k")
        Example.objects.filter(pk=revision.example_id).update(last_run=run,
                                                               verdict_since=timezone.now())
    client.force_login(reviewer)
    page = client.get(reverse("admin:gallery_example_changelist")).content.decode()
    broken = [page.index("Zebra broken"), page.index("Beta broken")]
    assert max(broken) < page.index("Alpha fine")
    assert "Broken since" in page and "cell 1, ValueError" in page


@pytest.mark.django_db
def test_it_spreads_scheduled_runs_over_the_interval(
        settings, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    week = 7 * 24 * 3600
    slots = sorted(next_slot(pk, 0.0, week) % week for pk in range(1, 201))
    assert slots[0] < week / 10 and slots[-1] > week * 9 / 10
    for pk in (1, 2, 3):  # once settled, every run is one interval after the last
        first = next_slot(pk, 1000.0, week)
        assert week / 2 <= first - 1000.0 <= week * 1.5
        assert next_slot(pk, first, week) == pytest.approx(first + week)
    settings.GALLERY_VERIFY_INTERVAL = week
    contributor, reviewer = make_user("carla"), make_user("rhea", reviewer=True)
    settings.GALLERY_RUN_AT_STAGING = False
    with django_capture_on_commit_callbacks(execute=False):
        submission = stage(contributor, environment=None)
    with django_capture_on_commit_callbacks(execute=True):  # the commit job, not the run
        services.approve_submission(submission=submission, reviewer=reviewer)
    revision = Revision.objects.get(pk=submission.revision_id)
    Run.objects.filter(revision=revision).update(state=Run.State.PASSED,
                                                 queued=timezone.now() - timedelta(days=20))
    assert services.schedule_verifications() == 1
    assert services.schedule_verifications() == 0  # on its way already


@pytest.mark.django_db
def test_it_counts_runs_and_unverified_examples_in_the_metrics(client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.GALLERY_METRICS_TOKEN = "t" * 32
    contributor = make_user("carla")
    revision = stage(contributor, environment=None).revision
    Example.objects.filter(pk=revision.example_id).update(state=Example.State.APPROVED,
                                                          current_revision=revision)
    Run.objects.create(revision=revision, kind=Run.Kind.SCHEDULED, state=Run.State.FAILED,
                       seconds=3.5, finished=timezone.now())
    text = client.get("/metrics", HTTP_AUTHORIZATION="Bearer " + "t" * 32).content.decode()
    assert 'gallery_runs{kind="scheduled",state="failed"} 1.0' in text
    assert 'gallery_run_duration_seconds_bucket{kind="scheduled",le="5.0"} 1.0' in text
    assert "gallery_examples_unverified 1.0" in text


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_it_runs_on_a_worker_of_the_runs_queue_and_outlives_a_fork_bomb(
        settings, tmp_path, run_root, kernel_env, run_accounts) -> None:  # type: ignore[no-untyped-def]
    settings.GALLERY_RUN_DIR = run_root / f"scratch-{tmp_path.name}"
    redis.Redis.from_url(BROKER_URL).delete(*QUEUES.values())
    env = worker_env(settings, GALLERY_RUNNER_USER=run_accounts["runner"].name,
                     GALLERY_RUN_DIR=str(settings.GALLERY_RUN_DIR), GALLERY_RUN_CELL_TIMEOUT="5",
                     GALLERY_RUN_MAX_PROCESSES="48",
                     JUPYTER_PATH=install_kernels(run_root, kernel_env))
    others = [q for kind, q in QUEUES.items() if kind != "runs"]
    workers = [start_worker(env, tmp_path / "worker.log", queues=others, hostname="rest@%h"),
               start_worker(env, tmp_path / "runs.log", queues=[QUEUES["runs"]],
                            hostname="runs@%h", concurrency=1)]
    try:
        owner = make_user(run_accounts["contributor"].name)
        staged = {}
        for title, nb in (("Bomb", notebook("import os\nwhile True:\n    os.fork()")),
                          ("Fine", PASSING)):
            staged[title] = services.stage_submission(
                contributor=owner,
                staged=services.StagedFiles(notebook_name="hello.ipynb", notebook=nb),
                meta=services.ExampleMeta(title=title, summary="Runs.", licence="CC-BY-4.0",
                                          kernel="gallery-test")).revision_id

        def finished() -> list[Run] | None:
            found = list(Run.objects.filter(revision__in=staged.values()).select_related(
                "revision__example", "job"))
            return found if len(found) == 2 and all(r.finished_state for r in found) else None

        done = wait_for(finished, timeout=180, what="both runs")
        by_title = {r.revision.example.title: r for r in done}
        assert by_title["Bomb"].state == Run.State.FAILED and by_title["Bomb"].reason
        assert by_title["Fine"].state == Run.State.PASSED, by_title["Fine"].reason
        assert by_title["Fine"].account == run_accounts["contributor"].name
        assert all(r.job.worker.startswith("runs@") for r in done)
        assert workers[1].process.poll() is None  # the runs worker still serves
    finally:
        for worker in workers:
            worker.stop()

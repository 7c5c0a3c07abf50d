"""Operating the gallery: health, detailed health, Prometheus metrics, logs, deploy checks."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import OperationalError, connection
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from gallery import logs, services
from gallery.celery import app
from gallery.models import Example

from .base import GalleryTestCase, notebook_bytes, stage
from .conftest import BROKER_URL, QUEUES, ROOT

TOKEN = "metrics-" + "k" * 24


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def broker_down() -> Iterator[None]:
    """Point the broker at a loopback port where nothing listens."""
    before = app.conf.broker_url
    app.conf.broker_url = f"redis://127.0.0.1:{closed_port()}/0"
    try:
        yield
    finally:
        app.conf.broker_url = before


def database_down(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
    raise OperationalError("the database is down (test)")


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


@contextmanager
def captured_log() -> Iterator[io.StringIO]:
    """What the configured console handler writes, with its real filters and formatter."""
    handler = next(h for h in logging.getLogger().handlers
                   if any(isinstance(f, logs.RedactFilter) for f in h.filters))
    stream = io.StringIO()
    old = handler.setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        handler.setStream(old)  # type: ignore[attr-defined]


class HealthTests(GalleryTestCase):
    def test_it_answers_health_without_the_database(self):
        with self.assertNumQueries(0):
            response = self.client.get("/health")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), {"status": "ok"})
        self.assertIn("no-cache", response["Cache-Control"])

    def test_it_answers_the_hubs_poll_of_the_root_with_the_database_down(self):
        with connection.execute_wrapper(database_down):
            root = self.client.get("/")
            health = self.client.get("/health")
        self.assertLess(root.status_code, 500)
        self.assertEqual(root.status_code, 302)
        self.assertEqual(health.status_code, 200)

    def test_it_reports_each_part_with_a_plain_status(self):
        self.stage_and_approve()
        self.client.force_login(self.reviewer)
        report = self.client.get("/health/detail").json()
        checks = report["checks"]
        self.assertEqual(set(checks), {"database", "broker", "workers", "repository", "jobs",
                                       "disk", "runs"})
        for check in checks.values():
            self.assertIn(check["status"], {"ok", "warning", "error", "unknown"})
            self.assertTrue(check["message"])
        self.assertEqual(checks["database"]["status"], "ok")
        self.assertEqual(checks["broker"]["status"], "ok")
        self.assertEqual(checks["repository"]["status"], "ok")
        self.assertEqual(checks["disk"]["status"], "ok")
        # No worker takes this run's queues: the report names them, and the whole is an error.
        self.assertEqual(checks["workers"]["status"], "error")
        self.assertIn("default", checks["workers"]["message"])
        self.assertEqual(report["status"], "error")
        # No runner account here: runs are not made, and the report says how to fix it.
        self.assertEqual(checks["runs"]["status"], "warning")
        self.assertIn("set GALLERY_RUNNER_USER", checks["runs"]["message"])
        self.assertIn(checks["runs"]["sandbox"].split(":")[0], {"bubblewrap works", "missing"})

    def test_it_says_the_broker_is_down_without_a_5xx(self):
        self.client.force_login(self.reviewer)
        with broker_down():
            detail = self.client.get("/health/detail")
            health = self.client.get("/health")
        self.assertEqual(detail.status_code, 200)
        checks = detail.json()["checks"]
        self.assertEqual(checks["broker"]["status"], "error")
        self.assertIn("Error", checks["broker"]["message"])
        self.assertEqual(checks["workers"]["status"], "unknown")
        self.assertEqual(checks["database"]["status"], "ok")
        self.assertEqual(detail.json()["status"], "error")
        self.assertEqual(health.status_code, 200)

    @override_settings(GALLERY_METRICS_TOKEN=TOKEN)
    def test_it_still_exports_metrics_with_the_broker_down(self):
        with broker_down():
            response = self.client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        self.assertEqual(response.status_code, 200)
        found = samples(response.content.decode())
        self.assertEqual(value(found, "gallery_broker_up"), 0)
        self.assertEqual(value(found, "gallery_database_up"), 1)

    @override_settings(GALLERY_METRICS_TOKEN=TOKEN)
    def test_it_reports_the_database_down_to_the_token_holder(self):
        with connection.execute_wrapper(database_down):
            detail = self.client.get("/health/detail", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
            metrics = self.client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        self.assertEqual(detail.status_code, 200)
        checks = detail.json()["checks"]
        self.assertEqual(checks["database"]["status"], "error")
        self.assertIn("database is down", checks["database"]["message"])
        self.assertEqual(checks["repository"]["status"], "unknown")
        self.assertEqual(metrics.status_code, 200)
        self.assertEqual(value(samples(metrics.content.decode()), "gallery_database_up"), 0)

    def test_it_names_an_approval_the_repository_lacks(self):
        self.stage_and_approve()
        shutil.rmtree(settings.GALLERY_REPO_PATH)
        self.client.force_login(self.reviewer)
        repository = self.client.get("/health/detail").json()["checks"]["repository"]
        self.assertEqual(repository["status"], "error")
        self.assertIn("approvals", repository["message"])

    def test_it_warns_when_free_disk_runs_low(self):
        free_mb = shutil.disk_usage(settings.GALLERY_DATA_DIR.parent).free // 2**20
        self.client.force_login(self.reviewer)
        with override_settings(GALLERY_MIN_FREE_DISK_MB=free_mb // 2):
            low = self.client.get("/health/detail").json()["checks"]["disk"]
        with override_settings(GALLERY_MIN_FREE_DISK_MB=free_mb * 2):
            out = self.client.get("/health/detail").json()["checks"]["disk"]
        self.assertEqual(low["status"], "warning")
        self.assertEqual(out["status"], "error")

    @override_settings(SECURE_SSL_REDIRECT=True)
    def test_it_keeps_health_and_metrics_on_plain_http_when_pages_redirect(self):
        for prefix in ("", "/services/gallery"):
            self.assertEqual(self.client.get("/health", SCRIPT_NAME=prefix).status_code, 200)
            self.assertEqual(self.client.get("/metrics", SCRIPT_NAME=prefix).status_code, 403)
            self.assertEqual(self.client.get("/health/detail", SCRIPT_NAME=prefix).status_code,
                             403)
            self.assertEqual(self.client.get("/", SCRIPT_NAME=prefix).status_code, 301)

    def test_it_keeps_the_detail_from_users_and_strangers(self):
        self.assertEqual(self.client.get("/health/detail").status_code, 403)
        self.client.force_login(self.user)
        self.assertEqual(self.client.get("/health/detail").status_code, 403)


@override_settings(GALLERY_METRICS_TOKEN=TOKEN)
class MetricsTests(GalleryTestCase):
    def scrape(self, **headers: str) -> dict:
        response = self.client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **headers)
        self.assertEqual(response.status_code, 200)
        self.assertTrue(response["Content-Type"].startswith("text/plain"))
        return samples(response.content.decode())

    def test_it_refuses_callers_without_the_token(self):
        self.assertEqual(self.client.get("/metrics").status_code, 403)
        wrong = self.client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope")
        self.assertEqual(wrong.status_code, 403)
        self.assertNotIn(TOKEN, wrong.content.decode())

    @override_settings(GALLERY_METRICS_TOKEN="", GALLERY_METRICS_ALLOWED_NETWORKS=["127.0.0.0/8"])
    def test_it_lets_internal_callers_in_but_not_through_a_proxy(self):
        self.assertEqual(self.client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code, 200)
        self.assertEqual(self.client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code, 403)
        proxied = self.client.get("/metrics", REMOTE_ADDR="127.0.0.1",
                                  HTTP_X_FORWARDED_FOR="203.0.113.9")
        self.assertEqual(proxied.status_code, 403)

    def test_it_counts_use_jobs_by_state_with_durations(self):
        submission = self.stage_and_approve()
        example = Example.objects.get(pk=submission.example_id)
        with self.captureOnCommitCallbacks(execute=True):
            services.queue_use(example=example, user=self.user)
        found = self.scrape()
        self.assertEqual(value(found, "gallery_jobs", kind="use", state="done"), 1)
        self.assertEqual(value(found, "gallery_jobs", kind="use", state="failed"), 0)
        self.assertEqual(value(found, "gallery_jobs", kind="commit", state="done"), 1)
        self.assertEqual(value(found, "gallery_job_duration_seconds_count", kind="use"), 1)
        self.assertEqual(value(found, "gallery_job_duration_seconds_bucket", kind="use",
                               le="+Inf"), 1)
        self.assertGreater(value(found, "gallery_job_duration_seconds_sum", kind="use"), 0)
        self.assertEqual(value(found, "gallery_examples", state="approved"), 1)

    def test_it_reports_render_durations_and_failures(self):
        self.stage_and_approve()
        with self.captureOnCommitCallbacks() as callbacks:
            broken = stage(self.contributor, title="Broken preview",
                           notebook=notebook_bytes(text="print('broken')"))
        # The staged copy is damaged before the worker renders it.
        folder = services.staged_folder(broken.revision)
        (folder / broken.revision.notebook_name).write_text("{not json")
        for callback in callbacks:
            callback()
        found = self.scrape()
        self.assertEqual(value(found, "gallery_preview_render_duration_seconds_count",
                               kind="preview"), 1)
        self.assertGreater(value(found, "gallery_preview_render_duration_seconds_sum",
                                 kind="preview"), 0)
        self.assertEqual(value(found, "gallery_previews", state="ready"), 1)
        self.assertEqual(value(found, "gallery_previews", state="failed"), 1)
        self.assertEqual(value(found, "gallery_preview_render_failures"), 1)
        self.assertEqual(value(found, "gallery_jobs", kind="preview", state="failed"), 1)

    def test_it_reports_queue_depths_from_the_broker(self):
        app.conf.task_always_eager = False
        client = redis.Redis.from_url(BROKER_URL)
        client.delete(*QUEUES.values())
        try:
            with self.captureOnCommitCallbacks(execute=True):
                stage(self.contributor)  # a checks job (default) and a preview job
            found = self.scrape()
        finally:
            client.delete(*QUEUES.values())
        self.assertEqual(value(found, "gallery_broker_up"), 1)
        self.assertEqual(value(found, "gallery_queue_length", kind="default",
                               queue=QUEUES["default"]), 1)
        self.assertEqual(value(found, "gallery_queue_length", kind="previews",
                               queue=QUEUES["previews"]), 1)
        self.assertEqual(value(found, "gallery_queue_length", kind="use", queue=QUEUES["use"]), 0)
        self.assertEqual(value(found, "gallery_jobs", kind="checks", state="queued"), 1)

    def test_it_measures_request_latency_by_view(self):
        before = self.scrape().get(
            ("gallery_http_request_duration_seconds_count",
             frozenset({"method": "GET", "view": "health", "status": "200"}.items())), 0)
        for _ in range(3):
            self.client.get("/health")
        self.client.get("/no-such-page")
        found = self.scrape()
        self.assertEqual(value(found, "gallery_http_request_duration_seconds_count",
                               method="GET", view="health", status="200"), before + 3)
        self.assertGreaterEqual(value(found, "gallery_http_request_duration_seconds_count",
                                      method="GET", view="unmatched", status="404"), 1)


class LogTests(GalleryTestCase):
    def test_it_masks_tokens_passwords_and_session_ids(self):
        secrets = ["hub-token-0123456789", "hunter2-pass", "sess-abcdef0123", "pg-secret-pw"]
        log = logging.getLogger("gallery.test")
        with captured_log() as out:
            log.warning("calling hub with Authorization: token %s", secrets[0])
            log.warning("login form %s", {"username": "ursula", "password": secrets[1]})
            log.warning("Cookie: gallery-sessionid=%s; gallery-csrftoken=x", secrets[2])
            log.warning("database postgres://gallery:%s@db:5432/gallery", secrets[3])
            log.warning("callback ?code=1&state=2&access_token=%s", secrets[0])
            try:
                raise RuntimeError(f"hub refused token={secrets[0]}")
            except RuntimeError:
                log.exception("it failed")
            log.warning("the key is %s", settings.SECRET_KEY)
            self.client.get(f"/health?token={secrets[0]}", HTTP_AUTHORIZATION=f"token {secrets[0]}",
                            HTTP_COOKIE=f"gallery-sessionid={secrets[2]}")
        text = out.getvalue()
        for secret in [*secrets, settings.SECRET_KEY]:
            self.assertNotIn(secret, text)
        self.assertIn("[redacted]", text)
        self.assertIn("ursula", text)  # what is not secret stays readable
        self.assertIn("GET /health 200", text)

    def test_it_writes_one_line_per_event_with_the_request_id(self):
        with captured_log() as out:
            response = self.client.get("/health", HTTP_X_REQUEST_ID="req-0123456789")
            generated = self.client.get("/health")["X-Request-Id"]
            try:
                raise ValueError("first line\nsecond line")
            except ValueError:
                logging.getLogger("gallery.test").exception("with a traceback")
        self.assertEqual(response["X-Request-Id"], "req-0123456789")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 3)
        self.assertIn("req=req-0123456789", lines[0])
        self.assertIn(f"req={generated}", lines[1])
        self.assertIn("Traceback", lines[2])
        self.assertIn("second line", lines[2])

    def test_it_refuses_a_malformed_request_id(self):
        response = self.client.get("/health", HTTP_X_REQUEST_ID="bad id\nwith=newline")
        self.assertNotIn("bad", response["X-Request-Id"])
        self.assertRegex(response["X-Request-Id"], r"^[0-9a-f]{16}$")

    def test_it_tags_job_lines_with_the_job_id(self):
        from gallery import tasks

        submission = self.stage_and_approve()
        example = Example.objects.get(pk=submission.example_id)
        with captured_log() as out:
            with self.captureOnCommitCallbacks(execute=True):
                job = services.queue_use(example=example, user=self.user)
            tasks.run_use.apply(args=[str(job.pk)])  # a second delivery logs nothing new
        line = next(line for line in out.getvalue().splitlines() if "(use) done" in line)
        self.assertIn(f"job={job.pk}", line)

    def test_it_writes_json_when_asked(self):
        code = (
            "import django, logging; django.setup()\n"
            "from gallery import logs\n"
            "with logs.job_context('job-42'):\n"
            "    try:\n"
            "        raise KeyError('password=swordfish')\n"
            "    except KeyError:\n"
            "        logging.getLogger('gallery.x').exception('boom\\nagain')\n"
        )
        env = {**os.environ, "GALLERY_LOG_FORMAT": "json", "GALLERY_SECRET_KEY": "x" * 50,
               "GALLERY_DATA_DIR": str(settings.GALLERY_DATA_DIR),
               "DJANGO_SETTINGS_MODULE": "gallery.settings"}
        run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr)
        lines = run.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1)
        event = json.loads(lines[0])
        self.assertEqual(event["level"], "ERROR")
        self.assertEqual(event["job_id"], "job-42")
        self.assertEqual(event["message"], "boom\nagain")
        self.assertIn("KeyError", event["exc"])
        self.assertNotIn("swordfish", lines[0])

    def test_it_refuses_an_unknown_log_format(self):
        env = {**os.environ, "GALLERY_LOG_FORMAT": "xml", "GALLERY_SECRET_KEY": "x" * 50,
               "GALLERY_DATA_DIR": str(settings.GALLERY_DATA_DIR)}
        run = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("GALLERY_LOG_FORMAT", run.stderr)


def test_it_serves_collected_static_files_without_debug(tmp_path, settings):
    from django.core.management import call_command
    from django.test import Client

    settings.STATIC_ROOT = tmp_path / "static"
    settings.DEBUG = False
    call_command("collectstatic", interactive=False, verbosity=0)
    response = Client().get("/static/gallery/gallery.css", SCRIPT_NAME="/services/gallery")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == (
        ROOT / "static" / "gallery" / "gallery.css").read_bytes()
    assert "max-age" in response["Cache-Control"]
    assert Client().get("/static/gallery/missing.css").status_code == 404

def production_env(tmp: Path) -> dict[str, str]:
    """deploy/gallery.env, the production settings the README shows, with its secret files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GALLERY_", "JUPYTERHUB_"))}
    for line in (ROOT / "deploy" / "gallery.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, val = line.partition("=")
            env[key.strip()] = val.strip()
    for key in [k for k in env if k.endswith("_FILE")]:
        secret = tmp / key.lower()
        secret.write_text("postgres://gallery@127.0.0.1:5432/gallery" if "DATABASE" in key
                          else os.urandom(32).hex())
        env[key] = str(secret)
    env["GALLERY_DATA_DIR"] = str(tmp / "data")
    return env


def test_it_passes_check_deploy_with_the_production_settings(tmp_path):
    run = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=production_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no issues" in run.stdout + run.stderr


def test_it_fails_check_deploy_with_the_development_defaults():
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    with pytest.raises(SystemCheckError) as failed:
        call_command("check", deploy=True, fail_level="WARNING")
    assert "SECURE_HSTS_SECONDS" in str(failed.value)


def test_it_deploys_one_worker_per_queue_with_the_right_isolation():
    import configparser

    import yaml

    known = (ROOT / "gallery" / "settings.py").read_text()
    queues = {"default": "gallery", "previews": "gallery-previews", "use": "gallery-use",
              "envs": "gallery-envs"}
    units = {}
    for path in (ROOT / "deploy" / "systemd").glob("*.service"):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read_string(path.read_text().replace("\\\n", " "))
        units[path.stem] = unit
    for kind, queue in queues.items():
        start = units[f"gallery-worker-{kind}"]["Service"]["ExecStart"].split()
        assert start[start.index("-Q") + 1] == queue
        assert start[start.index("-n") + 1].startswith(f"{kind}@")
    previews = units["gallery-worker-previews"]["Service"]
    assert previews["IPAddressDeny"] == "any"
    assert previews["ProtectHome"] == "yes"
    assert "/home" in units["gallery-worker-use"]["Unit"]["RequiresMountsFor"]
    assert "gunicorn.conf.py" in units["gallery-web"]["Service"]["ExecStart"]
    # Unused environments are removed daily, by a timer or a CronJob.
    cleanup = "manage.py remove_unused_environments"
    assert cleanup in units["gallery-envs-cleanup"]["Service"]["ExecStart"]
    assert "OnCalendar" in (ROOT / "deploy/systemd/gallery-envs-cleanup.timer").read_text()

    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "gallery.yaml").read_text()))
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for kind, queue in queues.items():
        command = deployments[f"gallery-worker-{kind}"]["spec"]["template"]["spec"][
            "containers"][0]["command"]
        assert command[command.index("-Q") + 1] == queue
    web = deployments["gallery-web"]["spec"]["template"]["spec"]["containers"][0]
    assert web["readinessProbe"]["httpGet"]["path"] == "/services/gallery/health"
    assert deployments["gallery-beat"]["spec"]["replicas"] == 1
    cron = next(d for d in docs if d["kind"] == "CronJob")
    assert " ".join(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0][
        "command"]).endswith(cleanup)
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    assert "Egress" in policies["gallery-worker-previews"]["spec"]["policyTypes"]

    # Every variable the deployment sets is one the settings read (a typo would be ignored).
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    env_file = [line.partition("=")[0] for line in
                (ROOT / "deploy" / "gallery.env").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for name in [*config, *env_file]:
        assert f'"{name.removesuffix("_FILE")}"' in known, name

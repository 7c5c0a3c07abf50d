"""The multi-machine layout on one machine: gunicorn web and one worker per queue, each its own
process with its own hostname, sharing only PostgreSQL, Redis and the data folders.

The test speaks to the web over HTTP only, as people and the other nodes do, and reads the job
rows at the end to check that every task ran on the queue it belongs to.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from .base import notebook_bytes
from .conftest import BROKER_URL, QUEUES, ROOT, RUN_ID, Worker, start_worker, wait_for, worker_env

pytestmark = pytest.mark.worker

PG_ADMIN = os.environ.get("GALLERY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
PASSWORD = "multinode-" + uuid.uuid4().hex
TOKEN = "metrics-" + uuid.uuid4().hex


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for this test, dropped afterwards."""
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN}: {exc}")
    name = f"gallery_multinode_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def login(base: str, username: str) -> requests.Session:
    session = requests.Session()
    session.get(f"{base}/accounts/login/", timeout=30).raise_for_status()
    response = session.post(f"{base}/accounts/login/", timeout=30, allow_redirects=False, data={
        "username": username, "password": PASSWORD,
        "csrfmiddlewaretoken": session.cookies["gallery-csrftoken"]})
    assert response.status_code == 302, response.text[:500]
    session.headers["X-CSRFToken"] = session.cookies["gallery-csrftoken"]
    return session


@pytest.fixture
def stack(settings, tmp_path: Path, postgres_url: str) -> Iterator[dict[str, object]]:  # type: ignore[no-untyped-def]
    env = worker_env(settings, GALLERY_DATABASE_URL=postgres_url, GALLERY_DEMO_PASSWORD=PASSWORD,
                     GALLERY_METRICS_TOKEN=TOKEN,
                     PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "web-metrics"))
    run = subprocess.run([sys.executable, "-c", (
        "import django; django.setup()\n"
        "from django.core.management import call_command\n"
        "call_command('migrate', interactive=False, verbosity=0)\n"
        "call_command('setup_demo_users')\n")], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    redis.Redis.from_url(BROKER_URL).delete(*QUEUES.values())
    hosts = {kind: f"{kind}@node-{kind}-{RUN_ID}" for kind in QUEUES}
    workers: list[Worker] = [
        start_worker(env, tmp_path / f"worker-{kind}.log", queues=[QUEUES[kind]],
                     hostname=hosts[kind], concurrency=1)
        for kind in QUEUES
    ]
    port = free_port()
    web_log = (tmp_path / "web.log").open("ab")
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py",
         "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        cwd=ROOT, env=env, stdout=web_log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(base), timeout=90, what="gunicorn to answer")
        yield {"base": base, "hosts": hosts, "db": postgres_url, "logs": tmp_path}
    finally:
        # Stop all at once, then wait: the nodes shut down side by side, as they would.
        for process in [web, *(w.process for w in workers)]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for worker in workers:
            worker.stop()
        web.wait(30)


def _up(base: str) -> bool:
    try:
        return requests.get(f"{base}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_it_runs_each_task_on_the_queue_it_belongs_to(stack, settings) -> None:  # type: ignore[no-untyped-def]
    base, hosts = stack["base"], stack["hosts"]
    user = login(base, "demo-user")
    staged = user.post(f"{base}/api/v1/submissions", timeout=60, files={
        "notebook": ("multinode.ipynb", notebook_bytes(text="print('multinode')"))},
        data={"title": "Across nodes", "summary": "Runs on three workers", "tags": "demo"})
    assert staged.status_code == 201, staged.text
    submission = staged.json()
    # The preview is rendered by the previews worker and served by the web.
    wait_for(lambda: user.get(base + submission["preview_url"], timeout=10).status_code == 200,
             timeout=120, what="the preview")
    assert "multinode" in user.get(base + submission["preview_url"], timeout=10).text

    reviewer = login(base, "demo-reviewer")
    decided = reviewer.post(f"{base}/submissions/{submission['id']}/review", timeout=30,
                            allow_redirects=False, data={
                                "decision": "approve", "comment": "fine",
                                "csrfmiddlewaretoken": reviewer.cookies["gallery-csrftoken"]})
    assert decided.status_code == 302, decided.text[:500]
    slug = submission["example"]
    wait_for(lambda: user.get(f"{base}/api/v1/examples/{slug}", timeout=10).json().get("state")
             == "approved", timeout=120, what="the approval commit")

    used = user.post(f"{base}/api/v1/examples/{slug}/use", json={}, timeout=30)
    assert used.status_code == 202, used.text
    job = wait_for(lambda: _finished(user, base, used.json()["id"]), timeout=120,
                   what="the Use job")
    assert job["state"] == "done", job
    home = Path(settings.GALLERY_HOME_TEMPLATE.format(username="demo-user"))
    assert list(home.rglob("multinode.ipynb")), f"no copy in {home}"

    with psycopg.connect(stack["db"]) as db:
        rows = db.execute("SELECT kind, state, worker FROM gallery_job").fetchall()
    expected = {"checks": hosts["default"], "commit": hosts["default"],
                "preview": hosts["previews"], "use": hosts["use"], "run": hosts["runs"]}
    assert {kind for kind, _, _ in rows} >= set(expected)
    for kind, state, worker in rows:
        assert state == "done", (kind, state, worker)
        # The worker's hostname, possibly followed by ":<pid>:<attempt>".
        assert worker.split(":")[0] == expected[kind], (kind, worker)

    # The operators' view of the same nodes: every queue served, metrics from both web workers.
    auth = {"Authorization": f"Bearer {TOKEN}"}
    health = requests.get(f"{base}/health/detail", headers=auth, timeout=30).json()
    workers = health["checks"]["workers"]
    assert workers["status"] == "ok", workers
    assert {k: v for k, v in workers["workers"].items()} == {
        kind: [host] for kind, host in hosts.items()}
    assert health["checks"]["database"]["vendor"] == "postgresql"
    scraped = requests.get(f"{base}/metrics", headers=auth, timeout=30).text
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(scraped) for s in family.samples}
    assert found[("gallery_jobs", (("kind", "use"), ("state", "done")))] == 1
    assert found[("gallery_job_duration_seconds_count", (("kind", "preview"),))] >= 1
    health_polls = sum(v for (name, labels), v in found.items()
                       if name == "gallery_http_request_duration_seconds_count"
                       and ("view", "health") in labels)
    assert health_polls >= 1
    requests_seen = sum(v for (name, _), v in found.items()
                        if name == "gallery_http_request_duration_seconds_count")
    assert requests_seen >= 10  # every request so far, whichever gunicorn worker served it


def _finished(session: requests.Session, base: str, job_id: str) -> dict | None:
    job = session.get(f"{base}/api/v1/jobs/{job_id}", timeout=10).json()
    return job if job["state"] in ("done", "failed") else None

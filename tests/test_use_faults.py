"""Use under faults, with real worker processes and a private Redis on a free loopback port.

- The worker is SIGKILLed in the middle of a copy; a new worker makes exactly one complete
  copy and leaves no temporary folder behind.
- Redis is stopped at the moment of the click; the click is still answered 202 and the job
  runs once when Redis is back.

As root (CI) the copies are written as a real unix user made for the test.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from django.test import Client

from gallery import homes, services
from gallery.celery import app
from gallery.models import Example, Job

from .base import make_user, stage
from .conftest import BROKER_URL, QUEUES, ROOT, Worker, wait_for, worker_env
from .unixusers import TAG, make_account, remove_account

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

HELPERS = {f"lib/part{n:02d}.py": f"PART = {n}\n".encode() * 50 for n in range(18)}


# --- a private Redis -------------------------------------------------------------------------


@dataclass
class PrivateRedis:
    port: int
    folder: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)], stdout=log, stderr=log)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(answers, timeout=20, what="private redis")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own; the test process publishes to it meanwhile."""
    server = PrivateRedis(_free_port(), tmp_path)
    server.start()
    app.conf.broker_url = server.url
    app.close()  # drop pooled connections to the shared Redis
    try:
        yield server
    finally:
        app.conf.broker_url = BROKER_URL
        app.close()
        server.stop()


# --- the user, the example, the workers ------------------------------------------------------


@pytest.fixture
def user_name(settings) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A real account writing as itself when running as root, else a name only."""
    if os.geteuid() != 0:
        yield "ursula"
        return
    root = Path(tempfile.mkdtemp(prefix="gallery-faults-", dir="/tmp"))
    root.chmod(0o755)
    name = f"gf{TAG}"
    try:
        make_account(root, name)
        settings.GALLERY_HOME_TEMPLATE = str(root / "home" / "{username}")
        settings.GALLERY_USE_AS_USER = True
        yield name
    finally:
        remove_account(name)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def example(settings) -> Iterator[Example]:  # type: ignore[no-untyped-def]
    """An approved example of 21 files and two data links, made in this process."""
    shared = Path(tempfile.mkdtemp(prefix="gallery-shared-", dir="/tmp"))
    shared.chmod(0o755)
    eager = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        submission = stage(make_user("connor"), files=HELPERS, data_links=[
            {"name": "table", "target": str(shared)},
            {"name": "docs", "target": "https://example.org/docs"}])
        services.approve_submission(submission=submission,
                                    reviewer=make_user("rita", reviewer=True))
        app.conf.task_always_eager = eager
        found = Example.objects.get(pk=submission.example_id)
        assert found.current_revision is not None
        yield found
    finally:
        app.conf.task_always_eager = eager
        shutil.rmtree(shared, ignore_errors=True)


def start_worker(settings, broker: PrivateRedis, name: str, **env: str) -> Worker:  # type: ignore[no-untyped-def]
    """A `celery worker` process with an embedded beat, so it sweeps every second."""
    environment = worker_env(settings, GALLERY_BROKER_URL=broker.url, GALLERY_JOB_LEASE="3",
                             GALLERY_REQUEUE_AFTER="1", GALLERY_SWEEP_INTERVAL="1", **env)
    log = broker.folder / f"{name}.log"
    cmd = [sys.executable, "-m", "celery", "-A", "gallery", "worker", "--loglevel", "INFO",
           "-Q", ",".join(QUEUES.values()), "-n", f"{name}@%h", "--concurrency", "2",
           "--without-gossip", "--without-mingle", "-B", "-s", str(broker.folder / name)]
    process = subprocess.Popen(cmd, cwd=ROOT, env=environment, stdout=log.open("ab"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    return Worker(process=process, log=log, env=environment)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def processes_of(uid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()
            and os.path.exists(f"/proc/{p}") and _uid_of(p) == uid]


def describe(pids: list[int]) -> str:
    """Each process's id, state, parent and command line, for a failure's message."""
    said = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                state, ppid = fh.read().rsplit(")", 1)[1].split()[:2]
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        said.append(f"{pid} ({state}, parent {ppid}) {argv[:120]}")
    return "; ".join(said) or "none by now"


def copy_helpers_of(parents: list[int]) -> list[int]:
    """Copy helpers (gallery/homes/child.py serve <parent> <fd>) started by these processes."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and any(a.endswith(b"homes/child.py") for a in argv):
            parent = argv[argv.index(b"serve") + 1]
            if parent.isdigit() and int(parent) in parents:
                found.append(int(entry))
    return found


def _uid_of(pid: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def assert_one_complete_copy(job: Job, example: Example) -> None:
    parent = homes.use_parent(job.params["username"])
    names = sorted(os.listdir(parent))
    assert names == [job.result["folder"]], names  # one folder, no temporary one
    copy = parent / job.result["folder"]
    assert homes.copied_by(copy) == str(job.pk)
    copied = {str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()
              and not p.is_symlink()}
    expected = {f["path"] for f in example.current_revision.files}
    assert expected <= copied, expected - copied
    assert (copy / "data" / "table").is_symlink()
    assert "https://example.org/docs" in (copy / "DATA.md").read_text()


def wait_until_copying(parent: Path) -> list[str]:
    """Wait until a copy into `parent` is under way; returns the temporary folders there."""

    def copying() -> list[str]:
        names = os.listdir(parent) if parent.is_dir() else []
        temps = [n for n in names if ".tmp-" in n]
        return temps if temps and len(list((parent / temps[0]).rglob("*.py"))) >= 3 else []

    return wait_for(copying, timeout=90, what="the copy to be under way")


def kill_whole_worker(worker: Worker, user_name: str, settings) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL a worker and its pool at once; the copy's child (a grandchild) goes with them."""
    pids = [worker.process.pid, *children_of(worker.process.pid)]
    assert copy_helpers_of(pids)  # the copy runs in a child of a helper of a pool process
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    worker.process.wait(20)
    wait_for(lambda: not copy_helpers_of(pids), timeout=20, what="the helpers to end")
    if settings.GALLERY_USE_AS_USER:
        uid = pwd.getpwnam(user_name).pw_uid
        try:
            wait_for(lambda: not processes_of(uid), timeout=60, what="the copy to stop")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; still running as {user_name}: "
                                 f"{describe(processes_of(uid))}") from None


# --- the faults ------------------------------------------------------------------------------


def killed_mid_copy(settings, private_redis, example, user_name):  # type: ignore[no-untyped-def]
    """A Use whose worker was killed, pool, copy helper and all, while it copied slowly:
    the dead worker, the job, the folder of copies and the temporary entries it held."""
    user = make_user(user_name)
    first = start_worker(settings, private_redis, "first", GALLERY_COPY_DELAY="0.2")
    try:
        job = services.queue_use(example=example, user=user)
        parent = homes.use_parent(user_name)
        temps = wait_until_copying(parent)
        kill_whole_worker(first, user_name, settings)
    except BaseException:
        first.kill()
        raise
    return first, job, parent, temps


def test_it_makes_exactly_one_copy_after_the_worker_is_killed_mid_copy(
        settings, private_redis, example, user_name):  # type: ignore[no-untyped-def]
    first, job, parent, temps = killed_mid_copy(settings, private_redis, example, user_name)
    second = None
    try:
        job.refresh_from_db()
        assert job.state == Job.State.RUNNING
        assert sorted(os.listdir(parent)) == temps  # no folder appeared half-made

        # A new worker copies slowly too: its copy outlasts the lease and must renew it.
        second = start_worker(settings, private_redis, "second", GALLERY_COPY_DELAY="0.3")
        wait_for(lambda: Job.objects.get(pk=job.pk).finished, timeout=120, what="the job")
        job.refresh_from_db()
        assert job.state == Job.State.DONE, job.message
        assert job.attempts == 2  # the killed one and the one that finished, nothing between
        assert job.result["lab_url"].endswith(f"/examples/{example.slug}/hello.ipynb")
        assert_one_complete_copy(job, example)
    finally:
        first.kill()
        if second:
            second.stop()


def test_it_clears_what_a_killed_worker_left_when_it_gives_up_on_a_use(
        settings, private_redis, example, user_name):  # type: ignore[no-untyped-def]
    first, job, parent, _ = killed_mid_copy(settings, private_redis, example, user_name)
    second = None
    try:
        assert [n for n in os.listdir(parent) if ".tmp-" in n]  # what the killed copy left
        # Its attempts were cut short as often as the gallery allows: the sweep gives up.
        Job.objects.filter(pk=job.pk).update(attempts=services.MAX_ATTEMPTS + 2)

        second = start_worker(settings, private_redis, "second")
        wait_for(lambda: Job.objects.get(pk=job.pk).finished, timeout=120, what="the job")
        job.refresh_from_db()
        assert job.state == Job.State.FAILED
        assert "interrupted too many times" in job.message
        assert os.listdir(parent) == []  # nothing half-written is left, and no copy made
    finally:
        first.kill()
        if second:
            second.stop()


def test_it_carries_out_a_use_clicked_while_redis_was_down(
        settings, private_redis, example, user_name):  # type: ignore[no-untyped-def]
    user = make_user(user_name)
    worker = start_worker(settings, private_redis, "steady")
    try:
        private_redis.stop()
        client = Client()
        client.force_login(user)
        r = client.post(f"/api/v1/examples/{example.slug}/use",
                        data=json.dumps({"folder": "workshop"}), content_type="application/json")
        assert r.status_code == 202, r.content
        job = Job.objects.get(pk=r.json()["id"])
        assert job.state == Job.State.QUEUED
        assert "Waiting" in job.message

        private_redis.start()
        wait_for(lambda: Job.objects.get(pk=job.pk).finished, timeout=120, what="the job")
        job.refresh_from_db()
        assert job.state == Job.State.DONE, job.message
        assert job.attempts == 1
        assert job.result["folder"] == "workshop"
        assert_one_complete_copy(job, example)
    finally:
        worker.stop()

"""Shared test setup: private folders per test, eager jobs for unit tests, and a real Celery
worker process against a real Redis for the tests marked `worker`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery._state import _set_task_join_will_block

from .runkit import kernel_env, run_accounts, run_root  # noqa: F401  (fixtures of runs' tests)

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("GALLERY_TEST_REDIS", "redis://127.0.0.1:6379")


def _redis_db() -> int:
    """This test process's Redis database: the broker's; the shared cache takes the next one.

    GALLERY_TEST_REDIS_DB (9 unless set) is the first of a run; each pytest-xdist worker
    (gw0, gw1, ...) takes a pair of its own after it, since a test clears the whole cache
    database."""
    base = int(os.environ.get("GALLERY_TEST_REDIS_DB", "9"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    db = base + 2 * (int(worker[2:]) if worker.startswith("gw") else 0)
    if not 0 <= db <= 14:
        raise RuntimeError(f"GALLERY_TEST_REDIS_DB={base} leaves no Redis databases {db} and "
                           f"{db + 1} for test process {worker or 'main'} (Redis has 0-15)")
    return db


# One Redis database and one set of queue names per test process, so parallel runs and
# leftovers of earlier runs never take each other's messages.
RUN_ID = f"t{os.getpid()}"
REDIS_DB = _redis_db()
BROKER_URL = f"{REDIS_URL}/{REDIS_DB}"
SHARED_CACHE_URL = f"{REDIS_URL}/{REDIS_DB + 1}"  # tests of the shared cache (test_caching)
QUEUES = {"default": f"gallery-{RUN_ID}", "previews": f"gallery-previews-{RUN_ID}",
          "use": f"gallery-use-{RUN_ID}", "envs": f"gallery-envs-{RUN_ID}",
          "runs": f"gallery-runs-{RUN_ID}"}
# Generated requests per endpoint ("GET /api/v1/examples"), filled by tests/test_harness.py and
# tests/test_concurrency.py and printed at the end of the run: a harness that stopped reaching
# an endpoint shows here as a missing or tiny count.
ENDPOINT_CASES: Counter[str] = Counter()


def _print_endpoint_cases(terminalreporter: pytest.TerminalReporter) -> None:
    if not ENDPOINT_CASES:
        return
    terminalreporter.section("generated cases per endpoint")
    width = max(len(name) for name in ENDPOINT_CASES)
    for name, count in sorted(ENDPOINT_CASES.items()):
        terminalreporter.write_line(f"{name:<{width}}  {count:>6}")
    terminalreporter.write_line(f"{'total':<{width}}  {sum(ENDPOINT_CASES.values()):>6}")


@pytest.fixture(scope="session", autouse=True)
def _broker() -> Iterator[None]:
    from gallery.celery import app

    app.conf.update(
        broker_url=BROKER_URL,
        task_default_queue=QUEUES["default"],
        task_routes={
            "gallery.tasks.render_preview": {"queue": QUEUES["previews"]},
            "gallery.tasks.run_use": {"queue": QUEUES["use"]},
            "gallery.tasks.build_environment": {"queue": QUEUES["envs"]},
            "gallery.tasks.run_example": {"queue": QUEUES["runs"]},
        },
    )
    yield
    try:
        client = redis.Redis.from_url(BROKER_URL)
        client.delete(*QUEUES.values())
    except redis.RedisError:
        pass


@pytest.fixture(autouse=True)
def gallery_dirs(settings, tmp_path: Path, request: pytest.FixtureRequest) -> Path:  # type: ignore[no-untyped-def]
    """Every test gets its own repository, staging, previews and homes."""
    settings.GALLERY_DATA_DIR = tmp_path / "data"
    settings.GALLERY_REPO_PATH = tmp_path / "data" / "examples.git"
    settings.GALLERY_STAGING_DIR = tmp_path / "data" / "staging"
    settings.GALLERY_PREVIEW_DIR = tmp_path / "data" / "previews"
    settings.GALLERY_GROUP_PREVIEW_DIR = tmp_path / "data" / "group-previews"
    settings.GALLERY_SEND_DIR = tmp_path / "data" / "sent"
    settings.GALLERY_HOME_TEMPLATE = str(tmp_path / "homes" / "{username}")
    settings.GALLERY_USE_AS_USER = False
    # Environments are built into the test's folder, and never from the package index
    # unless a test says where packages come from.
    settings.GALLERY_ENV_DIR = tmp_path / "data" / "envs"
    settings.GALLERY_BUILD_INDEX_OPTIONS = "--no-index"
    from django.core.cache import cache

    # Nothing cached by an earlier test (users, stamps, pages) leaks into this one; a test of
    # a cache that is away has nothing to clear.
    with contextlib.suppress(redis.RedisError):
        cache.clear()
    from gallery.celery import app

    # Unit tests run jobs inline when their transaction commits; worker tests use the broker.
    app.conf.task_always_eager = request.node.get_closest_marker("worker") is None
    # Celery's "a task is running here, joining would block" flag, set and restored around
    # each inline job, can be left set by inline jobs on several threads at once (the restore
    # is not thread-safe); this process is no worker, so no test starts with it set.
    _set_task_join_will_block(False)
    return tmp_path


@dataclass
class Worker:
    process: subprocess.Popen
    log: Path
    env: dict[str, str]

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def worker_env(settings, **extra: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The environment of a worker process that sees this test's database and folders."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        url = f"sqlite:///{db['NAME']}"
    else:
        url = f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:" \
              f"{db['PORT'] or 5432}/{db['NAME']}"
    env = {
        **os.environ,
        "GALLERY_DATABASE_URL": url,
        "GALLERY_BROKER_URL": BROKER_URL,
        "GALLERY_DATA_DIR": str(settings.GALLERY_DATA_DIR),
        "GALLERY_SECRET_KEY": "test-only",
        "GALLERY_REPO_PATH": str(settings.GALLERY_REPO_PATH),
        "GALLERY_STAGING_DIR": str(settings.GALLERY_STAGING_DIR),
        "GALLERY_PREVIEW_DIR": str(settings.GALLERY_PREVIEW_DIR),
        "GALLERY_GROUP_PREVIEW_DIR": str(settings.GALLERY_GROUP_PREVIEW_DIR),
        "GALLERY_SEND_DIR": str(settings.GALLERY_SEND_DIR),
        "GALLERY_ENV_DIR": str(settings.GALLERY_ENV_DIR),
        "GALLERY_BUILD_INDEX_OPTIONS": settings.GALLERY_BUILD_INDEX_OPTIONS,
        "GALLERY_HOME_TEMPLATE": settings.GALLERY_HOME_TEMPLATE,
        "GALLERY_USE_AS_USER": "1" if settings.GALLERY_USE_AS_USER else "0",
        "GALLERY_QUEUE_DEFAULT": QUEUES["default"],
        "GALLERY_QUEUE_PREVIEWS": QUEUES["previews"],
        "GALLERY_QUEUE_USE": QUEUES["use"],
        "GALLERY_QUEUE_ENVS": QUEUES["envs"],
        "GALLERY_QUEUE_RUNS": QUEUES["runs"],
        "PYTHONPATH": str(ROOT),
    }
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log: Path, *, queues: list[str] | None = None,
                 hostname: str = "worker@%h", concurrency: int = 2) -> Worker:
    cmd = [sys.executable, "-m", "celery", "-A", "gallery", "worker", "--loglevel", "INFO",
           "-Q", ",".join(queues or QUEUES.values()), "-n", hostname,
           "--concurrency", str(concurrency), "--without-gossip", "--without-mingle"]
    fh = log.open("ab")
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                               start_new_session=True)
    return Worker(process=process, log=log, env=env)


@pytest.fixture
def celery_worker(settings, tmp_path: Path) -> Iterator[Worker]:  # type: ignore[no-untyped-def]
    """A real `celery worker` process on this run's queues."""
    redis.Redis.from_url(BROKER_URL).delete(*QUEUES.values())
    worker = start_worker(worker_env(settings), tmp_path / "worker.log")
    yield worker
    worker.stop()


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll until `predicate()` is truthy; never assert on timing, only on the outcome."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# --- running on several processes (pytest-xdist, as `make test` does) -----------------------

# Modules with the longest single tests (generated requests by the thousand), started early
# so that no process is left alone with one of them at the end of a run.
LONG_MODULES = {"tests.test_harness", "tests.test_api_fuzz", "tests.test_groups"}


def _start_order(item: pytest.Item) -> int:
    if item.get_closest_marker("e2e") is not None:
        return 0
    return 1 if getattr(item.module, "__name__", "") in LONG_MODULES else 2


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The end-to-end tests first, then the long modules: with `--dist loadscope
    --no-loadscope-reorder` processes take the work in this order."""
    items.sort(key=_start_order)  # stable: pytest-django's order is kept within each


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With `--dist loadscope` (pyproject.toml) a process takes a module or a class at a
    time, so that what a module sets up once (a hub, a Jupyter server, unix accounts) is set
    up by one process; and the end-to-end tests all go to one process, one after another:
    each drives a hub, user servers and a Chromium, which want the cores to themselves."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class EndToEndTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith("tests/e2e/"):
                return "tests/e2e/"
            return super()._split_scope(nodeid)

    return EndToEndTogether(config, log)


# --- the authorisation matrix's summary (tests/test_authz.py) --------------------------------

AUTHZ_CASES = pytest.StashKey[Counter]()


@pytest.fixture
def authz_cases(request: pytest.FixtureRequest) -> Counter:
    """Cases of the authorisation matrix run, by URL and method, for the session's summary."""
    return request.config.stash.setdefault(AUTHZ_CASES, Counter())


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """How many cases the harnesses ran: the generated requests per endpoint, and the
    authorisation matrix's cases per URL."""
    _print_endpoint_cases(terminalreporter)
    _print_authz_cases(terminalreporter, config)


def _print_authz_cases(terminalreporter: Any, config: pytest.Config) -> None:
    """The authorisation matrix's cases per URL (each method's count), the desk's in one line."""
    cases: Counter = config.stash.get(AUTHZ_CASES, Counter())
    if not cases:
        return
    by_route: dict[str, list[str]] = {}
    desk = Counter()
    for (route, method), count in sorted(cases.items()):
        if route.startswith("/admin/") and route != "/admin/login/":
            desk[route] += count
        else:
            by_route.setdefault(route, []).append(f"{method} {count}")
    terminalreporter.section("authorisation matrix: cases run per URL")
    for route, counts in by_route.items():
        terminalreporter.write_line(f"{route:<45} {', '.join(counts)}")
    if desk:
        terminalreporter.write_line(f"{'/admin/… (the desk)':<45} {sum(desk.values())} cases "
                                    f"on {len(desk)} URLs")
    terminalreporter.write_line(f"{'in all':<45} {sum(cases.values())} cases")

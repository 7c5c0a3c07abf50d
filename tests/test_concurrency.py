"""Many people at once, against a live server and real worker processes.

In three rounds, from up to 32 threads at once: the same folder staged by three contributors
and sent by six more as a revision of an example that does not exist (refused), overlapping
submissions (the same notebook with different helper files), Uses of one approved example by
many users and repeated Uses by one user, with reads in between. Then, once the two worker
processes are done:

- no request was answered with a 5xx, and every API error is JSON with an "error";
- every accepted submission's staged folder holds every file it sent, byte for byte, and its
  checks and its preview finished;
- every Use is done, in a folder of its own, and each copy holds the example's files byte for
  byte;
- no temporary folder is left in the homes or in the staging folder.

`make test` runs it on SQLite and again on PostgreSQL (it is marked `worker`).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.servers.basehttp import ThreadedWSGIServer
from django.db.models import Q
from django.test import Client
from django.test.testcases import LiveServerThread
from django.utils.crypto import get_random_string

from gallery import homes, services
from gallery.models import Example, Job, Preview, Submission
from gallery.previews import revision_preview_key

from .base import make_user, notebook_bytes, stage
from .conftest import ENDPOINT_CASES, start_worker, wait_for, worker_env

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

THREADS = 32
ROUNDS = 3
NOTEBOOK = notebook_bytes(3, text="print('at once')")
ENVIRONMENT = ("requirements.txt", b"numpy>=1.24\n")
HELPERS = [("helper.py", b"ANSWER = 42\n"), ("table.csv", b"a,b\n1,2\n")]


@dataclass
class Sent:
    """A request made by one thread, and what came back."""

    what: str
    user: str
    status: int
    body: Any = field(repr=False)
    files: dict[str, bytes] | None = field(default=None, repr=False)  # what a submission sent

    def __repr__(self) -> str:
        said = self.body.get("error", "") if isinstance(self.body, dict) else self.body[:80]
        return f"{self.what} by {self.user}: {self.status} {said!r}"


class ServerErrors(logging.Handler):
    """The exceptions behind the live server's 500s, one line each, for the failure message."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.seen.append(f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"[:300])


class Person:
    """A logged-in browser session of one user against the live server."""

    def __init__(self, base: str, user: Any) -> None:
        client = Client()
        client.force_login(user)
        token = get_random_string(32)
        self.base, self.name = base, user.get_username()
        self.http = requests.Session()
        self.http.cookies.set(settings.SESSION_COOKIE_NAME,
                              client.cookies[settings.SESSION_COOKIE_NAME].value)
        self.http.cookies.set(settings.CSRF_COOKIE_NAME, token)
        self.http.headers.update({"X-CSRFToken": token, "Referer": base + "/"})

    def request(self, what: str, method: str, path: str, **kwargs: Any) -> Sent:
        response = self.http.request(method, self.base + path, timeout=120, **kwargs)
        ENDPOINT_CASES[f"{what} (concurrent)"] += 1
        try:
            body = response.json()
        except ValueError:
            body = response.text[:500]
        return Sent(what, self.name, response.status_code, body)

    def submit(self, *, title: str, helpers: list[tuple[str, bytes]], example: str = "") -> Sent:
        files = [("notebook", ("at-once.ipynb", NOTEBOOK)), ("environment", ENVIRONMENT),
                 *(("files", helper) for helper in helpers)]
        data = {"title": title, "tags": "demo", "example": example} if example else {
            "title": title, "tags": "demo"}
        sent = self.request("POST /api/v1/submissions", "POST", "/api/v1/submissions",
                            files=files, data=data)
        sent.files = {"at-once.ipynb": NOTEBOOK, ENVIRONMENT[0]: ENVIRONMENT[1], **dict(helpers)}
        return sent

    def use(self, slug: str) -> Sent:
        return self.request("POST /api/v1/examples/{slug}/use", "POST",
                            f"/api/v1/examples/{slug}/use", json={})


def at_once(calls: list[Callable[[], Sent]]) -> list[Sent]:
    """Run every call from its own thread, all released together."""
    go = threading.Event()

    def run(call: Callable[[], Sent]) -> Sent:
        go.wait()
        return call()

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [pool.submit(run, call) for call in calls]
        go.set()
        return [future.result() for future in futures]


class Server(ThreadedWSGIServer):
    # Django's test server accepts 10 waiting connections; more are reset when all threads
    # connect at once. gunicorn's backlog is 2048.
    request_queue_size = 4 * THREADS
    # Closing the server waits for its threads, which close their database connections:
    # PostgreSQL cannot drop a test database that a connection still uses.
    daemon_threads = False


class ServerThread(LiveServerThread):
    server_class = Server


@pytest.fixture
def server() -> Iterator[str]:
    """A live server of this test's own (pytest-django's is shared, with a short queue)."""
    thread = ServerThread("127.0.0.1", StaticFilesHandler)
    thread.daemon = True
    thread.start()
    thread.is_ready.wait()
    if thread.error:
        raise thread.error
    yield f"http://127.0.0.1:{thread.port}"
    thread.terminate()


@pytest.fixture
def login(server: str) -> Iterator[Callable[[Any], Person]]:
    """Log a user in to the live server; the sessions are closed again (keep-alive
    connections would hold the server's threads open)."""
    people: list[Person] = []

    def person(user: Any) -> Person:
        people.append(Person(server, user))
        return people[-1]

    yield person
    for each in people:
        each.http.close()


@pytest.fixture
def server_errors() -> Iterator[list[str]]:
    handler = ServerErrors()
    logging.getLogger("django.request").addHandler(handler)
    yield handler.seen
    logging.getLogger("django.request").removeHandler(handler)


@pytest.fixture
def workers(settings, tmp_path: Path, celery_worker):  # type: ignore[no-untyped-def]
    """Two worker processes (the conftest's and one more), each with two pool processes."""
    second = start_worker(worker_env(settings), tmp_path / "worker2.log",
                          hostname="second@%h")
    yield [celery_worker, second]
    second.stop()


def approved_example(contributor: Any, reviewer: Any) -> Example:
    submission = stage(contributor, title="Used by many",
                       files={"helper.py": b"USED = True\n", "data/points.csv": b"x\n1\n"})
    services.approve_submission(submission=submission, reviewer=reviewer)
    return wait_for(lambda: Example.objects.filter(pk=submission.example_id,
                                                   current_revision__isnull=False).first(),
                    timeout=180, what="the example published by a worker")


def test_it_keeps_every_submission_and_every_copy_whole_under_many_requests_at_once(
        login: Callable[[Any], Person], workers: Any, server_errors: list[str]) -> None:
    contributors = [login(make_user(f"contrib{i}")) for i in range(9)]
    users = [login(make_user(f"user{i}")) for i in range(12)]
    example = approved_example(make_user("carla"), make_user("rhea", reviewer=True))

    sent: list[Sent] = []
    for round_ in range(ROUNDS):
        # The same folder from three contributors, and from six more as a revision of an
        # example that does not exist (a refusal must not take the folder the others share);
        # the same notebook with a helper of a contributor's own; Uses by four users, one of
        # whom clicks twice; reads in between.
        same = [*HELPERS, ("round.txt", f"{round_}\n".encode())]
        calls: list[Callable[[], Sent]] = []
        for i, person in enumerate(contributors):
            calls.append(partial(person.submit, title=f"At once {round_}", helpers=same,
                                 example="" if i < 3 else "no-such"))
        for i, person in enumerate(contributors[:3]):
            calls.append(partial(person.submit, title=f"Overlapping {round_}.{i}",
                                 helpers=[("helper.py", f"N = {i}\n".encode())]))
        for person in users[4 * round_:4 * round_ + 4]:
            calls.append(partial(person.use, example.slug))
            calls.append(partial(person.request, "GET /api/v1/examples/{slug}", "GET",
                                 f"/api/v1/examples/{example.slug}"))
        calls.extend([partial(users[0].use, example.slug)] * 2)
        sent += at_once(calls)

    errors = [s for s in sent if s.status >= 500 or s.status >= 400 and not (
        isinstance(s.body, dict) and isinstance(s.body.get("error"), str) and s.body["error"])]
    assert not errors, (errors, sorted(set(server_errors)))
    submitted = [s for s in sent if s.files]
    accepted = [s for s in submitted if s.status == 201]
    assert len(accepted) == 6 * ROUNDS, submitted
    assert sorted({s.status for s in submitted if s.status != 201}) == [404], submitted
    uses = [s for s in sent if s.what.endswith("/use")]
    assert {s.status for s in uses} == {202}, uses

    # Checks, previews and copies, as the workers finish them (or until one crashed: it
    # would wait for the recovery sweep, which these workers do not run).
    ids = [s.body["id"] for s in accepted]
    jobs = Job.objects.filter(Q(submission__in=ids) | Q(pk__in=[s.body["id"] for s in uses])
                              | Q(kind=Job.Kind.PREVIEW, revision__submission__in=ids))
    wait_for(lambda: not jobs.filter(state__in=[Job.State.QUEUED, Job.State.RUNNING]).exclude(
        message__startswith="retrying after").exists(), timeout=300, what="every job")

    # A lost file first: it is why a job would have crashed.
    staged = [(s, Submission.objects.select_related("revision").get(pk=s.body["id"]))
              for s in accepted]
    for s, submission in staged:
        folder = services.staged_folder(submission.revision)
        lost = [name for name, data in (s.files or {}).items()
                if not (folder / name).is_file() or (folder / name).read_bytes() != data]
        assert not lost and (folder / "example.toml").is_file(), (s, folder, lost)
    unfinished = list(jobs.exclude(state=Job.State.DONE).values("kind", "state", "message"))
    assert not unfinished, unfinished
    for _, submission in staged:
        assert submission.checks_state == Submission.ChecksState.DONE, submission.checks
        assert not [c for c in submission.checks if c["status"] == "fail"], submission.checks
        sha = revision_preview_key(submission.revision)
        assert Preview.objects.get(sha256=sha).state == Preview.State.READY
        assert Path(settings.GALLERY_PREVIEW_DIR, f"{sha}.html").is_file()

    source = services.staged_folder(Example.objects.get(pk=example.pk).current_revision)
    expected = {p.relative_to(source).as_posix(): p.read_bytes()
                for p in source.rglob("*") if p.is_file()}
    targets: dict[str, list[str]] = {}
    for job in Job.objects.filter(kind=Job.Kind.USE, pk__in=[s.body["id"] for s in uses]):
        owner = job.params["username"]
        targets.setdefault(owner, []).append(job.result["path"])
        copy = homes.use_parent(owner) / job.result["folder"]
        found = {p.relative_to(copy).as_posix(): p.read_bytes()
                 for p in copy.rglob("*") if p.is_file() and not p.is_symlink()}
        differ = sorted(name for name, data in expected.items() if found.get(name) != data)
        assert not differ, f"{owner}: {copy} lacks or differs in {differ}"
        provenance = json.loads((copy / homes.PROVENANCE_FILE).read_text())
        assert (provenance["user"], provenance["slug"]) == (owner, example.slug)
    assert len(targets[users[0].name]) == 1 + 2 * ROUNDS, targets
    assert all(len(paths) == len(set(paths)) for paths in targets.values()), targets

    left = [str(p) for p in Path(settings.GALLERY_HOME_TEMPLATE).parent.rglob("*")
            if ".tmp-" in p.name]
    left += [str(p) for p in Path(settings.GALLERY_STAGING_DIR).iterdir()
             if p.name.startswith(".")]
    assert not left, left

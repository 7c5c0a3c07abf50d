"""The `filesystem` Use backend, as the worker runs it: a copy of an example into a user's
home (or the clearing of what its attempts left) carried out by a forked child, the wait for
that child's report, and the helper process each worker keeps to fork those children from.
What the child itself does, as the user, is homes/child.py.

The worker may run as root while homes belong to other people. Every copy runs in a forked
child; when the worker writes as the user, that child drops to the user's uid, gid and groups
before it touches the home, so the kernel checks the user's own permissions on every path: a
planted or racing symlink can at worst make that user's own copy fail. The child reads the
example through a directory descriptor the worker opened, so the user needs no access to the
gallery's data folder. The copy goes into a hidden temporary folder beside the target and is
renamed into place without replacing anything, so a folder in a home is either whole or
absent. A provenance file naming the job makes a repeated attempt find the copy it already
made instead of making a second one.

Nothing is locked in a home: anything there that another user can open, they could lock too,
and hold every copy into that home up. Attempts of one job need no lock either. A temporary
folder is only ever removed by renaming it out of the way first, so an attempt still writing
into it fails cleanly instead of finishing a folder with files missing, and a copy is renamed
into place only after checking that no other attempt of the job finished first. A job that
ends, however it ends, leaves no temporary folder: the copy removes its own when it fails, the
worker clears them when it has to stop a copy, and `clear_leftovers` does it for a job given up.

The copies are forked from a small helper: homes/child.py run as a script in a fresh
interpreter, started by each worker process on its first copy and ended with it. Forking from
the worker itself works too (it is the fallback), but costs CPU in proportion to the worker's
memory, which is hundreds of MB; the helper holds a few.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import pwd
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import child
from .child import Ids
from .shared import CopyError, CopyPlan

CLEAR_TIMEOUT = 60.0  # seconds a clearing child may take (the user can stop it)

log = logging.getLogger(__name__)


def copy_into_home(
    plan: CopyPlan,
    *,
    as_user: bool,
    timeout: float = 300.0,
    heartbeat: Callable[[], object] | None = None,
    heartbeat_every: float = 30.0,
) -> Path:
    """Carry out a plan and return the folder it made; raises CopyError with a plain message.

    Safe to call again for the same job: a copy this job already finished is returned as it
    is, and temporary folders an interrupted attempt left behind are removed. `heartbeat` is
    called every `heartbeat_every` seconds while the copy runs (to renew the job's lease); an
    exception from it stops the copy and is raised as it is. A copy that has to be stopped for
    any other reason (its time is up, the task's own time limit) has its temporary folder
    removed before this returns; one stopped by the heartbeat leaves that to the attempt that
    holds the job now.
    """
    ids = _account_ids(plan, as_user)
    try:
        source_fd = os.open(plan.source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise CopyError(f"The example's files are not available ({exc.strerror}); "
                        "try again later.") from exc
    beat = _Heartbeat(heartbeat) if heartbeat else None
    try:
        report = _run_in_child(plan, "copy", source_fd, ids, timeout, beat, heartbeat_every)
    except BaseException:
        if not (beat and beat.failed):
            _clear_quietly(plan, ids)
        raise
    finally:
        os.close(source_fd)
    folder = report.get("folder")
    if isinstance(folder, str) and _is_plain_name(folder):
        return plan.parent / folder
    message = report.get("error")
    if message:  # the child removed its own temporary folder before it said so
        raise CopyError(str(message)[:2000])
    _clear_quietly(plan, ids)
    raise CopyError("The copy stopped unexpectedly; try again.")


def clear_leftovers(plan: CopyPlan, *, as_user: bool, timeout: float = CLEAR_TIMEOUT) -> int:
    """Remove the temporary folders the attempts of the plan's job left beside the target, as
    the user (never as root by path); returns how many. Nothing is created: a missing folder
    has nothing to clear. For a job that ends without a copy, after its last attempt."""
    ids = _account_ids(plan, as_user)
    report = _run_in_child(plan, "clear", None, ids, timeout, None, 0.0)
    cleared = report.get("cleared")
    if isinstance(cleared, int):
        return cleared
    raise CopyError(str(report.get("error") or "The clearing stopped unexpectedly.")[:2000])


def read_copy(plan: CopyPlan, *, as_user: bool, timeout: float = 120.0) -> dict[str, Any]:
    """Read a person's copy as them (homes/inplace.py): its provenance record and the files
    `plan.request["paths"]` it holds, as {"provenance": {…}, "files": {path: bytes}}. Raises
    CopyError (a link where a file or the copy should be, a missing copy) with a plain
    message. Writes nothing."""
    ids = _account_ids(plan, as_user)
    out = os.memfd_create("gallery-copy-state", os.MFD_CLOEXEC)
    try:
        report = _run_in_child(plan, "read", out, ids, timeout, None, 0.0)
        if "read" not in report:
            raise CopyError(str(report.get("error") or "Reading your copy stopped "
                                "unexpectedly; try again.")[:2000])
        size = os.fstat(out).st_size
        limit = int(plan.request.get("max_bytes", 100 << 20)) * 2 + (1 << 20)
        if size > limit:
            raise CopyError("Reading your copy stopped unexpectedly; try again.")
        os.lseek(out, 0, os.SEEK_SET)
        with os.fdopen(os.dup(out), "rb") as fh:
            state = json.loads(fh.read(size))
    finally:
        os.close(out)
    # Written by a process the user may have tampered with: keep only what has the shape.
    provenance = state.get("provenance") if isinstance(state, dict) else None
    files = state.get("files") if isinstance(state, dict) else None
    wanted = set(plan.request.get("paths", []))
    return {"provenance": provenance if isinstance(provenance, dict) else {},
            "files": {p: base64.b64decode(d) for p, d in (files or {}).items()
                      if p in wanted and isinstance(d, str)}}


def update_copy(plan: CopyPlan, bundle: Path, *, as_user: bool, timeout: float = 300.0,
                heartbeat: Callable[[], object] | None = None,
                heartbeat_every: float = 30.0) -> dict[str, Any]:
    """Write an update bundle (its update.json and new files, see homes/inplace.py) into a
    person's copy as them; returns the child's report. Safe to call again for the same job."""
    ids = _account_ids(plan, as_user)
    try:
        bundle_fd = os.open(bundle, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise CopyError(f"The update's files are not available ({exc.strerror}); "
                        "try again later.") from exc
    try:
        report = _run_in_child(plan, "update", bundle_fd, ids, timeout,
                               _Heartbeat(heartbeat) if heartbeat else None, heartbeat_every)
    finally:
        os.close(bundle_fd)
    if "updated" not in report:
        raise CopyError(str(report.get("error") or "The update stopped unexpectedly; "
                            "try again.")[:2000])
    return report


def _clear_quietly(plan: CopyPlan, ids: Ids | None) -> None:
    """Clear after a copy that was stopped; a failure here must not hide why it stopped."""
    try:
        report = _run_in_child(plan, "clear", None, ids, CLEAR_TIMEOUT, None, 0.0)
    except Exception as exc:  # noqa: BLE001 - logged; the copy's own error goes on up
        report = {"error": str(exc)}
    if "error" in report:
        log.warning("could not clear what job %s left in %s's home: %s", plan.job_id,
                    plan.username, str(report["error"])[:500])


def _account_ids(plan: CopyPlan, as_user: bool) -> Ids | None:
    """The uid, gid and groups to write as (None: as the worker itself)."""
    if not as_user:
        return None
    try:
        account = pwd.getpwnam(plan.username)
    except KeyError:
        raise CopyError(f"There is no account named {plan.username!r} on this system; "
                        "ask the centre's support.") from None
    if account.pw_uid == 0:
        raise CopyError("The gallery does not write into root's home.")
    # NSS lookups may use threads and locks: resolve the groups before any fork.
    return account.pw_uid, account.pw_gid, os.getgrouplist(account.pw_name, account.pw_gid)


class _Heartbeat:
    """The caller's heartbeat, remembering whether it failed (the job is no longer ours)."""

    def __init__(self, beat: Callable[[], object]) -> None:
        self.beat, self.failed = beat, False

    def __call__(self) -> None:
        try:
            self.beat()
        except BaseException:
            self.failed = True
            raise


# --- running a child, and the helper that forks them -----------------------------------------


def _run_in_child(plan: CopyPlan, action: str, source_fd: int | None, ids: Ids | None,
                  timeout: float, heartbeat: Callable[[], object] | None,
                  heartbeat_every: float) -> dict[str, Any]:
    """Run `action` ("copy" or "clear") in a child and return its report; raises CopyError
    when it does not finish in time (the child is then killed and gone before this returns)."""
    child, r = _start_child(plan, action, source_fd, ids)
    out, finished = b"", False
    try:
        deadline = time.monotonic() + timeout
        next_beat = time.monotonic() + heartbeat_every
        while True:  # the user can SIGSTOP a child running as them: bound the wait
            now = time.monotonic()
            if now >= deadline:
                raise CopyError(f"The copy into {plan.shown_parent} did not finish within "
                                f"{timeout:.0f} s; try again.")
            until = min(deadline, next_beat) if heartbeat else deadline
            if not select.select([r], [], [], max(until - now, 0.0))[0]:
                if heartbeat and time.monotonic() >= next_beat:
                    heartbeat()
                    next_beat = time.monotonic() + heartbeat_every
                continue
            chunk = os.read(r, 65536)
            if not chunk:
                break
            out += chunk
            if len(out) > 65536:
                raise CopyError("The copy stopped unexpectedly.")
        finished = True
    finally:  # also on Celery's soft time limit or a lost lease
        os.close(r)
        child.end(kill=not finished)
    # The child ran as the user, who may have tampered with it: trust nothing it says beyond
    # its shape. It writes a folder name only after the folder is in place.
    try:
        report = json.loads(out.decode())
    except (UnicodeDecodeError, ValueError):
        report = {}
    return report if isinstance(report, dict) else {}


def _is_plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\x00" not in name and name not in (".", "..")


class _Copy:
    """A running copy child: `end()` kills it (when asked) and waits until it is gone."""

    def __init__(self, pid: int = 0, pidfd: int = -1) -> None:
        self.pid, self.pidfd = pid, pidfd  # our own child, or one of the helper's

    def end(self, *, kill: bool) -> None:
        if self.pidfd < 0:
            if kill:
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            return
        try:
            if kill:  # through the pidfd: never a recycled pid
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            select.select([self.pidfd], [], [], 10.0)  # readable once the process is gone
        finally:
            os.close(self.pidfd)


def _start_child(plan: CopyPlan, action: str, source_fd: int | None,
                 ids: Ids | None) -> tuple[_Copy, int]:
    """Start a child for `action`; returns it and the read end of the pipe it reports on.

    Each try gets a fresh pipe, so a child of a failed try can never add to the report.
    """
    for _ in range(2):  # a helper that died is started again once
        if not _helper.usable():
            break
        r, w = os.pipe()
        try:
            return _Copy(pidfd=_helper.fork_child(plan, action, source_fd, w, ids)), r
        except OSError as exc:
            os.close(r)
            _helper.failed(exc)
        finally:
            os.close(w)
    r, w = os.pipe()
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        child.run_child(plan, action, source_fd, w, ids, me)
    os.close(w)
    return _Copy(pid=pid), r


class _Helper:
    """This module run as a script (`_serve`): one per process that copies, started with a
    Celery pool process or at the first copy, ended (by PDEATHSIG) when that process ends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.failures = 0  # in a row; after a few, fork from the worker from then on

    def usable(self) -> bool:
        return self.failures < 3 and hasattr(os, "pidfd_open")

    def fork_child(self, plan: CopyPlan, action: str, source_fd: int | None, w: int,
                   ids: Ids | None) -> int:
        """Ask the helper to fork a child for `action`; returns a pidfd of that child."""
        request = json.dumps({"plan": dataclasses.asdict(plan), "ids": ids, "action": action},
                             default=str)
        fds = [w] if source_fd is None else [w, source_fd]
        with self.lock:
            if self.process is None or self.process.poll() is not None or self.sock is None:
                self._start()
            assert self.sock is not None
            socket.send_fds(self.sock, [request.encode()], fds)
            _, fds, _, _ = socket.recv_fds(self.sock, 16, 1)
            if not fds:
                raise OSError("the copy helper could not fork")
            self.failures = 0
            return fds[0]

    def failed(self, exc: BaseException) -> None:
        import logging

        logging.getLogger(__name__).warning("copy helper: %s", exc)
        self.failures += 1
        with self.lock:
            self._stop()

    def _start(self) -> None:
        self._stop()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(child.__file__), "serve",
                 str(os.getpid()), str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        finally:
            theirs.close()
        self.sock = mine

    def _stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.process = None


_helper = _Helper()


def start_helper() -> None:
    """Start this process's copy helper now rather than at its first copy."""
    if _helper.usable():
        try:
            with _helper.lock:
                _helper._start()
        except OSError as exc:
            _helper.failed(exc)

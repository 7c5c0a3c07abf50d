"""Writing an example into a user's home (the `filesystem` Use backend).

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

The copies are forked from a small helper: this module run as a script in a fresh
interpreter, started by each worker process on its first copy and ended with it. Forking from
the worker itself works too (it is the fallback), but costs CPU in proportion to the worker's
memory, which is hundreds of MB; the helper holds a few.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import logging
import os
import pwd
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

PROVENANCE_FILE = ".gallery-provenance.json"
DATA_MANIFEST = "DATA.md"
DATA_MANIFEST_JSON = "data-links.json"
MAX_SAME_NAME = 999  # folder, folder-2 … folder-999
CLEAR_TIMEOUT = 60.0  # seconds a clearing child may take (the user can stop it)

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_RENAME_NOREPLACE, _PR_SET_PDEATHSIG, _PR_SET_DUMPABLE = 1, 1, 4


class CopyError(Exception):
    """A Use that could not be written; the message is meant for the user."""


@dataclass
class CopyPlan:
    """Everything a copy needs, decided before it starts (so a retry does the same thing)."""

    username: str
    source: Path  # an exported example folder (read through a descriptor, see module doc)
    parent: Path  # <home>/<GALLERY_USE_DIR>
    folder_name: str  # wanted name; folder-2, folder-3 … when it is taken
    job_id: str
    provenance: dict[str, Any]
    data_links: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0  # test-only pause before each file
    shown_parent: str = "~/examples"  # how messages name the parent folder
    home: Path | None = None  # the user's home: a missing one is told apart from ~/examples

    @property
    def temp_prefix(self) -> str:
        """Temporary folders of this job start with it, so a retry can clear its leftovers."""
        return f".{self.folder_name}.tmp-{self.job_id.replace('-', '')[:12]}-"

    @property
    def gone_prefix(self) -> str:
        """Temporary folders of this job renamed out of the way, about to be removed."""
        return self.temp_prefix + "gone-"


def home_of(username: str) -> Path:
    from django.conf import settings

    return Path(settings.GALLERY_HOME_TEMPLATE.format(username=username))


def use_parent(username: str) -> Path:
    from django.conf import settings

    return home_of(username) / settings.GALLERY_USE_DIR


def copied_by(target: Path) -> str | None:
    """The job id recorded in a copy's provenance file, if the folder is one of ours."""
    try:
        # No blocking on a planted FIFO, no following a planted link.
        fd = os.open(target / PROVENANCE_FILE, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            return str(json.loads(fh.read(65536)).get("job"))
    except (OSError, ValueError, AttributeError):
        return None


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


# --- the forked child ------------------------------------------------------------------------

Ids = tuple[int, int, list[int]]  # uid, gid, groups


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
        _child(plan, action, source_fd, w, ids, me)
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
                [sys.executable, "-I", "-S", os.path.abspath(__file__), "serve",
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


def _serve(parent: int, fd: int) -> None:
    """The helper's loop: fork one copy child per request; ends when the worker does."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the worker process
    if os.getppid() != parent:
        return
    sock = socket.socket(fileno=fd)
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:  # reap the copies that ended
                pass
        except ChildProcessError:
            pass
        try:
            message, fds, _, _ = socket.recv_fds(sock, 1 << 20, 2)
        except OSError:
            return
        if not message:
            return  # the worker closed its end
        try:
            request = json.loads(message)
            plan = CopyPlan(**request["plan"])
            plan.source, plan.parent = Path(plan.source), Path(plan.parent)
            plan.home = Path(plan.home) if plan.home else None
            ids = request["ids"]
            action = request.get("action", "copy")
            source_fd = fds[1] if len(fds) > 1 else None
            me = os.getpid()
            pid = os.fork()
            if pid == 0:
                _child(plan, action, source_fd, fds[0], tuple(ids) if ids else None, me)  # type: ignore[arg-type]
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                os.kill(pid, signal.SIGKILL)  # never two children on one job's pipe
                raise
            try:
                socket.send_fds(sock, [b"ok"], [pidfd])
            finally:
                os.close(pidfd)
        except Exception:  # noqa: BLE001 - answer without a pidfd: the worker forks itself
            sock.send(b"no")
        finally:
            for received in fds:
                os.close(received)


def _child(plan: CopyPlan, action: str, source_fd: int | None, w: int, ids: Ids | None,
           ppid: int) -> NoReturn:
    """Drop to the user (when given), copy or clear, report as JSON on `w`; always leaves via
    _exit."""
    code, report = 1, {"error": "The copy stopped unexpectedly."}
    try:
        # Broker and database sockets stay with the worker; only the pipe and source remain.
        keep = sorted({w} if source_fd is None else {w, source_fd})
        low = 3
        for fd in keep:
            os.closerange(low, fd)
            low = fd + 1
        os.closerange(low, 65536)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        if ids is not None:
            uid, gid, groups = ids
            # Order matters: groups, then gid, then uid (real, effective and saved: no way back).
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            if os.getresuid() != (uid,) * 3 or os.getresgid() != (gid,) * 3 or uid == 0:
                raise CopyError("The gallery could not switch to your account.")
        _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)  # the user may not ptrace us or read memory
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
        if os.getppid() != ppid:  # the parent (worker or helper) died before the line above
            raise CopyError("The worker stopped; the copy will be retried.")
        os.umask(0o022)
        os.chdir("/")
        if action == "clear":
            report = {"cleared": _clear_here(plan)}
        else:
            source = f"/proc/self/fd/{source_fd}"
            if not os.path.isdir(source):  # no /proc: the source path must then be readable
                source = str(plan.source)
            report = {"folder": _copy_here(plan, source)}
        code = 0
    except BaseException as exc:  # everything goes back to the worker as a message
        report = {"error": _user_message(exc, plan)}
    finally:
        try:
            os.write(w, json.dumps(report).encode()[:60000])
        finally:
            os._exit(code)


# --- the copy itself, run by whoever writes ---------------------------------------------------


def _copy_here(plan: CopyPlan, source: str) -> str:
    """Copy `source` into a new folder in `plan.parent`; returns the folder's name."""
    try:
        os.makedirs(plan.parent, 0o755, exist_ok=True)
        dfd = os.open(plan.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise CopyError(_parent_message(exc, plan)) from exc
    try:
        here = f"/proc/self/fd/{dfd}"  # the folder we opened, whatever its path does now
        if not os.path.isdir(here):
            here = str(plan.parent)
        names = set(os.listdir(dfd))
        earlier = _copy_of_job(here, names, plan)
        if earlier:
            return earlier
        _clear_attempts(dfd, names, plan)  # an interrupted attempt's, or one still running
        tmp_name = plan.temp_prefix + os.urandom(4).hex()  # not tempfile: it takes a lock
        tmp = os.path.join(here, tmp_name)
        os.mkdir(tmp, 0o700)
        ino = os.lstat(tmp).st_ino
        try:
            copy = _copy_file_slowly(plan.delay) if plan.delay else shutil.copy2
            _copy_tree(source, tmp, copy)
            _add_data_links(tmp, plan.data_links)
            # Written last: a folder with this file is a complete copy made by this job.
            with open(os.path.join(tmp, PROVENANCE_FILE), "x") as fh:
                json.dump({**plan.provenance, "job": plan.job_id}, fh, indent=2)
            os.chmod(tmp, 0o755)
            names = set(os.listdir(dfd))
            earlier = _copy_of_job(here, names, plan)  # another attempt finished meanwhile
            final = earlier or _rename_into_place(dfd, tmp_name, plan, names)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if earlier:
            shutil.rmtree(tmp, ignore_errors=True)
            return earlier
        if os.lstat(os.path.join(here, final)).st_ino != ino:
            raise CopyError("The folder was replaced while it was being copied; try again.")
        return final
    finally:
        os.close(dfd)


def _clear_here(plan: CopyPlan) -> int:
    """Clear the job's temporary folders in `plan.parent`, creating nothing."""
    try:
        dfd = os.open(plan.parent, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    try:
        return _clear_attempts(dfd, set(os.listdir(dfd)), plan)
    finally:
        os.close(dfd)


def _clear_attempts(dfd: int, names: set[str], plan: CopyPlan) -> int:
    """Remove the job's temporary folders among `names`; returns how many.

    Each is first renamed out of the way: an attempt still writing into it (its worker stalled
    past the lease while another took over) then fails at its next file, or at its rename,
    instead of putting a folder with files missing in place.
    """
    cleared = 0
    for name in sorted(names):
        if not name.startswith(plan.temp_prefix):
            continue
        gone = name
        try:
            if not name.startswith(plan.gone_prefix):
                gone = plan.gone_prefix + os.urandom(4).hex()
                _rename_noreplace(dfd, name, gone)
            if stat.S_ISDIR(os.lstat(gone, dir_fd=dfd).st_mode):
                shutil.rmtree(gone, dir_fd=dfd, ignore_errors=True)
            else:  # a link or file planted under our name: remove it, never follow it
                os.unlink(gone, dir_fd=dfd)
        except OSError:
            continue  # finished or cleared in the meantime, or not ours to remove
        cleared += 1
    return cleared


def _copy_tree(source: str, target: str, copy: Callable[[str, str], object]) -> None:
    """Copy what folder `source` holds into the existing folder `target`; links stay links.

    Not shutil.copytree: it goes on after an error and gathers every error into one
    shutil.Error of strings, which loses the errno telling a full disk from a quota or a
    permission problem (and shows people paths under /proc). Here the first error stops the
    copy and arrives as itself.
    """
    with os.scandir(source) as entries:
        for entry in entries:
            to = os.path.join(target, entry.name)
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), to)
            elif entry.is_dir():
                os.mkdir(to)
                _copy_tree(entry.path, to, copy)
            else:
                copy(entry.path, to)
    shutil.copystat(source, target)


def _candidates(wanted: str) -> list[str]:
    return [wanted] + [f"{wanted}-{n}" for n in range(2, MAX_SAME_NAME + 1)]


def _copy_of_job(here: str, names: set[str], plan: CopyPlan) -> str | None:
    """A folder an earlier attempt of this job finished, if there is one."""
    pattern = re.compile(re.escape(plan.folder_name) + r"(-[0-9]+)?")
    for name in sorted(names):
        if pattern.fullmatch(name) and copied_by(Path(here) / name) == plan.job_id:
            return name
    return None


def _rename_into_place(dfd: int, tmp_name: str, plan: CopyPlan, taken: set[str]) -> str:
    for name in _candidates(plan.folder_name):
        if name in taken:
            continue
        try:
            _rename_noreplace(dfd, tmp_name, name)
            return name
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    raise CopyError(f"{plan.shown_parent} already holds {MAX_SAME_NAME} copies named "
                    f"{plan.folder_name}; remove some or choose another folder name.")


def _rename_noreplace(dfd: int, src: str, dst: str) -> None:
    if _libc.renameat2(dfd, os.fsencode(src), dfd, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return
    err = ctypes.get_errno()
    if err != errno.EINVAL:  # EINVAL: this filesystem lacks the flag (NFS, FUSE)
        raise OSError(err, os.strerror(err), dst)
    try:
        os.lstat(dst, dir_fd=dfd)
    except FileNotFoundError:
        # rename(2) never replaces a non-empty folder or a non-folder; at worst an empty
        # folder made in this instant is replaced.
        os.rename(src, dst, src_dir_fd=dfd, dst_dir_fd=dfd)
        return
    raise FileExistsError(errno.EEXIST, "File exists", dst)


def _copy_file_slowly(delay: float) -> Callable[[str, str], object]:
    def copy(src: str, dst: str) -> object:
        time.sleep(delay)
        return shutil.copy2(src, dst)

    return copy


def _add_data_links(folder: str, links: list[dict[str, Any]]) -> None:
    """Paths become symlinks (when readable); URLs and DOIs go into a manifest."""
    manifest = []
    lines = ["# Data for this example", "", "Data is linked, never copied.", ""]
    for link in links:
        target = str(link.get("target", ""))
        entry = {k: link.get(k) for k in ("name", "target", "description", "size", "checksum",
                                          "licence") if link.get(k) not in (None, "")}
        name = str(link.get("name") or "data")
        if target.startswith("/") and os.access(target, os.R_OK):  # as the user who copies
            os.makedirs(os.path.join(folder, "data"), exist_ok=True)
            path = os.path.join(folder, "data", name)
            if os.path.lexists(path):
                entry["note"] = f"data/{name} is a file of the example; link it yourself"
            else:
                os.symlink(target, path)
                entry["link"] = f"data/{name}"
        elif target.startswith("/"):
            entry["note"] = "not readable for you; ask the centre for access"
        manifest.append(entry)
        detail = ", ".join(f"{k}: {v}" for k, v in entry.items() if k not in ("name", "target"))
        lines.append(f"- **{name}**: {target}" + (f" ({detail})" if detail else ""))
    if manifest:
        for name, text in ((DATA_MANIFEST_JSON, json.dumps(manifest, indent=2)),
                           (DATA_MANIFEST, "\n".join(lines) + "\n")):
            path = os.path.join(folder, name)
            if os.path.lexists(path):  # the example has a file of that name: keep it
                stem, dot, ext = name.rpartition(".")
                path = os.path.join(folder, f"{stem}.gallery{dot}{ext}")
            with open(path, "x") as fh:
                fh.write(text)


# --- messages a person can act on -------------------------------------------------------------


def _describe_parent(plan: CopyPlan) -> str:
    try:
        return f"{plan.shown_parent} (a link to {os.readlink(plan.parent)})"
    except OSError:
        return plan.shown_parent


def _parent_message(exc: OSError, plan: CopyPlan) -> str:
    if plan.home is not None and not _exists(plan.home):
        return (f"Your home folder {plan.home} does not exist, so there is nowhere to copy the "
                "example. Ask the centre's support to create it.")
    where = _describe_parent(plan)
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return (f"{where} is not a folder; move it away (or make it a folder of yours) "
                "and try again.")
    if isinstance(exc, PermissionError):
        return (f"The gallery cannot open {where} as you (permission denied). Make "
                f"{plan.shown_parent} a folder you own and can write to, then try again.")
    return _user_message(exc, plan)


def _exists(path: Path) -> bool:
    """Whether `path` leads somewhere (as whoever asks); unknown (no permission) counts as yes."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def _user_message(exc: BaseException, plan: CopyPlan) -> str:
    if isinstance(exc, CopyError):
        return str(exc)
    where = _describe_parent(plan)
    if isinstance(exc, PermissionError):
        return (f"The gallery cannot write into {where} as you (permission denied). Make "
                f"{plan.shown_parent} a folder you own and can write to, then try again.")
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return f"{where} goes through too many symbolic links; make it a plain folder."
    if isinstance(exc, OSError) and exc.errno == errno.EDQUOT:
        return "Your home is over its quota; free some space and try again."
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "The home filesystem is full; try again later or tell the centre's support."
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return f"{where} is on a read-only filesystem; the gallery cannot copy there."
    if isinstance(exc, OSError):  # the strerror only: str(exc) may name paths under /proc
        return (f"The copy into {where} failed: {exc.strerror or type(exc).__name__}. "
                "Try again.")
    return f"The copy into {where} failed ({type(exc).__name__}); try again."


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    _serve(int(sys.argv[2]), int(sys.argv[3]))

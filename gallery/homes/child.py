"""What the `filesystem` backend runs outside the worker process: the forked child that drops
to the user and copies (or clears) in their home, and the loop of the copy helper that forks
those children.

The helper runs this file as a script in a bare interpreter (`-I -S`, see `_Helper` in
homes/filesystem.py): it imports only the standard library and homes/shared.py. A forked child
trusts nothing in the home: it opens the target folder once and works relative to that
descriptor, never follows a link it did not make, and renames into place without replacing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING or __package__:
    from . import inplace, shared
else:  # the copy helper: a bare interpreter (-I -S) that has only this file's folder
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import inplace
    import shared

CopyError = shared.CopyError
CopyPlan = shared.CopyPlan
Ids = tuple[int, int, list[int]]  # uid, gid, groups

MAX_SAME_NAME = 999  # folder, folder-2 … folder-999

_libc = ctypes.CDLL(None, use_errno=True)
_RENAME_NOREPLACE, _PR_SET_PDEATHSIG, _PR_SET_DUMPABLE = 1, 1, 4


def copied_by(target: Path) -> str | None:
    """The job id recorded in a copy's provenance file, if the folder is one of ours."""
    try:
        # No blocking on a planted FIFO, no following a planted link.
        fd = os.open(target / shared.PROVENANCE_FILE,
                     os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            data = fh.read(65536)
    except OSError:
        return None
    return shared.recorded_job(data)


# --- the helper's loop ----------------------------------------------------------------------


def serve(parent: int, fd: int) -> None:
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
                run_child(plan, action, source_fd, fds[0], tuple(ids) if ids else None, me)  # type: ignore[arg-type]
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



# --- the forked child ------------------------------------------------------------------------


def run_child(plan: CopyPlan, action: str, source_fd: int | None, w: int, ids: Ids | None,
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
        elif action == "read":  # the source slot holds the descriptor to write the state to
            assert source_fd is not None
            report = inplace.read_here(plan, source_fd)
        elif action == "update":
            if plan.kernel:
                _install_kernel(plan)
            bundle = f"/proc/self/fd/{source_fd}"
            report = inplace.update_here(
                plan, bundle if os.path.isdir(bundle) else str(plan.source))
        else:
            source = f"/proc/self/fd/{source_fd}"
            if not os.path.isdir(source):  # no /proc: the source path must then be readable
                source = str(plan.source)
            report = {"folder": _copy_here(plan, source)}
        code = 0
    except BaseException as exc:  # everything goes back to the worker as a message
        report = {"error": shared.user_message(exc, plan)}
    finally:
        try:
            os.write(w, json.dumps(report).encode()[:60000])
        finally:
            os._exit(code)


# --- the copy itself, run by whoever writes ---------------------------------------------------


def _copy_here(plan: CopyPlan, source: str) -> str:
    """Install the plan's kernel, then copy `source` into a new folder in `plan.parent`;
    returns the folder's name."""
    if plan.kernel:
        _install_kernel(plan)
    try:
        os.makedirs(plan.parent, 0o755, exist_ok=True)
        dfd = os.open(plan.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise CopyError(shared.parent_message(exc, plan)) from exc
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
            shared.write_provenance(_new_file_in(tmp), plan.provenance, job_id=plan.job_id)
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


KERNELS_DIR = (".local", "share", "jupyter", "kernels")  # as gallery/kernels.py says


def _install_kernel(plan: CopyPlan) -> None:
    """Write the plan's kernelspec to <home>/.local/share/jupyter/kernels/<name>/kernel.json.

    Every folder on the way is opened relative to the one before without following a link,
    so a link planted anywhere on the path makes this Use fail instead of writing elsewhere;
    the file is written under a temporary name and renamed over the old one (a rename
    replaces a link itself, never what it points at).
    """
    assert plan.kernel is not None
    name, spec = plan.kernel["name"], plan.kernel["spec"]
    shown = "~/" + "/".join((*KERNELS_DIR, name))
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,99}", name) or plan.home is None:
        raise CopyError("The example's kernel has no usable name; tell the centre's support.")
    try:
        os.makedirs(plan.home, 0o755, exist_ok=True)  # as the copy makes its parent folder
        fd = os.open(plan.home, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise CopyError(shared.parent_message(exc, plan)) from exc
    try:
        for part in (*KERNELS_DIR, name):
            try:
                os.mkdir(part, 0o700 if part == ".local" else 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        tmp = f".kernel.json.tmp-{os.urandom(4).hex()}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644,
                      dir_fd=fd)
        try:
            with os.fdopen(out, "wb") as fh:
                fh.write((json.dumps(spec, indent=1, ensure_ascii=False) + "\n").encode())
            os.rename(tmp, "kernel.json", src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise
    except OSError as exc:
        raise CopyError(shared.kernel_message(exc, shown)) from exc
    finally:
        os.close(fd)


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
    """Paths become symlinks in data/ (when the user who copies can read them); the manifest
    lists every link."""

    def place(name: str, target: str) -> dict[str, str]:
        if not target.startswith("/"):
            return {}
        if not os.access(target, os.R_OK):  # as the user who copies
            return {"note": "not readable for you; ask the centre for access"}
        os.makedirs(os.path.join(folder, "data"), exist_ok=True)
        path = os.path.join(folder, "data", name)
        if os.path.lexists(path):
            return {"note": f"data/{name} is a file of the example; link it yourself"}
        os.symlink(target, path)
        return {"link": f"data/{name}"}

    shared.write_data_manifest(links, place=place, write=_new_file_in(folder),
                               taken=lambda name: os.path.lexists(os.path.join(folder, name)))


def _new_file_in(folder: str) -> Callable[[str, bytes], bool]:
    """A writer of new files in `folder`: it never replaces one that is there."""

    def write(name: str, data: bytes) -> bool:
        with open(os.path.join(folder, name), "xb") as fh:
            fh.write(data)
        return True

    return write


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    serve(int(sys.argv[2]), int(sys.argv[3]))

"""Writing an example into a user's home (the `filesystem` Use backend).

The worker may run as root while homes belong to other people. When it does, the copy runs
in a forked child that has dropped to the user's uid, gid and groups before it touches the
home, so the kernel checks the user's own permissions on every path: a planted symlink can at
worst make that user's own copy fail. The copy goes into a hidden temporary folder beside the
target and is renamed into place without replacing anything, so a folder in a home is either
whole or absent.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import pwd
import select
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROVENANCE_FILE = ".gallery-provenance.json"
DATA_MANIFEST = "DATA.md"
DATA_MANIFEST_JSON = "data-links.json"

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _RENAME_NOREPLACE, _PR_SET_PDEATHSIG, _PR_SET_DUMPABLE = -100, 1, 1, 4


class CopyError(Exception):
    """A Use that could not be written; the message is meant for the user."""


@dataclass
class CopyPlan:
    """Everything a copy needs, decided before it starts (so a retry does the same thing)."""

    username: str
    source: Path  # an exported, world-readable example folder
    parent: Path  # <home>/<GALLERY_USE_DIR>
    folder_name: str
    job_id: str
    provenance: dict[str, Any]
    data_links: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0  # test-only pause between files

    @property
    def target(self) -> Path:
        return self.parent / self.folder_name


def home_of(username: str) -> Path:
    from django.conf import settings

    return Path(settings.GALLERY_HOME_TEMPLATE.format(username=username))


def use_parent(username: str) -> Path:
    from django.conf import settings

    return home_of(username) / settings.GALLERY_USE_DIR


def free_folder_name(parent: Path, wanted: str) -> str:
    """`wanted`, or `wanted-2`, `wanted-3`… whichever does not exist yet (never overwrite)."""
    for n in range(1, 1000):
        name = wanted if n == 1 else f"{wanted}-{n}"
        if not os.path.lexists(parent / name):
            return name
    raise CopyError(f"Too many copies of {wanted} in {parent}; remove some first.")


def copied_by(target: Path) -> str | None:
    """The job id recorded in a copy's provenance file, if the folder is one of ours."""
    try:
        with open(target / PROVENANCE_FILE, "rb") as fh:
            return str(json.load(fh).get("job"))
    except (OSError, ValueError, AttributeError):
        return None


def copy_into_home(plan: CopyPlan, *, as_user: bool, timeout: float = 300.0) -> Path:
    """Carry out a plan; returns the final folder. Safe to call again for the same job."""
    if as_user:
        _run_as_user(plan, timeout)
    else:
        try:
            _copy_as_current_user(plan)
        except CopyError:
            raise
        except OSError as exc:
            raise CopyError(_user_message(exc, plan)) from exc
    return plan.target


# --- the copy itself, run by whoever writes ----------------------------------------------


def _rename_noreplace(src: str, dst: str) -> None:
    if _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                       _RENAME_NOREPLACE) == 0:
        return
    err = ctypes.get_errno()
    if err != errno.EINVAL:  # EINVAL: this filesystem lacks the flag (NFS, FUSE)
        raise OSError(err, os.strerror(err), dst)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "File exists", dst)
    os.rename(src, dst)  # rename(2) never replaces a non-empty directory


def _copy_file_slowly(delay: float) -> Callable[[str, str], object]:
    def copy(src: str, dst: str) -> object:
        time.sleep(delay)
        return shutil.copy2(src, dst)

    return copy


def _copy_as_current_user(plan: CopyPlan) -> None:
    parent = str(plan.parent)
    os.makedirs(parent, 0o755, exist_ok=True)
    final = os.path.join(parent, plan.folder_name)
    if os.path.lexists(final):
        if copied_by(Path(final)) == plan.job_id:
            return  # an earlier attempt of this job finished the copy
        raise FileExistsError(errno.EEXIST, "File exists", final)
    tmp = os.path.join(parent, f".{plan.folder_name}.tmp-{os.urandom(6).hex()}")
    os.mkdir(tmp, 0o700)
    ino = os.lstat(tmp).st_ino
    try:
        copy = _copy_file_slowly(plan.delay) if plan.delay else shutil.copy2
        shutil.copytree(plan.source, tmp, symlinks=True, dirs_exist_ok=True, copy_function=copy)
        _add_data_links(tmp, plan.data_links)
        with open(os.path.join(tmp, PROVENANCE_FILE), "x") as fh:
            json.dump({**plan.provenance, "job": plan.job_id}, fh, indent=2)
        os.chmod(tmp, 0o755)
        _rename_noreplace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.lstat(final).st_ino != ino:
        raise CopyError("The folder was replaced while it was being copied.")


def _add_data_links(folder: str, links: list[dict[str, Any]]) -> None:
    """Paths become symlinks (when readable); URLs and DOIs go into a manifest."""
    manifest = []
    lines = ["# Data for this example", "", "Data is linked, never copied.", ""]
    for link in links:
        target = str(link.get("target", ""))
        entry = {k: link.get(k) for k in ("name", "target", "description", "size", "checksum",
                                          "licence") if link.get(k) not in (None, "")}
        name = str(link.get("name") or "data")
        if target.startswith("/") and os.access(target, os.R_OK):
            os.makedirs(os.path.join(folder, "data"), exist_ok=True)
            os.symlink(target, os.path.join(folder, "data", name))
            entry["link"] = f"data/{name}"
        elif target.startswith("/"):
            entry["note"] = "not readable for you; ask the centre for access"
        manifest.append(entry)
        detail = ", ".join(f"{k}: {v}" for k, v in entry.items() if k not in ("name", "target"))
        lines.append(f"- **{name}**: {target}" + (f" ({detail})" if detail else ""))
    if manifest:
        with open(os.path.join(folder, DATA_MANIFEST_JSON), "x") as fh:
            json.dump(manifest, fh, indent=2)
        with open(os.path.join(folder, DATA_MANIFEST), "x") as fh:
            fh.write("\n".join(lines) + "\n")


# --- dropping to the user ------------------------------------------------------------------


def _run_as_user(plan: CopyPlan, timeout: float) -> None:
    try:
        pw = pwd.getpwnam(plan.username)
    except KeyError:
        raise CopyError(f"There is no account named {plan.username!r} on this system.") from None
    if pw.pw_uid == 0:
        raise CopyError("The gallery does not write into root's home.")
    groups = os.getgrouplist(plan.username, pw.pw_gid)  # in the parent: NSS may use threads
    r, w = os.pipe()
    ppid = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child always leaves through os._exit
        code, msg = 1, b"unknown error"
        try:
            os.closerange(3, w)
            os.closerange(w + 1, 65536)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                signal.signal(sig, signal.SIG_DFL)
            os.setgroups(groups)
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            if os.getresuid() != (pw.pw_uid,) * 3 or os.getresgid() != (pw.pw_gid,) * 3:
                raise CopyError("could not drop privileges")
            _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != ppid:
                raise CopyError("parent died")
            os.umask(0o022)
            os.chdir("/")
            _copy_as_current_user(plan)
            code, msg = 0, b"ok"
        except BaseException as exc:  # report everything to the parent
            msg = _user_message(exc, plan).encode()[:2000]
        finally:
            try:
                os.write(w, msg)
            finally:
                os._exit(code)
    os.close(w)
    out, finished = b"", False
    try:
        deadline = time.monotonic() + timeout
        while True:  # the user could SIGSTOP the child: bound the wait
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise CopyError(f"The copy into {plan.username}'s home timed out.")
            chunk = os.read(r, 4096)
            if not chunk:
                break
            out += chunk
        finished = True
    finally:
        os.close(r)
        if not finished:
            os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
    if os.waitstatus_to_exitcode(status) != 0:
        raise CopyError(out.decode(errors="replace") or "The copy stopped unexpectedly.")


def _user_message(exc: BaseException, plan: CopyPlan) -> str:
    where = f"~/{plan.parent.name}/{plan.folder_name}"
    if isinstance(exc, FileExistsError):
        return f"{where} already exists; choose another folder name."
    if isinstance(exc, PermissionError):
        return (f"The gallery cannot write to {where} as you ({exc.strerror}: {exc.filename}). "
                "Check that the folder is yours and writable.")
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return f"{where} goes through a symbolic link the gallery will not follow."
    if isinstance(exc, OSError) and exc.errno == errno.EDQUOT:
        return "Your home is over its quota; free some space and try again."
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "The home filesystem is full; try again later."
    return f"{type(exc).__name__}: {exc}"

"""What "Update my copy" does inside a person's copy, run by the forked child of the
`filesystem` backend as that person (homes/child.py): read the example's files of the copy,
and later write the update into it.

Like the copy, it trusts nothing in the home. The copy folder is opened once, without
following a link, and every path below it is reached folder by folder from that descriptor
with O_NOFOLLOW: a link planted anywhere (the copy itself, a file, a folder, the backup
folder) makes this person's update fail, never read or write elsewhere. Each file is written
under a temporary name and renamed over the old one. Before the first file is replaced, the
example's files the copy holds are saved in `.gallery-backup/<version>-<time>/` inside the copy; a
file the update already wrote (an earlier attempt of the same job) is recognised by its hash,
so a retried update finishes the same work and never backs up its own output.

Only the standard library: the copy helper runs this in a bare interpreter.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from typing import Any

try:
    from . import shared
except ImportError:  # the copy helper's bare interpreter: homes/ is on its path
    import shared  # type: ignore[no-redef]

BACKUP_DIR = ".gallery-backup"
MANIFEST = "update.json"  # the update bundle's list of changes (written by the worker)

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # no following, no hanging on a FIFO


class Refused(shared.CopyError):
    """Something in the copy is not what an update may touch (a link, a changed file)."""


def read_here(plan: shared.CopyPlan, out_fd: int) -> dict[str, Any]:
    """Write the copy's provenance and the example's files it holds (plan.request["paths"])
    as JSON to `out_fd`; returns the child's report."""
    request = plan.request
    limit = int(request.get("max_bytes", 100 << 20))
    with _copy_folder(plan) as folder:
        state: dict[str, Any] = {"provenance": _provenance(folder), "files": {}}
        total = 0
        for path in request.get("paths", []):
            data = _read(folder, path)
            if data is None:
                continue
            total += len(data)
            if total > limit:
                raise shared.CopyError("Your copy holds more than the gallery can compare; "
                                       "move large files out of it and try again.")
            state["files"][path] = base64.b64encode(data).decode()
    out = json.dumps(state).encode()
    view = memoryview(out)
    while view:
        view = view[os.write(out_fd, view):]
    return {"read": len(out)}


def update_here(plan: shared.CopyPlan, bundle: str) -> dict[str, Any]:
    """Apply the update bundle at `bundle` (a folder the worker prepared: update.json and the
    new files) to the copy; returns the child's report."""
    with open(os.path.join(bundle, MANIFEST), "rb") as fh:
        manifest = json.load(fh)
    with _copy_folder(plan) as folder:
        if shared.recorded_job(_provenance_bytes(folder) or b"{}") == plan.job_id:
            return {"updated": 0, "already": True}  # an earlier attempt finished it
        changes = manifest["changes"]
        todo = []
        for change in changes:  # every check first: nothing is written when one fails
            now = _hash(folder, change["path"])
            if now == change["new"]:
                continue  # written by an earlier attempt of this job
            if now != change["expect"]:
                raise Refused(f"{change['path']} in your copy changed while the update was "
                              "being prepared; nothing was changed. Try the update again.")
            todo.append(change)
        backup = manifest["backup"]
        with _open_dirs(folder, [BACKUP_DIR, backup], create=True) as saved:
            # The example's files as the update found them (a file an earlier attempt
            # replaced is saved already), then the provenance.
            for path in manifest.get("save", []):
                _save(folder, saved, path)
            for name in (shared.PROVENANCE_FILE, shared.PROVENANCE_VISIBLE):
                _save(folder, saved, name)
        for change in todo:
            parts = change["path"].split("/")
            with _open_dirs(folder, parts[:-1], create=True) as dfd:
                if change["file"]:
                    with open(os.path.join(bundle, change["file"]), "rb") as fh:
                        _write(dfd, parts[-1], fh.read())
                else:  # removed from the example; the backup has it
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(parts[-1], dir_fd=dfd)
        record = {**manifest["provenance"], "job": plan.job_id}
        name = (shared.PROVENANCE_VISIBLE if _exists(folder, shared.PROVENANCE_VISIBLE)
                and not _exists(folder, shared.PROVENANCE_FILE) else shared.PROVENANCE_FILE)
        _write(folder, name, json.dumps(record, indent=2).encode())  # last: the update is done
    return {"updated": len(todo)}


# --- reaching into the copy without following links ----------------------------------------


@contextlib.contextmanager
def _copy_folder(plan: shared.CopyPlan) -> Iterator[int]:
    """The copy's folder, opened without following a link (the parent may be a link, as
    ~/examples may be one to a team folder: the child runs as the user there)."""
    name = plan.request.get("folder", "")
    if not name or "/" in name or name in (".", ".."):
        raise shared.CopyError("That is not a folder name.")
    try:
        parent = os.open(plan.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise shared.CopyError(shared.parent_message(exc, plan)) from exc
    try:
        try:
            fd = os.open(name, _DIR, dir_fd=parent)
        except FileNotFoundError:
            raise shared.CopyError(f"There is no folder {plan.shown_parent}/{name} any more; "
                                   "nothing to update.") from None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise Refused(f"{plan.shown_parent}/{name} is a symbolic link or not a folder; "
                              "the gallery updates only a real folder. Nothing was changed."
                              ) from None
            raise
    finally:
        os.close(parent)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _open_dirs(root: int, parts: list[str], *, create: bool = False) -> Iterator[int]:
    """The folder `parts` below `root`, each step opened without following a link."""
    fd = os.dup(root)
    try:
        for part in parts:
            if part in ("", ".", ".."):
                raise Refused("A file of the example has an unusable name.")
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
            try:
                inner = os.open(part, _DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Refused(f"{'/'.join(parts)} in your copy is a symbolic link or not a "
                                  "folder; the gallery writes only into real folders of your "
                                  "copy. Nothing was changed.") from None
                raise
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def _read(folder: int, path: str) -> bytes | None:
    """A regular file's bytes, None when it is not there; Refused for a link or another kind."""
    parts = path.split("/")
    try:
        with _open_dirs(folder, parts[:-1]) as dfd:
            fd = os.open(parts[-1], _FILE, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except Refused:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(f"{path} in your copy is a symbolic link; the gallery updates only "
                          "plain files. Replace it with a file (or remove it) and try again."
                          ) from None
        if exc.errno == errno.ENOTDIR:
            return None
        raise
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise Refused(f"{path} in your copy is not a plain file; the gallery cannot "
                          "update it.")
        return fh.read()


def _hash(folder: int, path: str) -> str:
    data = _read(folder, path)
    return hashlib.sha256(data).hexdigest() if data is not None else ""


def _exists(folder: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=folder)
    except FileNotFoundError:
        return False
    return True


def _provenance_bytes(folder: int) -> bytes | None:
    for name in (shared.PROVENANCE_FILE, shared.PROVENANCE_VISIBLE):
        with contextlib.suppress(Refused):
            data = _read(folder, name)
            if data is not None:
                return data[:65536]
    return None


def _provenance(folder: int) -> dict[str, Any]:
    try:
        record = json.loads(_provenance_bytes(folder) or b"{}")
    except ValueError:
        record = {}
    return record if isinstance(record, dict) else {}


def _save(folder: int, saved: int, path: str) -> None:
    """Copy a file of the copy into the backup folder, unless it is there already (saved by
    an earlier attempt: that one is the file as it was before the update)."""
    data = _read(folder, path)
    if data is None:
        return
    parts = path.split("/")
    with _open_dirs(saved, parts[:-1], create=True) as dfd:
        if not _exists(dfd, parts[-1]):
            _write(dfd, parts[-1], data)


def _write(dfd: int, name: str, data: bytes) -> None:
    """Write `name` in folder `dfd` whole or not at all: a temporary file renamed over it (a
    rename replaces a link itself, never what it points at). An existing file's mode stays."""
    try:
        mode = stat.S_IMODE(os.lstat(name, dir_fd=dfd).st_mode) & 0o777
    except FileNotFoundError:
        mode = 0o644
    tmp = f".{name[:100]}.gallery-tmp-{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise

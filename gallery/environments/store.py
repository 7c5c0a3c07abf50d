"""The content-addressed store: a finished build sealed read-only into it under the lock of
its key, written once, and taken out of it for good."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .runner import BuildConfig

RECORD_FILE = "gallery-env.json"  # written into every built environment, last


def remove(key: str, *, config: BuildConfig | None = None) -> bool:
    """Take an environment out of the store for good; False when it is not there. It is
    renamed out of the store under the lock of its key (a build of the same key waits, then
    builds it anew) and only then deleted, so nobody sees half of it."""
    config = config or BuildConfig.from_settings()
    if not key or "/" in key or key.startswith("."):
        raise ValueError(f"not an environment key: {key!r}")
    final = config.store / key
    sealing = config.store / ".sealing"
    if not final.exists() or not sealing.is_dir():
        return False
    with _key_lock(sealing / f"{key}.lock"):
        gone = sealing / f"{key}.gone-{secrets.token_hex(4)}"
        try:
            os.rename(final, gone)
        except FileNotFoundError:
            return False
    _remove(gone)
    return True


@contextlib.contextmanager
def _key_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _seal(tmp: Path, final: Path, record: dict[str, Any]) -> None:
    """Move a finished build out of the build account's reach, make it the worker's and
    read-only for everyone, write its record, and rename it into place (write-once)."""
    sealing = final.parent / ".sealing" / f"{final.name}.seal-{secrets.token_hex(4)}"
    os.rename(tmp, sealing)
    try:
        _make_read_only(sealing)
        fd = os.open(sealing / RECORD_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                     0o444)
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=1)
        os.chmod(sealing, 0o555)
        try:
            os.rename(sealing, final)
        except OSError:
            if not (final / RECORD_FILE).is_file():
                raise
    finally:
        if sealing.exists():
            _remove(sealing)


def _make_read_only(root: Path) -> None:
    """Every file and folder the worker's, readable by all, writable by none. Walks by file
    descriptor without following links, so a link left by the build cannot redirect it."""
    me, group = os.geteuid(), os.getegid()
    for _dir, _dirs, files, dir_fd in os.fwalk(root, follow_symlinks=False):
        os.fchown(dir_fd, me, group)
        os.fchmod(dir_fd, 0o555)
        for name in files:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError:  # a symlink (the venv's python) or something odd: left as it is
                continue
            try:
                st = os.fstat(fd)
                os.fchown(fd, me, group)
                os.fchmod(fd, 0o555 if st.st_mode & 0o111 else 0o444)
            finally:
                os.close(fd)


def _remove(path: Path) -> None:
    """Remove a build's folder. Root removes anything as it is; another owner makes its
    read-only folders writable first (root never chmods what the build account could swap
    for a link)."""
    if os.geteuid() == 0:
        shutil.rmtree(path, ignore_errors=True)
        return
    for root, dirs, _files in os.walk(path):
        for name in [root, *(os.path.join(root, d) for d in dirs)]:
            with contextlib.suppress(OSError):
                if not os.path.islink(name):
                    os.chmod(name, 0o700)
    shutil.rmtree(path, ignore_errors=True)

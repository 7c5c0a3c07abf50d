"""Throwaway unix accounts for tests that run as root (CI does): made with useradd, removed
with userdel, with homes under a temporary root."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

TAG = f"{os.getpid() % 100000}{os.urandom(2).hex()}"  # unique names per run


@dataclass
class Account:
    name: str
    uid: int
    gid: int
    home: Path

    @property
    def examples(self) -> Path:
        return self.home / "examples"


def run(*cmd: str) -> None:
    """Run an account command; other processes may hold the lock on /etc/passwd a moment."""
    for _ in range(20):
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode == 0:
            return
        if "lock" not in result.stderr.lower():
            break
        time.sleep(0.2)
    raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")


def make_account(root: Path, name: str, groups: str = "") -> Account:
    """A new user (and group of the same name) whose home is <root>/home/<name>, created."""
    home = root / "home" / name
    run("useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin",
        "--user-group", *(["--groups", groups] if groups else []), name)
    pw = pwd.getpwnam(name)
    home.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    return Account(name, pw.pw_uid, pw.pw_gid, home)


def remove_account(name: str) -> None:
    """Remove the user (and its group), waiting out another process's lock on /etc/passwd
    (test processes run side by side); an account that is already gone is no error."""
    with contextlib.suppress(RuntimeError):
        run("userdel", name)


def remove_group(name: str) -> None:
    with contextlib.suppress(RuntimeError):
        run("groupdel", name)

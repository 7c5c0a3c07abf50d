"""How builds run here: the build account, and one command at a time run as that account
with a time limit and a disk limit; the errors a lock or a build raises."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import resource
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LOG_LINES = 20
# What the build account's processes see of the worker's environment: a proxy and its CA.
PASSED_ON = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
             "SSL_CERT_FILE", "SSL_CERT_DIR")


class BuildError(Exception):
    """A lock or a build that failed; `log` holds the last lines of uv's output."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message + (f"\n{log}" if log else ""))
        self.reason = message
        self.log = log


class NotConfigured(BuildError):
    """This gallery is not set up to run uv (no build account, a build Python out of the
    build account's reach): a fault of the setup, not of the spec."""


class CannotBuild(BuildError):
    """An environment this gallery cannot build at all (conda dependencies without a conda
    executable); the message names what to use instead."""


# --- how builds run here -------------------------------------------------------------------


@dataclass(frozen=True)
class BuildConfig:
    """Where environments live and how uv runs: read from the settings once per build."""

    store: Path
    python: str
    user: str = ""
    uv: str = ""
    time_limit: int = 600
    max_mb: int = 10240
    index_options: tuple[str, ...] = ()
    only_wheels: bool = True
    conda: str = ""  # conda, mamba or micromamba: a path or a name on the worker's PATH
    conda_channels: tuple[str, ...] = ("conda-forge",)

    @classmethod
    def from_settings(cls) -> BuildConfig:
        from django.conf import settings

        return cls(
            store=Path(settings.GALLERY_ENV_DIR), python=settings.GALLERY_BUILD_PYTHON,
            user=settings.GALLERY_BUILD_USER, uv=settings.GALLERY_BUILD_UV,
            time_limit=settings.GALLERY_BUILD_TIMEOUT, max_mb=settings.GALLERY_BUILD_MAX_MB,
            index_options=tuple(shlex.split(settings.GALLERY_BUILD_INDEX_OPTIONS)),
            only_wheels=settings.GALLERY_BUILD_ONLY_WHEELS,
            conda=settings.GALLERY_CONDA, conda_channels=tuple(settings.GALLERY_CONDA_CHANNELS),
        )

    def conda_binary(self) -> str:
        """The conda-compatible executable, found on the worker's PATH when only named (the
        build account's PATH is a short fixed one)."""
        found = shutil.which(self.conda)
        if not found:
            raise NotConfigured(f"GALLERY_CONDA={self.conda!r} is not an executable here.")
        return os.path.abspath(found)

    def uv_binary(self) -> str:
        if self.uv:
            return self.uv
        import uv

        return uv.find_uv_bin()

    def wheel_options(self) -> list[str]:
        return ["--only-binary", ":all:"] if self.only_wheels else []


@dataclass(frozen=True)
class Account:
    """Who uv runs as: the build account when the worker is root, else the worker itself."""

    name: str
    uid: int
    gid: int
    switch: bool = False


def build_account(config: BuildConfig) -> Account:
    """The account builds run as, or BuildError in plain words: never root."""
    me = pwd.getpwuid(os.geteuid())
    if not config.user or config.user == me.pw_name:
        if me.pw_uid == 0:
            raise NotConfigured("Environments are never built as root: set GALLERY_BUILD_USER to "
                             "an unprivileged account (for example a 'gallery-build' system "
                             "user) for the worker to build as.")
        return Account(me.pw_name, me.pw_uid, me.pw_gid)
    try:
        pw = pwd.getpwnam(config.user)
    except KeyError:
        raise NotConfigured(f"GALLERY_BUILD_USER={config.user!r} is not an account here.") \
            from None
    if pw.pw_uid == 0:
        raise NotConfigured(f"GALLERY_BUILD_USER={config.user!r} is root; environments are never "
                         "built as root.")
    if os.geteuid() != 0:
        raise NotConfigured(f"GALLERY_BUILD_USER={config.user!r}: the worker runs as "
                         f"{me.pw_name}, not root, so it cannot build as another account; "
                         "leave GALLERY_BUILD_USER empty to build as the worker's own user.")
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, switch=True)


# --- running uv as the build account ---------------------------------------------------------


@dataclass
class _Run:
    account: Account
    config: BuildConfig
    deadline: float
    log: IO[bytes]
    work: Path  # the build account's own folder: uv's cache and builds in progress
    uv: str = "uv"  # the uv executable the build account runs

    def __call__(self, args: list[str], *, stdin: str = "", watch: Path | None = None,
                 conda: bool = False) -> str:
        """Run one command as the build account and return its standard output; BuildError
        with the log's last lines when it fails, passes the deadline or grows `watch` past
        the disk limit. The whole process group is killed on a limit. `conda` gives a conda,
        mamba or micromamba its package cache and home in the build account's folder."""
        max_bytes = self.config.max_mb * 1024 * 1024
        env = self._environ()
        if conda:
            env.update(self._conda_environ())
        try:
            proc = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                cwd=self.work, env=env, process_group=0,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                      (max_bytes, max_bytes)),
                **({"user": self.account.uid, "group": self.account.gid, "extra_groups": []}
                   if self.account.switch else {}),
            )
        except OSError as exc:
            raise BuildError(f"{args[0]} cannot be started as {self.account.name}: "
                             f"{exc.strerror}.") from None
        pending: bytes | None = stdin.encode()
        while True:
            try:
                out, _ = proc.communicate(pending, timeout=1)
                break
            except subprocess.TimeoutExpired:
                pending = None
            if time.monotonic() > self.deadline:
                self._kill(proc)
                raise BuildError(f"The build took longer than {self.config.time_limit} seconds "
                                 "(GALLERY_BUILD_TIMEOUT) and was stopped.", self.tail())
            if watch is not None and _size(watch) > max_bytes:
                self._kill(proc)
                raise BuildError(f"The environment grew past {self.config.max_mb} MB "
                                 "(GALLERY_BUILD_MAX_MB) and was stopped.", self.tail())
        if proc.returncode == -signal.SIGXFSZ:
            raise BuildError(f"A file of the environment grew past {self.config.max_mb} MB "
                             "(GALLERY_BUILD_MAX_MB) and the build was stopped.", self.tail())
        if proc.returncode != 0:
            if out.strip():  # conda's --json says why on its standard output
                self.log.write(out[-20_000:] + b"\n")
            reason = (_json_message(out) or _last_error(self.tail())
                      or f"{Path(args[0]).name} failed")
            raise BuildError(reason, self.tail())
        return out.decode("utf-8", "replace")

    def _environ(self) -> dict[str, str]:
        env = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
        cache = str(self.work / "uv-cache")
        env.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=cache, LANG="C.UTF-8",
                   UV_CACHE_DIR=cache, UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never",
                   UV_LINK_MODE="copy", UV_NO_PROGRESS="1", NO_COLOR="1")
        return env

    def _conda_environ(self) -> dict[str, str]:
        """Conda's package cache, root prefix and home in the build account's own folder;
        files copied, never hard-linked from that cache, so a sealed environment shares no
        file with anything the build account can still write."""
        root = self.work / "conda"
        if not root.is_dir():
            root.mkdir(mode=0o700)
            os.chown(root, self.account.uid, self.account.gid, follow_symlinks=False)
        return {"HOME": str(root / "home"), "CONDA_PKGS_DIRS": str(root / "pkgs"),
                "MAMBA_ROOT_PREFIX": str(root / "root"), "CONDA_ALWAYS_COPY": "true",
                "MAMBA_ALWAYS_COPY": "true", "CONDA_AUTO_UPDATE_CONDA": "false",
                "CONDA_NOTIFY_OUTDATED_CONDA": "false", "CONDA_REPORT_ERRORS": "false"}

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def tail(self, lines: int = LOG_LINES) -> str:
        self.log.flush()
        self.log.seek(0)
        text = self.log.read().decode("utf-8", "replace")
        self.log.seek(0, os.SEEK_END)
        return "\n".join(text.rstrip().splitlines()[-lines:])


def _last_error(log: str) -> str:
    """uv's own reason, the line starting with 'error:' and what follows it, in one line;
    else conda's ('PackagesNotFoundError: …') or micromamba's ('critical libmamba …')."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("error:"):
            rest = " ".join(x.strip() for x in lines[i:i + 4] if x.strip())
            return rest.removeprefix("error: ")[:600]
    for i, line in enumerate(lines):
        found = re.match(r"\s*(?:[A-Z]\w*Error: |(?:critical|error)\s+libmamba )(.*)", line)
        if found:
            rest = " ".join(x.strip() for x in [found.group(1), *lines[i + 1:i + 4]] if x.strip())
            return rest[:600]
    return ""


def _json_message(out: bytes) -> str:
    """The reason in a conda --json failure ({"message": …} or {"error": …}), if any."""
    try:
        data = json.loads(out)
    except ValueError:
        return ""
    if isinstance(data, dict):
        for field in ("message", "error"):
            if isinstance(data.get(field), str) and data[field].strip():
                return " ".join(data[field].split())[:600]
    return ""


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@contextlib.contextmanager
def _runner(config: BuildConfig) -> Iterator[_Run]:
    account = build_account(config)
    work, _ = _prepare_store(config.store, account)
    with tempfile.TemporaryFile() as log:
        yield _Run(account, config, time.monotonic() + config.time_limit, log, work,
                   _uv_for(config, account))


def _uv_for(config: BuildConfig, account: Account) -> str:
    """The uv the build account runs: GALLERY_BUILD_UV, or else the gallery's own uv, copied
    into the store when the build account is another user: the gallery's environment may sit
    where that account cannot go (a private folder, a home), the store never does."""
    if config.uv or not account.switch:
        return config.uv_binary()
    installed = Path(config.uv_binary())
    st = installed.stat()
    tools = config.store / ".tools"
    tools.mkdir(mode=0o755, exist_ok=True)
    copy = tools / f"uv-{st.st_size}-{st.st_mtime_ns}"
    if not copy.is_file():  # two builds may copy at once (threads of one process too)
        fd, partial = tempfile.mkstemp(prefix=f".{copy.name}.", dir=tools)
        with os.fdopen(fd, "wb") as out, installed.open("rb") as source:
            shutil.copyfileobj(source, out)
        os.chmod(partial, 0o755)
        os.replace(partial, copy)
    return str(copy)


def _prepare_store(store: Path, account: Account) -> tuple[Path, Path]:
    """The store's folders: the store itself and its sealing room belong to the worker, so
    the build account can never change a finished environment; `.building` (uv's cache and
    builds in progress) belongs to the build account."""
    store.mkdir(parents=True, exist_ok=True)
    store.chmod(0o755)
    work, sealing = store / ".building", store / ".sealing"
    sealing.mkdir(mode=0o700, exist_ok=True)
    for folder in (work, work / "uv-cache"):
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
        if st.st_uid != account.uid:
            os.chown(folder, account.uid, account.gid, follow_symlinks=False)
    return work, sealing

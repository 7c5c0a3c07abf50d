"""An example's environment: from its spec (requirements.txt, pyproject.toml or
environment.yml) to a lock (every package pinned) to a built, read-only environment in a
content-addressed store on shared storage, built once for every user.

uv resolves and installs; it always runs as an unprivileged build account (never as root),
with a time limit, a disk limit and, by default, wheels only, so no package's own build code
runs. The conda dependencies of an environment.yml are resolved and installed the same way by
the conda-compatible executable a centre names (conda, mamba or micromamba; conda packages
are binaries), the pip part then by uv into that environment. Nothing here needs a request or
the database.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import resource
import secrets
import shlex
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .specs import (
    CHANNEL_NAME,
    SPEC_FILES,  # noqa: F401
    Spec,
    SpecError,  # noqa: F401
    conda_name,
    read_spec,  # noqa: F401
    requirement,  # noqa: F401
)

KERNEL_PACKAGE = "ipykernel"
LOG_LINES = 20
RECORD_FILE = "gallery-env.json"  # written into every built environment, last
# What the build account's processes see of the worker's environment: a proxy and its CA.
PASSED_ON = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
             "SSL_CERT_FILE", "SSL_CERT_DIR")
_PROBE = ("import json, os, sys, sysconfig; print(json.dumps([os.path.realpath(sys.executable), "
          "'%d.%d.%d' % sys.version_info[:3], sysconfig.get_platform()]))")
CONDA_PYTHON = "conda"  # what stands for the interpreter in the key of a conda environment


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


# --- resolving and building ----------------------------------------------------------------


@dataclass(frozen=True)
class Interpreter:
    """The Python an environment is built on: its real path, version and platform."""

    path: str
    version: str
    platform: str


def _interpreter(run: _Run) -> Interpreter:
    try:
        out = run([run.config.python, "-I", "-c", _PROBE])
        path, version, platform = json.loads(out)
    except (BuildError, ValueError) as exc:
        raise NotConfigured(f"The build Python {run.config.python} cannot be run by the build "
                         f"account {run.account.name} (GALLERY_BUILD_PYTHON must name an "
                         f"interpreter every user can run): {exc}") from None
    return Interpreter(path, version, platform)


def lock(spec: Spec, *, config: BuildConfig | None = None) -> str:
    """Resolve a spec (plus ipykernel, so the environment can be a kernel) to a lock: one
    `name==version` line per package, with uv's notes of why each is there. Unknown packages
    and conflicting pins raise BuildError with uv's reason. Conda dependencies are resolved
    by the centre's conda-compatible executable first: one `conda: name=version=build
    channel` line per conda package, then the pip part pinned by uv for that Python."""
    config = config or BuildConfig.from_settings()
    if spec.conda:
        if not config.conda:
            raise CannotBuild(_without_conda(spec.name, list(spec.conda)))
        return _lock_conda(spec, config)
    wanted = list(spec.requirements)
    if KERNEL_PACKAGE not in {canonicalize_name(Requirement(r).name) for r in wanted}:
        wanted.append(KERNEL_PACKAGE)
    with _runner(config) as run:
        python = _interpreter(run)
        if spec.python and not python_fits(spec.python, python.version):
            raise CannotBuild(
                f"{spec.name} asks for Python {spec.python}; environments here are built on "
                f"Python {python.version} (GALLERY_BUILD_PYTHON).")
        out = run([run.uv, "pip", "compile", "-", "--python", config.python,
                   "--no-header", "--quiet", *config.wheel_options(), *config.index_options],
                  stdin="\n".join(wanted) + "\n")
    pins(out)  # every line pinned, or BuildError
    return out


def python_fits(wanted: str, version: str) -> bool:
    """Whether a Python version meets a spec's request: a specifier (">=3.10", from
    pyproject.toml or conda) or a conda version ("3.11" meaning any 3.11)."""
    wanted = wanted.strip()
    try:
        if wanted[:1].isdigit():
            return Version(version) in SpecifierSet(
                f"=={wanted}" + ("" if wanted.endswith("*") else ".*"))
        return Version(version) in SpecifierSet(wanted.replace(" ", ""))
    except (InvalidSpecifier, InvalidVersion):
        return True  # a request that says nothing clear: let the resolver decide


def pins(lock_text: str) -> list[str]:
    """The pinned packages of a lock, sorted, conda's first; BuildError if a line is neither
    `name==version` nor `conda: name=version=build channel` (a lock is fed back to uv and to
    conda, so it must hold nothing else)."""
    conda, found = _read_lock(lock_text)
    return sorted(pin.line() for pin in conda) + found


class CondaPin(NamedTuple):
    """One conda package of a lock: exactly this build, from this channel."""

    name: str
    version: str
    build: str
    channel: str

    def line(self) -> str:
        return f"conda: {self.name}={self.version}={self.build} {self.channel}"

    def spec(self) -> str:
        return f"{self.name}={self.version}={self.build}"


# Versions and builds as conda writes them; never a space, a wildcard, a comma or a quote.
_CONDA_LINE = re.compile(r"conda:\s*(?P<name>[a-z0-9_][a-z0-9_.-]*)"
                         r"=(?P<version>[A-Za-z0-9_][A-Za-z0-9_.+!]*)"
                         r"=(?P<build>[A-Za-z0-9_][A-Za-z0-9_.+]*)\s+(?P<channel>\S+)")
_CHANNEL_URL = re.compile(r"(?:https?|file)://[A-Za-z0-9_.~%:@/+-]+")


def _read_lock(lock_text: str) -> tuple[list[CondaPin], list[str]]:
    conda, found = [], []
    for line in lock_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("conda:"):
            match = _CONDA_LINE.fullmatch(line)
            if not match or not (CHANNEL_NAME.fullmatch(match["channel"])
                                 or _CHANNEL_URL.fullmatch(match["channel"])):
                raise BuildError("The lock has a conda line that is not a pinned package: "
                                 f"{line[:80]!r}")
            conda.append(CondaPin(**match.groupdict()))
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            raise BuildError(f"The lock has a line that is not a pinned package: {line[:80]!r}") \
                from None
        specs = list(req.specifier)
        if req.url or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            raise BuildError(f"The lock has a package that is not pinned: {line[:80]!r}")
        found.append(str(req))
    return conda, sorted(found)


def env_key(lock_text: str, python: str, platform: str) -> str:
    """The store's name for an environment: its pins, its interpreter and its platform.
    Comments and order do not matter; the interpreter's path does, since a venv points at it."""
    body = json.dumps({"pins": pins(lock_text), "python": python, "platform": platform},
                      sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def store_key(lock_text: str, *, config: BuildConfig | None = None) -> tuple[str, str]:
    """The store's name for a lock's environment on this gallery's build Python, and that
    Python's version: what `build` would name it, known before building."""
    config = config or BuildConfig.from_settings()
    conda, _ = _read_lock(lock_text)
    if conda:
        return env_key(lock_text, CONDA_PYTHON, sysconfig.get_platform()), _conda_python(conda)
    with _runner(config) as run:
        python = _interpreter(run)
    return env_key(lock_text, f"{python.version} {python.path}", python.platform), python.version


def build(lock_text: str, *, config: BuildConfig | None = None,
          starting: Callable[[], object] | None = None) -> Path:
    """The environment of a lock, built once: `<store>/<key>`, read-only, readable by all.
    A build of a key already in the store returns it at once; two builds of one key at once
    wait for each other. Failure raises BuildError with the last lines of the log, and leaves
    nothing in the store. `starting` is called when a build really begins."""
    config = config or BuildConfig.from_settings()
    conda, wanted = _read_lock(lock_text)
    if conda:
        return _build_conda(lock_text, conda, wanted, config, starting)
    with _runner(config) as run:
        python = _interpreter(run)
        key = env_key(lock_text, f"{python.version} {python.path}", python.platform)
        final = config.store / key
        with _key_lock(config.store / ".sealing" / f"{key}.lock"):
            if (final / RECORD_FILE).is_file():
                return final
            tmp = config.store / ".building" / f"{key}.tmp-{secrets.token_hex(4)}"
            if starting is not None:
                starting()
            try:
                run([run.uv, "venv", "--quiet", "--relocatable", "--python",
                     python.path, str(tmp)])
                run([run.uv, "pip", "sync", "-", "--quiet", "--python",
                     str(tmp / "bin" / "python"), *config.wheel_options(),
                     *config.index_options], stdin="\n".join(wanted) + "\n", watch=tmp)
                record = {"key": key, "python": python.version, "interpreter": python.path,
                          "platform": python.platform, "lock": lock_text,
                          "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                _seal(tmp, final, record)
            finally:
                if tmp.exists():
                    _remove(tmp)
    return final


# --- conda dependencies ----------------------------------------------------------------------


def _without_conda(name: str, deps: list[str]) -> str:
    listed = ", ".join(deps[:5]) + (", …" if len(deps) > 5 else "")
    return (f"{name} has conda dependencies ({listed}), which need a conda-compatible "
            "executable (conda, mamba or micromamba) that this gallery does not have; a centre "
            "can name one with GALLERY_CONDA. Use a kernel of the centre that already has "
            f"{listed} instead.")


def _lock_conda(spec: Spec, config: BuildConfig) -> str:
    """The lock of an environment.yml with conda dependencies: conda's solution (a dry run
    into a prefix that is never made) pinned to the build, then the pip part pinned by uv for
    the solved Python, leaving out what conda installs and held to conda's versions of it."""
    channels = list(spec.channels or config.conda_channels)
    named = {conda_name(dep) for dep in spec.conda}
    wanted = list(spec.conda)
    if "python" not in named:
        python = spec.python.strip()
        wanted.append(f"python={python}" if python[:1].isdigit() else f"python{python}")
    if KERNEL_PACKAGE not in named:
        wanted.append(KERNEL_PACKAGE)
    with _runner(config) as run:
        prefix = run.work / f"solve-{secrets.token_hex(6)}"
        try:
            out = run([config.conda_binary(), "create", "--dry-run", "--json", "-p", str(prefix),
                       "--override-channels", *_channel_options(channels), *wanted], conda=True)
        finally:
            if prefix.exists():
                _remove(prefix)
        conda = _solution(out, channels + [dep.split("::")[0].strip() for dep in spec.conda
                                           if "::" in dep])
        pip_part = _lock_pip_part(run, spec, conda) if spec.requirements else ""
    text = "".join(pin.line() + "\n" for pin in sorted(conda)) + pip_part
    pins(text)  # every line pinned, or BuildError
    return text


def _channel_options(channels: list[str]) -> list[str]:
    return [option for channel in channels for option in ("-c", channel)]


def _solution(out: str, channels: list[str]) -> list[CondaPin]:
    """The packages of a conda/mamba/micromamba `create --dry-run --json`: its LINK list."""
    try:
        data, _ = json.JSONDecoder().raw_decode(out[out.index("{"):])
        linked = data["actions"]["LINK"]
        if not isinstance(linked, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise BuildError("The conda executable (GALLERY_CONDA) gave no list of packages to "
                         "install.", out[-2000:]) from None
    found = []
    for entry in linked:
        if not isinstance(entry, dict):
            continue
        given = str(entry.get("channel") or entry.get("base_url") or "")
        channel = _channel_of(given, channels)
        pin = CondaPin(str(entry.get("name", "")).lower(), str(entry.get("version", "")),
                       str(entry.get("build_string") or entry.get("build") or ""), channel or "")
        if channel is None:
            raise BuildError(f"conda took {pin.name} from {given or 'an unnamed channel'}, "
                             "which is none of the channels asked for.")
        if not _CONDA_LINE.fullmatch(pin.line()):
            raise BuildError(f"conda resolved a package this gallery cannot pin: {pin.line()!r}")
        found.append(pin)
    if not any(pin.name == "python" for pin in found):
        raise BuildError("conda's solution has no Python, so it cannot be a kernel.")
    return found


_SUBDIR = re.compile(r"/(?:noarch|(?:linux|osx|win|zos|emscripten|wasi)-[a-z0-9_]+)$")


def _channel_of(given: str, channels: list[str]) -> str | None:
    """The channel asked for that a package came from, as the lock names it (conda gives a
    channel's name, micromamba its URL with the platform's subfolder); None if none."""
    given = _SUBDIR.sub("", given.strip().rstrip("/"))
    path = urlsplit(given).path.strip("/") if "://" in given else given
    for channel in channels:
        if given == channel.rstrip("/") or path == (
                urlsplit(channel).path.strip("/") if "://" in channel else channel):
            return channel
    return None


def _conda_python(conda: list[CondaPin]) -> str:
    return next((pin.version for pin in conda if pin.name == "python"), "")


def _lock_pip_part(run: _Run, spec: Spec, conda: list[CondaPin]) -> str:
    """The pip part pinned by uv for conda's Python. What conda installs is left out of it
    (uv does not emit it) and holds the resolution to conda's version of it."""
    config = run.config
    python_names = [pin for pin in conda
                    if _PYPI_NAME.fullmatch(pin.name) and pin.name not in ("python", "pip")]
    held = []
    for pin in python_names:
        with contextlib.suppress(InvalidVersion):
            held.append(f"{canonicalize_name(pin.name)}=={Version(pin.version)}")
    # In the build account's folder, under a name it cannot guess, never through a link.
    constraints = run.work / f"constraints-{secrets.token_hex(8)}.txt"
    fd = os.open(constraints, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    os.fchmod(fd, 0o644)  # whatever the worker's umask: the build account reads it
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(held) + "\n")
    try:
        return run([run.uv, "pip", "compile", "-", "--python", config.python,
                    "--python-version", _conda_python(conda), "--constraints", str(constraints),
                    *(x for pin in python_names for x in ("--no-emit-package", pin.name)),
                    "--no-header", "--quiet", *config.wheel_options(), *config.index_options],
                   stdin="\n".join(spec.requirements) + "\n")
    finally:
        constraints.unlink()


_PYPI_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?")


def _build_conda(lock_text: str, conda: list[CondaPin], wanted: list[str],
                 config: BuildConfig, starting: Callable[[], object] | None) -> Path:
    """A lock with conda packages, built by the conda executable, then its pip pins by uv
    (`install --no-deps`: a sync would remove conda's packages). Conda writes the folder it
    installs into in many files, so the build happens where the environment will stay: an
    empty folder of the build account's at its final path (no record yet, so nobody uses
    it), then taken out of its reach, sealed and put back."""
    key = env_key(lock_text, CONDA_PYTHON, sysconfig.get_platform())
    final = config.store / key
    channels = list(dict.fromkeys(pin.channel for pin in conda))
    for channel in channels:
        if "://" in channel and channel not in config.conda_channels:
            raise BuildError(f"The lock names the channel {channel}, which is not one of "
                             "GALLERY_CONDA_CHANNELS.")
    channels.sort(key=lambda c: (config.conda_channels.index(c)
                                 if c in config.conda_channels else len(config.conda_channels)))
    with _runner(config) as run:
        with _key_lock(config.store / ".sealing" / f"{key}.lock"):
            if (final / RECORD_FILE).is_file():
                return final
            if not config.conda:
                raise CannotBuild(_without_conda("This environment", [p.name for p in conda]))
            executable = config.conda_binary()
            if os.path.lexists(final):  # left by a build that was killed
                _remove(final)
            if starting is not None:
                starting()
            final.mkdir(mode=0o700)
            os.chown(final, run.account.uid, run.account.gid, follow_symlinks=False)
            try:
                run([executable, "create", "-y", "-p", str(final), "--override-channels",
                     *_channel_options(channels), *(pin.spec() for pin in conda)],
                    watch=final, conda=True)
                if wanted:
                    run([run.uv, "pip", "install", "--no-deps", "--quiet", "--python",
                         str(final / "bin" / "python"), *config.wheel_options(),
                         *config.index_options, "-r", "-"],
                        stdin="\n".join(wanted) + "\n", watch=final)
                record = {"key": key, "python": _conda_python(conda),
                          "interpreter": str(final / "bin" / "python"),
                          "platform": sysconfig.get_platform(), "lock": lock_text,
                          "conda": Path(executable).name,
                          "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                _seal(final, final, record)
            finally:
                if os.path.lexists(final) and not (final / RECORD_FILE).is_file():
                    _remove(final)
    return final


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

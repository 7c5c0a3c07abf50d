"""Conda dependencies: an environment.yml's conda part resolved and installed by the
centre's conda-compatible executable (conda, mamba or micromamba) as the build account, its
pip part pinned and installed by uv into that environment."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..specs import Spec, conda_name
from .lockfile import _CONDA_LINE, CONDA_PYTHON, KERNEL_PACKAGE, CondaPin, env_key, pins
from .runner import BuildConfig, BuildError, CannotBuild, _Run, _runner
from .store import RECORD_FILE, _key_lock, _remove, _seal


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

"""Locking and building: a spec resolved to a lock, and a lock built once into the store
(by uv; an environment with conda dependencies by the conda executable, in `conda`)."""

from __future__ import annotations

import json
import secrets
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from ..specs import Spec
from .conda import _build_conda, _conda_python, _lock_conda, _without_conda
from .lockfile import CONDA_PYTHON, KERNEL_PACKAGE, _read_lock, env_key, pins
from .runner import BuildConfig, BuildError, CannotBuild, NotConfigured, _Run, _runner
from .store import RECORD_FILE, _key_lock, _remove, _seal

_PROBE = ("import json, os, sys, sysconfig; print(json.dumps([os.path.realpath(sys.executable), "
          "'%d.%d.%d' % sys.version_info[:3], sysconfig.get_platform()]))")


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

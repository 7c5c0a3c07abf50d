"""An example's environment spec (requirements.txt, pyproject.toml, environment.yml) read
and checked: what can be built is a list of requirements by name and version range,
never an option line, a path, a URL or a direct reference."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

import yaml
from packaging.requirements import InvalidRequirement, Requirement

SPEC_FILES = ("requirements.txt", "pyproject.toml", "environment.yml", "environment.yaml")
MAX_REQUIREMENTS = 200


class SpecError(ValueError):
    """An environment spec that cannot be built; the message says which line and why."""


# --- reading a spec ------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """What an example asks for: pip requirements (normalised), conda dependencies that need
    a conda-compatible executable (and the channels it names for them), and the Python
    version it names, if any."""

    name: str
    requirements: tuple[str, ...] = ()
    conda: tuple[str, ...] = ()
    python: str = ""
    channels: tuple[str, ...] = ()

    def summary(self) -> str:
        parts = [_count(len(self.requirements), "requirement")]
        if self.conda:
            parts.append(_count(len(self.conda), "conda dependency", "conda dependencies")
                         + " (built with conda, mamba or micromamba)")
        return f"{self.name}: " + ", ".join(parts) + "."


def _count(n: int, one: str, many: str = "") -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def read_spec(name: str, data: bytes) -> Spec:
    """The spec in a file of the example, or SpecError naming the line and what is wrong:
    refused here, at staging, so a reviewer never sees a spec that cannot build."""
    if name not in SPEC_FILES:
        raise SpecError(f"{name} is not an environment file; use one of {', '.join(SPEC_FILES)}.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{name} is not UTF-8 text.") from None
    if name == "requirements.txt":
        spec = Spec(name, _requirements_txt(text))
    elif name == "pyproject.toml":
        spec = _pyproject(text)
    else:
        spec = _environment_yml(name, text)
    if len(spec.requirements) + len(spec.conda) > MAX_REQUIREMENTS:
        raise SpecError(f"{name} has {len(spec.requirements) + len(spec.conda)} requirements; "
                        f"at most {MAX_REQUIREMENTS} are allowed.")
    return spec


def _requirements_txt(text: str) -> tuple[str, ...]:
    found, problems = [], []
    lines = text.replace("\\\n", " ").splitlines()
    for number, raw in enumerate(lines, 1):
        line = raw.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append(requirement(line))
        except SpecError as exc:
            problems.append(f"line {number}: {exc}")
    if problems:
        raise SpecError("requirements.txt: " + "; ".join(problems[:5]))
    return tuple(found)


def _pyproject(text: str) -> Spec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"pyproject.toml is not valid TOML: {exc}") from None
    project = data.get("project")
    deps = project.get("dependencies", []) if isinstance(project, dict) else None
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise SpecError("pyproject.toml needs a [project] table whose 'dependencies' is a list "
                        "of requirement strings.")
    python = project.get("requires-python", "")  # type: ignore[union-attr]
    return Spec("pyproject.toml", _listed("pyproject.toml dependencies", deps),
                python=python if isinstance(python, str) else "")


def _environment_yml(name: str, text: str) -> Spec:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{name} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("dependencies"), list):
        raise SpecError(f"{name} needs a 'dependencies' list.")
    channels = _channels(name, data.get("channels"))
    conda, pip, python = [], [], ""
    for number, item in enumerate(data["dependencies"], 1):
        if isinstance(item, dict) and set(item) == {"pip"} and isinstance(item["pip"], list):
            pip.extend(item["pip"])
        elif isinstance(item, str | int | float) and _CONDA_SPEC.match(str(item)):
            dep = str(item).strip()
            if "::" in dep:
                conda_channel(dep.split("::")[0], where=f"{name}: dependency {number}")
            head = dep.split("::")[-1]
            base = conda_name(dep)
            if base == "python":
                python = head[len(base):].strip().lstrip("=") or ""
            elif base != "pip":
                conda.append(dep)
        else:
            raise SpecError(f"{name}: dependency {number} ({str(item)[:80]!r}) is neither a "
                            "conda package spec nor a 'pip:' list of requirements.")
    if not all(isinstance(line, str) for line in pip):
        raise SpecError(f"{name}: the 'pip:' list must hold requirement strings.")
    return Spec(name, _listed(f"{name} pip:", pip), tuple(conda), python, channels)


def _channels(name: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise SpecError(f"{name}: 'channels' must be a list of channel names.")
    # "nodefaults" only says not to add the defaults channel; builds never add any.
    return tuple(conda_channel(c, where=f"{name}: channels:") for c in value
                 if c.strip() != "nodefaults")


def conda_channel(text: str, *, where: str) -> str:
    """A conda channel named in a spec, or SpecError: a name (`conda-forge`, `bioconda`,
    `nvidia/label/cuda-12.4`), never a URL or a path, which would let a spec choose where
    code comes from."""
    text = text.strip()
    if "://" in text or text.startswith((".", "/", "~", "file:")) or "\\" in text:
        raise SpecError(f"{where} {text[:80]!r} is a path or a URL; only channel names are "
                        "allowed, the gallery decides where packages come from")
    if not CHANNEL_NAME.fullmatch(text):
        raise SpecError(f"{where} {text[:80]!r} is not a conda channel name")
    return text


def conda_name(dep: str) -> str:
    """The package name of a conda dependency (`conda-forge::hdf5>=1.14` is `hdf5`)."""
    head = dep.strip().split("::")[-1]
    return re.split(r"[\s=<>!~]", head, maxsplit=1)[0].strip().lower()


# A channel by name, with labels: segments that never begin with a dot or a dash.
CHANNEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")


# name, optional channel prefix, optional version and build; no URLs, paths or options.
_CONDA_SPEC = re.compile(
    r"^\s*(?:[A-Za-z0-9_.-]+::)?[A-Za-z0-9_][A-Za-z0-9_.-]*(?:\s*[=<>!~][=<>!~A-Za-z0-9_.*,| ]*)?"
    r"\s*$")


def _listed(where: str, lines: list[str]) -> tuple[str, ...]:
    found, problems = [], []
    for number, line in enumerate(lines, 1):
        try:
            found.append(requirement(line))
        except SpecError as exc:
            problems.append(f"item {number}: {exc}")
    if problems:
        raise SpecError(f"{where} " + "; ".join(problems[:5]))
    return tuple(found)


def requirement(line: str) -> str:
    """One requirement, normalised, or SpecError: only a name with extras, versions and
    markers; never an option, a path, a URL or a direct reference, which would let a spec
    choose where code comes from."""
    line = line.strip()
    if line.startswith("-"):
        option = line.split()[0].split("=")[0]
        raise SpecError(f"pip options ({option}) are not allowed; list package names only, "
                        "the gallery decides where packages come from")
    option = re.search(r"\s(--?[A-Za-z][\w-]*)", line)
    if option:
        raise SpecError(f"per-requirement options ({option.group(1)}) are not allowed")
    if "://" in line or line.startswith((".", "/", "~", "file:")) or "\\" in line \
            or line.lower().endswith((".whl", ".tar.gz", ".zip", ".tar.bz2")):
        raise SpecError(f"{line[:80]!r} is a path or a URL; only package names from the "
                        "index are allowed")
    try:
        req = Requirement(line)
    except InvalidRequirement as exc:
        raise SpecError(f"{line[:80]!r} is not a valid requirement: "
                        f"{str(exc).splitlines()[0][:200]}") from None
    if req.url:
        raise SpecError(f"{req.name} @ … is a direct reference; only package names from the "
                        "index are allowed")
    return str(req)

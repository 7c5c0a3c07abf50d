"""What a lock's text holds: one pinned package a line (`name==version`, or `conda:
name=version=build channel`), read and checked, and the store's key of it."""

from __future__ import annotations

import hashlib
import json
import re
from typing import NamedTuple

from packaging.requirements import InvalidRequirement, Requirement

from ..specs import CHANNEL_NAME
from .runner import BuildError

KERNEL_PACKAGE = "ipykernel"
CONDA_PYTHON = "conda"  # what stands for the interpreter in the key of a conda environment


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

"""Notebooks: reading and validating them, and checking a staged folder (previews are in
`previews/`).

Everything here works on bytes and paths and is usable without a request or a database.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import nbformat
from nbformat.validator import iter_validate

from . import specs

EXAMPLE_FILE = "example.toml"
ENV_FILES = ("environment.yml", "environment.yaml", "requirements.txt")
RESERVED_NAMES = {EXAMPLE_FILE}
_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+@ -]{0,127}$")


class NotebookError(ValueError):
    """A notebook or an example folder that cannot be accepted; the message says why."""


# --- reading ------------------------------------------------------------------------------


def decode_notebook(data: bytes, error: type[Exception] = NotebookError) -> tuple[str, Any]:
    """Notebook bytes as text and as parsed JSON (a UTF-8 byte-order mark is allowed), or
    `error` saying why not: reading for staging and reading for a preview both start here."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"The notebook is not UTF-8 text (byte {exc.start}).") from None
    try:
        return text, json.loads(text)
    except RecursionError:
        raise error("The notebook's JSON is nested too deeply to read.") from None
    except ValueError as exc:
        raise error(f"The notebook is not valid JSON: {str(exc)[:200]}.") from None


def read_notebook(data: bytes) -> nbformat.NotebookNode:
    """Parse and validate notebook bytes as nbformat v4 (older versions are upgraded)."""
    text, raw = decode_notebook(data)
    if not isinstance(raw, dict):
        raise NotebookError("The notebook's JSON must be an object with 'cells' and 'metadata'.")
    if _LONE_SURROGATE_ESCAPE.search(text) and not _is_unicode(raw):
        raise NotebookError("The notebook contains text that is not valid Unicode (an escape "
                            "such as \\ud800 that stands for half a character).")
    major = raw.get("nbformat")
    if not isinstance(major, int) or major < 1 or major > 4:
        raise NotebookError(
            f"Unsupported notebook format version {major!r}; nbformat 4 is expected "
            "(versions 1-3 are upgraded)."
        )
    try:
        if major == 4:  # the validator's own reason, before any conversion rewrites it
            first = next(iter_validate(raw, version=4), None)
            if first is not None:
                raise first
        nb = nbformat.reads(text, as_version=4, capture_validation_error={})
        first = next(iter_validate(nb, version=4), None)
        if first is not None:
            raise first
    except RecursionError:
        raise NotebookError("The notebook's JSON is nested too deeply to read.") from None
    except nbformat.ValidationError as exc:
        raise NotebookError(plain_validation_message(exc)) from None
    except Exception as exc:  # nbformat raises assorted types on odd input
        raise NotebookError(f"The notebook could not be read: {exc}") from None
    return nb


# Decoded as UTF-8, the text holds no surrogates; a JSON escape (\ud800) can still make one.
_LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def _is_unicode(value: Any) -> bool:
    """Whether every string of parsed JSON can be written as UTF-8: a lone surrogate cannot,
    so it would fail later, when the notebook's text is indexed, rendered or stored."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def plain_validation_message(exc: nbformat.ValidationError) -> str:
    """The validator's reason in plain words: where, and what is wrong."""
    where = []
    path = list(getattr(exc, "absolute_path", []) or [])
    if len(path) >= 2 and path[0] == "cells" and isinstance(path[1], int):
        where.append(f"cell {path[1] + 1}")
        path = path[2:]
    if path:
        where.append("field '" + "/".join(str(p) for p in path) + "'")
    reason = getattr(exc, "message", str(exc)).splitlines()[0]
    prefix = ", ".join(where)
    return f"The notebook is not valid nbformat 4: {prefix + ': ' if prefix else ''}{reason}"


def notebook_text(nb: nbformat.NotebookNode, limit: int = 100_000) -> str:
    """The words of a notebook (markdown and code), for search.

    Without NUL characters: a cell may hold one, a PostgreSQL text column cannot.
    """
    text = "\n".join(str(cell.get("source", "")) for cell in nb.cells)
    return text.replace("\x00", " ")[:limit]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_hash(files: dict[str, bytes]) -> str:
    """A hash of a whole folder: names and contents, in a stable order."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + sha256(files[name]).encode() + b"\n")
    return h.hexdigest()


def clean_relpath(name: str) -> str:
    """A sibling file's name as a safe relative POSIX path, or NotebookError."""
    if not isinstance(name, str) or not name:
        raise NotebookError("A file name is empty.")
    if "\x00" in name or any(ord(ch) < 32 for ch in name):
        raise NotebookError(f"The file name {name!r} contains control characters.")
    if "\\" in name:
        raise NotebookError(f"The file name {name!r} contains a backslash; use '/'.")
    if name.startswith("/"):
        raise NotebookError(
            f"The file name {name!r} is absolute; give a path relative to the example.")
    parts = PurePosixPath(name).parts
    if "/".join(parts) != name:  # "dir/", "a//b", "./a": not one plain file name
        raise NotebookError(f"The file name {name!r} is not a plain relative path.")
    if len(parts) > 5 or len(name) > 250:
        raise NotebookError(f"The file name {name!r} is too long or too deep.")
    for part in parts:
        if part in {".", ".."}:
            raise NotebookError(f"The file name {name!r} leaves the example folder ('..').")
        if not _SAFE_COMPONENT.match(part):
            raise NotebookError(
                f"The file name {name!r} has an unusual character or starts with a dot; "
                "use letters, digits and . _ - + @ or space."
            )
    clean = "/".join(parts)
    if parts[0] in RESERVED_NAMES:
        raise NotebookError(f"The file name {clean!r} is reserved for the gallery.")
    return clean


def check_folder_tree(paths: Iterable[str]) -> None:
    """Refuse paths that cannot all be written into one folder: a path that is a file and
    also, as a prefix of another path, a folder ("a" and "a/b")."""
    names = set(paths)
    for name in sorted(names):
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in names:
                raise NotebookError(f"{folder!r} is a file, so {name!r} cannot be inside it; "
                                    "a path cannot be both a file and a folder.")


# --- example.toml ---------------------------------------------------------------------------


def example_toml(meta: dict[str, Any]) -> bytes:
    import tomli_w

    clean = {k: v for k, v in meta.items() if v not in (None, "", [], {})}
    return tomli_w.dumps(clean).encode()


def read_example_toml(data: bytes) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise NotebookError(f"example.toml cannot be read: {exc}") from None


# --- checks --------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    status: str  # "pass", "warn" or "fail"
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message}


_SECRET_PATTERNS = [
    ("private key", re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")),
    ("AWS access key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}\b")),
    ("GitLab token", re.compile(r"\bglpat-[A-Za-z0-9_-]{20,}\b")),
    ("Slack token", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b")),
    ("Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("OpenAI-style key", re.compile(r"\bsk-[A-Za-z0-9_-]{32,}\b")),
    # The scheme is bounded: unbounded, a long run of letters made this search quadratic.
    ("password in a URL",
     re.compile(r"\b[a-z][a-z0-9+.-]{0,30}://[^\s:/@'\"]+:[^\s@/'\"]+@[^\s'\"]+")),
    (
        "hard-coded secret",
        re.compile(
            r"(?i)\b(?:api[_-]?key|secret|token|passw(?:or)?d)\s*[:=]\s*['\"][^'\"\s]{8,}['\"]"
        ),
    ),
]


def find_secrets(text: str) -> list[str]:
    found = []
    for label, pattern in _SECRET_PATTERNS:
        if pattern.search(text):
            found.append(label)
    return found


def _output_text(output: dict[str, Any]) -> str:
    parts: list[str] = []
    if "text" in output:
        parts.append(output["text"] if isinstance(output["text"], str) else "".join(output["text"]))
    for mime, value in (output.get("data") or {}).items():
        if mime.startswith("text/") or mime.endswith("json"):
            parts.append(value if isinstance(value, str) else json.dumps(value))
    if output.get("output_type") == "error":
        parts.extend(output.get("traceback") or [])
    return "\n".join(parts)


def check_environment(name: str | None, data: bytes | None) -> Check:
    """Whether the environment spec can be built: a bad line is named here, at staging,
    before a reviewer sees it."""
    if not name or data is None:
        return Check("environment", "fail", "No environment.yml or requirements.txt was given.")
    try:
        spec = specs.read_spec(name, data)
    except specs.SpecError as exc:
        return Check("environment", "fail", str(exc))
    return Check("environment", "pass", spec.summary())


def check_data_links(links: list[dict[str, Any]]) -> Check:
    if not links:
        return Check("data links", "warn", "No data links are declared.")
    problems = []
    for link in links:
        target = str(link.get("target", ""))
        if target.startswith("/"):
            path = Path(target)
            if not path.exists():
                problems.append(f"{link.get('name')}: {target} does not exist")
            elif not path.is_dir() and not _readable(path):
                problems.append(f"{link.get('name')}: {target} is not readable")
    if problems:
        return Check("data links", "fail", "; ".join(problems))
    return Check("data links", "pass", f"{len(links)} data links resolve.")


def _readable(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.read(1)
        return True
    except OSError:
        return False


def run_checks(folder: Path, meta: dict[str, Any]) -> list[dict[str, str]]:
    """The automatic checks a reviewer sees. They inform; they never approve."""
    from django.conf import settings

    results: list[Check] = []
    nb_path = folder / meta["notebook"]
    data = nb_path.read_bytes()
    try:
        nb = read_notebook(data)
        results.append(Check("notebook", "pass", f"Valid nbformat 4, {len(nb.cells)} cells."))
    except NotebookError as exc:
        return [Check("notebook", "fail", str(exc)).as_dict()]

    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    limit = settings.GALLERY_MAX_UPLOAD_BYTES
    results.append(
        Check("size", "pass" if total <= limit else "fail",
              f"{total:,} bytes in all (limit {limit:,}).")
    )

    env_name = meta.get("environment")
    env_path = folder / env_name if env_name else None
    env_data = env_path.read_bytes() if env_path and env_path.is_file() else None
    results.append(check_environment(env_name, env_data))
    results.append(check_data_links(meta.get("data", [])))

    hits: list[str] = []
    biggest = 0
    for number, cell in enumerate(nb.cells, 1):
        for label in find_secrets(cell.get("source", "")):
            hits.append(f"cell {number}: {label} in the code")
        for output in cell.get("outputs", []) or []:
            text = _output_text(output)
            biggest = max(biggest, len(json.dumps(output)))
            for label in find_secrets(text):
                hits.append(f"cell {number}: {label} in an output")
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path != nb_path and path.stat().st_size < 2_000_000:
            try:
                text = path.read_text("utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            for label in find_secrets(text):
                hits.append(f"{path.relative_to(folder)}: {label}")
    results.append(
        Check("secrets", "fail", "Possible secrets: " + "; ".join(hits[:10]))
        if hits
        else Check("secrets", "pass", "No tokens, keys or passwords found.")
    )
    out_limit = settings.GALLERY_MAX_OUTPUT_BYTES
    results.append(
        Check(
            "output size",
            "pass" if biggest <= out_limit else "warn",
            f"Largest output {biggest:,} bytes (limit {out_limit:,})."
            + ("" if biggest <= out_limit else " It will be truncated in the preview."),
        )
    )
    return [c.as_dict() for c in results]

"""Notebooks: reading and validating them, checking a staged folder, rendering previews.

Everything here works on bytes and paths and is usable without a request or a database.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import gzip
import hashlib
import json
import os
import re
import signal
import socket
import threading
import tomllib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import nbformat
import yaml
from nbformat.validator import iter_validate
from packaging.requirements import InvalidRequirement, Requirement

EXAMPLE_FILE = "example.toml"
ENV_FILES = ("environment.yml", "environment.yaml", "requirements.txt")
RESERVED_NAMES = {EXAMPLE_FILE}
_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+@ -]{0,127}$")


class NotebookError(ValueError):
    """A notebook or an example folder that cannot be accepted; the message says why."""


# --- reading ------------------------------------------------------------------------------


def read_notebook(data: bytes) -> nbformat.NotebookNode:
    """Parse and validate notebook bytes as nbformat v4 (older versions are upgraded)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotebookError(f"The notebook is not UTF-8 text (byte {exc.start}).") from None
    try:
        raw = json.loads(text)
    except RecursionError:
        raise NotebookError("The notebook's JSON is nested too deeply to read.") from None
    except ValueError as exc:
        raise NotebookError(f"The notebook is not valid JSON: {exc}.") from None
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
    if not name or data is None:
        return Check("environment", "fail", "No environment.yml or requirements.txt was given.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return Check("environment", "fail", f"{name} is not UTF-8 text.")
    if name.startswith("environment"):
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            return Check("environment", "fail", f"{name} is not valid YAML: {exc}")
        if not isinstance(spec, dict) or not isinstance(spec.get("dependencies"), list):
            return Check("environment", "fail", f"{name} needs a 'dependencies' list.")
        return Check("environment", "pass", f"{name}: {len(spec['dependencies'])} dependencies.")
    count, bad = 0, []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            bad.append(f"line {number}: pip options ({line.split()[0]}) are not supported")
            continue
        try:
            Requirement(line)
            count += 1
        except InvalidRequirement as exc:
            bad.append(f"line {number}: {exc}")
    if bad:
        return Check("environment", "fail", f"{name}: " + "; ".join(bad[:5]))
    return Check("environment", "pass", f"{name}: {count} requirements.")


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


# --- previews ------------------------------------------------------------------------------
#
# A preview is another person's notebook shown to logged-in users, so it is made inert in
# layers: a preprocessor keeps only an allowlist of output types (`strict_outputs`), our own
# template (templates/nbconvert/gallery) escapes everything and loads nothing from outside,
# HTML and markdown pass through nh3 (`sanitize_html`), and the page is served with a CSP
# `sandbox` and no script. Rendering runs in a forked child with a time and a memory limit.

ALLOWED_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "dd", "del", "details", "div",
    "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd",
    "li", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strong", "sub", "summary",
    "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul", "var",
}
ALLOWED_ATTRIBUTES = {
    "*": {"class", "title", "lang", "dir"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan", "align"},
    "th": {"colspan", "rowspan", "align", "scope"},
    "ol": {"start"},
}
IMAGE_MIMES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF"}
# What a preview shows of an output, best first; everything else is dropped.
PREVIEW_MIMES = ("text/html", "text/markdown", "image/svg+xml", "image/png", "image/jpeg",
                 "image/gif", "text/latex", "text/plain")
SCRIPT_MIMES = ("application/javascript", "text/javascript", "application/x-javascript")
WIDGET_MIMES = ("application/vnd.jupyter.widget-view+json",
                "application/vnd.jupyter.widget-state+json")
MAX_IMAGE_SIDE = 10_000  # width/height metadata beyond this is dropped
_BAD_URL_CHARS = re.compile(r"[\x00-\x20\x7f\u200b-\u200f\u2028\u2029\ufeff]")
_SAFE_LEXER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+#.-]{0,40}")
_SAFE_CELL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class PreviewLimits:
    """How much of a notebook a preview shows, and what one render may spend."""

    max_cells: int = 10_000
    max_output_bytes: int = 2 * 1024 * 1024  # text beyond this is cut with a visible note
    max_image_pixels: int = 25_000_000
    time_limit: float = 30.0  # seconds of wall time per render
    memory_limit: int = 1024 * 1024 * 1024  # bytes of address space a render may add

    @classmethod
    def from_settings(cls) -> PreviewLimits:
        from django.conf import settings

        return cls(
            max_cells=settings.GALLERY_MAX_CELLS,
            max_output_bytes=settings.GALLERY_MAX_OUTPUT_BYTES,
            max_image_pixels=settings.GALLERY_PREVIEW_MAX_IMAGE_PIXELS,
            time_limit=settings.GALLERY_RENDER_TIME_LIMIT,
            memory_limit=settings.GALLERY_RENDER_MEMORY_LIMIT * 1024 * 1024,
        )


class PreviewError(NotebookError):
    """A notebook the preview cannot show; the message is the reason, in plain words."""


# --- layer 1: nh3 ---------------------------------------------------------------------------

_limits_for_filter = PreviewLimits()


def sanitize_html(html: str) -> str:
    """Untrusted HTML, reduced to an allowlist with nh3 (no script, no handlers, no styles).

    Relative URLs are dropped too: on the serving origin they would be requests the viewer's
    browser makes on the author's behalf.
    """
    global _cleaner
    if _cleaner is None:
        import nh3

        _cleaner = nh3.Cleaner(
            tags=ALLOWED_TAGS,
            attributes=ALLOWED_ATTRIBUTES,
            url_schemes={"http", "https", "mailto", "data"},
            url_relative="deny",
            attribute_filter=_attribute_filter,
            link_rel="noopener noreferrer nofollow",
            strip_comments=True,
        )
    if html.count("<") > MAX_HTML_DEPTH and _nesting_depth(html) > MAX_HTML_DEPTH:
        # The HTML parser's time grows with the square of the depth.
        return ('<p class="gallery-notice">[HTML nested more than '
                f"{MAX_HTML_DEPTH:,} levels deep is not shown in the preview.]</p>")
    return _cleaner.clean(html)


_cleaner: Any = None
MAX_HTML_DEPTH = 1_500
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)")
# Void elements never nest; these close themselves when a sibling opens.
_FLAT_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
              "source", "track", "wbr", "p", "li", "td", "th", "tr", "dt", "dd", "option"}


def _nesting_depth(html: str) -> int:
    """How deep the tags of some HTML nest (an estimate that never underestimates much)."""
    depth = deepest = 0
    for match in _TAG.finditer(html):
        if match.group(2).lower() in _FLAT_TAGS:
            continue
        if match.group(1):
            depth = max(0, depth - 1)
        else:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


def _attribute_filter(tag: str, attr: str, value: str) -> str | None:
    if attr in {"href", "src"}:
        if _BAD_URL_CHARS.search(value.strip()):
            return None
        is_data = value.strip()[:5].lower() == "data:"
        if tag == "img":  # images are inline data or nothing: no beacons, no internal URLs
            return value if is_data and _data_uri_image_ok(value.strip()) else None
        if is_data:
            return None
    if attr in {"width", "height"}:
        if not value.isdigit() or not 0 < int(value) <= MAX_IMAGE_SIDE:
            return None
    return value


def _data_uri_image_ok(uri: str) -> bool:
    """A data: URI in HTML or markdown may only be a PNG, JPEG or GIF of sane size."""
    head, _, payload = uri.partition(",")
    mime = head[5:].split(";")[0].strip().lower()
    if mime not in IMAGE_MIMES or not head.lower().endswith(";base64"):
        return False
    return _image_problem(mime, payload, _limits_for_filter) is None


def _image_problem(mime: str, b64: str, limits: PreviewLimits) -> str | None:
    """Why a base64 image cannot be shown, or None when it can (checks size, format, pixels)."""
    return _clean_image(mime, b64, limits)[1]


_B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _clean_image(mime: str, b64: str, limits: PreviewLimits) -> tuple[str, str | None]:
    """A base64 image without whitespace, and why it cannot be shown (None when it can).

    Only the header is decoded for PNG and GIF, where the size is; the pixel count is checked
    before any browser would decode it (a small file can be a decompression bomb).
    """
    import binascii
    import io

    from PIL import Image

    try:
        raw = b64.encode("ascii")
    except UnicodeEncodeError:
        return "", "image data that is not base64"
    if b"\n" in raw or b" " in raw or b"\r" in raw or b"\t" in raw:
        raw = raw.translate(None, b" \t\r\n")
    if len(raw) > limits.max_output_bytes * 4 // 3:
        return "", f"image larger than {limits.max_output_bytes // 1024:,} KiB"
    if not raw or raw.rstrip(b"=").translate(None, _B64_CHARS) or len(raw) - len(
            raw.rstrip(b"=")) > 2:
        return "", "image data that is not base64"
    clean = raw.decode("ascii")
    kind = IMAGE_MIMES[mime]
    try:
        head = binascii.a2b_base64(raw if kind == "JPEG" else raw[:1024])
        with Image.open(io.BytesIO(head), formats=[kind]) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        return "", "image with too many pixels (a decompression bomb)"
    except MemoryError:
        raise
    except Exception:  # Pillow and binascii raise assorted types on broken data
        return "", f"image that is not a valid {kind}"
    if width * height > limits.max_image_pixels:
        return "", f"image of {width}x{height} pixels (the limit is {limits.max_image_pixels:,})"
    return clean, None


# --- layer 2: the output allowlist ------------------------------------------------------------


def _text(value: Any) -> str | None:
    """Notebook text (a string or a list of strings), or None when it is something else."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    return None


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return (text[:limit] + f"\n\n[… output truncated: {len(text) - limit:,} more characters "
            "are not shown in the preview]")


def _notice(message: str) -> dict[str, Any]:
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/plain": f"[{message}]"}, "gallery_notice": True}


def _clean_data(data: Any, metadata: Any, limits: PreviewLimits) -> tuple[dict, dict, str]:
    """The displayable part of an output's data, its image sizes, and a notice if needed."""
    if not isinstance(data, dict):
        return {}, {}, "output without data"
    kept: dict[str, str] = {}
    sizes: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    for mime in PREVIEW_MIMES:
        if mime not in data:
            continue
        value = _text(data[mime])
        if value is None:
            continue
        if mime in IMAGE_MIMES:
            value, problem = _clean_image(mime, value, limits)
            if problem:
                problems.append(problem)
                continue
        elif len(value) > limits.max_output_bytes:
            if mime in ("text/plain", "text/latex"):
                value = _cut(value, limits.max_output_bytes)
            else:
                problems.append(f"{mime} output of {len(value):,} characters")
                continue
        kept[mime] = value
        meta = metadata.get(mime) if isinstance(metadata, dict) else None
        if mime in IMAGE_MIMES and isinstance(meta, dict):
            size = {key: _side(meta.get(key)) for key in ("width", "height")}
            sizes[mime] = {k: v for k, v in size.items() if v}
    mermaid = _text(data.get("text/vnd.mermaid"))
    if mermaid is not None and "text/plain" not in kept:
        kept["text/plain"] = _cut(mermaid, limits.max_output_bytes)  # shown as source text
    widget = any(m in data for m in WIDGET_MIMES)
    script = any(m in data for m in SCRIPT_MIMES)
    notice = ""
    if widget:
        kept, sizes = {}, {}
        notice = "An interactive widget is not shown in the preview."
    elif problems:
        notice = "Not shown in the preview: " + "; ".join(problems) + "."
    elif not kept:
        if script:
            notice = "JavaScript output is not run in the preview."
        elif data:
            notice = (f"{', '.join(sorted(str(m) for m in data)[:5])} output is not shown "
                      "in the preview.")
    return kept, sizes, notice


def _side(value: Any) -> int | None:
    try:
        number = int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None
    return number if 0 < number <= MAX_IMAGE_SIDE else None


def _clean_output(output: Any, limits: PreviewLimits) -> list[dict[str, Any]]:
    """An output as the preview shows it: itself (cleaned), a notice, both, or nothing."""
    if not isinstance(output, dict):
        return []
    kind = output.get("output_type")
    if kind == "stream":
        text = _text(output.get("text"))
        name = output.get("name")
        if text is None or name not in ("stdout", "stderr"):
            return []
        return [{"output_type": "stream", "name": name,
                 "text": _cut(text, limits.max_output_bytes)}]
    if kind == "error":
        lines = output.get("traceback")
        lines = [line for line in lines if isinstance(line, str)] if isinstance(lines, list) else []
        if not lines:
            lines = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
        text = _cut("\n".join(lines), limits.max_output_bytes)
        return [{"output_type": "error", "ename": "", "evalue": "",
                 "traceback": text.split("\n")}]
    if kind in ("display_data", "execute_result"):
        data, sizes, notice = _clean_data(output.get("data"), output.get("metadata"), limits)
        shown: list[dict[str, Any]] = []
        if data:
            clean = {"output_type": kind, "data": data, "metadata": sizes}
            if kind == "execute_result":
                count = output.get("execution_count")
                clean["execution_count"] = count if _is_count(count) else None
            shown.append(clean)
        if notice:
            shown.append(_notice(notice))
        return shown
    return []


def _merge_streams(outputs: list[dict[str, Any]], limits: PreviewLimits) -> list[dict[str, Any]]:
    """Consecutive prints to one stream as one output, the way Jupyter shows them."""
    merged: list[dict[str, Any]] = []
    for output in outputs:
        last = merged[-1] if merged else None
        if (last is not None and output["output_type"] == "stream"
                and last["output_type"] == "stream" and last["name"] == output["name"]):
            last["parts"].append(output["text"])
            continue
        if output["output_type"] == "stream":
            output = {**output, "parts": [output["text"]]}
        merged.append(output)
    for output in merged:
        if "parts" in output:
            parts = output.pop("parts")
            output["text"] = parts[0] if len(parts) == 1 else _cut("".join(parts),
                                                                    limits.max_output_bytes)
    return merged


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9


def _clean_attachments(value: Any, limits: PreviewLimits) -> dict[str, dict[str, str]]:
    clean: dict[str, dict[str, str]] = {}
    if not isinstance(value, dict):
        return clean
    for name, bundle in value.items():
        if not isinstance(name, str) or not isinstance(bundle, dict):
            continue
        for mime in IMAGE_MIMES:
            data = _text(bundle.get(mime))
            if data is not None:
                data, problem = _clean_image(mime, data, limits)
                if problem is None:
                    clean[name] = {mime: data}
                    break
    return clean


def strict_outputs(nb: Any, limits: PreviewLimits | None = None) -> nbformat.NotebookNode:
    """The notebook reduced to what a preview may show, with every value of a safe type.

    Only allowlisted output types stay; scripts and widgets become a plain notice; image
    sizes become integers; file names, cell metadata and hide/remove flags are dropped, so
    the preview shows every cell that a downloaded copy contains; long text is cut with a
    visible note.
    """
    limits = limits or PreviewLimits()
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise PreviewError("The notebook has no list of cells.")
    if len(nb["cells"]) > limits.max_cells:
        raise PreviewError(f"The notebook has {len(nb['cells']):,} cells; previews show at most "
                           f"{limits.max_cells:,}.")
    metadata = nb.get("metadata") if isinstance(nb.get("metadata"), dict) else {}
    info = metadata.get("language_info")
    lexer = ""
    if isinstance(info, dict):
        for key in ("pygments_lexer", "name"):
            if isinstance(info.get(key), str) and _SAFE_LEXER.fullmatch(info[key]):
                lexer = info[key]
                break
    title = metadata.get("title")
    cells = []
    for cell in nb["cells"]:
        if not isinstance(cell, dict):
            continue
        kind = cell.get("cell_type")
        source = _text(cell.get("source"))
        if kind not in ("code", "markdown", "raw") or source is None:
            continue
        clean: dict[str, Any] = {"cell_type": kind, "metadata": {},
                                 "source": _cut(source, limits.max_output_bytes)}
        if isinstance(cell.get("id"), str) and _SAFE_CELL_ID.fullmatch(cell["id"]):
            clean["id"] = cell["id"]
        if kind == "markdown":
            clean["attachments"] = _clean_attachments(cell.get("attachments"), limits)
        if kind == "code":
            count = cell.get("execution_count")
            clean["execution_count"] = count if _is_count(count) else None
            outputs = cell.get("outputs") if isinstance(cell.get("outputs"), list) else []
            clean["outputs"] = _merge_streams(
                [kept for o in outputs for kept in _clean_output(o, limits)], limits)
        cells.append(clean)
    return nbformat.from_dict({
        "nbformat": 4, "nbformat_minor": 5, "cells": cells,
        "metadata": {"language_info": {"name": lexer} if lexer else {},
                     "title": title if isinstance(title, str) else ""},
    })


# --- layer 3: the exporter and our template --------------------------------------------------


def _preview_exporter_class() -> type:
    import html

    from jinja2 import pass_context
    from markupsafe import Markup
    from nbconvert import HTMLExporter
    from nbconvert.filters.markdown_mistune import (
        InvalidNotebook,
        IPythonRenderer,
        MarkdownWithMath,
    )

    def markdown(attachments: dict[str, Any]) -> Any:
        return MarkdownWithMath(renderer=IPythonRenderer(
            escape=False, attachments=attachments, embed_images=False,
            exclude_anchor_links=True))

    class PreviewExporter(HTMLExporter):  # type: ignore[misc]
        """nbconvert's HTML exporter with our template and filters, minus its slow passes.

        The stock exporter deep-copies the notebook, runs a dozen preprocessors with a schema
        validation after each, builds a Pygments formatter and a markdown parser per cell,
        and re-parses its whole output with BeautifulSoup to add `alt` and `tabindex`. Our
        template writes those attributes itself, `strict_outputs` has already made a fresh,
        normalised notebook, and the formatter and parser are built once.
        """

        _plain_markdown: Any = None

        @pass_context
        def markdown2html(self, context: Any, source: str) -> str:
            attachments = context.get("cell", {}).get("attachments") or {}
            if not attachments:
                if self._plain_markdown is None:
                    self._plain_markdown = markdown({})
                parser = self._plain_markdown
            else:
                parser = markdown(attachments)
            try:
                return parser.render(source)
            except InvalidNotebook:  # a missing attachment: show the rest without it
                return parser.render(source.replace("attachment:", "missing-attachment:"))
            except RecursionError:  # nested too deeply for the parser: show the source
                return ('<p class="gallery-notice">[This markdown is nested too deeply to '
                        f"render; its source:]</p><pre>{html.escape(source)}</pre>")

        def from_notebook_node(self, nb: Any, resources: Any = None,
                               **kw: Any) -> tuple[str, dict[str, Any]]:
            lexer = nb.metadata.get("language_info", {}).get("name") or "python"
            self.register_filter("highlight_code", lambda source, **_: highlight(source, lexer))
            resources = self._init_resources(resources)
            resources["global_content_filter"] = {
                key: True for key in ("include_code", "include_markdown", "include_raw",
                                      "include_unknown", "include_input", "include_output",
                                      "include_input_prompt", "include_output_prompt")
            }
            resources["global_content_filter"].update(no_prompt=False,
                                                      include_output_stdin=False)
            resources.setdefault("raw_mimetypes", [])
            resources.setdefault("output_mimetype", self.output_mimetype)
            return self.template.render(nb=nb, resources=resources), resources

    def prompt(count: Any) -> Markup:
        return Markup(str(count)) if _is_count(count) else Markup("&nbsp;")

    def preview_mime(data: Any) -> str:
        return next((m for m in PREVIEW_MIMES if isinstance(data, dict) and m in data), "")

    PreviewExporter.extra_filters = {"clean_html": sanitize_html, "prompt": prompt,
                                     "preview_mime": preview_mime,
                                     "strip_files_prefix": lambda s: s}
    return PreviewExporter


_highlighters: dict[str, tuple[Any, Any]] = {}


def highlight(source: str, language: str) -> str:
    """Code as Pygments HTML: token text escaped by Pygments, class names from a fixed set.

    Its output needs no sanitiser pass (the language name is checked in `strict_outputs`).
    """
    import pygments
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    if language not in _highlighters:
        try:
            lexer = get_lexer_by_name("python" if language.startswith("ipython") else language)
        except ClassNotFound:
            lexer = get_lexer_by_name("text")
        if len(_highlighters) > 200:
            _highlighters.clear()
        _highlighters[language] = (lexer, HtmlFormatter(cssclass=f"highlight hl-{language}"))
    lexer, formatter = _highlighters[language]
    return pygments.highlight(source, lexer, formatter)


_exporter = None


def _get_exporter():  # type: ignore[no-untyped-def]
    """One exporter per process; building one costs a template compile (warm it early)."""
    global _exporter
    if _exporter is None:
        from django.conf import settings

        cls = _preview_exporter_class()
        exporter = cls(
            template_name="gallery",
            extra_template_basedirs=[str(Path(settings.BASE_DIR) / "templates" / "nbconvert")],
            sanitize_html=True,
            exclude_anchor_links=True,
        )
        for name, func in cls.extra_filters.items():
            exporter.register_filter(name, func)
        _exporter = exporter
    return _exporter


def warm_exporter(limits: PreviewLimits | None = None) -> None:
    """Build the exporter and render a small notebook, so the first real render is fast; with
    `limits`, also start the render child `render_isolated` will use with them."""
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    nb = new_notebook(cells=[new_markdown_cell("# warm\n\n*x* $y$"),
                             new_code_cell("print(1)", execution_count=1,
                                           outputs=[new_output("stream", text="1\n")])])
    data = nbformat.writes(nb).encode()
    render_preview(data)
    if limits is not None:
        render_isolated(data, limits=limits)


PREVIEW_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{css}">
</head><body class="gallery-preview">
<main class="jp-Notebook">
{body}
</main>
</body></html>
"""
# Repeated inside the file, so a preview stays inert even where a plain static server
# sends it without our headers (frame-ancestors and sandbox only work as headers).
PAGE_CSP = ("default-src 'none'; img-src data:; style-src 'self'; font-src data:; "
            "form-action 'none'; base-uri 'none'")
PREVIEW_CSS = Path(__file__).resolve().parent.parent / "static" / "gallery" / "preview.css"


@functools.cache
def preview_css_name() -> str:
    """The shared stylesheet's file name, with its content hash (so it is cached for good)."""
    return f"preview-{hashlib.sha256(PREVIEW_CSS.read_bytes()).hexdigest()[:12]}.css"


def write_atomically(path: Path, data: bytes) -> None:
    """Write a file that readers see whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_preview_file(path: Path, data: bytes) -> None:
    """Write a preview file and, where it saves a tenth or more, its gzip twin `<name>.gz`
    (served to clients that accept gzip: most previews shrink five to fifty times). The twin
    comes first, so a reader that finds the file finds its twin too."""
    packed = gzip.compress(data, 9, mtime=0)
    if len(packed) <= len(data) * 0.9:
        write_atomically(path.with_name(path.name + ".gz"), packed)
    write_atomically(path, data)


def write_preview_css(directory: Path) -> Path:
    """Put the shared stylesheet next to the previews (once), so the folder serves alone."""
    path = directory / preview_css_name()
    if not path.exists():
        write_preview_file(path, PREVIEW_CSS.read_bytes())
    return path


def _read_for_preview(data: bytes) -> nbformat.NotebookNode:
    """Parse notebook bytes without schema validation (staging validated them already)."""
    from nbformat import reader

    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PreviewError(f"The notebook is not UTF-8 text (byte {exc.start}).") from None
    try:
        nb = reader.reads(text)
    except RecursionError:
        raise PreviewError("The notebook's JSON is nested too deeply to read.") from None
    except reader.NotJSONError as exc:
        raise PreviewError(f"The notebook is not valid JSON: {str(exc)[:200]}") from None
    except MemoryError:
        raise
    except Exception as exc:  # nbformat raises assorted types on odd input
        raise PreviewError(f"The notebook could not be read: {str(exc)[:200]}") from None
    if nb.get("nbformat") != 4:
        try:
            nb = nbformat.convert(nb, 4)
        except MemoryError:
            raise
        except Exception as exc:
            raise PreviewError(f"The notebook's format cannot be upgraded: {exc}") from None
    return nb


def render_preview(data: bytes, *, css_href: str = "", limits: PreviewLimits | None = None) -> str:
    """Render notebook bytes to a complete, sanitised, script-free HTML page (in-process)."""
    import html

    global _limits_for_filter
    limits = limits or PreviewLimits()
    _limits_for_filter = limits
    nb = strict_outputs(_read_for_preview(data), limits)
    body, _ = _get_exporter().from_notebook_node(nb)
    title = nb.metadata.get("title") or "Notebook preview"
    return PREVIEW_PAGE.format(csp=PAGE_CSP, title=html.escape(title[:200]),
                               css=html.escape(css_href or preview_css_name()), body=body)


# --- limits: a forked render child ---------------------------------------------------------


def failure_reason(exc: BaseException, limits: PreviewLimits) -> str:
    """Any exception from a render, as a reason a contributor can act on."""
    if isinstance(exc, NotebookError):
        return str(exc)
    if isinstance(exc, RecursionError):
        return "The notebook is nested too deeply to show (markdown, HTML or JSON)."
    if isinstance(exc, MemoryError):
        return (f"Rendering the preview needed more than {limits.memory_limit // 2**20:,} MB "
                "of memory and was stopped; make the outputs smaller.")
    if isinstance(exc, UnicodeError):
        return "The notebook contains text that is not valid Unicode."
    name = type(exc).__name__
    if name == "InvalidNotebook":
        return f"The notebook cannot be shown: {exc}"
    return f"The preview could not be made ({name}: {str(exc)[:300]})."


MAX_FD = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536
MAX_CHILD_RENDERS = 500  # renders per child; then a fresh one, so that slow leaks never add up
MAX_CHILD_GROWTH = 64 * 2**20  # bytes of address space a child may keep beyond its start
_child_lock = threading.Lock()
_child: _RenderChild | None = None


def render_isolated(data: bytes, *, limits: PreviewLimits | None = None,
                    css_href: str = "") -> str:
    """`render_preview` in a forked child with a wall-time and an address-space limit.

    The child is forked from this warm process and then serves render after render (a fork
    per render cost more than most renders: copy-on-write faults, a cold heap), so a
    notebook that loops, recurses or balloons takes down only the child; this process
    reports why and forks a fresh child for the next render. Raises PreviewError with the
    reason.
    """
    global _child
    limits = limits or PreviewLimits()
    if not hasattr(os, "fork"):
        try:
            return render_preview(data, css_href=css_href, limits=limits)
        except Exception as exc:
            raise PreviewError(failure_reason(exc, limits)) from exc
    with _child_lock:
        if _child is not None and not _child.serves(limits):
            _child.stop()
            _child = None
        child, _child = _child or _RenderChild(limits.memory_limit), None
        page, grown = child.render(data, css_href, limits)  # a child that failed is stopped
        # What the child keeps is missing from the address space the next render may add.
        if (child.renders < MAX_CHILD_RENDERS
                and grown <= min(MAX_CHILD_GROWTH, limits.memory_limit // 4)):
            _child = child
        else:
            child.stop()
    return page


def stop_render_child() -> None:
    """Stop and reap this process's render child, if it has one (at exit, and in tests)."""
    global _child
    with _child_lock:
        if _child is not None:
            _child.stop()
            _child = None


atexit.register(stop_render_child)


class _RenderChild:
    """A child forked from this warm process that renders notebooks one after another.

    It is replaced whenever its state is in doubt: after a render that failed (a MemoryError
    can strike halfway through any update), ran out of time or crashed, after
    MAX_CHILD_RENDERS, when it has grown, for another memory limit, and in a process forked
    from the one that started it.
    """

    def __init__(self, memory_limit: int) -> None:
        _get_exporter()  # build it here once, so every child starts warm
        # Keep the collector off the inherited heap: a collection in the child would touch (and
        # so copy) every page of this process.
        gc.freeze()
        self.sock, theirs = socket.socketpair()
        self.owner, self.memory_limit, self.renders = os.getpid(), memory_limit, 0
        self.pid = os.fork()
        if self.pid == 0:  # the child: serve until the parent goes, leave without cleanup
            status = 1
            try:
                # Keep only stdio and our socket: the parent's broker and database sockets and
                # the pipes of whatever started it are not the child's to hold open. (The
                # objects that held them stay referenced until the child leaves by _exit.)
                self.sock.close()
                os.closerange(3, theirs.fileno())
                os.closerange(theirs.fileno() + 1, MAX_FD)
                _serve(theirs, memory_limit)
                status = 0
            finally:
                os._exit(status)
        theirs.close()

    def serves(self, limits: PreviewLimits) -> bool:
        # A process forked from ours inherits this object but not the child: their requests
        # and ours would mix on one socket.
        return self.owner == os.getpid() and self.memory_limit == limits.memory_limit

    def render(self, data: bytes, css_href: str, limits: PreviewLimits) -> tuple[str, int]:
        """The page and how much the child has grown; when the render fails, runs out of time
        or the child dies, the child is stopped and PreviewError says why."""
        try:
            self.sock.settimeout(limits.time_limit)
            with contextlib.suppress(OSError):  # a child that is gone shows as EOF below
                _send(self.sock, [css_href, asdict(limits)], data)
            # A page cannot outgrow the child's memory: a larger size is a broken child.
            (reason, grown), page = _receive(self.sock, limit=limits.memory_limit)
            if not reason:
                self.renders += 1
                return page.decode(), grown
        except TimeoutError:
            reason = (f"Rendering the preview took longer than {limits.time_limit:g} s and was "
                      "stopped; make the notebook or its outputs smaller.")
        except (EOFError, OSError):  # the child died; its exit status says how
            reason = ""
        except BaseException:  # e.g. the task's own time limit, with the child mid-render
            self.stop()
            raise
        status = self.stop()
        if not reason and os.WIFSIGNALED(status):
            reason = (f"The preview renderer stopped on {signal.Signals(os.WTERMSIG(status)).name}"
                      f", most likely out of memory (limit {limits.memory_limit // 2**20:,} MB) "
                      "or on input nested too deeply; make the notebook or its outputs smaller.")
        raise PreviewError(reason or "The preview renderer stopped without a result.")

    def stop(self) -> int:
        """Close the socket, kill the child and reap it; returns its wait status.

        A process that inherited this object across a fork only closes its copy of the
        socket: the child is not its own.
        """
        self.sock.close()
        if self.owner != os.getpid():
            return 0
        os.kill(self.pid, signal.SIGKILL)  # a child that already exited keeps its status
        return os.waitpid(self.pid, 0)[1]


def _serve(sock: socket.socket, memory_limit: int) -> None:
    """The child: its limits once, then a reply to each request until the parent's end closes.

    A reply is ["", growth] and the page, or [reason, 0] and nothing; after a failure the
    child leaves, as its state may be damaged. The parent's end also closes when it dies; for
    a parent that dies mid-render an alarm stops the render a little after the parent would
    have (PR_SET_PDEATHSIG would not do: it fires when the thread that forked ends).
    """
    start = _limit_child(memory_limit)
    limits = PreviewLimits(memory_limit=memory_limit)
    while True:
        try:
            try:
                (css_href, fields), data = _receive(sock)
            except EOFError:
                return
            limits = PreviewLimits(**fields)
            signal.alarm(int(limits.time_limit) + 5)
            page = render_preview(data, css_href=css_href, limits=limits).encode()
            signal.alarm(0)
            _send(sock, ["", _address_space() - start], page)
        except BaseException as exc:  # noqa: B036 - everything becomes a reason
            _send(sock, [failure_reason(exc, limits), 0], b"")
            return


def _send(sock: socket.socket, head: Any, body: bytes) -> None:
    """One message: the sizes, a JSON head, and the notebook or the page as it is.

    JSON rather than pickle, as this process reads what a child that parsed hostile input
    wrote; raw bytes rather than multiprocessing's Connection, which is several times slower
    for megabytes.
    """
    text = json.dumps(head).encode()
    sock.sendall(len(text).to_bytes(4, "big") + len(body).to_bytes(8, "big") + text)
    sock.sendall(body)


def _receive(sock: socket.socket, limit: int | None = None) -> tuple[Any, bytearray]:
    """A message from `_send`; EOFError when the other end has closed or announces more than
    `limit` bytes."""
    sizes = _read(sock, 12)
    head_size, body_size = int.from_bytes(sizes[:4], "big"), int.from_bytes(sizes[4:], "big")
    if limit is not None and head_size + body_size > limit:
        raise EOFError
    return json.loads(_read(sock, head_size)), _read(sock, body_size)


def _read(sock: socket.socket, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    while view:
        got = sock.recv_into(view)
        if not got:
            raise EOFError
        view = view[got:]
    return buf


def _limit_child(memory_limit: int) -> int:
    """Default signal handling and the address-space limit; returns the address space in use."""
    import resource

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    in_use = _address_space()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = in_use + memory_limit
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    return in_use


def _address_space() -> int:
    """Bytes of address space this process has mapped: what RLIMIT_AS counts."""
    import resource

    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * resource.getpagesize()

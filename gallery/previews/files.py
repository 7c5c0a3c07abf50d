"""The example's own files in a preview: figures shown inline, links to its other files, and
links to headings that work inside the page.

A notebook refers to the files beside it by relative URLs (`![](figures/fit.png)`,
`<img src="images/x.png">`, `[data](other.ipynb)`). They are resolved here, at render time,
against the example's folder and never left for the browser: a figure is read, checked like
an output image and inlined as a data: URI; a link to another notebook points to that
notebook's preview, and one to any other file to its row on the example's page. A URL that
leaves the folder (`..`, an absolute path, `file:`, a symlink pointing out) or names a missing
file becomes a visible notice, never a request.

The sanitiser calls `rewrite_url` and `finish` while a render is under way (`rendering`); a
render happens in one thread of a forked child, one at a time.
"""
from __future__ import annotations

import hashlib
import html
import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from ..notebooks import EXAMPLE_FILE
from . import math
from .images import file_image_uri

ANCHOR_PREFIX = "nb-"  # heading ids are prefixed: no notebook text names a page-level id
MAX_FIGURE_BYTES_PER_RENDER = 32 * 2**20  # inlined figures of one render, all together
MAX_LINKED_NOTEBOOK_BYTES = 64 * 2**20  # a notebook linked to is hashed to find its preview
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_NOTICE = "#gallery-notice-"


@dataclass(frozen=True)
class ExampleSource:
    """Where a notebook's relative URLs lead: the example's folder on disk, the notebook's
    path inside it, and the example's page (for links to its other files; "" for none).

    `files` and `example` are what the previews of the folder's notebooks are keyed by
    (`preview_key`): links to another notebook lead to its preview's key, through the
    example (its slug) when it is a group's (`private`), whose previews are served only so."""

    folder: str
    notebook: str
    example_url: str = ""
    files: str = ""
    example: str = ""
    private: bool = False


def files_digest(hashes: dict[str, str]) -> str:
    """The digest of an example's files (path -> sha256 of its bytes) that its previews are
    keyed by: every path, and the content of every file but example.toml, which a render
    never reads (its metadata changes in many revisions that change nothing shown)."""
    h = hashlib.sha256()
    for path in sorted(hashes):
        h.update(f"{path}\0{'' if path == EXAMPLE_FILE else hashes[path]}\n".encode())
    return h.hexdigest()


def preview_key(notebook_sha256: str, *, notebook: str = "", files: str = "",
                example: str = "") -> str:
    """The key a notebook's preview is stored, served and shared under.

    A preview shows more than the notebook: the figures it takes from its example's folder,
    links to the folder's other notebooks (by their keys) and files, and the example's page.
    So the key covers the notebook's bytes, its path in the folder (relative URLs start
    there), the folder's `files_digest` and the example's slug: a figure changed in a new
    revision gives a new preview, the same notebook beside the same files the same one.
    Without `files` (an example staged before its files were hashed) it is the notebook's
    sha256, the key such previews were rendered under.
    """
    if not files:
        return notebook_sha256
    text = f"gallery-preview-1\0{notebook_sha256}\0{notebook}\0{files}\0{example}"
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class _Render:
    source: ExampleSource | None
    max_bytes: int
    max_pixels: int
    preview_url: Callable[[str], str | None]
    notices: list[str] = field(default_factory=list)
    frame_links: set[str] = field(default_factory=set)  # URLs that stay in the frame
    figure_bytes: int = 0


_current: _Render | None = None


@contextmanager
def rendering(source: ExampleSource | None, *, max_bytes: int, max_pixels: int,
              preview_url: Callable[[str], str | None]) -> Iterator[None]:
    """The context of one render: its example's files, limits and notices."""
    global _current
    math.start_render()
    _current = _Render(source, max_bytes, max_pixels, preview_url)
    try:
        yield
    finally:
        _current = None


# Figures inlined from examples' folders by this process, all renders together (benchmarks
# count what a corpus showed).
figures_inlined = [0]


def rewrite_url(tag: str, attr: str, value: str) -> str | None:
    """A URL of the notebook as the preview may use it, or None to drop it.

    Absolute http(s)/mailto links and data: URIs are the sanitiser's; this resolves the rest:
    fragments, paths inside the example, and `file:` URLs (which only ever become a notice).
    """
    if value.startswith("#"):  # a place in this page: something to link to, not to load
        if tag != "a":
            return None
        return "#" + ANCHOR_PREFIX + value[1:] if len(value) > 1 else "#"
    if value.lower().startswith("file:"):
        return _notice(f"{value[:80]}: a file: URL is not shown")
    if _SCHEME.match(value) or value.startswith("//"):
        return value if tag == "a" and value.split(":", 1)[0].lower() in (
            "http", "https", "mailto") else None
    path, fragment = _resolve(value)
    if fragment is None:  # `path` is the reason
        return _notice(f"{value[:80]}: {path}")
    if tag == "img":
        return _figure(path, value) if path != posixpath.normpath(
            _current.source.notebook) else None  # type: ignore[union-attr]
    return _link(path, fragment, value) if tag == "a" else None


def _notice(text: str) -> str | None:
    if _current is None:
        return None
    _current.notices.append(text)
    return f"{_NOTICE}{len(_current.notices) - 1}"


def _resolve(url: str) -> tuple[str, str | None]:
    """(path inside the example, fragment) for a relative URL, or (reason, None)."""
    if _current is None or _current.source is None:
        return "not shown outside its example", None
    url, _, fragment = url.partition("#")
    path = unquote(url.partition("?")[0])
    if path.startswith(("/", "\\")) or "\\" in path or "\0" in path:
        return "not a path inside the example", None
    base = posixpath.dirname(_current.source.notebook)
    path = posixpath.normpath(posixpath.join(base, path)) if path else _current.source.notebook
    if path == ".." or path.startswith("../"):
        return "leaves the example's folder", None
    return path, fragment


def _figure(path: str, url: str) -> str | None:
    assert _current is not None and _current.source is not None
    if path == EXAMPLE_FILE:  # never read: its content is not in the preview's key
        return _notice(f"{url[:80]}: not a PNG, JPEG, GIF or SVG image")
    budget = MAX_FIGURE_BYTES_PER_RENDER - _current.figure_bytes
    try:
        data = read_example_file(_current.source.folder, path, min(_current.max_bytes + 1,
                                                                    budget + 1))
    except ExampleFileError as exc:
        return _notice(f"{url[:80]}: {exc}")
    if len(data) > budget:
        return _notice(f"{url[:80]}: the preview's figures are over "
                       f"{MAX_FIGURE_BYTES_PER_RENDER // 2**20} MiB together")
    uri, problem = file_image_uri(data, path, _current.max_bytes, _current.max_pixels)
    if problem:
        return _notice(f"{url[:80]}: {problem}")
    _current.figure_bytes += len(data)
    figures_inlined[0] += 1
    return uri


def _link(path: str, fragment: str, url: str) -> str | None:
    assert _current is not None and _current.source is not None
    source = _current.source
    anchor = f"#{ANCHOR_PREFIX}{fragment}" if fragment else ""
    if path == posixpath.normpath(source.notebook):
        return anchor or "#"
    try:
        kind = example_file_kind(source.folder, path)
    except ExampleFileError as exc:
        return _notice(f"{url[:80]}: {exc}")
    if kind == "file" and path.endswith(".ipynb"):
        try:
            data = read_example_file(source.folder, path, MAX_LINKED_NOTEBOOK_BYTES)
        except ExampleFileError as exc:
            return _notice(f"{url[:80]}: {exc}")
        target = _current.preview_url(preview_key(
            hashlib.sha256(data).hexdigest(), notebook=path, files=source.files,
            example=source.example))
        if target:
            _current.frame_links.add(target + anchor)
            return target + anchor
    if not source.example_url:
        return _notice(f"{url[:80]}: a file of the example")
    return f"{source.example_url}#file-{quote(path)}"


class ExampleFileError(Exception):
    """A path of the example that cannot be read; the message says why, in plain words."""


def _open_inside(folder: str, path: str, flags: int) -> int:
    """A descriptor of `path` inside `folder`, following no symlink on the way.

    The path is first resolved to refuse links that point out of the folder with a clear
    reason; then each component is opened relative to the last with O_NOFOLLOW, so nothing
    swapped in between can lead out either.
    """
    root = os.path.realpath(folder)
    full = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, full]) != root:
        raise ExampleFileError("leaves the example's folder")
    parts = [p for p in os.path.relpath(full, root).split(os.sep) if p not in ("", ".")]
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        if not parts:
            return os.dup(fd)
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except FileNotFoundError:
        raise ExampleFileError("not found in the example") from None
    except OSError as exc:
        raise ExampleFileError(f"cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)


def example_file_kind(folder: str, path: str) -> str:
    """"file" or "folder" for a path inside the example; ExampleFileError otherwise."""
    fd = _open_inside(folder, path, os.O_RDONLY)
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if stat.S_ISDIR(mode):
        return "folder"
    if not stat.S_ISREG(mode):
        raise ExampleFileError("not a file")
    return "file"


def read_example_file(folder: str, path: str, limit: int) -> bytes:
    """The first `limit` bytes of a regular file inside the example's folder."""
    fd = _open_inside(folder, path, os.O_RDONLY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ExampleFileError("not a file")
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# A tag as nh3 writes it: every attribute value double-quoted, with `"` escaped in it.
_A_TAG = re.compile(r'<a\s(?:[^>"]|"[^"]*")*>')
_HREF = re.compile(r'\shref="([^"]*)"')
_NOTICE_IMG = re.compile(r'<img\s(?:[^>"]|"[^"]*")*?src="#gallery-notice-(\d+)"(?:[^>"]|"[^"]*")*>')
_NOTICE_HREF = re.compile(r'\shref="#gallery-notice-(\d+)"')


def finish(clean: str) -> str:
    """Sanitised HTML with its notices shown and its outward links opening a new tab.

    Works on nh3's output, whose attributes are always double-quoted and escaped.
    """
    notices = _current.notices if _current else []

    def notice(index: str) -> str:
        i = int(index)
        return html.escape(notices[i] if i < len(notices) else "not shown", quote=True)

    if _NOTICE in clean:
        clean = _NOTICE_IMG.sub(lambda m: '<span class="gallery-notice">[Figure '
                                f"{notice(m.group(1))}]</span>", clean)
        clean = _NOTICE_HREF.sub(lambda m: f' title="{notice(m.group(1))}"', clean)
    if "<a " in clean:
        clean = _A_TAG.sub(_target, clean)
    return clean


def _target(m: re.Match[str]) -> str:
    tag = m.group(0)
    href = _HREF.search(tag)
    if href is None:
        return tag
    url = html.unescape(href.group(1))
    if url.startswith("#") or (_current is not None and url in _current.frame_links):
        return tag
    return tag[:2] + ' target="_blank"' + tag[2:]

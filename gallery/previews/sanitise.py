"""Layers 1 and 2 of a preview: nh3 over HTML and markdown, and the allowlist of outputs.

Everything a notebook carries is dropped unless it is known to be inert: output types
outside the allowlist, script and widget outputs, images that do not decode or are too big,
attributes and URLs nh3 would not keep. MathML (from the notebook's TeX, see `math`) passes
with its own allowlist; relative URLs are resolved against the example's files (`files`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import nbformat

from ..notebooks import NotebookError
from . import files
from .images import IMAGE_MIMES, clean_base64_image
from .math import MATHML_ATTRIBUTES, MATHML_TAGS, mathml_value_ok

HTML_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "code", "dd", "del", "details", "div",
    "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd",
    "li", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strong", "sub", "summary",
    "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul", "var",
}
ALLOWED_TAGS = HTML_TAGS | MATHML_TAGS
ALLOWED_ATTRIBUTES = {
    "*": {"class", "title", "lang", "dir"},
    "a": {"href", "id"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan", "align"},
    "th": {"colspan", "rowspan", "align", "scope"},
    "ol": {"start"},
    # Anchors for links inside the notebook; every id is prefixed (files.ANCHOR_PREFIX).
    **{tag: {"id"} for tag in ("h1", "h2", "h3", "h4", "h5", "h6", "div", "span")},
    **MATHML_ATTRIBUTES,
}
# Removed with everything inside them (other disallowed tags leave their text).
CLEAN_CONTENT_TAGS = {"script", "style", "annotation-xml"}
# What a preview shows of an output, best first (JupyterLab's order: TeX before images);
# everything else is dropped.
PREVIEW_MIMES = ("text/html", "text/markdown", "text/latex", "image/svg+xml", "image/png",
                 "image/jpeg", "image/gif", "text/plain")
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


def use_limits(limits: PreviewLimits) -> None:
    """The limits the sanitiser checks images in HTML against, for the render under way."""
    global _limits_for_filter
    _limits_for_filter = limits


def sanitize_html(html: str) -> str:
    """Untrusted HTML, reduced to an allowlist with nh3 (no script, no handlers, no styles).

    Relative URLs are resolved against the example's files or dropped: left to the browser,
    they would be requests the viewer's browser makes on the author's behalf. Links that
    leave the preview open a new tab.
    """
    global _cleaner
    if _cleaner is None:
        import nh3

        _cleaner = nh3.Cleaner(
            tags=ALLOWED_TAGS,
            clean_content_tags=CLEAN_CONTENT_TAGS,
            attributes=ALLOWED_ATTRIBUTES,
            # file: only reaches the attribute filter, which turns it into a notice.
            url_schemes={"http", "https", "mailto", "data", "file"},
            url_relative="pass_through",  # the attribute filter resolves or drops them
            attribute_filter=_attribute_filter,
            link_rel="noopener noreferrer",
            strip_comments=True,
        )
    if html.count("<") > MAX_HTML_DEPTH and _nesting_depth(html) > MAX_HTML_DEPTH:
        # The HTML parser's time grows with the square of the depth.
        return ('<p class="gallery-notice">[HTML nested more than '
                f"{MAX_HTML_DEPTH:,} levels deep is not shown in the preview.]</p>")
    return files.finish(_cleaner.clean(html))


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
        url = value.strip()
        if not url or _BAD_URL_CHARS.search(url):
            return None
        if url[:5].lower() == "data:":  # images are inline data: no beacons, no internal URLs
            return url if tag == "img" and _data_uri_image_ok(url) else None
        return files.rewrite_url(tag, attr, url)
    if attr == "id":
        anchor = value.strip()[:200]
        return files.ANCHOR_PREFIX + anchor if anchor else None
    if tag in MATHML_TAGS:
        return value if mathml_value_ok(value) else None
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


def _clean_image(mime: str, b64: str, limits: PreviewLimits) -> tuple[str, str | None]:
    """A base64 image without whitespace, and why it cannot be shown (None when it can)."""
    return clean_base64_image(mime, b64, limits.max_output_bytes, limits.max_image_pixels)


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
            clean["outputs"] = [_output_node(o) for o in _merge_streams(
                [kept for o in outputs for kept in _clean_output(o, limits)], limits)]
        cells.append(_Node(clean, metadata=_Node(),
                           **({"attachments": _Node(clean["attachments"])}
                              if "attachments" in clean else {})))
    return _Node({
        "nbformat": 4, "nbformat_minor": 5, "cells": cells,
        "metadata": _Node({"language_info": _Node({"name": lexer} if lexer else {}),
                           "title": title if isinstance(title, str) else ""}),
    })


_Node = nbformat.NotebookNode


def _output_node(output: dict[str, Any]) -> nbformat.NotebookNode:
    """A cleaned output as the template reads it (what `nbformat.from_dict` would make of it,
    without walking every string)."""
    node = _Node(output)
    for key in ("data", "metadata"):
        if key in node:
            node[key] = _Node({k: _Node(v) if isinstance(v, dict) else v
                               for k, v in node[key].items()})
    return node

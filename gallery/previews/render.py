"""Layer 3 of a preview: our nbconvert exporter and template, the page around it, and the
files a preview is stored as (with a gzip twin)."""
from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
from django.conf import settings
from django.urls import reverse

from ..notebooks import decode_notebook
from . import files, math, sanitise
from .files import ExampleSource
from .highlight import highlight
from .sanitise import (
    PREVIEW_MIMES,
    PreviewError,
    PreviewLimits,
    _is_count,
    sanitize_html,
    strict_outputs,
)

# --- layer 3: the exporter and our template --------------------------------------------------


def _preview_exporter_class() -> type:
    import html

    from jinja2 import pass_context
    from markupsafe import Markup
    from mistune import InlineParser
    from nbconvert import HTMLExporter
    from nbconvert.filters.markdown_mistune import (
        InvalidNotebook,
        IPythonRenderer,
        MarkdownWithMath,
        MathBlockParser,
        MathInlineParser,
    )

    class PreviewRenderer(IPythonRenderer):  # type: ignore[misc]
        """Markdown as JupyterLab shows it: TeX as MathML, headings with ids to link to."""

        def block_math(self, body: str) -> str:
            return math.tex_html(body, display=True, shown=f"$${body}$$")

        def inline_math(self, body: str) -> str:
            return math.tex_html(body, display=False, shown=f"${body}$")

        def latex_environment(self, name: str, body: str) -> str:
            tex = f"\\begin{{{name}}}{body}\\end{{{name}}}"
            return math.tex_html(tex, display=True, shown=tex)

        def _embed_image_or_attachment(self, src: str) -> str:
            # A missing attachment is one image the less, not the cell's others too.
            if src.startswith("attachment:") and src[11:] not in self.attachments:
                return ""
            return str(super()._embed_image_or_attachment(src))

        def heading(self, text: str, level: int, **attrs: Any) -> str:
            # JupyterLab's id: the heading's text with spaces as dashes.
            anchor = html.unescape(_TAGS.sub("", text)).strip().replace(" ", "-")
            return f'<h{level} id="{html.escape(anchor)}">{text}</h{level}>\n'

    class PreviewBlockParser(MathBlockParser):  # type: ignore[misc]
        SPECIFICATION = {**MathBlockParser.SPECIFICATION,
                         "multiline_math": f"(?s:{math.MULTILINE_MATH})"}

    class PreviewInlineParser(MathInlineParser):  # type: ignore[misc]
        SPECIFICATION = {**MathInlineParser.SPECIFICATION,
                         "inline_math_tex": f"(?s:{math.INLINE_MATH_TEX})",
                         "inline_math_latex": f"(?s:{math.INLINE_MATH_LATEX})",
                         "block_math_latex": f"(?s:{math.BLOCK_MATH_LATEX})"}

    def markdown(attachments: dict[str, Any], maths: bool = True) -> Any:
        # Without `maths`, for text with no `$` or backslash: the math rules cannot match
        # there, and leaving them out of the inline parser's pattern saves a third of its time.
        return MarkdownWithMath(
            renderer=PreviewRenderer(escape=False, attachments=attachments, embed_images=False,
                                     exclude_anchor_links=True),
            block=PreviewBlockParser(),
            inline=PreviewInlineParser(hard_wrap=False) if maths else InlineParser(
                hard_wrap=False))

    class PreviewExporter(HTMLExporter):  # type: ignore[misc]
        """nbconvert's HTML exporter with our template and filters, minus its slow passes.

        The stock exporter deep-copies the notebook, runs a dozen preprocessors with a schema
        validation after each, builds a Pygments formatter and a markdown parser per cell,
        and re-parses its whole output with BeautifulSoup to add `alt` and `tabindex`. Our
        template writes those attributes itself, `strict_outputs` has already made a fresh,
        normalised notebook, and the formatter and parser are built once.
        """

        _markdown: dict[bool, Any] = {}

        @pass_context
        def markdown2html(self, context: Any, source: str,
                          attachments: dict[str, Any] | None = None) -> str:
            maths = "$" in source or "\\" in source
            if not attachments:
                if maths not in self._markdown:
                    self._markdown[maths] = markdown({}, maths)
                parser = self._markdown[maths]
            else:
                parser = markdown(attachments, maths)
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
                                     "latex_html": math.latex_output_html,
                                     "preview_mime": preview_mime,
                                     "strip_files_prefix": lambda s: s}
    return PreviewExporter


_TAGS = re.compile(r"<[^>]*>")
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
# The sandbox of a preview's frame, and of its CSP `sandbox` directive: everything off (no
# script, an opaque origin, no forms, no top navigation) but a popup, for a click on a link
# out of the preview (the sanitiser gives those target="_blank" rel="noopener noreferrer"),
# which leaves the sandbox behind: the new tab loads the external page as if its address had
# been typed (README, Security).
FRAME_SANDBOX = "allow-popups allow-popups-to-escape-sandbox"
# Repeated inside the file, so a preview stays inert even where a plain static server
# sends it without our headers (frame-ancestors and sandbox only work as headers).
PAGE_CSP = ("default-src 'none'; img-src data:; style-src 'self'; font-src data:; "
            "form-action 'none'; base-uri 'none'")
PREVIEW_CSS = Path(__file__).resolve().parents[2] / "static" / "gallery" / "preview.css"


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


def _read_for_preview(data: bytes) -> Any:
    """Parse notebook bytes without schema validation (staging validated them already).

    A version 4 notebook stays plain JSON: `strict_outputs` reads it defensively and builds
    the notebook the template sees. Older versions are upgraded by nbformat first.
    """
    from nbformat import reader, versions

    _, raw = decode_notebook(data, PreviewError)
    try:  # what nbformat.reader.reads does once the JSON is parsed
        major, minor = reader.get_version(raw)
        if major == 4:
            return raw
        nb = versions[major].to_notebook_json(raw, minor=minor)
    except MemoryError:
        raise
    except Exception as exc:  # nbformat raises assorted types on odd input
        raise PreviewError(f"The notebook could not be read: {str(exc)[:200]}") from None
    try:
        with _quiet_upgrade():
            return nbformat.convert(nb, 4)
    except MemoryError:
        raise
    except Exception as exc:
        raise PreviewError(f"The notebook's format cannot be upgraded: {exc}") from None


@contextlib.contextmanager
def _quiet_upgrade() -> Iterator[None]:
    """nbformat's upgrade from version 3 without its two schema validations, which only log
    what is wrong (and took longer than the upgrade): `strict_outputs` reads every field of
    the result defensively anyway. A render runs alone in its process."""
    from nbformat.v4 import convert

    saved = convert._warn_if_invalid
    convert._warn_if_invalid = lambda nb, version: None
    try:
        yield
    finally:
        convert._warn_if_invalid = saved


def render_preview(data: bytes, *, css_href: str = "", limits: PreviewLimits | None = None,
                   source: ExampleSource | None = None) -> str:
    """Render notebook bytes to a complete, sanitised, script-free HTML page (in-process).

    With `source`, relative URLs of the notebook lead to the example's files: figures are
    inlined, links point to the other notebooks' previews and to the example's page.
    """
    import html

    limits = limits or PreviewLimits()
    sanitise.use_limits(limits)
    nb = strict_outputs(_read_for_preview(data), limits)
    link_url = functools.partial(preview_url, group_example=source.example) if (
        source is not None and source.private) else preview_url
    with files.rendering(source, max_bytes=limits.max_output_bytes,
                         max_pixels=limits.max_image_pixels, preview_url=link_url):
        body, _ = _get_exporter().from_notebook_node(nb)
    title = nb.metadata.get("title") or "Notebook preview"
    return PREVIEW_PAGE.format(csp=PAGE_CSP, title=html.escape(title[:200]),
                               css=html.escape(css_href or preview_css_name()), body=body)


def preview_url(sha256: str | None, *, group_example: str = "") -> str | None:
    """Where a preview is served: the gallery's own /previews/, or GALLERY_PREVIEW_BASE_URL;
    a group's example's (`group_example`, its slug) only through the gallery, to members."""
    if not sha256:
        return None
    if group_example:
        return reverse("group-preview", args=[group_example, sha256])
    base = settings.GALLERY_PREVIEW_BASE_URL
    if base:
        return f"{base.rstrip('/')}/{sha256}.html"
    return reverse("preview", args=[sha256])


def revision_preview_key(revision: Any, *, notebook_sha256: str = "", notebook: str = "") -> str:
    """`files.preview_key` of one of a revision's notebooks (its main one by default), or of
    a run's executed copy of it (`notebook_sha256`), beside the revision's files."""
    return files.preview_key(
        notebook_sha256 or revision.notebook_sha256, notebook=notebook or revision.notebook_name,
        files=revision_files_digest(revision), example=revision.example.slug)


def revision_files_digest(revision: Any) -> str:
    """`files.files_digest` of a revision's files, or "" for a revision staged before its
    files were hashed."""
    entries = revision.files
    if not entries or not all("sha256" in f for f in entries):
        return ""
    return files.files_digest({f["path"]: f["sha256"] for f in entries})


def example_preview_url(example: Any, sha256: str | None) -> str | None:
    """`preview_url` of one of an example's notebooks: a group's example's goes through it."""
    return preview_url(sha256, group_example="" if example.is_public else example.slug)

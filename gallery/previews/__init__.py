"""Previews: an untrusted notebook made into an inert, sanitised HTML page.

A preview is another person's notebook shown to logged-in users, so it is made inert in
layers: a preprocessor keeps only an allowlist of output types and nh3 cleans HTML and
markdown (`sanitise`), our own nbconvert template escapes everything and loads nothing from
outside (`render`), and the page is served with a CSP `sandbox` and no script. Rendering runs
in a forked child with a time and a memory limit (`child`). TeX becomes MathML (`math`), the
example's own figures are inlined and its links resolved at render time (`files`), every
image is checked by Pillow first (`images`), and code is highlighted by a faster lexer with
Pygments' tokens (`highlight`). A group's example's preview may be reached through a signed,
short-lived address (`links`).
"""

from . import links
from .child import failure_reason, render_isolated, stop_render_child, warm_exporter
from .files import ExampleSource, files_digest, preview_key
from .render import (
    FRAME_SANDBOX,
    PAGE_CSP,
    PREVIEW_CSS,
    example_preview_url,
    preview_css_name,
    preview_url,
    render_preview,
    revision_files_digest,
    revision_preview_key,
    write_atomically,
    write_preview_css,
    write_preview_file,
)
from .sanitise import (
    ALLOWED_ATTRIBUTES,
    ALLOWED_TAGS,
    MAX_HTML_DEPTH,
    PreviewError,
    PreviewLimits,
    sanitize_html,
    strict_outputs,
)

__all__ = [
    "links",
    "ALLOWED_ATTRIBUTES", "ALLOWED_TAGS", "FRAME_SANDBOX", "MAX_HTML_DEPTH", "PAGE_CSP",
    "PREVIEW_CSS",
    "ExampleSource", "files_digest", "preview_key", "revision_files_digest",
    "revision_preview_key",
    "PreviewError", "PreviewLimits", "example_preview_url", "failure_reason",
    "preview_css_name", "preview_url",
    "render_isolated", "render_preview", "sanitize_html", "stop_render_child", "strict_outputs",
    "warm_exporter", "write_atomically", "write_preview_css", "write_preview_file",
]

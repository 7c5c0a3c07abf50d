"""The hostile corpus in a real Chromium: staged through the API, rendered by the worker code,
then shown on the example page (gallery origin) in its sandboxed frame from a separate preview
origin, and opened directly. Nothing may run, load from elsewhere, open or navigate.

Also what a reader sees: an equation as MathML, and a multi-file example's own figure (with a
screenshot, GALLERY_SCREENSHOTS as in test_journeys.py)."""

from __future__ import annotations

import base64
import html
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from gallery import services
from gallery.models import Submission
from gallery.previews import revision_preview_key

from .. import corpus
from ..corpus import latent
from .browser import browser, watch  # noqa: F401  (browser is a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Run inside the preview document; the document itself may run nothing (CSP sandbox).
INSPECT = """() => {
  const bad = [];
  for (const el of document.querySelectorAll('*')) {
    for (const a of el.attributes) {
      if (a.name.startsWith('on') || ['style', 'srcset'].includes(a.name)) bad.push(a.name);
      if (['href', 'src', 'action', 'formaction'].includes(a.name)
          && /^\\s*(javascript|vbscript|data:text)/i.test(a.value)) {
        bad.push(a.name + '=' + a.value);
      }
    }
  }
  const tags = 'script, iframe, frame, object, embed, form, input, button, style, base, '
             + 'svg, video, audio, meta[http-equiv=refresh], link:not([rel=stylesheet]), '
             + 'maction, annotation-xml, mglyph, math [href], '
             + 'a[href^="http"]:not([target]):not([href*="/previews/"])';
  return {
    origin: self.origin, title: document.title, bad,
    tags: [...document.querySelectorAll(tags)].map(e => e.tagName),
    styled: getComputedStyle(document.querySelector('main')).maxWidth,
    text: document.body ? document.body.innerText : '',
  };
}"""


def stage_corpus(client: Any) -> list[tuple[corpus.Case, Submission]]:
    staged = []
    for case in corpus.cases():
        if case.files:  # an example of several files: the JSON form of the API
            r = client.post("/api/v1/submissions", json.dumps({
                "notebook": case.data.decode(), "notebook_name": corpus.NOTEBOOK,
                "title": case.name, "files": [
                    {"path": path, "content_base64": base64.b64encode(data).decode()}
                    for path, data in case.files.items()]}), content_type="application/json")
        else:
            r = client.post("/api/v1/submissions", {
                "notebook": SimpleUploadedFile(f"{case.name}.ipynb", case.data),
                "title": case.name})
        if case.expect != "render":
            assert r.status_code == case.expect, (case.name, r.content[:300])
            continue
        assert r.status_code == 201, (case.name, r.content[:300])
        submission = Submission.objects.select_related("example", "revision").get(
            pk=r.json()["id"])
        if case.symlinks:  # no upload makes one: put them in, and render again
            corpus.add_symlinks(case, services.staged_folder(submission.revision))
            path = services.preview_path(revision_preview_key(submission.revision))
            for stale in (path, path.with_name(path.name + ".gz")):
                stale.unlink(missing_ok=True)
            services.queue_preview(submission.revision)
        preview = client.get(f"/api/v1/submissions/{r.json()['id']}").json()["preview"]
        assert preview["state"] == "ready", (case.name, preview)
        page = services.preview_path(revision_preview_key(submission.revision)).read_text()
        found, text = latent(page)
        assert found == [], case.name
        for words in case.hides:
            assert words not in text, (case.name, words)
        staged.append((case, submission))
    return staged


@pytest.fixture
def frame_host() -> Iterator[int]:
    """A bare page on an origin of its own that frames a preview as the gallery's pages do."""

    class Host(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            src = html.escape(parse_qs(urlsplit(self.path).query).get("src", [""])[0])
            body = (f'<!DOCTYPE html><iframe class="preview" sandbox="" src="{src}" '
                    'referrerpolicy="no-referrer" style="width:1000px;height:700px"></iframe>')
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Host)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def wait_for_frame(page: Any, url: str) -> Any:
    for _ in range(100):
        frame = next((f for f in page.frames if f.url == url), None)
        if frame is not None:
            frame.wait_for_load_state("load")
            return frame
        page.wait_for_timeout(100)
    raise AssertionError(f"the frame {url} did not load; frames: {[f.url for f in page.frames]}")


def check_inert(found: dict[str, Any], case: corpus.Case, where: str) -> None:
    assert found["origin"] == "null", (case.name, where, "the document is not sandboxed")
    assert found["title"] != "PWNED", (case.name, where)
    assert found["bad"] == [], (case.name, where, found["bad"][:5])
    assert found["tags"] == [], (case.name, where, found["tags"][:5])
    assert found["styled"] == "1024px", (case.name, where, "the shared stylesheet did not load")
    for words in case.shows:
        assert words in found["text"], (case.name, where, words)


def test_it_keeps_every_corpus_preview_inert_in_chromium(live_server, settings, client,
                                                         django_user_model, request, frame_host):
    port = live_server.url.rsplit(":", 1)[1]
    app, previews = f"http://localhost:{port}", f"http://127.0.0.1:{port}"
    host = f"http://localhost:{frame_host}"
    settings.GALLERY_PREVIEW_BASE_URL = f"{previews}/previews"
    settings.GALLERY_PREVIEW_FRAME_ANCESTORS = f"{app} {host}"
    settings.GALLERY_MAX_UPLOAD_BYTES = corpus.OVERSIZED_LIMIT
    user = django_user_model.objects.create_user("connor", password="pw-" + "x" * 10)
    client.force_login(user)
    staged = stage_corpus(client)
    assert len(staged) >= 40
    session = client.cookies[settings.SESSION_COOKIE_NAME].value

    chromium = request.getfixturevalue("browser")  # after the database work above
    context = chromium.new_context()
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": session,
                          "url": app}])
    page = context.new_page()
    seen = watch(page, app + "/", previews + "/", host + "/")
    visited = []

    def show(case: corpus.Case, submission: Submission, host: str) -> None:
        preview_url = f"{previews}/previews/{revision_preview_key(submission.revision)}.html"
        page.goto(host, wait_until="load")
        visited.append(host)
        iframe = page.locator("iframe.preview")
        assert iframe.get_attribute("sandbox") == "", case.name
        assert iframe.get_attribute("src") == preview_url, case.name
        iframe.scroll_into_view_if_needed()  # the gallery's frames load lazily
        frame = wait_for_frame(page, preview_url)
        box = iframe.bounding_box()
        for step in range(6):  # hover across the frame, for mouseover handlers
            page.mouse.move(box["x"] + box["width"] * step / 6, box["y"] + box["height"] / 2)
        check_inert(frame.evaluate(INSPECT), case, host)
        # Opened directly: the CSP sandbox header protects it without the frame.
        page.goto(preview_url, wait_until="load")
        visited.append(preview_url)
        page.mouse.move(100, 100)
        page.mouse.move(400, 300)
        check_inert(page.evaluate(INSPECT), case, "direct")
        assert page.url == preview_url, (case.name, "the page navigated itself")

    for n, (case, submission) in enumerate(staged):
        preview_url = f"{previews}/previews/{revision_preview_key(submission.revision)}.html"
        show(case, submission, f"{host}/?src={preview_url}")
        if n < 3:  # and in the gallery's own pages, as a user sees it
            show(case, submission, f"{app}/examples/{submission.example.slug}/")
            show(case, submission, f"{app}/submissions/{submission.pk}/")

    assert seen.dialogs == []
    assert seen.popups == []
    assert seen.blocked == [], "requests left the page: " + ", ".join(seen.blocked[:5])
    assert [u for u in seen.navigations if u not in visited] == []
    refused = [m for m in seen.console if "Refused" in m or "Blocked" in m]
    assert refused == [], refused[:5]
    context.close()


ROOT = Path(__file__).resolve().parent.parent.parent
SHOTS = Path(os.environ.get("GALLERY_SCREENSHOTS", ROOT / "tests" / "e2e" / "screenshots"))


def figure_png() -> bytes:
    """A plot-like figure, saved with metadata chunks before its pixel data as many tools do."""
    import io

    from PIL import Image, ImageDraw, PngImagePlugin

    image = Image.new("RGB", (480, 260), "white")
    draw = ImageDraw.Draw(image)
    draw.line([(40, 20), (40, 230), (460, 230)], fill="black", width=2)
    points = [(60 + 40 * i, 210 - 17 * i + (9 if i % 2 else -7)) for i in range(10)]
    for x, y in points:
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=(31, 119, 180))
    draw.line([(50, 213), (450, 40)], fill=(214, 39, 40), width=3)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>" + "figure " * 500 + "</x:xmpmeta>")
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=info, icc_profile=os.urandom(2000))
    return buf.getvalue()


def multi_file_notebook() -> bytes:
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    return json.dumps(new_notebook(cells=[
        new_markdown_cell("# Fitting a line\n\nWe fit $y = a x + b$ by least squares, which "
                          "minimises\n\n$$S(a, b) = \\sum_{i=1}^{n} \\left(y_i - a x_i - b"
                          "\\right)^2, \\qquad a = \\frac{\\operatorname{cov}(x, y)}"
                          "{\\operatorname{var}(x)}.$$\n\n"
                          "The figure beside this notebook, `figures/fit.png`:\n\n"
                          "![The fitted line](figures/fit.png)\n\nThe points are in "
                          "[points.csv](points.csv)."),
        new_code_cell("a, b = np.polyfit(x, y, 1)\nprint(a, b)", execution_count=1, outputs=[
            new_output("stream", name="stdout", text="-0.43 213.1\n")]),
    ], metadata={"language_info": {"name": "python"}})).encode()


def log_in(tab: Any, live_server: Any, user: Any) -> None:
    from django.test import Client

    client = Client()
    client.force_login(user)
    cookie = client.cookies["gallery-sessionid"]
    tab.context.add_cookies([{"name": "gallery-sessionid", "value": cookie.value,
                              "url": live_server.url}])


def test_it_shows_a_multi_file_example_with_its_figure_and_equations(live_server, request):
    from tests.base import make_user, stage

    submission = stage(make_user("connor"), title="Fitting a line",
                       notebook=multi_file_notebook(),
                       files={"figures/fit.png": figure_png(), "points.csv": b"x,y\n1,2\n"})
    context = request.getfixturevalue("browser").new_context(viewport={"width": 1200,
                                                                        "height": 900})
    page = context.new_page()
    seen = watch(page, live_server.url + "/")
    log_in(page, live_server, make_user("ursula"))
    page.goto(f"{live_server.url}/examples/{submission.example.slug}/", wait_until="load")
    iframe = page.locator("iframe.preview")
    assert iframe.get_attribute("sandbox") == ""
    iframe.scroll_into_view_if_needed()
    preview = f"{live_server.url}/previews/{revision_preview_key(submission.revision)}.html"
    frame = wait_for_frame(page, preview)
    shown = frame.evaluate("""() => {
      const img = document.querySelector('img[alt="The fitted line"]');
      const m = document.querySelector('math[display=block]');
      return {src: img.src.slice(0, 22), complete: img.complete, width: img.naturalWidth,
              height: img.naturalHeight, mathml: m instanceof MathMLElement,
              notices: document.querySelectorAll('.gallery-notice').length};
    }""")
    assert shown == {"src": "data:image/png;base64,", "complete": True, "width": 480,
                     "height": 260, "mathml": True, "notices": 0}
    iframe.evaluate("f => { f.style.height = '900px'; }")
    page.wait_for_timeout(300)
    SHOTS.mkdir(parents=True, exist_ok=True)
    iframe.screenshot(path=str(SHOTS / "preview-figure-and-equations.png"))
    assert seen.blocked == [] and seen.popups == [] and seen.dialogs == []
    context.close()


def test_it_lays_out_equations_as_mathml(live_server, request):
    from tests.base import make_user, stage

    submission = stage(make_user("connor"), title="Fitting a line",
                       notebook=multi_file_notebook(), files={"figures/fit.png": figure_png()})
    preview = f"{live_server.url}/previews/{revision_preview_key(submission.revision)}.html"
    context = request.getfixturevalue("browser").new_context()
    page = context.new_page()
    page.goto(preview, wait_until="load")
    laid = page.evaluate("""() => {
      const block = document.querySelector('math[display=block]');
      const frac = block.querySelector('mfrac');
      const [num, den] = [...frac.children].map(c => c.getBoundingClientRect());
      const inline = document.querySelector('math[display=inline]');
      return {ns: block.namespaceURI, display: getComputedStyle(block).display,
              inline: getComputedStyle(inline).display,
              stacked: den.top >= num.bottom - 1, centred: block.getBoundingClientRect().width > 0,
              text: document.body.innerText.includes('$')};
    }""")
    assert laid == {"ns": "http://www.w3.org/1998/Math/MathML", "display": "block math",
                    "inline": "math", "stacked": True, "centred": True, "text": False}
    context.close()

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

from gallery import notebooks, previews, services
from gallery.models import Submission
from gallery.previews import FRAME_SANDBOX, revision_preview_key

from .. import corpus
from ..corpus import latent
from .browser import browser, watch  # noqa: F401  (browser is a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def fresh_render_child() -> Iterator[None]:
    """A render child forked in another test keeps that test's settings (where previews are
    served, which its links use): each test forks its own."""
    previews.stop_render_child()
    yield
    previews.stop_render_child()

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
             + 'maction, annotation-xml, mglyph, math [href], area, [ping], '
             + 'a[href^="http"]:not([target]):not([href*="/previews/"]), '
             + 'a[target]:not([target=_blank]), '
             + 'a[target]:not([rel~=noopener]), a[target]:not([rel~=noreferrer])';
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
            body = (f'<!DOCTYPE html><iframe class="preview" sandbox="{FRAME_SANDBOX}" '
                    f'src="{src}" referrerpolicy="no-referrer" '
                    'style="width:1000px;height:700px"></iframe>')
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


def until(page: Any, frame: Any, expression: str, what: str) -> None:
    """Wait until `expression` is true in a preview's frame (whose own scripts do not run, so
    Playwright's wait_for_function cannot watch it)."""
    for _ in range(100):
        if frame.evaluate(expression):
            return
        page.wait_for_timeout(100)
    raise AssertionError(f"waited in vain for {what}")


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
        assert iframe.get_attribute("sandbox") == FRAME_SANDBOX, case.name
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
    assert iframe.get_attribute("sandbox") == FRAME_SANDBOX
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


# What a page out of the gallery sees when a preview's link opens it: the browser test
# answers corpus.OUTSIDE itself. Its script (which runs: the new tab has left the sandbox)
# puts into the title whether it has an opener and what it knows of where it came from.
OUTSIDE_PAGE = ("<!DOCTYPE html><title>outside</title><script>document.title = JSON.stringify("
                "{opener: window.opener !== null, referrer: document.referrer, "
                "origin: self.origin})</script>")


def answer_outside(context: Any) -> list[tuple[str, dict[str, str]]]:
    """Answer every request to corpus.OUTSIDE with OUTSIDE_PAGE; returns the (url, headers)
    of each. Register after `watch`: the route registered last is asked first."""
    asked: list[tuple[str, dict[str, str]]] = []

    def fulfil(route: Any) -> None:
        asked.append((route.request.url, route.request.all_headers()))
        route.fulfill(status=200, content_type="text/html", body=OUTSIDE_PAGE)

    context.route(f"{corpus.OUTSIDE}/**", fulfil)
    return asked


def opened(popup: Any) -> dict[str, Any]:
    """What the page a link opened knows of its opener and where it came from."""
    popup.wait_for_function("() => document.title.startsWith('{')")
    return json.loads(popup.title())


def test_it_opens_every_link_out_of_a_hostile_preview_only_in_a_new_tab(
        live_server, settings, client, django_user_model, request, frame_host):
    port = live_server.url.rsplit(":", 1)[1]
    previews = f"http://127.0.0.1:{port}"
    host = f"http://localhost:{frame_host}"
    settings.GALLERY_PREVIEW_BASE_URL = f"{previews}/previews"
    settings.GALLERY_PREVIEW_FRAME_ANCESTORS = host
    client.force_login(django_user_model.objects.create_user("connor", password="pw-" + "x" * 9))
    case = next(c for c in corpus.cases() if c.name == "links-targets-and-escapes")
    r = client.post("/api/v1/submissions", {
        "notebook": SimpleUploadedFile("links.ipynb", case.data), "title": case.name})
    assert r.status_code == 201, r.content[:300]
    submission = Submission.objects.select_related("revision__example").get(pk=r.json()["id"])
    preview_url = f"{previews}/previews/{revision_preview_key(submission.revision)}.html"

    context = request.getfixturevalue("browser").new_context()
    page = context.new_page()
    seen = watch(page, previews + "/", host + "/")
    asked = answer_outside(context)
    page.goto(f"{host}/?src={preview_url}", wait_until="load")
    frame = wait_for_frame(page, preview_url)
    check_inert(frame.evaluate(INSPECT), case, host)
    outward = frame.locator(f'a[target=_blank][href^="{corpus.OUTSIDE}/"]')
    others = frame.locator(f'a:not([target=_blank][href^="{corpus.OUTSIDE}/"]), button, '
                           'img, area')
    assert outward.count() == 8 and others.count() >= 8
    for i in range(others.count()):  # the links that go nowhere, first
        others.nth(i).click(force=True)
    for i in range(outward.count()):
        link = outward.nth(i)
        href = link.get_attribute("href")
        with page.expect_popup() as popup_info:
            link.click()
        popup = popup_info.value
        assert opened(popup) == {"opener": False, "referrer": "", "origin": corpus.OUTSIDE}
        assert popup.url == href
        popup.close()
    # Each outward link was asked for once, when clicked, without a Referer; nothing else
    # was asked for (no ping, no form, no refresh, no relative link against <base>).
    assert [url for url, _ in asked] == [outward.nth(i).get_attribute("href")
                                          for i in range(outward.count())]
    assert [h.get("referer") for _, h in asked] == [None] * len(asked)
    assert frame.url == preview_url and page.url == f"{host}/?src={preview_url}"
    assert len(page.frames) == 2
    assert seen.dialogs == [] and seen.blocked == []
    assert seen.popups == [outward.nth(i).get_attribute("href") for i in range(outward.count())]
    assert frame.evaluate("() => [self.origin, document.title]") == ["null", "Notebook preview"]
    context.close()


def test_it_opens_links_out_in_a_new_tab_and_the_example_s_own_in_place(live_server,
                                                                         request):
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    from tests.base import make_user, stage

    filler = "\n\n".join(f"Paragraph {i} of the introduction." for i in range(60))
    main = json.dumps(new_notebook(cells=[
        new_markdown_cell(f"# Fitting\n\n[external]({corpus.OUTSIDE}/landing?x=1) · "
                          "[to the method](#The-method) · [part two](part2.ipynb) · "
                          "[the points](points.csv)\n\n" + filler),
        new_code_cell("show()", execution_count=1, outputs=[{
            "output_type": "display_data", "metadata": {}, "data": {
                "text/html": f'<a href="{corpus.OUTSIDE}/html" target="_top">html out</a>',
                "text/plain": "<HTML>"}}]),
        new_markdown_cell("## The method\n\nLeast squares.\n\n" + filler),
    ])).encode()
    part2 = json.dumps(new_notebook(cells=[new_markdown_cell("# Part two")])).encode()
    submission = stage(make_user("connor"), title="Links", notebook=main,
                       files={"part2.ipynb": part2, "points.csv": b"x,y\n1,2\n"})
    revision = submission.revision
    preview = f"{live_server.url}/previews/{revision_preview_key(revision)}.html"
    part2_key = revision_preview_key(revision, notebook="part2.ipynb",
                                     notebook_sha256=notebooks.sha256(part2))
    example_page = f"{live_server.url}/examples/{submission.example.slug}/"

    context = request.getfixturevalue("browser").new_context()
    page = context.new_page()
    seen = watch(page, live_server.url + "/")
    asked = answer_outside(context)
    log_in(page, live_server, make_user("ursula"))
    page.goto(example_page, wait_until="load")
    iframe = page.locator("iframe.preview")
    assert iframe.get_attribute("sandbox") == FRAME_SANDBOX
    iframe.scroll_into_view_if_needed()
    frame = wait_for_frame(page, preview)

    for text, url in (("external", f"{corpus.OUTSIDE}/landing?x=1"),
                      ("html out", f"{corpus.OUTSIDE}/html")):
        with page.expect_popup() as popup_info:
            frame.get_by_text(text, exact=True).click()
        popup = popup_info.value
        assert opened(popup) == {"opener": False, "referrer": "", "origin": corpus.OUTSIDE}
        assert popup.url == url
        popup.close()
    assert [url for url, _ in asked] == [f"{corpus.OUTSIDE}/landing?x=1",
                                         f"{corpus.OUTSIDE}/html"]
    assert [h.get("referer") for _, h in asked] == [None, None]
    assert frame.url == preview and page.url == example_page

    # A file of the example: its row on the example's page, in a new tab.
    with page.expect_popup() as popup_info:
        frame.get_by_text("the points", exact=True).click()
    popup = popup_info.value
    popup.wait_for_load_state("load")
    assert popup.url == f"{example_page}#file-points.csv"
    assert popup.evaluate("() => window.opener") is None
    assert popup.locator('[id="file-points.csv"]').count() == 1
    popup.close()

    # A heading of the notebook: the frame scrolls to it, nothing else moves.
    frame.get_by_text("to the method", exact=True).click()
    until(page, frame, "() => location.hash === '#nb-The-method' && Math.abs(document"
          ".getElementById('nb-The-method').getBoundingClientRect().top) < 5", "the scroll")
    assert page.url == example_page

    # Another notebook of the example: its preview, in the same frame.
    part2_url = f"{live_server.url}/previews/{part2_key}.html"
    with page.expect_event("framenavigated", lambda f: f.url == part2_url):
        frame.get_by_text("part two", exact=True).click()
    frame.wait_for_load_state("load")
    assert frame.evaluate("() => [self.origin, document.querySelector('h1').textContent]") == [
        "null", "Part two"]
    assert page.url == example_page
    assert seen.popups == [f"{corpus.OUTSIDE}/landing?x=1", f"{corpus.OUTSIDE}/html",
                           f"{example_page}#file-points.csv"]
    assert seen.dialogs == [] and seen.blocked == []
    context.close()


# Written straight into the preview folder, past the sanitiser: what the frame and the
# preview's headers alone do with scripts and the ways out the sanitiser removes.
RAW_PAGE = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>raw</title>
<base target="_top"><meta http-equiv="refresh" content="0;url={corpus.OUTSIDE}/refresh">
</head><body><script>document.title = 'PWNED'</script>
<img src="x" onerror="document.title = 'PWNED'">
<a id="js" target="_blank" href="javascript:document.title='PWNED';alert(1)">js blank</a>
<a id="js-top" target="_top" href="javascript:alert(1)">js top</a>
<a id="data" target="_blank" href="data:text/html,&lt;script&gt;alert(1)&lt;/script&gt;">data</a>
<a id="vb" target="_blank" href="vbscript:msgbox(1)">vb</a>
<a id="top" target="_top" href="{corpus.OUTSIDE}/top">top</a>
<a id="parent" target="_parent" href="{corpus.OUTSIDE}/parent">parent</a>
<a id="based" href="{corpus.OUTSIDE}/based">based</a>
<form action="{corpus.OUTSIDE}/form" target="_blank"><button id="form">form</button></form>
<a id="ping" target="_blank" ping="{corpus.OUTSIDE}/ping" href="{corpus.OUTSIDE}/pinged">ping</a>
</body></html>"""


def test_it_keeps_unsanitised_ways_out_inert_under_the_preview_sandbox(
        live_server, settings, request, frame_host):
    port = live_server.url.rsplit(":", 1)[1]
    previews = f"http://127.0.0.1:{port}"
    host = f"http://localhost:{frame_host}"
    settings.GALLERY_PREVIEW_BASE_URL = f"{previews}/previews"
    settings.GALLERY_PREVIEW_FRAME_ANCESTORS = host
    key = "f" * 64
    services.preview_path(key).parent.mkdir(parents=True, exist_ok=True)
    services.preview_path(key).write_text(RAW_PAGE)
    preview_url = f"{previews}/previews/{key}.html"

    context = request.getfixturevalue("browser").new_context()
    page = context.new_page()
    seen = watch(page, previews + "/", host + "/")
    asked = answer_outside(context)
    page.goto(f"{host}/?src={preview_url}", wait_until="load")
    frame = wait_for_frame(page, preview_url)
    for name in ("js", "js-top", "data", "vb", "top", "parent", "based", "form"):
        frame.locator(f"#{name}").click()
    with page.expect_popup() as popup_info:  # the one way out: a link's new tab
        frame.locator("#ping").click()
    popup = popup_info.value
    assert opened(popup) == {"opener": False, "referrer": "", "origin": corpus.OUTSIDE}
    # Nothing ran, nothing navigated, no ping or form left: only the link's own page loaded.
    assert frame.evaluate("() => [self.origin, document.title]") == ["null", "raw"]
    assert seen.dialogs == []
    assert [url for url, _ in asked] == [f"{corpus.OUTSIDE}/pinged"]
    assert seen.popups == [f"{corpus.OUTSIDE}/pinged"]
    assert frame.url == preview_url and page.url == f"{host}/?src={preview_url}"
    assert len(page.frames) == 2 and len(context.pages) == 2
    context.close()

"""The hostile corpus in a real Chromium: staged through the API, rendered by the worker code,
then shown on the example page (gallery origin) in its sandboxed frame from a separate preview
origin, and opened directly. Nothing may run, load from elsewhere, open or navigate."""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from gallery import services
from gallery.models import Submission

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
             + 'svg, math, video, audio, meta[http-equiv=refresh], link:not([rel=stylesheet])';
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
        r = client.post("/api/v1/submissions", {
            "notebook": SimpleUploadedFile(f"{case.name}.ipynb", case.data), "title": case.name})
        if case.expect != "render":
            assert r.status_code == case.expect, (case.name, r.content[:300])
            continue
        assert r.status_code == 201, (case.name, r.content[:300])
        preview = client.get(f"/api/v1/submissions/{r.json()['id']}").json()["preview"]
        assert preview["state"] == "ready", (case.name, preview)
        submission = Submission.objects.select_related("example", "revision").get(
            pk=r.json()["id"])
        page = services.preview_path(submission.revision.notebook_sha256).read_text()
        assert latent(page)[0] == [], case.name
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
        preview_url = f"{previews}/previews/{submission.revision.notebook_sha256}.html"
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
        preview_url = f"{previews}/previews/{submission.revision.notebook_sha256}.html"
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

"""Previews: rendered once per notebook, inert, served with a sandbox, and bounded in time,
memory and size. The hostile corpus (tests/corpus) goes through the real API here; the
browser half of that test is tests/e2e/test_preview_browser.py."""

from __future__ import annotations

import faulthandler
import gzip
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from gallery import notebooks, previews, services
from gallery.models import Job, Preview, Submission
from gallery.previews import revision_preview_key

from . import corpus
from .base import GalleryTestCase, notebook_bytes, stage
from .corpus import latent

LIMITS = previews.PreviewLimits()
ROOT = Path(__file__).resolve().parent.parent


def case(name: str) -> corpus.Case:
    return next(c for c in corpus.cases() if c.name == name)


def too_slow_to_render() -> bytes:
    """A notebook far slower to render than the time limits these tests set (0.5 s and 1 s),
    however fast the machine: four cells of 1.7 MB of code each (a preview cuts a cell's text
    at 2 MB), which take the highlighter some ten seconds on a fast machine. (The corpus's
    10,000 cells render within a second there.)"""
    source = "\n".join(f"value_{i} = compute({i}, 'label {i}', [{i}, {i + 1}])"
                       for i in range(30_000))
    return nb(*(new_code_cell(source, execution_count=n) for n in range(1, 5)))


def nb(*cells: dict, metadata: dict | None = None) -> bytes:
    return json.dumps(new_notebook(cells=list(cells), metadata=metadata or {})).encode()


def outputs(*items: dict) -> bytes:
    return nb(new_code_cell("x", execution_count=1, outputs=list(items)))


def display(data: dict, metadata: dict | None = None) -> dict:
    return new_output("display_data", data=data, metadata=metadata or {})


@pytest.fixture(autouse=True)
def _fresh_render_child() -> Iterator[None]:
    """Each test forks its own render child, so that the child sees the test's monkeypatches."""
    previews.stop_render_child()
    yield
    previews.stop_render_child()


# --- the renderer, without a database --------------------------------------------------------


def test_it_renders_a_whole_page_that_loads_only_its_stylesheet():
    page = previews.render_preview(notebook_bytes(2))
    found, text = latent(page)
    assert found == []
    assert "print('hello')" in text
    assert f'<link rel="stylesheet" href="{previews.preview_css_name()}">' in page
    assert "<style" not in page and "<script" not in page
    assert 'alt="' not in page or "Output image" in page
    assert text.count("hello") >= 2


def test_it_turns_scripts_and_widgets_into_a_plain_notice():
    clean = previews.strict_outputs(json.loads(outputs(
        display({"application/javascript": "alert(1)"}),
        display({"application/vnd.jupyter.widget-view+json": {"model_id": "m"},
                 "text/plain": "IntSlider()"}),
        display({"text/html": "<b>t</b>", "application/javascript": "alert(1)"}),
        display({"text/vnd.mermaid": "graph TD; A-->B"}),
        display({"application/pdf": "JVBERi0="}),
    )))
    shown = [o["data"] for o in clean.cells[0].outputs]
    assert shown[0] == {"text/plain": "[JavaScript output is not run in the preview.]"}
    assert shown[1] == {"text/plain": "[An interactive widget is not shown in the preview.]"}
    assert shown[2] == {"text/html": "<b>t</b>"}
    assert shown[3] == {"text/plain": "graph TD; A-->B"}
    assert "application/pdf output is not shown" in shown[4]["text/plain"]


def test_it_forces_image_sizes_to_integers_and_drops_file_names():
    png = corpus.png()
    clean = previews.strict_outputs(json.loads(outputs(
        display({"image/png": png}, {"image/png": {"width": "12.7", "height": "1 onload=x"},
                                     "filenames": {"image/png": "../../etc/passwd"}}),
        display({"image/png": png}, {"image/png": {"width": 10**9}}),
    )))
    first, second = clean.cells[0].outputs
    assert first["metadata"] == {"image/png": {"width": 12}}
    assert second["metadata"] == {"image/png": {}}
    page = previews.render_preview(outputs(
        display({"image/png": png}, {"image/png": {"width": "1 onload=alert(1)"}})))
    assert "onload" not in page
    assert latent(page)[0] == []


def test_it_refuses_images_that_are_bombs_broken_or_not_what_they_claim():
    image_problem = previews.sanitise._image_problem
    assert "decompression bomb" in image_problem("image/png", corpus.png_bomb(), LIMITS)
    assert "not base64" in image_problem("image/png", '"><img src=x>', LIMITS)
    assert "not a valid JPEG" in image_problem("image/jpeg", corpus.png(), LIMITS)
    small = previews.PreviewLimits(max_image_pixels=10)
    assert "4x3 pixels" in image_problem("image/png", corpus.png(), small)
    assert image_problem("image/png", corpus.png(), LIMITS) is None


@given(st.text(alphabet="AB+/9=\n \t-_", max_size=24))
@hsettings(max_examples=500, deadline=None)
def test_it_takes_base64_exactly_when_it_is_base64(text):
    # What is base64: its characters, whitespace anywhere, at most two `=` at the end, no
    # length that leaves a lone character, and what binascii decodes.
    import binascii

    from gallery.previews.images import clean_base64_image

    data = "".join(text.split())
    stripped = data.rstrip("=")
    base64 = (bool(stripped) and re.fullmatch(r"[A-Za-z0-9+/]*", stripped) is not None
              and len(data) - len(stripped) <= 2 and len(stripped) % 4 != 1)
    try:
        binascii.a2b_base64(data)
    except binascii.Error:
        base64 = False
    clean, problem = clean_base64_image("image/png", text, 2**20, 10**6)
    assert (problem != "image data that is not base64") == base64, problem
    assert clean == ""  # none of these is a PNG


def test_it_keeps_the_base64_of_a_valid_image_without_its_whitespace():
    from gallery.previews.images import clean_base64_image

    png = corpus.png()
    wrapped = "\n".join(png[i:i + 76] for i in range(0, len(png), 76))
    assert clean_base64_image("image/png", wrapped, 2**20, 10**6) == (png, None)
    assert clean_base64_image("image/png", png, 2**20, 10**6) == (png, None)


def test_it_truncates_huge_outputs_with_a_visible_note():
    limits = previews.PreviewLimits(max_output_bytes=1000)
    page = previews.render_preview(outputs(
        new_output("stream", name="stdout", text="a" * 5000),
        display({"text/html": "<p>" + "b" * 5000 + "</p>", "text/plain": "short"}),
    ), limits=limits)
    assert "a" * 1000 in page and "a" * 1001 not in page
    assert "output truncated: 4,000 more characters" in page
    assert "short" in page and "b" * 1000 not in page
    assert "Not shown in the preview: text/html output of 5,007 characters" in page


def test_it_merges_consecutive_prints_like_jupyter_does():
    clean = previews.strict_outputs(json.loads(outputs(
        *[new_output("stream", name="stdout", text=f"{i}\n") for i in range(5)],
        new_output("stream", name="stderr", text="warn\n"),
    )))
    assert [(o["name"], o["text"]) for o in clean.cells[0].outputs] == [
        ("stdout", "0\n1\n2\n3\n4\n"), ("stderr", "warn\n")]


def test_it_shows_cells_that_the_author_marked_hidden():
    page = previews.render_preview(nb(
        new_code_cell("hidden_code()", metadata={"jupyter": {"source_hidden": True},
                                                 "tags": ["remove_input"],
                                                 "transient": {"remove_source": True}}),
        new_markdown_cell("hidden words", metadata={"transient": {"remove_source": True}})))
    assert "hidden_code" in page and "hidden words" in page


def test_it_makes_math_mathml_and_loads_no_mathjax():
    page = previews.render_preview(nb(new_markdown_cell(
        "$a<b$ and $$\\frac{1}{2}</p><script>x</script>$$")))
    assert "<math" in page and "<mo>&lt;</mo>" in page
    assert "<script" not in page and "mathjax" not in page.lower()
    assert latent(page)[0] == []


def test_it_limits_how_deep_html_may_nest():
    assert previews.sanitise._nesting_depth("<div>" * 10 + "<br><p><p>" + "</div>" * 10) == 10
    deep = "<div>" * (previews.MAX_HTML_DEPTH + 1) + "x"
    assert "nested more than" in previews.sanitize_html(deep)
    assert previews.sanitize_html("<table>" + "<tr><td>1</td></tr>" * 5000 + "</table>") \
        .count("<td>") == 5000


def test_it_stops_a_render_that_takes_too_long_and_carries_on():
    slow = too_slow_to_render()
    with pytest.raises(previews.PreviewError, match="took longer than 0.5 s"):
        previews.render_isolated(slow, limits=previews.PreviewLimits(time_limit=0.5))
    assert "hello" in previews.render_isolated(notebook_bytes(1))


def test_it_stops_a_render_that_needs_too_much_memory_and_carries_on(tmp_path):
    # In a fresh process, as in a worker: the limit is on address space a render adds, and
    # this test process has a large, reusable heap from the tests before it.
    (tmp_path / "big.ipynb").write_bytes(case("dos-10k-cells").data)
    script = """
import sys, django
django.setup()
from gallery import previews
from tests.base import notebook_bytes
data = open(sys.argv[1], "rb").read()
try:
    previews.render_isolated(data, limits=previews.PreviewLimits(memory_limit=4 * 2**20))
    print("RENDERED")
except previews.PreviewError as exc:
    print("REFUSED", exc)
print("NEXT", "hello" in previews.render_isolated(notebook_bytes(1)))
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "big.ipynb")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "REFUSED" in done.stdout and "memory" in done.stdout, done.stdout + done.stderr
    assert "NEXT True" in done.stdout, done.stdout + done.stderr


def test_it_reports_a_renderer_that_crashes(monkeypatch):
    # A real crash of the child (as a stack overflow in native code would be).
    def crash(*args: object, **kwargs: object) -> None:
        faulthandler.disable()  # pytest's handler would print the child's stack
        os.kill(os.getpid(), signal.SIGSEGV)

    monkeypatch.setattr(previews.child, "render_preview", crash)
    with pytest.raises(previews.PreviewError, match="SIGSEGV"):
        previews.render_isolated(notebook_bytes(1))


@pytest.mark.parametrize(("exc", "words"), [
    (RecursionError(), "nested too deeply"),
    (MemoryError(), "more than 1,024 MB"),
    (UnicodeDecodeError("utf-8", b"", 0, 1, "x"), "not valid Unicode"),
    (KeyError("cells"), "could not be made (KeyError"),
    (previews.PreviewError("Own words."), "Own words."),
])
def test_it_turns_every_exception_into_a_plain_reason(exc, words):
    assert words in previews.failure_reason(exc, LIMITS)


# --- the render child: forked once, serves render after render --------------------------------


def child_pid() -> int:
    assert previews.child._child is not None, "no render child"
    return previews.child._child.pid


def reaped(pid: int) -> bool:
    """Neither running nor a zombie."""
    return not Path(f"/proc/{pid}").exists()


def running(pid: int) -> bool:
    """Neither gone nor a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in {"Z", "X"}


def test_one_render_child_serves_render_after_render():
    first = previews.render_isolated(nb(new_markdown_cell("first page")))
    pid = child_pid()
    second = previews.render_isolated(nb(new_markdown_cell("second page")))
    assert "first page" in first and "second page" in second and "first page" not in second
    assert child_pid() == pid
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # our child, and still running


def test_the_render_child_keeps_none_of_its_parents_files_or_sockets(tmp_path):
    """A worker's broker and database sockets, and the pipes of whatever started it, stay
    with the worker: a child holding a pipe open would keep the other end waiting for EOF."""
    previews.stop_render_child()
    read_end, write_end = os.pipe()
    with open(tmp_path / "open.txt", "w"), socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        previews.render_isolated(notebook_bytes(1))
        held = {int(fd): os.readlink(f"/proc/{child_pid()}/fd/{fd}")
                for fd in os.listdir(f"/proc/{child_pid()}/fd")}
    os.close(read_end)
    os.close(write_end)
    assert set(held) - {0, 1, 2} and all(
        held[fd].startswith("socket:") for fd in set(held) - {0, 1, 2}), held
    assert len(set(held) - {0, 1, 2}) == 1, held  # the one to this process


def test_a_render_that_takes_too_long_costs_its_child_and_the_next_gets_a_new_one():
    previews.render_isolated(notebook_bytes(1))
    pid = child_pid()
    with pytest.raises(previews.PreviewError, match="took longer than 0.5 s"):
        previews.render_isolated(too_slow_to_render(),
                                  limits=previews.PreviewLimits(time_limit=0.5))
    assert previews.child._child is None and reaped(pid)
    assert "hello" in previews.render_isolated(notebook_bytes(1))
    assert child_pid() != pid


def test_a_render_that_needs_too_much_memory_costs_its_child_and_the_next_gets_a_new_one(
        monkeypatch):
    real = previews.render_preview

    def balloon(data: bytes, **kwargs: Any) -> str:
        if b"balloon" in data:
            bytearray(256 * 2**20)  # far more than the limit, and than any free heap
        return real(data, **kwargs)

    monkeypatch.setattr(previews.child, "render_preview", balloon)
    limits = previews.PreviewLimits(memory_limit=64 * 2**20)
    previews.render_isolated(notebook_bytes(1), limits=limits)
    pid = child_pid()
    with pytest.raises(previews.PreviewError, match="more than 64 MB of memory"):
        previews.render_isolated(nb(new_markdown_cell("balloon")), limits=limits)
    assert previews.child._child is None and reaped(pid)
    assert "hello" in previews.render_isolated(notebook_bytes(1), limits=limits)
    assert child_pid() != pid


def test_a_render_child_is_replaced_after_many_renders_or_for_another_memory_limit(
        monkeypatch):
    monkeypatch.setattr(previews.child, "MAX_CHILD_RENDERS", 2)
    previews.render_isolated(notebook_bytes(1))
    pid = child_pid()
    previews.render_isolated(notebook_bytes(1))
    assert previews.child._child is None and reaped(pid)
    previews.render_isolated(notebook_bytes(1))
    pid = child_pid()
    previews.render_isolated(notebook_bytes(1), limits=previews.PreviewLimits(
        memory_limit=512 * 2**20))
    assert reaped(pid) and child_pid() != pid


def test_a_render_child_that_has_grown_is_replaced(monkeypatch):
    real = previews.render_preview
    kept = []

    def hoard(data: bytes, **kwargs: Any) -> str:
        if b"hoard" in data:
            kept.append(bytearray(48 * 2**20))  # held by the child after the render
        return real(data, **kwargs)

    monkeypatch.setattr(previews.child, "render_preview", hoard)
    monkeypatch.setattr(previews.child, "MAX_CHILD_GROWTH", 16 * 2**20)
    previews.render_isolated(notebook_bytes(1))
    pid = child_pid()
    assert "hoard" in previews.render_isolated(nb(new_markdown_cell("hoard")))
    assert previews.child._child is None and reaped(pid)


def test_a_forked_process_renders_with_a_render_child_of_its_own():
    # A Celery pool process inherits the render child of the process it was forked from;
    # using it would mix the requests of two processes on one socket.
    previews.render_isolated(notebook_bytes(1))
    pid = child_pid()
    read_fd, write_fd = os.pipe()
    forked = os.fork()
    if forked == 0:
        code = 1
        try:
            os.close(read_fd)
            page = previews.render_isolated(nb(new_markdown_cell("in the fork")))
            own = os.waitpid(child_pid(), os.WNOHANG) == (0, 0)  # only a child of ours
            os.write(write_fd, f"{child_pid()} {own} {'in the fork' in page}".encode())
            previews.stop_render_child()
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        report = fh.read()
    assert os.waitstatus_to_exitcode(os.waitpid(forked, 0)[1]) == 0, report
    theirs, own, shown = report.split()
    assert int(theirs) != pid and own == "True" and shown == "True"
    # Ours is untouched: no reply of theirs waits on its socket, and it was not stopped.
    assert "after the fork" in previews.render_isolated(nb(new_markdown_cell("after the fork")))
    assert child_pid() == pid


def test_a_render_child_whose_parent_dies_mid_render_stops_on_its_own():
    # A worker killed mid-render (a hard task time limit, the OOM killer) cannot stop its
    # child, and a child that is rendering does not notice that its socket closed.
    script = """
import os, django
django.setup()
from gallery import previews
from tests.base import notebook_bytes

def forever(data, **kwargs):
    print(os.getpid(), flush=True)
    while True:
        pass

previews.child.render_preview = forever
previews.render_isolated(notebook_bytes(1), limits=previews.PreviewLimits(time_limit=2))
"""
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}) as parent:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        parent.kill()
    try:
        deadline = time.monotonic() + 30
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running(pid)
    finally:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_render_child_announcing_more_than_its_memory_is_not_believed(monkeypatch):
    parent, real = os.getpid(), previews.child._send

    def lying(sock: Any, head: Any, body: bytes) -> None:
        if os.getpid() == parent:
            return real(sock, head, body)
        sock.sendall((2).to_bytes(4, "big") + (2**40).to_bytes(8, "big") + b"[]")

    monkeypatch.setattr(previews.child, "_send", lying)  # the child is forked with it
    with pytest.raises(previews.PreviewError, match="The preview renderer stopped"):
        previews.render_isolated(notebook_bytes(1))
    monkeypatch.setattr(previews.child, "_send", real)
    assert "hello" in previews.render_isolated(notebook_bytes(1))


def test_warming_up_starts_the_render_child_the_first_render_uses():
    limits = previews.PreviewLimits(time_limit=30)
    previews.warm_exporter(limits)
    warm = previews.child._child
    assert warm is not None and os.waitpid(warm.pid, os.WNOHANG) == (0, 0)  # alive
    previews.render_isolated(notebook_bytes(1), limits=limits)
    assert previews.child._child is warm


def test_stopping_the_render_child_leaves_no_zombie():
    previews.render_isolated(notebook_bytes(1))
    pid = child_pid()
    previews.stop_render_child()
    assert previews.child._child is None and reaped(pid)
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# --- staging, rendering once, serving -----------------------------------------------------------


class PreviewServiceTests(GalleryTestCase):
    def staged(self, data: bytes | None = None) -> Submission:
        with self.captureOnCommitCallbacks(execute=True):
            return stage(self.contributor, notebook=data or notebook_bytes(2))

    def test_it_renders_once_per_notebook_content_at_staging(self):
        data = notebook_bytes(2)
        first = self.staged(data)
        with self.captureOnCommitCallbacks(execute=True):  # again, as the example's revision 2
            again = stage(self.contributor, notebook=data, title="Hello again",
                          example_slug=first.example.slug)
        assert again.revision.number == 2
        sha = revision_preview_key(first.revision)
        assert revision_preview_key(again.revision) == sha
        self.assertEqual(Job.objects.filter(kind=Job.Kind.PREVIEW).count(), 1)
        # Another example's preview is its own: its links to files lead to its own page.
        other = self.staged(data)
        assert revision_preview_key(other.revision) != sha
        self.assertEqual(Job.objects.filter(kind=Job.Kind.PREVIEW).count(), 2)
        preview = Preview.objects.get(sha256=sha)
        self.assertEqual(preview.state, Preview.State.READY)
        self.assertEqual(preview.size, services.preview_path(sha).stat().st_size)
        css = Path(services.preview_path(sha).parent) / previews.preview_css_name()
        self.assertTrue(css.is_file())

    def test_it_renders_again_at_approval_when_the_file_is_gone(self):
        submission = self.staged()
        path = services.preview_path(revision_preview_key(submission.revision))
        path.unlink()
        with self.captureOnCommitCallbacks(execute=True):
            services.approve_submission(submission=submission, reviewer=self.reviewer)
        self.assertTrue(path.is_file())
        self.assertEqual(Job.objects.filter(kind=Job.Kind.PREVIEW).count(), 2)

    def test_it_serves_a_preview_immutable_and_sandboxed(self):
        sha = revision_preview_key(self.staged().revision)
        r = self.client.get(f"/previews/{sha}.html")
        self.assertEqual(r.status_code, 200)
        csp = r["Content-Security-Policy"]
        for directive in ("default-src 'none'", "img-src data:", "style-src 'self'",
                          "form-action 'none'", "base-uri 'none'", "frame-ancestors 'self'"):
            self.assertIn(directive, csp)
        self.assertTrue(csp.endswith("; sandbox allow-popups allow-popups-to-escape-sandbox"),
                        csp)
        for loosening in ("script-src", "allow-scripts", "allow-same-origin", "allow-top",
                          "allow-forms", "allow-modals"):
            self.assertNotIn(loosening, csp)
        self.assertEqual(r["Cache-Control"], "public, max-age=31536000, immutable")
        self.assertEqual(r["X-Frame-Options"], "SAMEORIGIN")
        self.assertEqual(r["X-Content-Type-Options"], "nosniff")
        self.assertEqual(r["Referrer-Policy"], "no-referrer")
        page = b"".join(r.streaming_content).decode()
        self.assertEqual(latent(page)[0], [])

    def test_it_serves_the_shared_stylesheet_as_one_cached_file(self):
        self.staged()
        name = previews.preview_css_name()
        r = self.client.get(f"/previews/{name}")
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r["Content-Type"], "text/css; charset=utf-8")
        self.assertEqual(r["Cache-Control"], "public, max-age=31536000, immutable")
        self.assertIn(b".jp-Cell", b"".join(r.streaming_content))
        self.assertEqual(self.client.get("/previews/preview-000000000000.css").status_code, 404)

    def wsgi_get(self, path: str, method: str = "GET", **extra: str
                 ) -> tuple[str, dict[str, str], bytes]:
        """A request to the gallery's WSGI application as gunicorn serves it: the preview
        files layer in front of Django's handler (the one the test client runs)."""
        from django.http.response import HttpResponseBase
        from django.test.client import ClientHandler

        from gallery.views import PreviewFiles

        django_handler = ClientHandler()

        def gallery(environ: dict, start_response: Any) -> Any:
            response = django_handler(environ)
            start_response(f"{response.status_code} {response.reason_phrase}",
                           list(response.items()))
            return response

        seen: dict[str, Any] = {}
        environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "testserver",
                   "SERVER_PORT": "80", "HTTP_HOST": "testserver", "QUERY_STRING": "",
                   "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
                   "wsgi.errors": io.StringIO(), **extra}
        body = PreviewFiles(gallery)(environ, lambda status, headers: seen.update(
            status=status, headers=dict(headers)))
        data = b"".join(body)
        if not isinstance(body, HttpResponseBase):  # closing one ends the test's database
            getattr(body, "close", lambda: None)()
        return seen["status"], seen["headers"], data

    def test_it_answers_preview_files_ahead_of_django_with_the_same_headers(self):
        sha = revision_preview_key(self.staged().revision)
        get = self.wsgi_get
        status, headers, body = get(f"/previews/{sha}.html")
        self.assertEqual(status, "200 OK")
        self.assertEqual(body, services.preview_path(sha).read_bytes())
        view = self.client.get(f"/previews/{sha}.html")
        for name in ("Content-Security-Policy", "Cache-Control", "X-Frame-Options",
                     "X-Content-Type-Options", "Referrer-Policy", "Content-Type",
                     "Cross-Origin-Resource-Policy", "Permissions-Policy"):
            self.assertEqual(headers[name], view[name], name)
        self.assertEqual(headers["Content-Length"], str(len(body)))
        status, headers, body = get(f"/previews/{sha}.html", "HEAD")
        self.assertEqual((status, body), ("200 OK", b""))
        status, headers, body = get(f"/previews/{previews.preview_css_name()}")
        self.assertEqual(headers["Content-Type"], "text/css; charset=utf-8")
        self.assertIn(b".jp-Cell", body)
        # Not there (yet): Django answers and says why.
        status, headers, body = get(f"/previews/{'0' * 64}.html")
        self.assertEqual(status, "404 Not Found")
        self.assertIn(b"no preview with this hash", body)
        self.assertNotEqual(get(f"/previews/{sha}.html", "POST")[0], "200 OK")

    def test_it_sends_previews_gzipped_to_clients_that_accept_it(self):
        sha = revision_preview_key(self.staged(notebook_bytes(40)).revision)
        plain = services.preview_path(sha).read_bytes()
        _, identity, _ = self.wsgi_get(f"/previews/{sha}.html")
        status, headers, body = self.wsgi_get(f"/previews/{sha}.html",
                                              HTTP_ACCEPT_ENCODING="gzip, deflate, br")
        self.assertEqual((status, headers["Content-Encoding"]), ("200 OK", "gzip"))
        self.assertEqual(gzip.decompress(body), plain)
        self.assertLess(len(body), len(plain) / 3)
        self.assertEqual(headers["Content-Length"], str(len(body)))
        for name in ("Content-Security-Policy", "Cache-Control", "Content-Type",
                     "X-Content-Type-Options", "Vary"):
            self.assertEqual(headers[name], identity[name], name)
        self.assertEqual(headers["Vary"], "Accept-Encoding")
        for header, gzipped in (("", False), ("identity", False), ("gzip;q=0", False),
                                ("br", False), ("*;q=0", False), ("*", True),
                                ("deflate, GZIP;q=0.5", True), ("gzip;q=x", False)):
            with self.subTest(header=header):
                _, headers, body = self.wsgi_get(f"/previews/{sha}.html",
                                                 HTTP_ACCEPT_ENCODING=header)
                self.assertEqual("Content-Encoding" in headers, gzipped)
                self.assertEqual(gzip.decompress(body) if gzipped else body, plain)
        _, headers, body = self.wsgi_get(f"/previews/{previews.preview_css_name()}",
                                         HTTP_ACCEPT_ENCODING="gzip")
        self.assertEqual(headers["Content-Encoding"], "gzip")
        self.assertIn(b".jp-Cell", gzip.decompress(body))

    def test_it_sends_large_files_from_disk_and_small_ones_from_memory_alike(self):
        folder = Path(settings.GALLERY_PREVIEW_DIR)
        for size in (100, 200_000):  # below and above SMALL_PREVIEW_FILE, incompressible
            data = os.urandom(size)
            name = notebooks.sha256(data) + ".html"
            previews.write_preview_file(folder / name, data)
            for method, expected in (("GET", data), ("HEAD", b"")):
                status, headers, body = self.wsgi_get(f"/previews/{name}", method,
                                                      HTTP_ACCEPT_ENCODING="gzip")
                self.assertEqual((status, body), ("200 OK", expected))
                self.assertEqual(headers["Content-Length"], str(size))
                self.assertNotIn("Content-Encoding", headers)

    def test_it_keeps_no_gzip_twin_that_would_save_little(self):
        folder = Path(settings.GALLERY_PREVIEW_DIR)
        previews.write_preview_file(folder / "noise.html", os.urandom(50_000))
        previews.write_preview_file(folder / "text.html", b"<p>hello</p>" * 5_000)
        self.assertEqual(sorted(p.name for p in folder.iterdir()),
                         ["noise.html", "text.html", "text.html.gz"])

    @override_settings(GALLERY_PREVIEW_FRAME_ANCESTORS="https://hub.example.org",
                       GALLERY_PREVIEW_BASE_URL="https://previews.example.net/previews")
    def test_it_lets_the_configured_gallery_origin_frame_previews_from_their_own_origin(self):
        submission = self.staged()
        sha = revision_preview_key(submission.revision)
        r = self.client.get(f"/previews/{sha}.html")
        self.assertIn("frame-ancestors https://hub.example.org; sandbox",
                      r["Content-Security-Policy"])
        self.assertNotIn("X-Frame-Options", r)
        self.client.force_login(self.contributor)
        body = self.client.get(f"/api/v1/submissions/{submission.pk}").json()
        self.assertEqual(body["preview_url"], f"https://previews.example.net/previews/{sha}.html")

    def test_it_never_renders_on_a_click_and_says_why_there_is_no_preview(self):
        with self.captureOnCommitCallbacks(execute=False):  # the worker has not run yet
            submission = stage(self.contributor)
        sha = revision_preview_key(submission.revision)
        r = self.client.get(f"/previews/{sha}.html")
        self.assertEqual(r.status_code, 404)
        self.assertIn(b"being prepared", r.content)
        self.assertEqual(r["Cache-Control"], "no-store")
        self.assertIn("sandbox", r["Content-Security-Policy"])
        self.assertFalse(services.preview_path(sha).exists())
        Preview.objects.filter(sha256=sha).update(state=Preview.State.FAILED,
                                                  error="The notebook <b>is</b> odd.")
        r = self.client.get(f"/previews/{sha}.html")
        self.assertIn(b"The notebook &lt;b&gt;is&lt;/b&gt; odd.", r.content)
        self.assertIn(b"no preview with this hash",
                      self.client.get(f"/previews/{'0' * 64}.html").content)

    @override_settings(GALLERY_RENDER_TIME_LIMIT=1)
    def test_it_records_why_a_preview_failed_on_the_submission(self):
        submission = self.staged(too_slow_to_render())
        job = Job.objects.get(kind=Job.Kind.PREVIEW)
        self.assertEqual(job.state, Job.State.FAILED)
        self.assertIn("took longer than 1 s", job.message)
        self.client.force_login(self.contributor)
        body = self.client.get(f"/api/v1/submissions/{submission.pk}").json()
        self.assertEqual(body["preview"]["state"], "failed")
        self.assertIn("took longer than 1 s", body["preview"]["error"])


def test_it_refuses_or_renders_every_notebook_of_the_hostile_corpus(tmp_path):
    """The corpus without the web layer (tests/e2e/test_preview_browser.py stages it through
    the API and opens every page in Chromium): what staging refuses, and inert pages. Each
    notebook renders in an example folder of its own, with the case's files and symlinks."""
    cases = corpus.cases()
    assert len(cases) >= 40
    for item in cases:
        if item.expect == 413:
            assert len(item.data) > corpus.OVERSIZED_LIMIT
            continue
        if item.expect != "render":
            with pytest.raises(notebooks.NotebookError):
                notebooks.read_notebook(item.data)
            continue
        notebooks.read_notebook(item.data)
        source = corpus.write_example(item, tmp_path / item.name)
        found, text = latent(previews.render_isolated(item.data, source=source))
        assert found == [], item.name
        for words in item.shows:
            assert words in text, (item.name, words)
        for words in item.hides:
            assert words not in text, (item.name, words)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_it_renders_in_a_worker_that_outlives_a_notebook_too_slow_to_render(settings, tmp_path):
    """A real worker on the previews queue: the slow render is stopped with its reason, and
    the same worker goes on rendering."""
    import redis

    from .base import make_user
    from .conftest import BROKER_URL, QUEUES, start_worker, wait_for, worker_env

    redis.Redis.from_url(BROKER_URL).delete(*QUEUES.values())
    worker = start_worker(worker_env(settings, GALLERY_RENDER_TIME_LIMIT="1"),
                          tmp_path / "worker.log")
    try:
        contributor = make_user("carla")
        slow = stage(contributor, notebook=too_slow_to_render(), title="Slow")
        fine = stage(contributor, notebook=notebook_bytes(2), title="Fine")

        def state(submission: Submission) -> str:
            return Preview.objects.get(sha256=revision_preview_key(submission.revision)).state

        wait_for(lambda: state(fine) == Preview.State.READY, 120, "the preview")
        wait_for(lambda: state(slow) == Preview.State.FAILED, 120, "the slow preview to fail")
        error = Preview.objects.get(sha256=revision_preview_key(slow.revision)).error
        assert "took longer than 1 s" in error
        job = Job.objects.get(kind=Job.Kind.PREVIEW, revision=slow.revision)
        assert job.state == Job.State.FAILED and job.message == error
        after = stage(contributor, notebook=notebook_bytes(1), title="After")
        wait_for(lambda: state(after) == Preview.State.READY, 120, "the next preview")
        assert worker.process.poll() is None
        page = services.preview_path(revision_preview_key(after.revision)).read_text()
        assert latent(page)[0] == []
    finally:
        worker.stop()


def test_it_upgrades_a_version_3_notebook_without_validating_it(monkeypatch):
    # nbformat validates around an upgrade only to log; that took longer than the upgrade.
    import nbformat
    from nbformat.v4 import convert

    def validate(*args, **kwargs):
        raise AssertionError("validated")

    monkeypatch.setattr(nbformat, "validate", validate)
    old = {"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": [{"cells": [
        {"cell_type": "code", "input": "x = 1", "language": "python", "prompt_number": 1,
         "outputs": [{"output_type": "pyout", "text": "upgraded 1", "prompt_number": 1,
                      "metadata": {}}]}]}]}
    saved = convert._warn_if_invalid
    page = previews.render_preview(json.dumps(old).encode())
    assert "upgraded 1" in page
    assert convert._warn_if_invalid is saved


def test_it_frames_previews_with_one_sandbox_everywhere():
    # The gallery's pages, the admin and the JupyterLab tab frame a preview alike: no script,
    # no same-origin, no top navigation; only a link's new tab, which leaves the sandbox.
    assert previews.FRAME_SANDBOX == "allow-popups allow-popups-to-escape-sandbox"
    root = Path(__file__).resolve().parent.parent
    frames = []
    for path in sorted((root / "templates").rglob("*.html")):
        frames += re.findall(r"<iframe[^>]*>", path.read_text())
    assert len(frames) == 4
    for frame in frames:
        assert f'sandbox="{previews.FRAME_SANDBOX}"' in frame, frame
        assert 'referrerpolicy="no-referrer"' in frame, frame
    lab = (root / "labextension" / "src" / "examples.ts").read_text()
    assert re.findall(r"sandbox: '([^']*)'", lab) == [previews.FRAME_SANDBOX]
    assert "referrerpolicy: 'no-referrer'" in lab

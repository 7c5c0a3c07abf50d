"""A forked render child with a time and a memory limit, one per preview worker process, so
a hostile notebook takes down only the child; replaced after a failure or many renders."""
from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import signal
import socket
import threading
from dataclasses import asdict
from typing import Any

import nbformat

from ..notebooks import NotebookError
from .files import ExampleSource
from .render import _get_exporter, render_preview
from .sanitise import PreviewError, PreviewLimits

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
                    css_href: str = "", source: ExampleSource | None = None) -> str:
    """`render_preview` in a forked child with a wall-time and an address-space limit.

    The child is forked from this warm process and then serves render after render (a fork
    per render cost more than most renders: copy-on-write faults, a cold heap), so a
    notebook that loops, recurses or balloons takes down only the child; this process
    reports why and forks a fresh child for the next render. Raises PreviewError with the
    reason. `source` is the example's folder, as for `render_preview`.
    """
    global _child
    limits = limits or PreviewLimits()
    if not hasattr(os, "fork"):
        try:
            return render_preview(data, css_href=css_href, limits=limits, source=source)
        except Exception as exc:
            raise PreviewError(failure_reason(exc, limits)) from exc
    with _child_lock:
        if _child is not None and not _child.serves(limits):
            _child.stop()
            _child = None
        child, _child = _child or _RenderChild(limits.memory_limit), None
        # A child that failed is stopped.
        page, grown = child.render(data, css_href, limits, source)
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

    def render(self, data: bytes, css_href: str, limits: PreviewLimits,
               source: ExampleSource | None) -> tuple[str, int]:
        """The page and how much the child has grown; when the render fails, runs out of time
        or the child dies, the child is stopped and PreviewError says why."""
        try:
            self.sock.settimeout(limits.time_limit)
            with contextlib.suppress(OSError):  # a child that is gone shows as EOF below
                _send(self.sock, [css_href, asdict(limits), source and asdict(source)], data)
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
                (css_href, fields, where), data = _receive(sock)
            except EOFError:
                return
            limits = PreviewLimits(**fields)
            source = ExampleSource(**where) if where else None
            signal.alarm(int(limits.time_limit) + 5)
            page = render_preview(data, css_href=css_href, limits=limits, source=source).encode()
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

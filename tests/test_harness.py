"""Every page, form and API endpoint of the gallery under generated requests.

A hypothesis state machine plays an anonymous visitor, a user, a contributor, another
contributor and a reviewer (logged in with a session, or sending a hub token that a small
fake hub on a loopback port answers) and sends generated requests to every route of
gallery/urls.py and of the API: JSON and multipart bodies of every shape (repeated fields,
wrong types, huge, deep, NaN, NUL, lone surrogates, colliding paths, broken boundaries and
charsets), odd headers and odd query strings. Accepted submissions, reviews and Uses change
the state that later requests meet; jobs run inline when each request commits.

After every request:
- never a 5xx (but a 503 that says the hub is not answering, when the fake hub says 503);
- an API error (>= 400 under /api/) is JSON with a non-empty "error" string;
- a refused request (4xx) stores nothing: no new row, no new staged folder that no revision
  holds;
- a job or a submission is shown only to its owner or a reviewer, and only reviewers add
  reviews, decide on submissions or retire examples;
- no temporary file or folder is left anywhere, every revision still has its staged folder
  with all its files, every finished Use has its whole copy, and no job crashed or was left
  running.

Each run starts from the same state (see `build_baseline`): database changes are rolled back
and the folders copied afresh, so a failing run replays exactly. `make test` runs this module
on SQLite and on PostgreSQL; tests/conftest.py prints how many requests each endpoint got.
"""

from __future__ import annotations

import base64
import gc
import json
import logging
import os
import shutil
import tempfile
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.http import HttpResponseBase
from django.test import Client, TestCase, override_settings
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)
from nbformat.v4 import (
    new_code_cell,
    new_markdown_cell,
    new_notebook,
    new_output,
    new_raw_cell,
)

from gallery import login, previews, services
from gallery.models import (
    DataLink,
    Example,
    Job,
    Notification,
    Preview,
    Review,
    Revision,
    StateChange,
    Submission,
    Tag,
)

from .base import make_user, notebook_bytes, stage
from .conftest import ENDPOINT_CASES, SHARED_CACHE_URL

pytestmark = pytest.mark.postgres  # run again on PostgreSQL by `make test`

# Runs of the state machine and requests per run: bounded, and the same on every machine.
# No shrinking: it can take minutes over a state machine, and a failure already shows the
# request that failed, byte for byte, with the server's traceback.
RUNS = 24
STEPS = 48  # a little more than the endpoints: each run visits every one
HARNESS = hsettings(
    max_examples=RUNS, stateful_step_count=STEPS, deadline=None, derandomize=True,
    database=None, print_blob=False, phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)

CAST = {"user": "ursula", "contributor": "connor", "other": "otto", "reviewer": "rita"}
# Behind a hub a session holds the hub token it logged in with, and the gallery asks the hub
# again whether it still works; "session:<token>" is ursula's session with an odd one.
PAGE_CALLERS = ["anonymous", *CAST, "session:refused", "session:hub-down"]
# The API also takes a hub token (several schemes and answers of the hub), and checks the
# CSRF token of browser sessions.
API_CALLERS = [*PAGE_CALLERS, "token:user", "token:reviewer", "token:newcomer",
               "token:long-name", "token:no-access", "token:service", "token:refused",
               "token:hub-down", "token:hub-html", "token:hub-list", "token:unknown",
               "csrf:contributor", "csrf:user"]

# --- values -----------------------------------------------------------------------------------

NUL = "\x00"
SURROGATE = "\ud800"
# Markup the requests carry in titles, summaries, cells and outputs; no page or preview may
# hand it to a browser as markup.
SCRIPT, HANDLER = "<script>alert(1)</script>", "<img src=x onerror=alert(1)>"
NASTY = ["", " ", "\t\n", NUL, f"a{NUL}b", SURROGATE, "\udcff", "é", "💥", "\u202e", "ǅ",
         SCRIPT, HANDLER, "{{ 7|add:7 }}", "%s%n", "../../etc/passwd", "/etc/passwd",
         "a" * 300, "NaN", "null", "-1", "1e309", "\\", "'", '"', "--", "\r\nX-Injected: 1",
         "a,b,,c", "CON", "nul.txt", "%00", "%ff", "\ufeff", "x" * 5001]
ODD_SLUGS = ["no-such", "a" * 81, "A", "-", "_", "%00", "%ff", "%E2%82%AC", "..", "x%2Fy",
             "hello-example%20", "1", "admin", "%ED%A0%80"]
FOLDERS = ["", "mine", "../x", "a/b", ".hidden", "x" * 100, "x" * 101, " ", NUL, "naïve", "a b",
           "-rf", "~", "examples", "hello-example", "..", "CON", SURROGATE, "example.toml"]
BAD_PATHS = ["../evil.py", "/etc/passwd", "a/../../b", f"x{NUL}y", "", ".hidden", "a\\b",
             "a/b/c/d/e/f/g", "example.toml", "..", "dir/", " ", "a//b", "./a", "\x7f", "ü.py",
             "x" * 251, "hello.ipynb", "requirements.txt", "environment.yml", "setup.py"]
# A file and a folder of the same name in one example (with each other, or with the notebook).
COLLIDING_PATHS = [["data", "data/x.csv"], ["data/x.csv", "data"], ["hello.ipynb/x"],
                   ["notebook.ipynb/x"], ["lib", "lib/a.py", "lib/b.py"]]
DEEP = "[" * 3000 + "]" * 3000
PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAA"
           "ABJRU5ErkJggg==")


def text(max_size: int = 30) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(NASTY), st.text(max_size=max_size))


def wrong_type() -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.lists(text(5), max_size=3),
                     st.dictionaries(text(5), st.integers(), max_size=2))


def _kernelspec() -> dict[str, str]:
    return {"name": "python3", "display_name": "Python 3", "language": "python"}


def _rich_notebook() -> dict[str, Any]:
    nb = new_notebook(metadata={"kernelspec": _kernelspec()})
    nb.cells.append(new_markdown_cell(f"# Rich outputs\n\n<b>bold</b> {SCRIPT} {HANDLER}"))
    cell = new_code_cell("display(x)", execution_count=1)
    cell.outputs = [
        new_output("display_data", data={"image/png": PNG_1PX, "text/plain": "<image>"}),
        new_output("display_data", data={"text/html": f"{HANDLER}<p>hi</p>{SCRIPT}"}),
        new_output("execute_result", data={"text/plain": "42"}, execution_count=1),
        new_output("error", ename="ValueError", evalue="bad", traceback=["\x1b[31mboom\x1b[0m"]),
        new_output("stream", name="stderr", text="warning\n"),
    ]
    nb.cells.append(cell)
    nb.cells.append(new_raw_cell("raw <b>text</b>"))
    return nb


def _attachment_notebook() -> dict[str, Any]:
    nb = new_notebook(metadata={"kernelspec": _kernelspec()})
    md = new_markdown_cell("![pic](attachment:pic.png)")
    md["attachments"] = {"pic.png": {"image/png": PNG_1PX}}
    nb.cells.append(md)
    nb.cells.append(new_code_cell("key = 'AKIAIOSFODNN7EXAMPLE'", execution_count=None))
    return nb


def _v3_notebook() -> dict[str, Any]:
    return {"nbformat": 3, "nbformat_minor": 0, "metadata": {"name": "old"}, "worksheets": [
        {"cells": [{"cell_type": "code", "input": "print(1)", "language": "python",
                    "outputs": [], "prompt_number": 1, "metadata": {}}], "metadata": {}}]}


NOTEBOOKS: list[dict[str, Any]] = [
    json.loads(notebook_bytes(1)), _rich_notebook(), _attachment_notebook(), _v3_notebook(),
    json.loads(notebook_bytes(60, outputs=True)),  # more cells than the preview takes
    dict(new_notebook()),
]


@st.composite
def notebook_value(draw: st.DrawFn) -> Any:
    """A notebook as the JSON API takes it: mostly a good one, else broken in one way."""
    nb = json.loads(json.dumps(draw(st.sampled_from(NOTEBOOKS))))
    fault = draw(st.sampled_from(["none"] * 4 + [
        "as-string", "not-object", "version", "cells", "cell-type", "execution-count",
        "source", "metadata-nan", "big-output", "string-not-json", "bom-string"]))
    if fault == "as-string":
        return json.dumps(nb)
    if fault == "not-object":
        return draw(wrong_type())
    if fault == "version":
        nb["nbformat"] = draw(st.sampled_from([0, 5, "4", None, 4.0, 2**64]))
    elif fault == "cells":
        nb["cells"] = draw(wrong_type())
    elif fault == "cell-type" and nb.get("cells"):
        nb["cells"][0]["cell_type"] = draw(text(10))
    elif fault == "execution-count" and nb.get("cells"):
        nb["cells"][-1]["execution_count"] = draw(wrong_type())
    elif fault == "source" and nb.get("cells"):
        nb["cells"][0]["source"] = draw(st.one_of(text(200), st.lists(text(20), max_size=3)))
    elif fault == "metadata-nan":
        nb["metadata"]["odd"] = draw(st.sampled_from([float("nan"), float("inf"), 10**400]))
    elif fault == "big-output" and nb.get("cells"):
        nb["cells"].append(dict(new_code_cell("print('x')", execution_count=2, outputs=[
            new_output("stream", name="stdout", text="x" * draw(st.integers(20_000, 60_000)))])))
    elif fault == "string-not-json":
        return draw(text(50))
    elif fault == "bom-string":
        return "\ufeff" + json.dumps(nb)
    return nb


# --- submissions ------------------------------------------------------------------------------


@dataclass
class Upload:
    """One submission before it is encoded as JSON or multipart."""

    meta: dict[str, Any]
    notebook: Any
    notebook_name: str = "hello.ipynb"
    environment: tuple[str, bytes] | None = ("requirements.txt", b"numpy>=1.24\n")
    files: list[tuple[str, bytes]] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)


META_FAULTS = ["title", "summary", "tags", "licence", "slug", "example", "data_links",
               "resources", "authors", "kernel", "extra-field"]
FILE_FAULTS = ["notebook", "notebook_name", "environment", "bad-path", "colliding-paths",
               "duplicate-path", "too-many-files", "too-large", "many-small-files"]


def _link(name: str = "docs", target: str = "https://example.org/data", **rest: Any
          ) -> dict[str, Any]:
    return {"name": name, "target": target, **rest}


@st.composite
def upload(draw: st.DrawFn, slugs: list[str]) -> Upload:
    """A submission that is good, or wrong in one to three ways."""
    meta: dict[str, Any] = {
        "title": draw(st.sampled_from(["Harness example", "Ünïcode — title", "x",
                                       "Hello example", f"Markup {SCRIPT}"])),
        "summary": draw(st.sampled_from(["", "Says hello.", f"<b>bold</b> & {HANDLER}"])),
        "tags": draw(st.sampled_from([[], ["demo"], ["demo", "python", "Data Science"]])),
        "licence": "CC-BY-4.0",
        "data_links": draw(st.sampled_from([[], [_link()], [_link(), _link(
            "shared", "/srv/shared/data", size=1024, checksum="sha256:00", licence="CC0-1.0",
            description=HANDLER)]])),
        "resources": draw(st.sampled_from([{}, {"cpu": 2, "memory": "4G", "gpu": 0.5}])),
        "authors": draw(st.sampled_from([[], ["Ann Example", "Bob"]])),
    }
    if draw(st.booleans()):
        meta["example"] = draw(st.sampled_from(slugs))
    up = Upload(meta=meta, notebook=draw(st.sampled_from(NOTEBOOKS)),
                files=draw(st.sampled_from([[], [("helper.py", b"X = 1\n")], [
                    ("helper.py", b"X = 1\n"), ("data/small.bin", b"\x00\x01\x02")]])))
    faults = draw(st.lists(st.sampled_from(META_FAULTS + FILE_FAULTS), max_size=3, unique=True))
    up.faults = faults
    for fault in faults:
        _apply_fault(draw, up, fault, slugs)
    return up


def _apply_fault(draw: st.DrawFn, up: Upload, fault: str, slugs: list[str]) -> None:
    meta = up.meta
    if fault in ("title", "summary", "licence", "slug", "kernel"):
        meta[fault] = draw(st.one_of(text(), wrong_type(), st.just("t" * 201)))
    elif fault == "tags":
        meta["tags"] = draw(st.one_of(
            text(), wrong_type(), st.lists(text(10), min_size=1, max_size=4),
            st.lists(st.just("x"), min_size=21, max_size=25),
            st.lists(st.integers(0, 30).map(str), min_size=21, max_size=25)))
    elif fault == "example":
        meta["example"] = draw(st.one_of(st.sampled_from(slugs + ["no-such"]), text(),
                                         wrong_type()))
    elif fault == "data_links":
        meta["data_links"] = draw(st.one_of(wrong_type(), st.lists(st.one_of(
            wrong_type(),
            st.builds(_link, name=text(), target=text()),
            st.builds(_link, size=st.one_of(
                st.integers(-5, 2**70), st.sampled_from([2**63, 2**63 - 1, 1.5, True, "big"]))),
            st.builds(_link, target=st.sampled_from(
                ["relative/path", "/a/../etc", "ftp://host/f", "doi:10.1/x", "s3://b/k", "/",
                 "https://" + "x" * 2000, "http://[::1", "/srv/" + NUL])),
            st.builds(_link, description=text(), checksum=text(), licence=text()),
            st.just(_link()), st.just(_link("DOCS")),
        ), max_size=4), st.lists(st.just(_link()), min_size=51, max_size=52)))
    elif fault == "resources":
        meta["resources"] = draw(st.one_of(
            wrong_type(),
            st.dictionaries(text(10), st.one_of(
                text(10), st.integers(-2**70, 2**70),
                st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
                st.lists(st.integers(), max_size=2), st.dictionaries(text(3), st.integers())),
                max_size=12)))
    elif fault == "authors":
        meta["authors"] = draw(st.one_of(wrong_type(), st.lists(
            st.one_of(text(), wrong_type(), st.just("a" * 300)), max_size=22)))
    elif fault == "extra-field":
        meta[draw(st.sampled_from(["unknown", "id", "state", "contributor", "__proto__"]))] = (
            draw(wrong_type()))
    elif fault == "notebook":
        up.notebook = draw(notebook_value())
    elif fault == "notebook_name":
        up.notebook_name = draw(st.one_of(st.sampled_from(BAD_PATHS + [
            "nb.txt", "a/b.ipynb", "x.IPYNB", ".ipynb", "example.toml"]), text()))
    elif fault == "environment":
        up.environment = draw(st.one_of(st.none(), st.tuples(
            st.sampled_from(["setup.py", "../requirements.txt", "environment.yaml",
                             "environment.yml", "requirements.txt", "", "a/requirements.txt"]),
            st.sampled_from([b"numpy\n", b"\xff\xfe", b"dependencies: [", b"-e .\n",
                             b"numpy @ file:///etc\n", b"name: x\ndependencies:\n - pip:\n"
                             b"   - requests\n", b"x" * 5000]))))
    elif fault == "bad-path":
        up.files.append((draw(st.sampled_from(BAD_PATHS)), b"x"))
    elif fault == "colliding-paths":
        up.files.extend((p, b"x") for p in draw(st.sampled_from(COLLIDING_PATHS)))
    elif fault == "duplicate-path":
        up.files.extend([("twice.py", b"a"), ("twice.py", b"b")])
    elif fault == "too-many-files":
        up.files.extend((f"f{i}.txt", b"x") for i in range(draw(st.integers(51, 53))))
    elif fault == "many-small-files":
        up.files.extend((f"lib/m{i}.py", b"x = 1\n" * 1000) for i in range(12))
    elif fault == "too-large":
        up.files.append(("big.bin", b"\x00" * draw(st.integers(190_000, 260_000))))


def json_body(up: Upload) -> dict[str, Any]:
    body = {**up.meta, "notebook": up.notebook, "notebook_name": up.notebook_name}
    if up.environment is not None:
        body["environment"] = {"path": up.environment[0],
                               "content": up.environment[1].decode("utf-8", "replace")}
    body["files"] = [_file_in(path, data) for path, data in up.files]
    return body


def _file_in(path: str, data: bytes) -> dict[str, str]:
    try:
        return {"path": path, "content": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"path": path, "content_base64": base64.b64encode(data).decode()}


def encode_json(value: Any) -> bytes:
    """JSON as a client might send it: NaN and lone surrogates included (as escapes)."""
    return json.dumps(value, allow_nan=True).encode()


# --- multipart --------------------------------------------------------------------------------


@dataclass
class Part:
    name: str | None
    value: bytes
    filename: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


def multipart(parts: list[Part], boundary: str = "harness-boundary-7MA4YWxk") -> bytes:
    """The body of a multipart/form-data request, byte for byte as written (no checks)."""
    out = []
    for part in parts:
        out.append(b"--" + _b(boundary) + b"\r\n")
        disposition = b"Content-Disposition: form-data"
        if part.name is not None:
            disposition += b'; name="' + _b(part.name) + b'"'
        if part.filename is not None:
            disposition += b'; filename="' + _b(part.filename) + b'"'
        out.append(disposition + b"\r\n")
        if part.filename is not None and not any(k.lower() == "content-type"
                                                 for k, _ in part.headers):
            out.append(b"Content-Type: application/octet-stream\r\n")
        for key, value in part.headers:
            out.append(_b(key) + b": " + _b(value) + b"\r\n")
        out.append(b"\r\n" + part.value + b"\r\n")
    out.append(b"--" + _b(boundary) + b"--\r\n")
    return b"".join(out)


MULTIPART_FAULTS = ["metadata-field", "metadata-invalid", "metadata-deep", "field-deep",
                    "field-invalid-json", "no-notebook", "notebook-as-field", "two-notebooks",
                    "repeated-title", "empty-filename", "too-many-fields", "part-charset",
                    "part-base64", "part-no-name", "tags-repeated", "filename-nasty"]


@st.composite
def multipart_parts(draw: st.DrawFn, up: Upload) -> list[Part]:
    """The parts of a multipart submission, with up to two multipart-only faults."""
    meta = up.meta
    faults = draw(st.lists(st.sampled_from(MULTIPART_FAULTS), max_size=2, unique=True))
    up.faults = up.faults + faults
    parts: list[Part] = []
    if "metadata-field" in faults or "metadata-invalid" in faults or "metadata-deep" in faults:
        value = encode_json(meta)
        if "metadata-invalid" in faults:
            value = draw(st.sampled_from([b"{", b"[]", b"null", b"\xff", b'"x"', b"{'a': 1}"]))
        if "metadata-deep" in faults:
            value = DEEP.encode()
        parts.append(Part("metadata", value))
    else:
        for key in ("title", "summary", "licence", "slug", "example", "kernel"):
            if key in meta:
                parts.append(Part(key, _b(meta[key] if isinstance(meta[key], str)
                                          else json.dumps(meta[key]))))
        tags = meta.get("tags", [])
        if isinstance(tags, list) and "tags-repeated" in faults:
            parts.extend(Part("tags", _b(str(t))) for t in tags)
        elif tags:
            parts.append(Part("tags", _b(", ".join(map(str, tags)) if isinstance(tags, list)
                                         else str(tags))))
        for key in ("data_links", "resources", "authors"):
            if key in meta:
                parts.append(Part(key, encode_json(meta[key])))
        if "field-deep" in faults:
            parts.append(Part(draw(st.sampled_from(["data_links", "resources", "authors"])),
                              DEEP.encode()))
        if "field-invalid-json" in faults:
            parts.append(Part(draw(st.sampled_from(["data_links", "resources", "authors"])),
                              draw(st.sampled_from([b"[", b"nope", b"\xff", b"NaN"]))))
        if "repeated-title" in faults:
            parts.append(Part("title", _b(draw(text()))))
    nb = up.notebook
    nb_bytes = _b(nb) if isinstance(nb, str) else encode_json(nb)
    name = up.notebook_name if "filename-nasty" not in faults else draw(text())
    if "no-notebook" not in faults:
        if "notebook-as-field" in faults:
            parts.append(Part("notebook", nb_bytes))
        else:
            parts.append(Part("notebook", nb_bytes, filename=name))
        if "two-notebooks" in faults:
            parts.append(Part("notebook", notebook_bytes(2), filename="second.ipynb"))
    if up.environment is not None:
        parts.append(Part("environment", up.environment[1], filename=up.environment[0]))
    for path, data in up.files:
        parts.append(Part("files", data, filename=path))
    if "empty-filename" in faults:
        parts.append(Part("files", b"", filename=""))
    if "too-many-fields" in faults:
        parts.extend(Part(f"extra{i}", b"x") for i in range(201))
    if "part-charset" in faults and parts:
        parts[0].headers.append(("Content-Type", draw(st.sampled_from([
            "text/plain; charset=latin-1", "text/plain; charset=utf-16",
            "text/plain; charset=x"]))))
    if "part-base64" in faults and parts:
        index = draw(st.integers(0, len(parts) - 1))
        good = draw(st.booleans())
        parts[index] = Part(parts[index].name, base64.b64encode(parts[index].value) if good
                            else b"not base64 at all!", parts[index].filename,
                            [*parts[index].headers, ("Content-Transfer-Encoding", "base64")])
    if "part-no-name" in faults:
        parts.append(Part(None, b"anonymous"))
    return parts


BOUNDARY_FAULTS = {
    "none": "multipart/form-data; boundary={b}",
    "quoted": 'multipart/form-data; boundary="{b}"',
    "charset": "multipart/form-data; charset=latin-1; boundary={b}",
    "utf16": "multipart/form-data; charset=utf-16; boundary={b}",
    "missing": "multipart/form-data",
    "empty": "multipart/form-data; boundary=",
    "other": "multipart/form-data; boundary=not-the-one",
    "too-long": "multipart/form-data; boundary=" + "b" * 80,
    "bad-chars": "multipart/form-data; boundary=a\x7fb",
    "mixed": "multipart/mixed; boundary={b}",
    "upper": "Multipart/Form-Data; BOUNDARY={b}",
}


@st.composite
def multipart_request(draw: st.DrawFn, parts: list[Part]) -> tuple[bytes, str, str]:
    """Body, Content-Type and the name of its boundary fault ("none" for a good one)."""
    boundary = "harness-boundary-7MA4YWxk"
    fault = draw(st.sampled_from(["none"] * 6 + list(BOUNDARY_FAULTS)))
    body = multipart(parts, boundary)
    if draw(st.integers(0, 9)) == 0:  # cut short, without the closing boundary
        body = body[:draw(st.integers(0, len(body)))]
    return body, BOUNDARY_FAULTS[fault].format(b=boundary), fault


# --- requests ---------------------------------------------------------------------------------


@dataclass
class Call:
    endpoint: str  # the route, as counted: "POST /api/v1/submissions"
    method: str
    path: str  # with the query string, percent-encoded as sent
    body: bytes = b""
    content_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=dict)  # set by `request` at times
    shows: tuple[str, str] | None = None  # ("job" | "submission", id) a 200 reveals
    hub_down: bool = False  # the fake hub answers 503 to it: a 503 that says so is right


# What a client or a proxy may put around any request; one request in eight gets one of these.
ODD_ENVIRON: list[dict[str, str]] = [
    {"HTTP_HOST": "evil.example"}, {"HTTP_HOST": "127.0.0.1:99999"}, {"HTTP_HOST": "[::1"},
    {"HTTP_HOST": "h" * 300}, {"HTTP_COOKIE": "gallery-sessionid=nonexistent"},
    {"HTTP_COOKIE": "gallery-sessionid=" + "a" * 5000}, {"HTTP_COOKIE": "=;=;;gallery-sessionid"},
    {"HTTP_COOKIE": "gallery-csrftoken=bad; gallery-sessionid=%00"},
    {"CONTENT_LENGTH": "abc"}, {"CONTENT_LENGTH": "-1"}, {"CONTENT_LENGTH": "99999999999"},
    {"CONTENT_LENGTH": "0"}, {"HTTP_X_FORWARDED_FOR": "1.2.3.4, 10.0.0.1"},
    {"HTTP_X_FORWARDED_PROTO": "https"}, {"HTTP_ACCEPT_LANGUAGE": "xx;q=abc,de-DE"},
    {"HTTP_AUTHORIZATION": "token"}, {"HTTP_AUTHORIZATION": "Bearer \x7f\xff"},
    {"HTTP_AUTHORIZATION": "Basic dXJzdWxhOnB3"}, {"HTTP_X_CSRFTOKEN": "bad"},
    {"HTTP_REFERER": "https://evil.example/"}, {"HTTP_ORIGIN": "null"},
    {"HTTP_ACCEPT": "application/json"}, {"HTTP_ACCEPT_ENCODING": "gzip;q=x"},
    {"wsgi.url_scheme": "https"},
]


def q(value: Any) -> str:
    return quote(_b(str(value)), safe="")


def form(pairs: list[tuple[str, Any]]) -> bytes:
    return "&".join(f"{quote_plus(_b(k))}={quote_plus(_b(str(v)))}" for k, v in pairs).encode()


@st.composite
def query_string(draw: st.DrawFn, keys: list[str]) -> str:
    """Known and unknown keys, repeated at times, with odd and broken values."""
    pairs = draw(st.lists(st.tuples(
        st.sampled_from(keys + ["junk", "page[]", ""]),
        st.one_of(text(), st.integers(-5, 2**70).map(str), st.sampled_from(
            ["1", "2", "999999", "approved", "staged", "rejected", "demo", "all"]))),
        max_size=4))
    encoded = "&".join(f"{q(k)}={q(v)}" for k, v in pairs)
    tail = draw(st.sampled_from(["", "", "", "&", "=", "%", "%zz", "&q=%ff%fe", "&q=%ED%A0%80",
                                 "&&&", "&q"]))
    return encoded + tail


def slug_of(draw: st.DrawFn, slugs: list[str]) -> str:
    return draw(st.one_of(st.sampled_from(slugs), st.sampled_from(ODD_SLUGS)))


# --- a fake hub ---------------------------------------------------------------------------------

HUB_ACCESS = ["access:services"]
HUB_MODELS: dict[str, dict[str, Any]] = {
    "tok-user": {"kind": "user", "name": "ursula", "scopes": HUB_ACCESS, "groups": []},
    "tok-contributor": {"kind": "user", "name": "connor", "scopes": HUB_ACCESS, "groups": []},
    "tok-other": {"kind": "user", "name": "otto", "scopes": HUB_ACCESS, "groups": []},
    "tok-reviewer": {"kind": "user", "name": "rita", "groups": [],
                     "scopes": [*HUB_ACCESS, "custom:gallery:review"]},
    "tok-newcomer": {"kind": "user", "name": "zoë@uni.example", "scopes": HUB_ACCESS,
                     "groups": ["gallery-reviewers"]},
    # JupyterHub names may be up to 255 characters long.
    "tok-long-name": {"kind": "user", "name": "l" * 200, "scopes": HUB_ACCESS, "groups": []},
    "tok-no-access": {"kind": "user", "name": "ursula", "scopes": [], "groups": []},
    "tok-service": {"kind": "service", "name": "announcer", "scopes": HUB_ACCESS},
}
HUB_ODD: dict[str, tuple[int, str, bytes]] = {
    "tok-refused": (403, "application/json", b'{"status": 403, "message": "no"}'),
    "tok-hub-down": (502, "text/html", b"<h1>Bad gateway</h1>"),
    "tok-hub-html": (200, "text/html", b"<!DOCTYPE html><p>Sign in</p>"),
    "tok-hub-list": (200, "application/json", b'["ursula"]'),
}
HUB_AWAY_CALLERS = {"token:hub-down", "token:hub-html", "token:hub-list"}
HUB_CODES: dict[str, tuple[int, str, bytes]] = {
    "code-user": (200, "application/json", b'{"access_token": "tok-user"}'),
    "code-reviewer": (200, "application/json", b'{"access_token": "tok-reviewer"}'),
    "code-refused-token": (200, "application/json", b'{"access_token": "tok-refused"}'),
    "code-bad": (400, "application/json", b'{"error": "invalid_grant"}'),
    "code-html": (200, "text/html", b"<html>oops</html>"),
    "code-empty": (200, "application/json", b"{}"),
    "code-down": (503, "text/plain", b"down"),
}


class FakeHub(BaseHTTPRequestHandler):
    """The two hub API calls the gallery makes: who owns a token, and a code for a token."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        token = self.headers.get("Authorization", "").partition(" ")[2]
        if self.path.endswith("/hub/api/user") and token in HUB_MODELS:
            self._answer(200, "application/json", json.dumps(HUB_MODELS[token]).encode())
        else:
            self._answer(*HUB_ODD.get(token, (403, "application/json", b"{}")))

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        code = parse_qs(self.rfile.read(length).decode("latin-1")).get("code", [""])[0]
        self._answer(*HUB_CODES.get(code, (400, "application/json", b"{}")))

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


# --- the starting state -----------------------------------------------------------------------


def build_baseline(cast: dict[str, Any]) -> None:
    """An approved example with a second revision waiting, a staged, a rejected and a retired
    one, and a finished Use: what every run starts from. Titles and descriptions carry markup,
    which every page must show as text."""
    capture = TestCase.captureOnCommitCallbacks
    with capture(execute=True):
        hello = stage(cast["contributor"], title="Hello example",
                      files={"helper.py": b"X = 1\n", "data/small.bin": b"\x00\x01"},
                      data_links=[_link(description=HANDLER),
                                  _link("shared", "/srv/shared/data", size=1024)])
    with capture(execute=True):
        services.approve_submission(submission=hello, reviewer=cast["reviewer"], comment="ok")
    with capture(execute=True):
        stage(cast["contributor"], title="Hello example", example_slug=hello.example.slug,
              notebook=notebook_bytes(2, text="print('v2')"))
        stage(cast["other"], title=f"Other staged {SCRIPT}",
              notebook=json.dumps(NOTEBOOKS[1]).encode())
        rejected = stage(cast["contributor"], title=f"Rejected example {HANDLER}",
                         notebook=notebook_bytes(1, text="print('no')"))
        retired = stage(cast["other"], title=f"Retired example {SCRIPT}",
                        notebook=notebook_bytes(1, text="print('old')"))
    with capture(execute=True):
        services.reject_submission(submission=rejected, reviewer=cast["reviewer"],
                                   comment="Not for the gallery.")
        services.approve_submission(submission=retired, reviewer=cast["reviewer"])
    with capture(execute=True):
        services.retire_example(example=Example.objects.get(pk=retired.example_id),
                                actor=cast["reviewer"], reason="Outdated.")
        services.queue_use(example=Example.objects.get(pk=hello.example_id), user=cast["user"])
    # Every job ended well; an environment's build may end failed with its reason (the
    # tests' package index is a folder of a few wheels, and the examples ask for numpy).
    unfinished = Job.objects.exclude(state=Job.State.DONE).exclude(
        kind=Job.Kind.ENVIRONMENT, state=Job.State.FAILED)
    assert not unfinished.exists(), list(Job.objects.values("kind", "state", "message"))
    assert not crashed_jobs(), crashed_jobs()


# --- the oracle -------------------------------------------------------------------------------

STORED = [Example, Revision, Submission, Job, DataLink, StateChange, Notification, Review, Tag,
          Preview]


DECIDED = [Submission.State.IN_REVIEW, Submission.State.APPROVED,
           Submission.State.CHANGES_REQUESTED, Submission.State.REJECTED]


@dataclass
class Snapshot:
    rows: dict[str, int]
    staged: set[str]
    decisions: tuple[int, int, int]  # reviews, decided submissions, retired examples


def snapshot() -> Snapshot:
    staging = Path(settings.GALLERY_STAGING_DIR)
    return Snapshot(rows={m.__name__: m.objects.count() for m in STORED},
                    staged=set(os.listdir(staging)) if staging.is_dir() else set(),
                    decisions=(Review.objects.count(),
                               Submission.objects.filter(state__in=DECIDED).count(),
                               Example.objects.filter(state=Example.State.RETIRED).count()))


def leftovers(run_dir: Path) -> list[str]:
    """Temporary files and folders anywhere the gallery writes, and in the temp folders."""
    found = []
    for folder in (Path(settings.GALLERY_STAGING_DIR), Path(settings.GALLERY_PREVIEW_DIR),
                   Path(settings.GALLERY_DATA_DIR) / "exports"):
        for path in _walk(folder, depth=3):
            if ".tmp" in path.name or path.name.startswith(".") and folder.name == "exports":
                found.append(str(path))
    for path in _walk(run_dir / "homes", depth=3):
        if ".tmp-" in path.name:
            found.append(str(path))
    for folder in (run_dir / "tmp", run_dir / "uploads"):
        found.extend(str(p) for p in _walk(folder, depth=1))
    return found


def _walk(folder: Path, depth: int) -> Iterator[Path]:
    if depth == 0 or not folder.is_dir():
        return
    for entry in folder.iterdir():
        yield entry
        if entry.is_dir() and not entry.is_symlink():
            yield from _walk(entry, depth - 1)


def broken_revisions() -> list[str]:
    """Revisions whose staged folder lost a file or holds one of another size."""
    broken = []
    for digest, files in Revision.objects.values_list("content_hash", "files"):
        folder = Path(settings.GALLERY_STAGING_DIR) / digest
        for item in files:
            path = folder / item["path"]
            if not path.is_file() or path.stat().st_size != item["size"]:
                broken.append(f"{digest[:12]}/{item['path']}")
    return broken


def broken_copies() -> list[str]:
    """Finished Uses whose folder in the home lacks a file of the revision or its provenance."""
    from gallery import homes

    broken = []
    for job in Job.objects.filter(kind=Job.Kind.USE, state=Job.State.DONE).select_related(
            "revision"):
        folder = homes.use_parent(job.params["username"]) / job.result["folder"]
        for item in [*job.revision.files, {"path": homes.PROVENANCE_FILE, "size": None}]:
            path = folder / item["path"]
            if not path.is_file() or item["size"] not in (None, path.stat().st_size):
                broken.append(f"{job.params['username']}: {folder.name}/{item['path']}")
    return broken


def crashed_jobs() -> list[dict[str, Any]]:
    """Jobs left running, put back after an unexpected exception, or failed with one."""
    from django.db.models import Q

    return list(Job.objects.filter(
        Q(state=Job.State.RUNNING) | Q(message__startswith="retrying after")
        | Q(state=Job.State.FAILED, message__contains="could not be made (")
    ).values("kind", "state", "message"))


class Refusals(logging.Handler):
    """What Django logged about a request it refused: the reason of a 400 that no view
    answered (a broken multipart body, too many fields), which has no traceback."""

    LOGGERS = ("django.request", "django.security")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.messages.append(f"{record.name}: {record.getMessage()}"[:300]
                             + (f" ({exc!r})"[:300] if exc else ""))

    def __enter__(self) -> Refusals:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)


def describe(caller: str, call: Call, response: HttpResponseBase | None) -> str:
    lines = [f"{call.method} {call.path[:300]} as {caller}",
             f"  Content-Type: {call.content_type!r}  headers: {call.headers!r}"
             f"  environ: {call.environ!r}"[:700],
             f"  body ({len(call.body)} bytes): {call.body[:600]!r}"]
    if response is not None:
        lines.append(f"  -> {response.status_code} {response.get('Content-Type', '')}: "
                     f"{_content(response)[:600]!r}")
        lines.extend(f"  {m}" for m in getattr(response, "refusals", []))
        exc_info = getattr(response, "exc_info", None)
        if exc_info:
            lines.append("".join(traceback.format_exception(*exc_info))[-4000:])
    return "\n".join(lines)


def _content(response: HttpResponseBase) -> bytes:
    if getattr(response, "streaming", False):
        if not hasattr(response, "_harness_body"):
            # The test client closes it at the end (Django's request_finished, safely).
            response._harness_body = b"".join(response.streaming_content)  # type: ignore
        return response._harness_body  # type: ignore[attr-defined]
    return response.content  # type: ignore[attr-defined]


def api_error(response: HttpResponseBase, method: str = "GET") -> str | None:
    """Why an API error response is not JSON {"error": "<message>"}; None when it is."""
    if not response.get("Content-Type", "").startswith("application/json"):
        return f"Content-Type is {response.get('Content-Type')!r}"
    if method == "HEAD":  # the answer to a HEAD never has a body: its headers are the answer
        return None
    try:
        body = json.loads(_content(response))
    except ValueError:
        return "the body is not JSON"
    if not isinstance(body, dict) or not isinstance(body.get("error"), str) or not (
            body["error"].strip()):
        return "no non-empty 'error' string"
    return None


def check_answer(call: Call, response: HttpResponseBase, where: str) -> None:
    """No 5xx; JSON errors from the API; no markup of a request in a page, unescaped."""
    status = response.status_code
    said_why = status == 503 and call.hub_down and not getattr(response, "exc_info", None)
    assert status < 500 or said_why, f"server error:\n{where}"
    if call.path.startswith("/api/") and status >= 400:
        problem = api_error(response, call.method)
        assert problem is None, f"API error that is not JSON {{'error': ...}} ({problem}):" \
                                f"\n{where}"
    if response.get("Content-Type", "").startswith("text/html"):
        body = _content(response)
        assert SCRIPT.encode() not in body and HANDLER[:-1].encode() not in body, \
            f"markup from a request reached a page unescaped:\n{where}"


def check_nothing_stored(before: Snapshot, where: str) -> None:
    """A refused request added no row and no staged folder that no revision holds."""
    after = snapshot()
    assert after.rows == before.rows, f"refused, but rows changed " \
                                      f"{before.rows} -> {after.rows}:\n{where}"
    held = set(Revision.objects.values_list("content_hash", flat=True))
    new = after.staged - before.staged - held
    assert not new, f"refused, but staged folders {sorted(new)} were left:\n{where}"


def check_disk(run_dir: Path, where: str) -> None:
    """No temporary file left; staged folders and Use copies whole; no crashed job."""
    left = leftovers(run_dir)
    assert not left, f"temporary files left: {left}:\n{where}"
    copies = broken_copies()
    assert not copies, f"finished Uses with incomplete copies {copies}:\n{where}"
    broken = broken_revisions()
    assert not broken, f"revisions lost staged files {broken}:\n{where}"
    crashed = crashed_jobs()
    assert not crashed, f"jobs crashed: {crashed}:\n{where}"


# --- the state machine ------------------------------------------------------------------------

# The methods of the machine that send requests, each with one of its variants (a route, a
# method), in the order they are defined; a staging form is listed twice, for a larger share
# of steps. And who may call each.
ENDPOINTS: list[tuple[str, str]] = []
CALLERS_OF: dict[str, list[str]] = {}


def endpoint(callers: list[str], weight: int = 1,  # type: ignore[no-untyped-def]
             variants: tuple[str, ...] = ("",)):
    """Register a method of the machine as endpoints that each run visits in turn: one per
    variant, which the method gets as its third argument."""
    def register(method):  # type: ignore[no-untyped-def]
        ENDPOINTS.extend((method.__name__, v) for v in variants for _ in range(weight))
        CALLERS_OF[method.__name__] = callers
        return method
    return register


class GalleryMachine(RuleBasedStateMachine):
    """Requests of every kind, from everyone, against a gallery that changes as they go."""

    case: ClassVar[HarnessTests]

    def __init__(self) -> None:
        super().__init__()
        self.run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=self.case.runs))
        # The baseline's folders (tests/conftest.py's gallery_dirs), copied for this run.
        for name, source in (("staging", settings.GALLERY_STAGING_DIR),
                             ("examples.git", settings.GALLERY_REPO_PATH),
                             ("homes", Path(settings.GALLERY_HOME_TEMPLATE).parent)):
            shutil.copytree(source, self.run_dir / name, symlinks=True)
        for name in ("tmp", "uploads", "import/one", "import/two"):
            (self.run_dir / name).mkdir(parents=True, exist_ok=True)
        (self.run_dir / "import/one/first.ipynb").write_bytes(notebook_bytes(1, text="1 + 1"))
        (self.run_dir / "import/two/broken.ipynb").write_bytes(b"{not json")
        (self.run_dir / "import/two/requirements.txt").write_bytes(b"numpy\n")
        max_upload = 200_000
        self.overrides = [override_settings(
            GALLERY_DATA_DIR=self.run_dir, GALLERY_STAGING_DIR=self.run_dir / "staging",
            GALLERY_REPO_PATH=self.run_dir / "examples.git",
            GALLERY_HOME_TEMPLATE=str(self.run_dir / "homes" / "{username}"),
            GALLERY_IMPORT_ROOTS=[str(self.run_dir / "import")],
            GALLERY_MAX_UPLOAD_BYTES=max_upload,
            DATA_UPLOAD_MAX_MEMORY_SIZE=max_upload * 4 // 3 + 1024 * 1024,
            FILE_UPLOAD_MAX_MEMORY_SIZE=4096, FILE_UPLOAD_TEMP_DIR=str(self.run_dir / "uploads"),
            GALLERY_MAX_CELLS=40, GALLERY_MAX_OUTPUT_BYTES=20_000,
            GALLERY_METRICS_TOKEN="metrics-secret")]
        self.overrides[0].enable()
        self.tempdir, tempfile.tempdir = tempfile.tempdir, str(self.run_dir / "tmp")
        self.atomic = transaction.atomic()
        self.atomic.__enter__()
        cache.clear()

    @initialize(behind_hub=st.booleans(), shared_cache=st.booleans(),
                order=st.deferred(lambda: st.permutations(ENDPOINTS)))
    def configure(self, behind_hub: bool, shared_cache: bool, order: list[tuple[str, str]]
                  ) -> None:
        """Half the runs behind a hub (tokens work, login goes through it), half with the
        shared Redis cache (sessions and users read from it); each run visits the endpoints
        in an order of its own, so that every endpoint gets its share of requests."""
        self.order, self.steps = order, 0
        extra: dict[str, Any] = {}
        if behind_hub:
            extra.update(HUB_ENABLED=True, JUPYTERHUB_API_URL=f"{self.case.hub_url}/hub/api",
                         JUPYTERHUB_API_TOKEN="service-secret", LOGIN_URL="hub-login",
                         JUPYTERHUB_OAUTH_CALLBACK_URL="/oauth_callback")
        if shared_cache:
            extra.update(GALLERY_CACHE_URL=SHARED_CACHE_URL, SESSION_ENGINE="gallery.sessions",
                         CACHES={"default": {"BACKEND": "gallery.redis_cache.RedisCache",
                                             "LOCATION": SHARED_CACHE_URL,
                                             "KEY_PREFIX": "gallery-harness"}})
        if extra:
            self.overrides.append(override_settings(**extra))
            self.overrides[-1].enable()
        self.behind_hub, self.environ = behind_hub, {}
        cache.clear()

    def teardown(self) -> None:
        transaction.set_rollback(True)
        self.atomic.__exit__(None, None, None)
        cache.clear()
        for override in reversed(self.overrides):
            override.disable()
        tempfile.tempdir = self.tempdir
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # --- sending and checking -----------------------------------------------------------------

    def client(self, caller: str) -> tuple[Client, dict[str, str]]:
        """A test client for a caller, with its session or the headers of its hub token."""
        kind, _, who = caller.partition(":")
        client = Client(raise_request_exception=False, enforce_csrf_checks=kind == "csrf")
        headers: dict[str, str] = {}
        if kind == "token":
            headers["Authorization"] = f"token tok-{who}"
            return client, headers
        role = who if kind == "csrf" else "user" if kind == "session" else caller
        if role in CAST:
            client.force_login(self.case.cast[role])
            if self.behind_hub:  # checked with the hub at the next request
                session = client.session
                session[login.TOKEN] = f"tok-{who if kind == 'session' else role}"
                session[login.CHECKED] = 0
                session.save()
        return client, headers

    def user_of(self, caller: str) -> Any:
        """The user a caller is to the gallery, or None for a stranger."""
        kind, _, who = caller.partition(":")
        if kind == "token":
            model = HUB_MODELS.get(f"tok-{who}", {})
            if not self.behind_hub or model.get("kind") != "user" or not model.get("scopes"):
                return None
            from django.contrib.auth import get_user_model

            return get_user_model().objects.filter(username=model["name"]).first()
        return self.case.cast.get("user" if kind == "session" else who or caller)

    def send(self, caller: str, call: Call, client: Client | None = None) -> HttpResponseBase:
        """Send one request inside a savepoint, run the jobs it queued, check the outcome."""
        if client is None:
            client, headers = self.client(caller)
        else:
            headers = {}
        call.environ.update(self.environ)
        # A token the hub answers as no hub would (an error page, a list) cannot be checked:
        # "the hub is not answering, try again" is the right answer, not a 401.
        call.hub_down = call.hub_down or caller in HUB_AWAY_CALLERS
        before = snapshot()
        # Without the cyclic garbage collector, a temporary file that only a reference cycle
        # would remove is found every time, not only when the collector happens not to run.
        gc.disable()
        try:
            with Refusals() as refusals, TestCase.captureOnCommitCallbacks(execute=True), \
                    transaction.atomic():
                response = client.generic(call.method, call.path, call.body,
                                          content_type=call.content_type,
                                          headers={**headers, **call.headers}, **call.environ)
                if response.status_code >= 500:
                    transaction.set_rollback(True)  # a PostgreSQL transaction may be aborted
            response.refusals = refusals.messages  # type: ignore[attr-defined]
            ENDPOINT_CASES[call.endpoint] += 1
            self.check(caller, call, response, before)
        finally:
            gc.enable()
        return response

    def check(self, caller: str, call: Call, response: HttpResponseBase,
              before: Snapshot) -> None:
        """Every property of the module docstring, for one request and its answer."""
        where = describe(caller, call, response)
        check_answer(call, response, where)
        if 400 <= response.status_code < 500:
            check_nothing_stored(before, where)
        self.check_access(caller, call, response, before, where)
        check_disk(self.run_dir, where)
        _content(response)  # read and close a streamed file

    def check_access(self, caller: str, call: Call, response: HttpResponseBase,
                     before: Snapshot, where: str) -> None:
        user = self.user_of(caller)
        reviewer = user is not None and services.is_reviewer(user)
        if response.status_code == 200 and call.shows is not None:
            kind, pk = call.shows
            if response.get("Content-Type", "").startswith("application/json"):
                pk = json.loads(_content(response)).get("id", pk)  # "1.0" is read as 1
            found = (Job if kind == "job" else Submission).objects.filter(pk=pk).first()
            owner = found and (found.user_id if kind == "job" else found.contributor_id)
            assert reviewer or (user is not None and owner == user.pk), \
                f"shown to someone who is neither its owner nor a reviewer:\n{where}"
        if not reviewer:
            after = snapshot()
            assert all(a <= b for a, b in zip(after.decisions, before.decisions, strict=True)), \
                f"not a reviewer, but reviews, decisions or retirements grew " \
                f"{before.decisions} -> {after.decisions}:\n{where}"

    # --- what the state offers ------------------------------------------------------------------

    # Newest first: hypothesis draws the first items most, so what a run just made is what
    # its next requests review, use and read.

    def slugs(self) -> list[str]:
        return list(Example.objects.order_by("-pk").values_list("slug", flat=True))

    def example_ids(self) -> list[int]:
        return list(Example.objects.order_by("-pk").values_list("pk", flat=True))

    def submission_ids(self) -> list[int]:
        return list(Submission.objects.order_by("-pk").values_list("pk", flat=True))

    def job_ids(self) -> list[str]:
        return [str(pk) for pk in Job.objects.order_by("-queued_at", "kind").values_list(
            "pk", flat=True)]

    def shas(self) -> list[str]:
        return list(Revision.objects.order_by("-pk").values_list("notebook_sha256", flat=True))

    def pick_id(self, data: st.DataObject, ids: list[Any]) -> str:
        return str(data.draw(st.one_of(st.sampled_from(ids or [1]), st.sampled_from(
            [0, -1, 2**31, 2**63, 10**30, "abc", "1.0", "%00", " 1", "0x1"]))))

    def pick_job(self, data: st.DataObject) -> str:
        return data.draw(st.one_of(st.sampled_from(self.job_ids() or ["x"]), st.sampled_from(
            ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "123", "%00",
             "6ba7b810-9dad-11d1-80b4-00c04fd430c8"])))

    @rule(data=st.data())
    def request(self, data: st.DataObject) -> None:
        """One request to the next endpoint of this run's order, from one of its callers."""
        name, variant = self.order[self.steps % len(self.order)]
        self.steps += 1
        caller = data.draw(st.sampled_from(CALLERS_OF[name]), label=f"{name} {variant}")
        odd = data.draw(st.integers(0, 7)) == 0
        self.environ = data.draw(st.sampled_from(ODD_ENVIRON), label="environ") if odd else {}
        if variant:
            getattr(self, name)(data, caller, variant)
        else:
            getattr(self, name)(data, caller)

    # --- the JSON API -----------------------------------------------------------------------------

    @endpoint(API_CALLERS)
    def api_list_examples(self, data: st.DataObject, caller: str) -> None:
        qs = data.draw(query_string(["q", "tag", "state", "page"]))
        self.send(caller, Call("GET /api/v1/examples", "GET", f"/api/v1/examples?{qs}"))

    @endpoint(API_CALLERS)
    def api_example(self, data: st.DataObject, caller: str) -> None:
        slug = slug_of(data.draw, self.slugs())
        self.send(caller, Call("GET /api/v1/examples/{slug}", "GET", f"/api/v1/examples/{slug}"))

    @endpoint(API_CALLERS)
    def api_use(self, data: st.DataObject, caller: str) -> None:
        slug = slug_of(data.draw, self.slugs())
        body, content_type = data.draw(st.one_of(
            st.tuples(st.one_of(st.builds(lambda f: {"folder": f}, st.one_of(
                st.sampled_from(FOLDERS), text(), wrong_type())), st.just({}), wrong_type())
                .map(encode_json), st.sampled_from(["application/json",
                                                    "application/json; charset=utf-8"])),
            st.tuples(st.sampled_from([b"", b"{", b"folder=mine", b"\xff"]), st.sampled_from(
                ["application/json", "application/x-www-form-urlencoded", "text/plain", ""]))))
        self.send(caller, Call("POST /api/v1/examples/{slug}/use", "POST",
                               f"/api/v1/examples/{slug}/use", body, content_type))

    @endpoint(API_CALLERS)
    def api_use_plan(self, data: st.DataObject, caller: str) -> None:
        slug = slug_of(data.draw, self.slugs())
        folder = data.draw(st.one_of(st.sampled_from(FOLDERS), text()))
        self.send(caller, Call("GET /api/v1/examples/{slug}/use-plan", "GET",
                               f"/api/v1/examples/{slug}/use-plan?folder={q(folder)}"))

    @endpoint(API_CALLERS)
    def api_job(self, data: st.DataObject, caller: str) -> None:
        job = self.pick_job(data)
        self.send(caller, Call("GET /api/v1/jobs/{id}", "GET", f"/api/v1/jobs/{job}",
                               shows=("job", job)))

    @endpoint(API_CALLERS, weight=2)
    def api_submit_json(self, data: st.DataObject, caller: str) -> None:
        up = data.draw(upload(self.slugs()))
        content_type = data.draw(st.sampled_from(
            ["application/json"] * 4 + ["application/json; charset=utf-8",
                                        "application/json; charset=latin-1", "APPLICATION/JSON",
                                        "text/json", "application/json-patch+json"]))
        self.send(caller, Call("POST /api/v1/submissions (json)", "POST", "/api/v1/submissions",
                               encode_json(json_body(up)), content_type))

    @endpoint(API_CALLERS, weight=2)
    def api_submit_multipart(self, data: st.DataObject, caller: str) -> None:
        up = data.draw(upload(self.slugs()))
        body, content_type, _ = data.draw(multipart_request(data.draw(multipart_parts(up))))
        self.send(caller, Call("POST /api/v1/submissions (multipart)", "POST",
                               "/api/v1/submissions", body, content_type))

    @endpoint(API_CALLERS)
    def api_submit_raw(self, data: st.DataObject, caller: str) -> None:
        """Bodies that are not a submission at all, under every Content-Type."""
        body = data.draw(st.one_of(
            st.binary(max_size=200),
            st.sampled_from([b"", b"{}", b"[]", b"null", b"NaN", b'"x"', b"{" * 5000,
                             b'{"title": "x", "notebook": {}}', b"\xef\xbb\xbf{}",
                             '{"title": "x"}'.encode("utf-16"), b"x" * 2_700_000]),
            st.just(DEEP.encode()),
        ))
        content_type = data.draw(st.sampled_from([
            "application/json", "text/plain", "", "application/x-www-form-urlencoded",
            "multipart/form-data", "multipart/form-data; boundary=x", "application/xml",
            "application/json; charset=utf-16", "image/png", "application/octet-stream"]))
        self.send(caller, Call("POST /api/v1/submissions (raw)", "POST", "/api/v1/submissions",
                               body, content_type))

    @endpoint(API_CALLERS, variants=("list", "one"))
    def api_submissions(self, data: st.DataObject, caller: str, variant: str) -> None:
        if variant == "list":
            qs = data.draw(query_string(["page", "state"]))
            self.send(caller, Call("GET /api/v1/submissions", "GET", f"/api/v1/submissions?{qs}"))
        else:
            pk = self.pick_id(data, self.submission_ids())
            self.send(caller, Call("GET /api/v1/submissions/{id}", "GET",
                                   f"/api/v1/submissions/{q(pk)}", shows=("submission", pk)))

    @endpoint(API_CALLERS)
    def api_other(self, data: st.DataObject, caller: str) -> None:
        """The schema and its docs, routes that do not exist, and methods a route lacks."""
        method, path = data.draw(st.sampled_from([
            ("GET", "/api/v1/schema"), ("GET", "/api/v1/docs"), ("GET", "/api/v1/"),
            ("GET", "/api/v1/nope"), ("GET", "/api/v2/examples"), ("GET", "/api/v1/examples/"),
            ("DELETE", "/api/v1/examples"), ("PUT", "/api/v1/submissions"),
            ("PATCH", "/api/v1/submissions/1"), ("POST", "/api/v1/examples"),
            ("OPTIONS", "/api/v1/examples"), ("HEAD", "/api/v1/examples"),
            ("GET", "/api/v1/examples/hello-example/use"), ("TRACE", "/api/v1/jobs/x"),
        ]))
        self.send(caller, Call(f"{method} /api/v1/... (other)", method, path))

    # --- pages ------------------------------------------------------------------------------------

    @endpoint(PAGE_CALLERS)
    def page_index(self, data: st.DataObject, caller: str) -> None:
        qs = data.draw(query_string(["q", "tag", "approved_page", "staged_page"]))
        self.send(caller, Call("GET /", "GET", f"/?{qs}"))

    @endpoint(PAGE_CALLERS)
    def page_example(self, data: st.DataObject, caller: str) -> None:
        slug = slug_of(data.draw, self.slugs())
        self.send(caller, Call("GET /examples/<slug>/", "GET", f"/examples/{slug}/"))

    @endpoint(PAGE_CALLERS)
    def page_use(self, data: st.DataObject, caller: str) -> None:
        slug = slug_of(data.draw, self.slugs())
        pairs = data.draw(st.lists(st.tuples(st.sampled_from(["folder", "csrfmiddlewaretoken",
                                                              "x"]),
                                             st.one_of(st.sampled_from(FOLDERS), text())),
                                   max_size=3))
        self.send(caller, Call("POST /examples/<slug>/use", "POST", f"/examples/{slug}/use",
                               form(pairs), "application/x-www-form-urlencoded"))

    @endpoint(PAGE_CALLERS)
    def page_job(self, data: st.DataObject, caller: str) -> None:
        accept = data.draw(st.sampled_from(["", "application/json", "text/html",
                                            "application/json; q=0", "*/*"]))
        job = self.pick_job(data)
        self.send(caller, Call("GET /jobs/<uuid>/", "GET", f"/jobs/{job}/",
                               headers={"Accept": accept} if accept else {}, shows=("job", job)))

    @endpoint(PAGE_CALLERS)
    def page_stage(self, data: st.DataObject, caller: str) -> None:
        slug = data.draw(st.one_of(st.just(""), st.sampled_from(self.slugs()),
                                   st.sampled_from(ODD_SLUGS)))
        self.send(caller, Call("GET /stage/", "GET", f"/stage/?example={slug}" if slug
                               else "/stage/"))

    @endpoint(PAGE_CALLERS, weight=2)
    def page_stage_post(self, data: st.DataObject, caller: str) -> None:
        """The upload form: the same fields a browser sends, good and bad."""
        up = data.draw(upload(self.slugs()))
        meta = up.meta
        links = meta.get("data_links", [])
        parts = [Part(key, _b(str(meta[key]))) for key in ("title", "summary", "licence")
                 if key in meta]
        parts.append(Part("tags", _b(", ".join(map(str, meta["tags"]))
                                     if isinstance(meta.get("tags"), list) else str(meta.get(
                                         "tags", "")))))
        parts.append(Part("data_links", _b("\n".join(
            f"{link.get('name', '')} {link.get('target', '')}" if isinstance(link, dict)
            else str(link) for link in links) if isinstance(links, list) else str(links))))
        if "example" in meta:
            parts.append(Part("example", _b(str(meta["example"]))))
        nb = up.notebook
        parts.append(Part("notebook", _b(nb) if isinstance(nb, str) else encode_json(nb),
                          filename=up.notebook_name))
        if up.environment is not None:
            parts.append(Part("environment", up.environment[1], filename=up.environment[0]))
        parts.extend(Part("files", body, filename=path) for path, body in up.files)
        body, content_type, _ = data.draw(multipart_request(parts))
        query = data.draw(st.sampled_from(["", "?example=no-such", "?example=hello-example"]))
        self.send(caller, Call("POST /stage/", "POST", f"/stage/{query}", body, content_type))

    @endpoint(PAGE_CALLERS)
    def page_my_submissions(self, data: st.DataObject, caller: str) -> None:
        qs = data.draw(query_string(["page"]))
        self.send(caller, Call("GET /submissions/", "GET", f"/submissions/?{qs}"))

    @endpoint(PAGE_CALLERS, variants=("POST", "GET"))
    def page_notifications(self, data: st.DataObject, caller: str, method: str) -> None:
        if method == "POST":
            body = form(data.draw(st.lists(st.tuples(st.sampled_from(["ids", "id", "all"]),
                                                     text()), max_size=3)))
            self.send(caller, Call("POST /notifications/", "POST", "/notifications/", body,
                                   "application/x-www-form-urlencoded"))
        else:
            qs = data.draw(query_string(["page"]))
            self.send(caller, Call("GET /notifications/", "GET", f"/notifications/?{qs}"))

    @endpoint(PAGE_CALLERS)
    def page_submission(self, data: st.DataObject, caller: str) -> None:
        pk = self.pick_id(data, self.submission_ids())
        self.send(caller, Call("GET /submissions/<pk>/", "GET", f"/submissions/{q(pk)}/",
                               shows=("submission", pk)))

    @endpoint(PAGE_CALLERS)
    def page_review(self, data: st.DataObject, caller: str) -> None:
        pk = self.pick_id(data, self.submission_ids())
        pairs = [("decision", data.draw(st.sampled_from(
            ["approve", "request_changes", "reject", "start", "", "APPROVE"]) | text())),
                 ("comment", data.draw(st.one_of(st.just("Please fix."), text(), st.just(
                     "c" * 5001))))]
        if data.draw(st.booleans()):
            pairs.append(("decision", "reject"))  # repeated: the last one counts
        self.send(caller, Call("POST /submissions/<pk>/review", "POST",
                               f"/submissions/{q(pk)}/review", form(pairs),
                               "application/x-www-form-urlencoded"))

    @endpoint(PAGE_CALLERS)
    def previews(self, data: st.DataObject, caller: str) -> None:
        css = previews.preview_css_name()
        name = data.draw(st.one_of(
            st.sampled_from(self.shas()).map(lambda s: f"{s}.html"),
            st.sampled_from(["0" * 64 + ".html", "f" * 64 + ".html", css, "F" * 64 + ".html",
                             "preview-0123456789ab.css", "../secret_key", "%00.html"])))
        headers = data.draw(st.sampled_from([{}, {"Accept-Encoding": "gzip"},
                                             {"Accept-Encoding": "gzip;q=abc, *;q=0"}]))
        self.send(caller, Call("GET /previews/<file>", "GET", f"/previews/{name}",
                               headers=headers))

    @endpoint(PAGE_CALLERS, variants=("/health", "/health/detail", "/metrics"))
    def operations(self, data: st.DataObject, caller: str, path: str) -> None:
        auth = data.draw(st.sampled_from(["", "Bearer metrics-secret", "Bearer wrong",
                                          "token metrics-secret", "Bearer ", "Basic eDp5"]))
        headers = {"Authorization": auth} if auth else {}
        if data.draw(st.booleans()):
            headers["X-Forwarded-For"] = "10.0.0.1"
        self.send(caller, Call(f"GET {path}", "GET", path, headers=headers))

    # --- logging in and out -----------------------------------------------------------------------

    @endpoint(PAGE_CALLERS, variants=("POST /accounts/login/", "POST /admin/login/",
                                      "GET /accounts/login/", "GET /admin/login/", "GET /login/",
                                      "GET /oauth_callback", "POST /logout/", "GET /logout/",
                                      "POST /accounts/logout/"))
    def login_pages(self, data: st.DataObject, caller: str, route: str) -> None:
        """Django's login forms with good, wrong and odd credentials; logging in through the
        hub and out again; each with an odd place to go next."""
        method, path = route.split()
        nxt = data.draw(st.sampled_from(["", "/stage/", "https://evil.example/", "//evil",
                                         "/admin/", "%00", "/\\evil"]) | text())
        body = b""
        if method == "POST":
            body = form([("username", data.draw(st.sampled_from([*CAST.values(), "", "x"]))),
                         ("password", data.draw(st.sampled_from(["pw-" + "x" * 10, "wrong"])
                                                | text())), ("next", nxt)])
        self.send(caller, Call(f"{method} {path}", method, f"{path}?next={q(nxt)}", body,
                               "application/x-www-form-urlencoded" if body else ""))

    @endpoint(PAGE_CALLERS)
    def hub_login(self, data: st.DataObject, caller: str) -> None:
        """The OAuth round trip with the hub: a state from /login/, then the callback with a
        code the fake hub answers in one of several ways."""
        client, _ = self.client(caller)
        response = self.send(caller, Call("GET /login/", "GET", "/login/?next=/stage/"), client)
        state = parse_qs(urlsplit(response.get("Location", "")).query).get("state", [""])[0]
        if data.draw(st.booleans()):
            state = data.draw(st.sampled_from(["", "forged", state + "x"]))
        code = data.draw(st.sampled_from([*HUB_CODES, "", "unknown"]))
        extra = data.draw(st.sampled_from(["", "&error=access_denied", "&code=again"]))
        self.send(caller, Call("GET /oauth_callback", "GET",
                               f"/oauth_callback?state={q(state)}&code={q(code)}{extra}",
                               hub_down=code == "code-down"), client)

    # --- the reviewer's desk ----------------------------------------------------------------------

    @endpoint(PAGE_CALLERS)
    def admin_pages(self, data: st.DataObject, caller: str) -> None:
        sub = self.pick_id(data, self.submission_ids())
        ex = self.pick_id(data, self.example_ids())
        job = self.pick_job(data)
        path = data.draw(st.sampled_from([
            "/admin/", "/admin/gallery/", "/admin/gallery/submission/",
            f"/admin/gallery/submission/{sub}/change/", f"/admin/gallery/submission/{sub}/history/",
            f"/admin/gallery/submission/{sub}/delete/", f"/admin/gallery/submission/{sub}/decide/",
            "/admin/gallery/submission/import/", "/admin/gallery/example/",
            f"/admin/gallery/example/{ex}/change/", f"/admin/gallery/example/{ex}/history/",
            "/admin/gallery/job/", f"/admin/gallery/job/{job}/change/",
            "/admin/gallery/statechange/", "/admin/gallery/notification/", "/admin/auth/user/",
            "/admin/gallery/review/", "/admin/nope/", "/admin/password_change/",
            "/admin/gallery/submission/add/", "/admin/jsi18n/",
        ]))
        qs = data.draw(query_string(["q", "state", "checks_state", "queue", "o", "p", "e",
                                     "kind", "all", "_changelist_filters", "state__exact"]))
        self.send(caller, Call("GET /admin/...", "GET", f"{path}?{qs}"))

    @endpoint(PAGE_CALLERS)
    def admin_decide(self, data: st.DataObject, caller: str) -> None:
        pk = self.pick_id(data, self.submission_ids())
        pairs = [("decision", data.draw(st.sampled_from(
            ["start", "approve", "request_changes", "reject", "", "delete"]))),
                 ("comment", data.draw(st.one_of(st.just("Needs work."), text())))]
        self.send(caller, Call("POST /admin/gallery/submission/<pk>/decide/", "POST",
                               f"/admin/gallery/submission/{pk}/decide/", form(pairs),
                               "application/x-www-form-urlencoded"))

    @endpoint(PAGE_CALLERS)
    def admin_actions(self, data: st.DataObject, caller: str) -> None:
        """The changelists' actions: approve submissions, retire and restore examples."""
        model, actions, ids = data.draw(st.sampled_from([
            ("submission", ["approve", "delete_selected", "nope"], self.submission_ids()),
            ("example", ["retire", "restore", "delete_selected"],
             self.example_ids())]))
        chosen = data.draw(st.lists(st.one_of(st.sampled_from(ids), st.sampled_from(
            [0, 10**30, "x"])), max_size=3))
        pairs: list[tuple[str, Any]] = [("action", data.draw(st.sampled_from(actions))),
                                        ("index", "0")]
        pairs.extend(("_selected_action", pk) for pk in chosen)
        if data.draw(st.booleans()):
            pairs.append(("reason", data.draw(st.one_of(st.just("Outdated."), text()))))
        if data.draw(st.booleans()):
            pairs.append(("select_across", "1"))
        self.send(caller, Call(f"POST /admin/gallery/{model}/ (action)", "POST",
                               f"/admin/gallery/{model}/", form(pairs),
                               "application/x-www-form-urlencoded"))

    @endpoint(PAGE_CALLERS)
    def admin_import(self, data: st.DataObject, caller: str) -> None:
        root = self.run_dir / "import"
        source = data.draw(st.sampled_from([
            str(root), str(root / "one"), str(root / "two"), "/etc", "relative/path", "",
            str(self.run_dir / "examples.git"), "http://127.0.0.1:9/repo.git", "file:///etc",
            str(root / "missing"), "~", str(root) + "/../..",
        ]) | text())
        ref = data.draw(st.sampled_from(["", "main", "--upload-pack=touch /tmp/x", "-x"]))
        self.send(caller, Call("POST /admin/gallery/submission/import/", "POST",
                               "/admin/gallery/submission/import/",
                               form([("source", source), ("ref", ref)]),
                               "application/x-www-form-urlencoded"))

    @endpoint(PAGE_CALLERS)
    def admin_change_example(self, data: st.DataObject, caller: str) -> None:
        pk = self.pick_id(data, self.example_ids())
        pairs = [("title", data.draw(st.one_of(st.just("Renamed"), text()))),
                 ("summary", data.draw(text())), ("_save", "Save")]
        pairs.extend(("tags", t) for t in data.draw(st.lists(st.sampled_from(
            ["1", "2", "999", "x"]), max_size=2)))
        self.send(caller, Call("POST /admin/gallery/example/<pk>/change/", "POST",
                               f"/admin/gallery/example/{pk}/change/", form(pairs),
                               "application/x-www-form-urlencoded"))


class HarnessTests(TestCase):
    runs: Path
    hub_url: str
    cast: ClassVar[dict[str, Any]]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        cls.hub_url = f"http://127.0.0.1:{server.server_address[1]}"
        cls.addClassCleanup(server.server_close)
        cls.addClassCleanup(server.shutdown)

    @classmethod
    def setUpTestData(cls) -> None:
        cls.cast = {role: make_user(name, reviewer=role == "reviewer")
                    for role, name in CAST.items()}

    def setUp(self) -> None:
        build_baseline(self.cast)
        self.runs = Path(settings.GALLERY_DATA_DIR).parent / "runs"
        self.runs.mkdir()

    # A session cookie of 5,000 characters is a key memcached could not hold; Redis can.
    @pytest.mark.filterwarnings("ignore::django.core.cache.backends.base.CacheKeyWarning")
    def test_it_answers_every_request_without_a_5xx_and_stores_nothing_it_refuses(self) -> None:
        GalleryMachine.case = self
        run_state_machine_as_test(GalleryMachine, settings=HARNESS)

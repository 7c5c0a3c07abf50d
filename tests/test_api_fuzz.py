"""Hundreds of malformed submissions: every answer is a 4xx with a message; nothing is stored."""

import json
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from gallery.models import DataLink, Example, Job, Revision, Submission

from .base import make_user, notebook_bytes

VALID_NB = json.loads(notebook_bytes())
BAD_PATHS = ["../evil.py", "/etc/passwd", "a/../../b", "x\x00y", "", ".hidden", "a\\b",
             "a/b/c/d/e/f/g", "example.toml", "..", "dir/", " "]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
# Files that cannot all be written into one folder: one path is a file and another's folder.
CLASHING_FILES = [
    [("a", None), ("a/b", None)], [("a/b", None), ("a", None)], [("a/b/c", None), ("a/b", None)],
    [("notebook.ipynb/x", None)], [("example.toml/x", None)],
    [("requirements.txt/x", "requirements.txt")], [("environment.yml/x", "environment.yml")],
    [("data/x.csv", None), ("data", None)],
]
# A lone surrogate, which JSON can carry as an escape (\ud800) but UTF-8 cannot hold.
half_characters = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
not_a_string = st.none() | st.booleans() | st.integers() | st.lists(st.integers(), max_size=3) \
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)


def base() -> dict:
    return {"title": "Fuzzed", "notebook": VALID_NB}


@st.composite
def malformed_json(draw):  # type: ignore[no-untyped-def]
    """A JSON body that is wrong in at least one way."""
    body = base()
    kind = draw(st.sampled_from([
        "title-type", "title-empty", "title-huge", "tags", "notebook", "notebook-string",
        "file-path", "file-base64", "file-both", "data-link", "environment", "summary-huge",
        "extra-nesting", "resources", "file-clash", "half-character",
    ]))
    if kind == "title-type":
        body["title"] = draw(not_a_string)
    elif kind == "title-empty":
        body["title"] = draw(st.sampled_from(["", " ", "\t\n"]))
    elif kind == "title-huge":
        body["title"] = "t" * draw(st.integers(201, 100_000))
    elif kind == "tags":
        body["tags"] = draw(st.one_of(st.text(min_size=1), st.lists(not_a_string, min_size=1),
                                      st.lists(st.just("x"), min_size=21, max_size=40),
                                      st.lists(st.sampled_from(["!!!", "   ", "--"]),
                                               min_size=1, max_size=3)))
    elif kind == "notebook":
        body["notebook"] = draw(json_values.filter(lambda v: not isinstance(v, str)))
    elif kind == "notebook-string":
        body["notebook"] = draw(st.text(max_size=200))
    elif kind == "file-path":
        body["files"] = [{"path": draw(st.sampled_from(BAD_PATHS)), "content": "x"}]
    elif kind == "file-base64":
        body["files"] = [{"path": "ok.bin", "content_base64": draw(
            st.text(min_size=1, max_size=20).filter(lambda s: not _is_b64(s)))}]
    elif kind == "file-both":
        body["files"] = [{"path": "ok.txt", "content": "a", "content_base64": "YQ=="}]
    elif kind == "data-link":
        body["data_links"] = [draw(st.sampled_from([
            {"name": "", "target": "/data"}, {"name": "x", "target": "relative/path"},
            {"name": "x", "target": "/data", "size": -1}, {"name": "x", "target": "/a/../etc"},
            {"name": "x"}, {"name": "x", "target": "/d", "size": "big"}, "not-an-object",
            {"name": "x", "target": "ftp://host/file"}, {"name": "!!", "target": "/d"},
        ]))]
    elif kind == "environment":
        body["environment"] = draw(st.sampled_from([
            {"path": "setup.py", "content": "x"}, {"path": "../requirements.txt", "content": "x"},
            {"path": "requirements.txt"}, "requirements.txt",
        ]))
    elif kind == "file-clash":
        clash = draw(st.sampled_from(CLASHING_FILES))
        body["files"] = [{"path": path, "content": "x"} for path, _ in clash]
        body["environment"] = {"path": clash[0][1] or "requirements.txt", "content": "numpy\n"}
    elif kind == "half-character":
        body["notebook"] = notebook_with(draw(half_characters), draw(st.text(max_size=10)),
                                         draw(st.sampled_from(["source", "output", "key"])))
    elif kind == "summary-huge":
        body["summary"] = "s" * draw(st.integers(5001, 50_000))
    elif kind == "extra-nesting":  # deeper than any JSON library recurses
        depth = draw(st.integers(2000, 50_000))
        return (b'{"title": "deep", "notebook": {"nbformat": 4, "nbformat_minor": 5, '
                b'"metadata": {}, "cells": ' + b"[" * depth + b"]" * depth + b"}}")
    elif kind == "resources":
        body["resources"] = draw(st.one_of(st.lists(st.integers(), min_size=1),
                                           st.dictionaries(st.text(max_size=3), st.lists(
                                               st.integers(), min_size=1), min_size=1)))
    return json.dumps(body).encode()


def notebook_with(half: str, text: str, where: str) -> dict:
    """The valid notebook with a lone surrogate in a cell's source, an output or a key."""
    nb = json.loads(json.dumps(VALID_NB))
    code = nb["cells"][1]
    if where == "source":
        code["source"] = text + half + text
    elif where == "output":
        code["outputs"][0]["text"] = half + text
    else:
        nb["metadata"][text + half] = text
    return nb


def _is_b64(text: str) -> bool:
    import base64
    import binascii

    try:
        base64.b64decode(text, validate=True)
        return True
    except (binascii.Error, ValueError):
        return False


raw_bodies = st.one_of(
    st.binary(max_size=300),  # not JSON at all, often not UTF-8
    st.binary(max_size=50).map(lambda b: b'{"title": "x", "notebook": "' + b + b'\xff\xfe"}'),
    json_values.map(lambda v: json.dumps(v).encode()),  # JSON, but not an object of ours
)


class MalformedSubmissionTests(TestCase):
    @classmethod
    def setUpTestData(cls):
        cls.user = make_user("fuzzy")

    def post(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Each generated example runs in its own transaction, so the login is made in it.
        self.client.force_login(self.user)
        return self.client.post(*args, **kwargs)

    def assert_refused(self, response):
        self.assertGreaterEqual(response.status_code, 400, response.content[:300])
        self.assertLess(response.status_code, 500, response.content[:300])
        self.assertTrue(json.loads(response.content)["error"])
        for model in (Example, Revision, Submission, DataLink, Job):
            self.assertEqual(model.objects.count(), 0, model.__name__)
        staging = Path(settings.GALLERY_STAGING_DIR)
        self.assertFalse(staging.exists() and any(staging.iterdir()))

    @hsettings(max_examples=300, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=malformed_json())
    def test_it_refuses_malformed_json_submissions(self, body):
        self.assert_refused(self.post("/api/v1/submissions", data=body,
                                             content_type="application/json"))

    @hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=raw_bodies)
    def test_it_refuses_bodies_that_are_not_submissions(self, body):
        self.assert_refused(self.post("/api/v1/submissions", data=body,
                                             content_type="application/json"))

    @hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(notebook=st.binary(max_size=200), name=st.sampled_from(
        ["nb.ipynb", "../nb.ipynb", "nb.txt", "x\x00.ipynb", "\udcff.ipynb"]),
        title=st.one_of(st.just(""), st.text(max_size=5)))
    def test_it_refuses_malformed_multipart_submissions(self, notebook, name, title):
        upload = SimpleUploadedFile(name.encode("utf-8", "surrogateescape").decode(
            "utf-8", "replace"), notebook)
        self.assert_refused(self.post("/api/v1/submissions",
                                             {"notebook": upload, "title": title}))

    @hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(half=half_characters, text=st.text(max_size=10),
           where=st.sampled_from(["source", "output", "key"]))
    def test_it_refuses_multipart_notebooks_with_half_a_character(self, half, text, where):
        # ensure_ascii writes the surrogate as an escape: the file itself is plain UTF-8.
        upload = SimpleUploadedFile("nb.ipynb", json.dumps(notebook_with(half, text, where))
                                    .encode())
        response = self.post("/api/v1/submissions", {"notebook": upload, "title": "Half"})
        self.assert_refused(response)
        self.assertIn("not valid Unicode", json.loads(response.content)["error"])

    def test_it_refuses_a_wrong_content_type(self):
        self.assert_refused(self.post("/api/v1/submissions", data=b"title=x",
                                             content_type="text/plain"))

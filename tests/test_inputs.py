"""Addresses, queries and form fields no database takes, and bodies Django cannot parse, are
refused before any view: JSON under /api/, a page elsewhere; never a 500 (PostgreSQL refuses
NUL in a query parameter with an error)."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from .base import make_user, notebook_bytes, stage

# A NUL, an undecodable percent-escape (%FF) and an escaped lone surrogate (%ED%A0%80), in
# the address or a query parameter of every kind of view: the API, the pages, the admin.
REFUSED_URLS = [
    "/api/v1/examples?tag=%00", "/api/v1/examples?q=%00", "/api/v1/examples?state=%00",
    "/api/v1/examples/%00", "/api/v1/examples/%00/use-plan",
    "/api/v1/examples/hello-example/use-plan?folder=%00", "/api/v1/jobs/%00",
    "/api/v1/submissions/%00", "/api/v1/examples?tag=%FF", "/api/v1/examples?q=%ED%A0%80",
    "/?tag=%00", "/?q=%00", "/?page=%00", "/?tag=%FF",
    "/stage/?example=%00", "/stage/?example=%ED%A0%80", "/examples/%00/",
    "/examples/hello-example/?x%00=1", "/submissions/?%00", "/notifications/?page=%00",
    "/admin/gallery/example/?q=%00", "/admin/gallery/submission/?state__exact=%00",
    "/admin/gallery/example/%00/change/", "/previews/%00.html", "/health?%00",
]


@pytest.fixture
def reviewer_client(db) -> Client:  # type: ignore[no-untyped-def]
    reviewer = make_user("rita", reviewer=True)
    reviewer.is_staff = True
    reviewer.save()
    stage(reviewer)
    client = Client()
    client.force_login(reviewer)
    return client


def assert_refused(response, status: int, path: str) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.content[:300]
    if path.startswith("/api/"):
        assert response["Content-Type"].startswith("application/json")
        return json.loads(response.content)["error"]
    assert response["Content-Type"].startswith("text/html")
    return response.content.decode()


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_it_refuses_nul_and_undecodable_text_in_an_address_or_query(reviewer_client, url):
    path, _, query = url.partition("?")
    status = 400 if query else 404
    text = assert_refused(reviewer_client.get(url), status, path)
    assert ("query string" if query else "address") in text


@pytest.mark.parametrize(("path", "fields"), [
    ("/stage/", {"example": "\x00", "title": "t"}),
    ("/stage/", {"title": "A\x00title", "notebook": SimpleUploadedFile("a.ipynb", b"{}")}),
    ("/examples/hello-example/use", {"folder": "\x00"}),
    ("/submissions/1/review", {"decision": "approve", "comment": "\x00"}),
    ("/admin/gallery/example/", {"action": "\x00", "_selected_action": "1"}),
    ("/api/v1/submissions", {"title": "A\x00title",
                             "notebook": SimpleUploadedFile("a.ipynb", notebook_bytes())}),
    ("/api/v1/examples/hello-example/use", {"folder\x00": "x"}),
])
def test_it_refuses_a_form_field_with_a_nul(reviewer_client, path, fields):
    text = assert_refused(reviewer_client.post(path, fields), 400, path)
    assert "NUL" in text


def test_it_refuses_a_form_body_that_is_not_utf8_with_a_page(reviewer_client):
    r = reviewer_client.post("/stage/", data=b"title=x", content_type=(
        "application/x-www-form-urlencoded; charset=latin-1"))
    assert "UTF-8" in assert_refused(r, 400, "/stage/")


def test_it_refuses_a_malformed_multipart_page_form_with_a_page(reviewer_client):
    r = reviewer_client.post("/stage/", data=b"x", content_type="multipart/form-data")
    assert "boundary" in assert_refused(r, 400, "/stage/")


def test_it_answers_api_errors_django_makes_itself_as_json(reviewer_client):
    r = reviewer_client.delete("/api/v1/examples")
    assert "DELETE" in assert_refused(r, 405, "/api/")
    assert r["Allow"] == "GET"
    assert "no such address" in assert_refused(reviewer_client.get("/api/v1/nowhere"), 404,
                                               "/api/")



@pytest.mark.django_db
def test_it_answers_a_host_it_does_not_serve_in_json_under_the_api_only():
    client = Client()
    client.force_login(make_user("ursula"))
    r = client.get("/api/v1/examples", headers={"Host": "evil.example"})
    assert "Host header" in assert_refused(r, 400, "/api/")
    page = client.get("/", headers={"Host": "evil.example"})
    assert page.status_code == 400 and page["Content-Type"].startswith("text/html")


@pytest.mark.django_db
def test_it_passes_ordinary_text_through():
    client = Client()
    client.force_login(make_user("ursula"))
    r = client.get("/api/v1/examples?q=%C3%A9t%C3%A9+caf%C3%A9&tag=a%2Bb")
    assert r.status_code == 200, r.content
    assert client.get("/?q=%E2%9C%93").status_code == 200

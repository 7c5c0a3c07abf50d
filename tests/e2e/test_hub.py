"""The gallery as a real JupyterHub service: hub login, OAuth, reviewers, the contents backend.

One hub for the module (jupyterhub_config.py of the repository, as `make demo` runs it), with
access to the gallery limited to a hub group so that a hub user without access exists too.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.base import notebook_bytes

from .hub import RunningHub, start_hub

# e2e only: the hub's gallery keeps a SQLite database of its own, so the PostgreSQL pass of
# the worker tests would only repeat this module.
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    running = start_hub(tmp_path_factory.mktemp("hub"), env={
        "GALLERY_HUB_ACCESS_GROUP": "gallery-users",  # demo-user and demo-reviewer only
        "GALLERY_DEMO_EXTRA_USERS": "outsider",
    })
    try:
        yield running
    finally:
        running.stop()


def wait_json(browser: requests.Session, url: str, done: Any, timeout: float = 120,
              **kwargs: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = browser.get(url, timeout=30, **kwargs).json()
        if done(body):
            return body
        assert time.monotonic() < deadline, f"timed out waiting on {url}: {body}"
        time.sleep(0.5)


def gallery_login(hub: RunningHub, username: str) -> requests.Session:
    browser = hub.login(username)
    page = browser.get(hub.gallery("/"), timeout=30)
    assert page.status_code == 200 and page.url == hub.gallery("/"), page.url
    return browser


def csrf(browser: requests.Session) -> dict[str, str]:
    return {"X-CSRFToken": browser.cookies.get("gallery-csrftoken", path="/services/gallery/")}


def test_it_logs_in_through_the_hub_with_cookies_of_its_own(hub: RunningHub) -> None:
    browser = hub.login("demo-user")
    page = browser.get(hub.gallery("/stage/"), timeout=30)
    hops = [urlsplit(r.url).path for r in page.history]
    assert hops == ["/services/gallery/stage/", "/services/gallery/login/",
                    "/hub/api/oauth2/authorize", "/services/gallery/oauth_callback"]
    assert page.status_code == 200 and page.url == hub.gallery("/stage/")
    authorize = parse_qs(urlsplit(page.history[2].url).query)
    assert authorize["redirect_uri"] == ["/services/gallery/oauth_callback"]
    assert authorize["code_challenge_method"] == ["S256"]
    ours = {c.name: c.path for c in browser.cookies if c.name.startswith("gallery-")}
    assert ours == {"gallery-sessionid": "/services/gallery/",
                    "gallery-csrftoken": "/services/gallery/"}
    menu = browser.get(f"{hub.url}/hub/home", timeout=30).text
    assert 'href="/services/gallery/"' in menu  # the Services menu lists the gallery


def test_it_lets_reviewers_into_the_admin_and_gives_others_a_403(hub: RunningHub) -> None:
    reviewer = hub.login("demo-reviewer")
    desk = reviewer.get(hub.gallery("/admin/"), timeout=30)
    assert desk.status_code == 200 and "The queue, examples and jobs" in desk.text
    user = gallery_login(hub, "demo-user")
    refused = user.get(hub.gallery("/admin/"), timeout=30)
    assert refused.status_code == 403 and not refused.history  # no detour, no loop


def test_it_refuses_a_forged_state(hub: RunningHub) -> None:
    browser = hub.login("demo-user")
    start = browser.get(hub.gallery("/login/"), allow_redirects=False, timeout=30)
    assert urlsplit(start.headers["Location"]).path == "/hub/api/oauth2/authorize"
    forged = browser.get(hub.gallery("/oauth_callback"), params={"code": "x", "state": "forged"},
                         allow_redirects=False, timeout=30)
    assert forged.status_code == 403
    assert browser.get(hub.gallery("/"), allow_redirects=False, timeout=30).status_code == 302


def test_it_refuses_a_code_issued_for_another_pkce_verifier(hub: RunningHub) -> None:
    # A code obtained in one browser, delivered to another whose login is under way: the
    # state matches there, but the verifier does not, and the hub refuses the exchange.
    victim, attacker = hub.login("demo-user"), hub.login("demo-user")
    first = victim.get(hub.gallery("/login/"), allow_redirects=False, timeout=30)
    second = attacker.get(hub.gallery("/login/"), allow_redirects=False, timeout=30)
    to_callback = victim.get(hub.url + first.headers["Location"], allow_redirects=False,
                             timeout=30)
    code = parse_qs(urlsplit(to_callback.headers["Location"]).query)["code"][0]
    state = parse_qs(urlsplit(second.headers["Location"]).query)["state"][0]
    response = attacker.get(hub.gallery("/oauth_callback"), params={"code": code, "state": state},
                            allow_redirects=False, timeout=30)
    assert response.status_code == 403 and "did not accept" in response.text
    assert attacker.get(hub.gallery("/"), allow_redirects=False, timeout=30).status_code == 302
    assert code not in hub.log_text()  # never logged, by the gallery or the hub


def test_it_ends_the_gallery_session_after_a_hub_logout(hub: RunningHub) -> None:
    browser = gallery_login(hub, "demo-user")
    browser.get(f"{hub.url}/hub/logout", timeout=30)
    after = browser.get(hub.gallery("/"), allow_redirects=False, timeout=30)
    assert after.status_code == 302
    assert after.headers["Location"].startswith("/services/gallery/login/")
    final = browser.get(hub.gallery("/"), timeout=30)
    assert urlsplit(final.url).path == "/hub/login"  # back to the hub's login form


def test_it_keeps_out_a_hub_user_without_access(hub: RunningHub) -> None:
    outsider = hub.login("outsider")
    page = outsider.get(hub.gallery("/"), timeout=30)
    assert page.status_code == 403 and "permission to access" in page.text  # the hub says no
    # Only the login that was started is in its session; nobody is logged in.
    assert outsider.get(hub.gallery("/"), allow_redirects=False, timeout=30).status_code == 302
    token = hub.user_token(outsider, "outsider")
    api = requests.get(hub.gallery("/api/v1/examples"), timeout=30,
                       headers={"Authorization": f"token {token}"})
    assert api.status_code == 401
    assert 'href="/services/gallery/"' not in outsider.get(f"{hub.url}/hub/home").text


def test_it_refuses_api_tokens_without_access_to_the_gallery(hub: RunningHub) -> None:
    browser = hub.login("demo-user")
    narrow = hub.user_token(browser, "demo-user", scopes=["read:users:name!user"])
    response = requests.get(hub.gallery("/api/v1/examples"), timeout=30,
                            headers={"Authorization": f"token {narrow}"})
    assert response.status_code == 401


def test_it_stages_approves_and_uses_through_a_real_user_server(hub: RunningHub) -> None:
    user = gallery_login(hub, "demo-user")
    reviewer = gallery_login(hub, "demo-reviewer")
    user_token = hub.user_token(hub.login("demo-user"), "demo-user")
    reviewer_token = hub.user_token(hub.login("demo-reviewer"), "demo-reviewer")
    as_user = {"Authorization": f"token {user_token}"}

    # Stage with the session and its CSRF token, as the pages do.
    notebook = notebook_bytes()
    staged = user.post(hub.gallery("/api/v1/submissions"), headers=csrf(user), timeout=60,
                       files={"notebook": ("hello.ipynb", notebook)},
                       data={"title": "Hub hello", "slug": "hub-hello", "tags": "demo",
                             "data_links": json.dumps([{"name": "era5",
                                                        "target": "/shared/era5"}])})
    assert staged.status_code == 201, staged.text
    pk = staged.json()["id"]
    approve = reviewer.post(hub.gallery(f"/submissions/{pk}/review"), headers=csrf(reviewer),
                            data={"decision": "approve", "comment": "fine"}, timeout=60)
    assert approve.status_code == 200
    wait_json(user, hub.gallery("/api/v1/examples/hub-hello"),
              lambda e: e.get("state") == "approved", headers=as_user)

    # Someone else's folder of that name is already there: it must stay untouched.
    home = hub.home / "demo-user"
    (home / "examples" / "hub-hello").mkdir(parents=True)
    (home / "examples" / "hub-hello" / "mine.txt").write_text("my work")

    # Use with the user's hub token; the worker starts the server and writes through it.
    queued = requests.post(hub.gallery("/api/v1/examples/hub-hello/use"), headers=as_user,
                           timeout=60)
    assert queued.status_code == 202, queued.text
    job_url = hub.gallery(f"/api/v1/jobs/{queued.json()['id']}")
    job = wait_json(user, job_url, lambda j: j["state"] in ("done", "failed"), headers=as_user)
    assert job["state"] == "done", job["message"]
    assert job["result"]["folder"] == "hub-hello-2"
    copy = home / "examples" / "hub-hello-2"
    assert (copy / "hello.ipynb").read_bytes() == notebook  # byte for byte
    provenance = json.loads((copy / ".gallery-provenance.json").read_text())
    assert provenance["job"] == queued.json()["id"] and provenance["user"] == "demo-user"
    assert "cannot make symbolic links" in (copy / "DATA.md").read_text()
    assert (home / "examples" / "hub-hello" / "mine.txt").read_text() == "my work"

    # The link in the job result opens the copy in the user's JupyterLab.
    lab = hub.login("demo-user").get(hub.url + job["open_url"], timeout=60)
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    assert urlsplit(lab.url).path == job["open_url"]

    # Another user's token acts for that user only: the reviewer's Use lands in the
    # reviewer's home, and demo-user's token cannot even see that job.
    other = {"Authorization": f"token {reviewer_token}"}
    theirs = requests.post(hub.gallery("/api/v1/examples/hub-hello/use"), headers=other,
                           timeout=60)
    assert theirs.status_code == 202
    their_job = hub.gallery(f"/api/v1/jobs/{theirs.json()['id']}")
    done = wait_json(reviewer, their_job, lambda j: j["state"] in ("done", "failed"),
                     headers=other)
    assert done["state"] == "done", done["message"]
    assert (hub.home / "demo-reviewer" / "examples" / "hub-hello" / "hello.ipynb").is_file()
    assert not (home / "examples" / "hub-hello-3").exists()
    assert requests.get(their_job, headers=as_user, timeout=30).status_code == 404
    assert user_token not in hub.log_text() and reviewer_token not in hub.log_text()


def test_it_keeps_the_hub_token_on_the_server_only(hub: RunningHub) -> None:
    from django.contrib.sessions.serializers import JSONSerializer
    from django.core import signing

    browser = gallery_login(hub, "demo-user")
    session_key = browser.cookies.get("gallery-sessionid", path="/services/gallery/")
    with sqlite3.connect(hub.data / "gallery.sqlite3") as db:
        (data,) = db.execute("SELECT session_data FROM django_session WHERE session_key = ?",
                             (session_key,)).fetchone()
    session = signing.loads(data, key=hub.env["GALLERY_SECRET_KEY"],
                            salt="django.contrib.sessions.SessionStore",
                            serializer=JSONSerializer)
    token = session["hub_token"]
    assert len(token) >= 20
    seen = [browser.get(hub.gallery(path), timeout=30).text
            for path in ("/", "/submissions/", "/api/v1/examples", "/api/v1/submissions")]
    seen += [f"{c.name}={c.value}" for c in browser.cookies]
    assert not [text for text in seen if token in text]
    assert token not in hub.log_text()


def test_it_starts_a_server_and_says_so_plainly_when_it_is_too_slow(hub: RunningHub,
                                                                     settings) -> None:  # type: ignore[no-untyped-def]
    from gallery.homes import contents

    settings.HUB_ENABLED = True
    settings.JUPYTERHUB_API_URL = f"http://127.0.0.1:{hub.env['GALLERY_DEMO_HUB_PORT']}/hub/api"
    settings.JUPYTERHUB_API_TOKEN = hub.token
    with pytest.raises(contents.ContentsError, match="no user named"):
        contents.start_server("nobody-here", timeout=5)
    with pytest.raises(contents.ContentsError, match="did not start within 0 seconds"):
        contents.start_server("outsider", timeout=0)
    assert contents.start_server("outsider", timeout=120) == "/user/outsider/"

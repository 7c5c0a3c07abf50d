"""The hub's client and login protocol without a hub (a fake one stands in where a hub must
answer).

What needs a real JupyterHub (the whole OAuth flow, hub logout, spawning) is in
tests/e2e/test_hub.py; the pages of a login are tests/test_login.py, the contents backend
tests/test_contents.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gallery import hub

ROOT = Path(__file__).resolve().parent.parent


class FakeHub:
    """A hub on 127.0.0.1 that answers every call as `answer(method, path, token)` says, with
    (status, content type, body): a hub that misbehaves, or one that knows a few tokens."""

    def __init__(self, answer: Callable[[str, str, str], tuple[int, str, bytes]]) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def reply(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                token = self.headers.get("Authorization", "").partition(" ")[2]
                status, content_type, body = fake.answer(self.command, self.path, token)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = reply

            def log_message(self, *args: Any) -> None:
                pass

        self.answer = answer
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.api_url = f"http://127.0.0.1:{self.server.server_address[1]}/hub/api"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


HTML = "text/html; charset=utf-8"
# Answers with 200 that no hub gives: a proxy's or portal's page, JSON of another shape.
NOT_A_USER = [
    (HTML, b"<!DOCTYPE html><html><body><h1>Maintenance</h1></body></html>"),
    ("application/json", b"[]"),
    ("application/json", b'[{"name": "ursula", "scopes": ["access:services"]}]'),
    ("application/json", b'"ursula"'),
    ("application/json", b"42"),
    ("application/json", b"null"),
    ("application/json", b'{"kind": "user", "scopes": ["access:services"]}'),
    ("application/json", b'{"name": ["ursula"], "scopes": ["access:services"]}'),
    ("application/json", b'{"name": "ursula", "scopes": "access:services"}'),
    ("application/json", b'{"name": "ursula", "scopes": null}'),
]
NOT_A_TOKEN = [
    (HTML, b"<html><body>Please log in</body></html>"),
    ("application/json", b"[]"),
    ("application/json", b'"t0ken"'),
    ("application/json", b"{}"),
    ("application/json", b'{"access_token": 5}'),
    ("application/json", b'{"access_token": ""}'),
]
GOOD_TOKEN = ("application/json", b'{"access_token": "t0ken", "token_type": "Bearer"}')
ACCESS = {"JUPYTERHUB_OAUTH_ACCESS_SCOPES": {"access:services"}}


def test_it_computes_the_pkce_challenge_of_rfc_7636() -> None:
    # The example of RFC 7636, appendix B.
    assert (hub.pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")
            == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM")


def test_it_reads_the_hub_environment_of_a_managed_service(tmp_path: Path) -> None:
    env = {**os.environ, "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api",
           "JUPYTERHUB_API_TOKEN": "t", "JUPYTERHUB_SERVICE_PREFIX": "/services/gallery/",
           "JUPYTERHUB_CLIENT_ID": "service-gallery", "GALLERY_DATA_DIR": str(tmp_path)}
    for key in ("JUPYTERHUB_OAUTH_CALLBACK_URL", "JUPYTERHUB_OAUTH_ACCESS_SCOPES"):
        env.pop(key, None)
    code = ("from gallery import settings as s; import json; print(json.dumps(["
            "s.SESSION_COOKIE_NAME, s.SESSION_COOKIE_PATH, s.CSRF_COOKIE_NAME,"
            " s.CSRF_COOKIE_PATH, s.LOGIN_URL, s.JUPYTERHUB_OAUTH_CALLBACK_URL,"
            " sorted(s.JUPYTERHUB_OAUTH_ACCESS_SCOPES)]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == [
        "gallery-sessionid", "/services/gallery/", "gallery-csrftoken", "/services/gallery/",
        "hub-login", "/services/gallery/oauth_callback",
        ["access:services", "access:services!service=gallery"]]
    env.pop("JUPYTERHUB_API_TOKEN")
    failed = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                            text=True)
    assert failed.returncode != 0 and "JUPYTERHUB_API_TOKEN is empty" in failed.stderr

"""Talking to the gallery: where it is, sending a submission, and saying what went wrong.

The single-user server sends under its own hub token (JUPYTERHUB_API_TOKEN), which the hub
gives the scope to use the gallery; the token never leaves this process.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

SUBMISSIONS_PATH = "api/v1/submissions"
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_TIMEOUT = 120.0


class StageError(Exception):
    """A submission that cannot go ahead; `status` for the browser, `kind` for its title."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


@dataclass(frozen=True)
class Config:
    gallery_url: str
    public_url: str
    token: str
    max_bytes: int
    timeout: float

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        url = env.get("GALLERY_URL", "").strip()
        if url and not url.endswith("/"):
            url += "/"
        try:
            max_bytes = int(env.get("GALLERY_STAGE_MAX_BYTES") or DEFAULT_MAX_BYTES)
        except ValueError:
            max_bytes = DEFAULT_MAX_BYTES
        return cls(gallery_url=url, public_url=env.get("GALLERY_PUBLIC_URL", "").strip(),
                   token=env.get("JUPYTERHUB_API_TOKEN", "").strip(), max_bytes=max_bytes,
                   timeout=DEFAULT_TIMEOUT)

    def require(self) -> None:
        """Refuse early, in plain words, when this server cannot reach the gallery as anyone."""
        if not self.gallery_url:
            raise StageError(503, "unreachable",
                             "This Jupyter server does not know where the gallery is "
                             "(GALLERY_URL is not set). Ask the hub's administrators.")
        if not self.token:
            raise StageError(403, "not-allowed",
                             "This Jupyter server has no hub identity (it was not started by "
                             "the hub), so the gallery cannot tell who you are.")

    def link(self, path_or_url: str) -> str:
        """A link for the browser: the gallery's own answer, made absolute only when the
        gallery's public address differs from the hub's."""
        return urljoin(self.public_url, path_or_url) if self.public_url else path_or_url


def explain(status: int, payload: Any, gallery_url: str) -> StageError:
    """The gallery's refusal, as something a contributor can act on."""
    detail = payload.get("error") if isinstance(payload, dict) else None
    detail = str(detail or "").strip()
    if status == 401:
        return StageError(403, "not-allowed",
                          "The gallery did not accept your hub identity. Log out of the hub, "
                          "log in again and retry; if it persists, your account may not be "
                          "allowed to use the gallery.")
    if status == 403:
        return StageError(403, "not-allowed",
                          f"The gallery does not allow this: {detail or 'permission denied.'}")
    if status == 404 and detail:
        return StageError(404, "invalid", f"{detail} Untick 'new revision' to submit it as a "
                                          "new example.")
    if status == 413:
        return StageError(413, "too-large",
                          f"Too large: {detail or 'the gallery refused the size.'} Leave out "
                          "big files and declare them as data links instead.")
    if status == 409:
        return StageError(409, "invalid", detail or "The gallery refused it in its current state.")
    if 400 <= status < 500:
        return StageError(400, "invalid",
                          f"The gallery found the submission invalid: {detail or status}")
    return StageError(502, "unreachable",
                      f"The gallery at {gallery_url} failed to take the submission "
                      f"(HTTP {status}). Try again in a few minutes.")


async def send_submission(config: Config, body: dict[str, Any]) -> dict[str, Any]:
    """POST the submission as JSON; the gallery's answer, or StageError."""
    url = urljoin(config.gallery_url, SUBMISSIONS_PATH)
    data = json.dumps(body).encode()
    request = HTTPRequest(
        url, method="POST", body=data, request_timeout=config.timeout, connect_timeout=10,
        headers={"Authorization": f"token {config.token}", "Content-Type": "application/json",
                 "Accept": "application/json"},
        follow_redirects=False,
    )
    try:
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
    except HTTPClientError as exc:  # pragma: no cover - raise_error=False returns instead
        response = exc.response
    except (OSError, TimeoutError) as exc:
        raise StageError(502, "unreachable",
                         f"The gallery at {config.gallery_url} cannot be reached ({exc}). "
                         "Try again later, or tell the hub's administrators.") from None
    if response is None or response.code == 599:
        reason = getattr(response, "error", None) or "no answer"
        raise StageError(502, "unreachable",
                         f"The gallery at {config.gallery_url} cannot be reached ({reason}). "
                         "Try again later, or tell the hub's administrators.")
    try:
        payload = json.loads(response.body or b"null")
    except ValueError:
        payload = None
    if response.code in (301, 302, 303, 307, 308):
        # The hub's login redirect: the token was not taken as an identity.
        raise explain(401, payload, config.gallery_url)
    if response.code != 201 or not isinstance(payload, dict):
        raise explain(response.code, payload, config.gallery_url)
    return payload


# --- browsing and Use: the gallery's read API, under the same identity -----------------------

API_PATH = "api/v1/"
BROWSE_TIMEOUT = 30.0


def passed_on(status: int, payload: Any, gallery_url: str) -> StageError:
    """The gallery's own refusal, status and message as it gave them (a 5xx or a redirect
    becomes 502 or 403 with a sentence a user can act on)."""
    detail = payload.get("error") if isinstance(payload, dict) else None
    detail = str(detail or "").strip()
    if status in (301, 302, 303, 307, 308) or status == 401:
        return StageError(403, "not-allowed",
                          "The gallery did not accept your hub identity. Log out of the hub, "
                          "log in again and retry.")
    if 400 <= status < 500:
        kind = {403: "not-allowed", 404: "not-found", 409: "conflict",
                413: "too-large"}.get(status, "invalid")
        return StageError(status, kind, detail or f"The gallery refused the request "
                                                  f"(HTTP {status}).")
    return StageError(502, "unreachable",
                      f"The gallery at {gallery_url} failed to answer (HTTP {status}). "
                      "Try again in a few minutes.")


async def call(config: Config, method: str, path: str, *, query: dict[str, str] | None = None,
               body: dict[str, Any] | None = None) -> Any:
    """One call of the gallery's JSON API (`path` under /api/v1/, already validated by the
    caller); its JSON answer on 2xx, else StageError with the gallery's status and message."""
    return (await exchange(config, method, path, query=query, body=body))[1]


async def exchange(config: Config, method: str, path: str, *,
                   query: dict[str, str] | None = None,
                   body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """As `call`, with the gallery's 2xx status too (202 "not ready yet" vs 200)."""
    config.require()
    url = urljoin(config.gallery_url, API_PATH + path)
    if query:
        url += "?" + urlencode({k: v for k, v in query.items() if v})
    request = HTTPRequest(
        url, method=method, request_timeout=BROWSE_TIMEOUT, connect_timeout=10,
        body=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"token {config.token}", "Accept": "application/json",
                 **({"Content-Type": "application/json"} if body is not None else {})},
        follow_redirects=False,
    )
    try:
        response = await AsyncHTTPClient().fetch(request, raise_error=False)
    except (OSError, TimeoutError) as exc:
        raise StageError(502, "unreachable",
                         f"The gallery at {config.gallery_url} cannot be reached ({exc}). "
                         "Try again later, or tell the hub's administrators.") from None
    if response.code == 599:
        raise StageError(502, "unreachable",
                         f"The gallery at {config.gallery_url} cannot be reached "
                         f"({response.error or 'no answer'}). Try again later.")
    try:
        payload = json.loads(response.body or b"null")
    except ValueError:
        payload = None
    if not 200 <= response.code < 300 or payload is None:
        raise passed_on(response.code, payload, config.gallery_url)
    return response.code, payload

"""JupyterHub's side of the gallery: the OAuth login protocol (PKCE, the authorize address,
the code exchange) and the hub API client (who owns a token, whether they review, the
service's own session for other calls). Nothing here handles a request or changes a row.

The login's requests (its views, the session middleware, hub tokens on the API) are
gallery/login.py; the `contents` Use backend, which starts users' servers through the hub, is
gallery/homes/contents.py. The `redirect_uri` is sent exactly as the hub registered it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import requests
from django.conf import settings
from django.core.cache import cache
from pydantic import BaseModel, Field, ValidationError

log = logging.getLogger(__name__)

PENDING = "hub_oauth"  # session key: the login under way (state, verifier, next, started)
LOGIN_TTL = 600  # seconds a started login may take before its state is refused


class HubUnavailable(Exception):
    """The hub did not answer, or not as a hub does; not the same as the hub saying no."""


M = TypeVar("M", bound=BaseModel)


class HubUser(BaseModel):
    """What the gallery reads of the hub's model of a token's owner (`GET /user`)."""

    name: str = Field(min_length=1)
    kind: str = "user"
    scopes: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)


class HubToken(BaseModel):
    """The hub's answer to an OAuth code exchange (`POST /oauth2/token`)."""

    access_token: str = Field(min_length=1)


def _answer(response: requests.Response, model: type[M]) -> M:
    """A 200 answer of the hub read as `model`; anything else in its body (an HTML page from
    a proxy, a list, a number) is a hub not answering as a hub, never a 500 here."""
    try:
        return model.model_validate_json(response.content)
    except ValidationError:
        raise HubUnavailable(f"HTTP 200 but not a {model.__name__} "
                             f"({response.headers.get('Content-Type', 'no type')})") from None


def api_url(path: str) -> str:
    """The address of a call of the hub's API."""
    return settings.JUPYTERHUB_API_URL.rstrip("/") + path


def service_session() -> requests.Session:
    """Calls to the hub API as the gallery service itself."""
    session = requests.Session()
    session.headers["Authorization"] = f"token {settings.JUPYTERHUB_API_TOKEN}"
    return session


def _ask(method: str, path: str, *, refused: tuple[int, ...],
         **kwargs: Any) -> requests.Response | None:
    """One call to the hub's API: its 200 answer, None when it answers with a status in
    `refused`, HubUnavailable when it does not answer or fails otherwise."""
    try:
        response = requests.request(method, api_url(path), timeout=10, **kwargs)
    except requests.RequestException as exc:
        raise HubUnavailable(type(exc).__name__) from None
    if response.status_code in refused:
        return None
    if response.status_code != 200:
        raise HubUnavailable(f"HTTP {response.status_code}")
    return response


def fetch_user(token: str) -> dict[str, Any] | None:
    """The hub's model of the token's owner; None when the hub refuses the token."""
    response = _ask("GET", "/user", refused=(401, 403, 404),
                    headers={"Authorization": f"token {token}"})
    if response is None:
        return None
    model = _answer(response, HubUser).model_dump()
    if model["kind"] != "user" or not has_access(model):
        return None  # a service's token, or a user who may not use this service
    return model


def user_exists(name: str) -> bool:
    """Whether the hub has a user of this name (asked with the gallery's own token, which
    reads user names); False without a hub. HubUnavailable when the hub does not answer."""
    if not settings.JUPYTERHUB_API_URL or not settings.JUPYTERHUB_API_TOKEN:
        return False
    response = _ask("GET", f"/users/{quote(name, safe='')}", refused=(403, 404),
                    headers={"Authorization": f"token {settings.JUPYTERHUB_API_TOKEN}"})
    if response is None:
        return False
    return _answer(response, HubUser).name == name


def has_access(model: dict[str, Any]) -> bool:
    """Whether the hub granted this token access to the gallery service."""
    return bool(settings.JUPYTERHUB_OAUTH_ACCESS_SCOPES & set(model.get("scopes", [])))


def user_for_token(token: str) -> tuple[dict[str, Any] | None, bool]:
    """`fetch_user`, remembered for a short while (keyed by a hash, never the token itself),
    and whether the hub was asked just now (False: from what a process remembered).

    A hub that does not answer as a hub raises HubUnavailable, and nothing is remembered:
    the caller is told to try again, never that a good token is bad.
    """
    key = "hub-token:" + hashlib.sha256(token.encode()).hexdigest()
    cached = cache.get(key)
    if cached is not None:
        return cached or None, False
    model = fetch_user(token)
    cache.set(key, model or {}, settings.GALLERY_HUB_TOKEN_CACHE_SECONDS)
    return model, True


def is_reviewer_model(model: dict[str, Any]) -> bool:
    """Reviewers hold the review scope; membership of the review group is the fallback."""
    return (settings.GALLERY_REVIEW_SCOPE in model.get("scopes", [])
            or settings.GALLERY_REVIEW_GROUP in model.get("groups", []))


def reviewed_groups(model: dict[str, Any]) -> set[str]:
    """The groups a hub user reviews the examples of: `X` for each of their hub groups that
    GALLERY_GROUP_REVIEWERS names for `X` (`physics-reviewers` with `{group}-reviewers`)."""
    pattern = settings.GALLERY_GROUP_REVIEWERS
    if not pattern:
        return set()
    prefix, suffix = pattern.split("{group}")
    found = set()
    for name in model.get("groups", []):
        if (name != settings.GALLERY_REVIEW_GROUP and name.startswith(prefix)
                and name.endswith(suffix) and len(name) > len(prefix) + len(suffix)):
            found.add(name[len(prefix):len(name) - len(suffix)])
    return found


# --- login through the hub ----------------------------------------------------------------


def hub_url(path: str) -> str:
    """A browser-facing hub address such as `/hub/logout` (absolute with subdomains)."""
    base = settings.JUPYTERHUB_PUBLIC_HUB_URL or settings.JUPYTERHUB_BASE_URL
    return base.rstrip("/") + "/hub/" + path.lstrip("/")


def pkce_challenge(verifier: str) -> str:
    """The S256 challenge of a PKCE verifier (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def begin_login(session: Any, next_url: str) -> str:
    """Record a new login in the session; returns the hub's authorize URL to send the browser to."""
    state, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    session[PENDING] = {"state": state, "verifier": verifier, "next": next_url,
                        "started": time.time()}
    return hub_url("api/oauth2/authorize") + "?" + urlencode({
        "client_id": settings.JUPYTERHUB_CLIENT_ID,
        "redirect_uri": settings.JUPYTERHUB_OAUTH_CALLBACK_URL,
        "response_type": "code",
        "state": state,
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
    })


def exchange_code(code: str, verifier: str) -> str | None:
    """The hub token for an authorization code; None when the hub refuses the code."""
    response = _ask("POST", "/oauth2/token", refused=(400, 401, 403), data={
        "client_id": settings.JUPYTERHUB_CLIENT_ID,
        "client_secret": settings.JUPYTERHUB_API_TOKEN,
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": settings.JUPYTERHUB_OAUTH_CALLBACK_URL,
        "code_verifier": verifier,
    })
    return None if response is None else _answer(response, HubToken).access_token

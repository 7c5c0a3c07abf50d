"""Logging in through the hub, as requests: the login, admin login, OAuth callback and
logout views, the middleware that keeps a gallery session only as long as its hub token
works, and the check of hub tokens on the API.

Login is the OAuth code flow with the hub (the protocol is gallery/hub.py). The `state`, the
PKCE verifier and where to go next live in the server-side session (several gunicorn workers
must agree), and the hub token stays in the session, never in a cookie, a log line or a
response. The middleware asks the hub every few minutes whether that token still works, so a
hub logout or a revoked access ends the gallery session. The user a hub user becomes, with
review rights as the hub says, is `services.sync_hub_user`.

Without a hub (JUPYTERHUB_API_URL unset) the gallery uses Django's own login and no hub token
is accepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth import login as auth_login
from django.contrib.auth import logout as auth_logout
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import get_script_prefix, reverse
from django.utils.crypto import constant_time_compare
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST
from ninja.security import APIKeyHeader
from redis.exceptions import RedisError

from . import caching, hub, services

log = logging.getLogger(__name__)

TOKEN = "hub_token"  # session key: the hub token of the logged-in user
CHECKED = "hub_checked"  # session key: when the hub last confirmed that token


def _safe_next(request: HttpRequest, wanted: str) -> str:
    """Only a path of this gallery; anything else goes to the index."""
    prefix = get_script_prefix()
    if wanted and wanted.startswith(prefix) and url_has_allowed_host_and_scheme(
            wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return wanted
    return reverse("index")


def _refused(request: HttpRequest, message: str, status: int = 403) -> HttpResponse:
    return render(request, "gallery/login_failed.html", {"message": message}, status=status)


def _admin_refused(request: HttpRequest) -> HttpResponse:
    return _refused(request, "The reviewer's desk is for reviewers. Ask the centre to add you "
                             "to the reviewers if you should review examples.")


@require_GET
def login(request: HttpRequest) -> HttpResponse:
    """Start a login with the hub (the admin's login page comes here too)."""
    next_url = _safe_next(request, request.GET.get("next", ""))
    if not settings.HUB_ENABLED:
        return redirect(f"{reverse('login')}?{urlencode({'next': next_url})}")
    if request.user.is_authenticated:
        if next_url.startswith(reverse("admin:index")) and not request.user.is_staff:
            return _admin_refused(request)  # sending them back to the hub would loop
        return redirect(next_url)
    return redirect(hub.begin_login(request.session, next_url))


def admin_login(request: HttpRequest) -> HttpResponse:
    """The admin's login page: the hub under a hub, Django's own form without one."""
    if settings.HUB_ENABLED:
        return login(request)
    from django.contrib import admin

    return admin.site.login(request)


@require_GET
def oauth_callback(request: HttpRequest) -> HttpResponse:
    """Where the hub sends the browser back with a code: finish the login."""
    pending = request.session.pop(hub.PENDING, None)
    state = request.GET.get("state", "")
    if not settings.HUB_ENABLED:
        return _refused(request, "This gallery does not log in through a hub.", 404)
    if not pending or not state or not constant_time_compare(pending["state"], state):
        log.warning("hub login refused: the state does not match a login started here")
        return _refused(request, "This login did not start here or was already used. "
                                 "Open the gallery again to log in.")
    if time.time() - pending.get("started", 0) > hub.LOGIN_TTL:
        return _refused(request, "This login took too long. Open the gallery again to log in.")
    if "error" in request.GET or not request.GET.get("code"):
        log.warning("hub login refused by the hub: %s", request.GET.get("error", "no code")[:50])
        return _refused(request, "The hub did not let you into the gallery.")
    try:
        token = hub.exchange_code(request.GET["code"], pending["verifier"])
        model = hub.fetch_user(token) if token else None
    except hub.HubUnavailable as exc:
        log.warning("hub unreachable during login: %s", exc)
        return _refused(request, "The hub is not answering. Try again in a minute.", 503)
    if token is None:
        log.warning("hub login refused: the hub did not accept the code")
        return _refused(request, "The hub did not accept this login. Open the gallery again.")
    if model is None:
        return _refused(request, "Your hub account may not use the gallery. Ask the centre "
                                 "for access.")
    try:
        user = services.sync_hub_user(model)
    except services.GalleryError as exc:  # a hub user the gallery cannot keep
        return _refused(request, str(exc), exc.status)
    auth_login(request, user, backend=settings.AUTHENTICATION_BACKENDS[0])
    request.session[TOKEN] = token
    request.session[CHECKED] = time.time()
    return redirect(_safe_next(request, pending.get("next", "")))


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    """End the gallery session; under a hub, go on to the hub's logout."""
    auth_logout(request)
    if settings.HUB_ENABLED:
        return redirect(hub.hub_url("logout"))
    return redirect("index")


class HubSessionMiddleware:
    """Ends gallery sessions whose hub token stopped working, and keeps non-reviewers out of
    the admin with a 403 instead of a login loop."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if settings.HUB_ENABLED and request.session.get(TOKEN):
            try:
                self._recheck(request)
            except RedisError as exc:  # a session to end that the cache cannot drop
                return caching.unavailable(request, exc)
        # The path first: other pages load the user later (caching.PrefetchMiddleware).
        if request.path.startswith(reverse("admin:index")) and (
                request.user.is_authenticated and not request.user.is_staff):
            return _admin_refused(request)
        return self.get_response(request)

    @staticmethod
    def _recheck(request: HttpRequest) -> None:
        if time.time() - request.session.get(CHECKED, 0) < settings.GALLERY_HUB_RECHECK_SECONDS:
            return
        try:
            model = hub.fetch_user(request.session[TOKEN])
        except hub.HubUnavailable as exc:
            log.warning("hub unreachable while rechecking a session; asking again next time: %s",
                        exc)
            return
        if model is None or model.get("name") != request.user.get_username():
            log.info("hub token of %s no longer valid; gallery session ended",
                     request.user.get_username())
            auth_logout(request)
            return
        request.user = services.sync_hub_user(model)
        request.session[CHECKED] = time.time()


# --- hub tokens on the API ---------------------------------------------------------------


class HubTokenAuth(APIKeyHeader):
    """`Authorization: token <hub token>`, checked with the hub and cached briefly."""

    param_name = "Authorization"

    def authenticate(self, request: HttpRequest, key: str | None) -> AbstractBaseUser | None:
        if not key or not settings.HUB_ENABLED:
            return None
        scheme, _, token = key.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not token.strip():
            return None
        model, fresh = hub.user_for_token(token.strip())
        if model is None:
            return None
        if not fresh:
            # Kept what the hub said when it was asked; a remembered answer, perhaps older than
            # another process's, must not bring back a group the hub has since taken away.
            user = get_user_model().objects.filter(username=model["name"], is_active=True).first()
            if user is not None:
                return user
        return services.sync_hub_user(model)  # a GalleryError goes to the API's error handler

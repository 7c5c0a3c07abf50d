"""Everything JupyterHub: API callers presenting a hub token.

Without a hub (JUPYTERHUB_API_URL unset) the gallery uses Django's own login and no token is
accepted.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Permission
from django.core.cache import cache
from django.http import HttpRequest
from ninja.security import APIKeyHeader

log = logging.getLogger(__name__)
TOKEN_CACHE_SECONDS = 60


def user_for_token(token: str) -> dict[str, Any] | None:
    """The hub's model of the token's owner, or None when the hub does not accept it."""
    key = "hub-token:" + hashlib.sha256(token.encode()).hexdigest()
    cached = cache.get(key)
    if cached is not None:
        return cached or None
    try:
        response = requests.get(
            settings.JUPYTERHUB_API_URL.rstrip("/") + "/user",
            headers={"Authorization": f"token {token}"}, timeout=10,
        )
    except requests.RequestException as exc:
        log.warning("hub unreachable while checking a token: %s", type(exc).__name__)
        return None
    model = response.json() if response.status_code == 200 else None
    if model is not None and settings.JUPYTERHUB_OAUTH_ACCESS_SCOPES and not (
        settings.JUPYTERHUB_OAUTH_ACCESS_SCOPES & set(model.get("scopes", []))
    ):
        model = None  # a valid token, but not one that may use this service
    if model is not None and model.get("kind", "user") != "user":
        model = None
    cache.set(key, model or {}, TOKEN_CACHE_SECONDS)
    return model


def sync_user(model: dict[str, Any]) -> AbstractBaseUser:
    """The Django user for a hub user; reviewers become staff with the review permission."""
    scopes = set(model.get("scopes", []))
    groups = set(model.get("groups", []))
    reviewer = settings.GALLERY_REVIEW_SCOPE in scopes or settings.GALLERY_REVIEW_GROUP in groups
    user, _ = get_user_model().objects.get_or_create(username=model["name"])
    review = list(Permission.objects.filter(
        content_type__app_label="gallery",
        codename__in=["review_submission", "view_submission", "change_submission",
                      "view_example", "change_example", "view_review", "view_job"],
    ))
    if user.is_staff != reviewer or not user.has_usable_password() is True:
        user.is_staff = reviewer
        user.set_unusable_password()
        user.save()
    if reviewer:
        user.user_permissions.add(*review)
    else:
        user.user_permissions.remove(*review)
    return user


class HubTokenAuth(APIKeyHeader):
    """`Authorization: token <hub token>`, checked with the hub and cached briefly."""

    param_name = "Authorization"

    def authenticate(self, request: HttpRequest, key: str | None) -> AbstractBaseUser | None:
        if not key or not settings.HUB_ENABLED:
            return None
        scheme, _, token = key.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not token.strip():
            return None
        model = user_for_token(token.strip())
        if model is None:
            return None
        return sync_user(model)

"""Signed, short-lived addresses of a group's example's preview.

A group's example's preview is served only through the example, to those who see it
(`views.group_preview`). The gallery's pages reach it with the gallery's session; a page that
frames it without that session (the example's tab in JupyterLab, whose server asked the API)
gets an address signed for the person who asked: it names them, the example and the
notebook's sha256, and stops working after GALLERY_PREVIEW_LINK_SECONDS. Whoever opens it is
shown the preview only while that person still sees the example (`visible_to` is asked at
every request, so a member the hub removed from the group loses it too).
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing

from ..models import Example
from .render import example_preview_url

SALT = "gallery.previews.group-preview-link"
PARAMETER = "token"  # named so that log redaction masks it wherever a URL is logged


def signed_preview_url(example: Example, sha256: str | None, user: Any, *,
                       now: float | None = None) -> str | None:
    """`example_preview_url`, signed for `user` when it is a group's example's."""
    url = example_preview_url(example, sha256)
    if url is None or example.is_public or not user.is_authenticated:
        return url
    expires = int((time.time() if now is None else now) + settings.GALLERY_PREVIEW_LINK_SECONDS)
    token = signing.Signer(salt=SALT).sign_object([user.pk, example.pk, sha256, expires])
    return f"{url}?{urlencode({PARAMETER: token})}"


def example_of_link(token: str, *, slug: str, sha256: str) -> Example | None:
    """The example a signed address opens: the one it was signed for, by its slug and the
    sha256 it names, before it expired, while the person it was signed for sees it. None
    for anything else (a changed or unsigned token, another example or notebook, an expired
    link, a person who no longer sees it), which the view answers as nothing there."""
    try:
        user_pk, example_pk, signed_sha, expires = signing.Signer(salt=SALT).unsign_object(token)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    if signed_sha != sha256 or not isinstance(expires, int) or expires <= time.time():
        return None
    user = get_user_model().objects.filter(pk=user_pk, is_active=True).first()
    if user is None:
        return None
    return Example.objects.visible_to(user).filter(pk=example_pk, slug=slug).first()

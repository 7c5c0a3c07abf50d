"""What every page asks and rarely changes, read from the shared cache instead of the database.

A logged-in page used to cost four queries before its view ran: the session, the user, the
gallery's change stamp and the unread count. With a cache shared by all processes
(GALLERY_CACHE_URL, Redis) each is kept there and forgotten by the writes that change it: at
once, so the writing process sees its own change, and again on commit, so no other process
keeps an answer it read before the commit. A short expiry bounds what a write that bypasses
the model signals (a queryset `update`) can leave behind. Without a shared cache nothing of
this is kept: a process's own memory would keep a logged-out user logged in, or a change made
elsewhere unseen, in the other processes.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

STAMP_KEY = "gallery:stamp"
STAMP_SECONDS = 2  # the longest a change made behind the signals' back stays unseen
USER_SECONDS = 30
UNREAD_SECONDS = 300
PAGE_SECONDS = 300  # use counts and popular tags shown on cached pages are at most this old
PAGE_KEEP_SECONDS = 3600  # a page nobody asked for in this long is dropped
RETRY_SECONDS = 30  # what a 503 asks to wait while the cache is away

T = TypeVar("T")


def shared() -> bool:
    return bool(settings.GALLERY_CACHE_URL)


def forget(*keys: str) -> None:
    """Drop cached answers now and when the transaction commits. A write goes ahead while the
    cache is away: what it would have dropped expires on its own (STAMP_SECONDS,
    USER_SECONDS, UNREAD_SECONDS)."""
    def drop() -> None:
        try:
            cache.delete_many(keys)
        except RedisError as exc:
            log.warning("cache unreachable, %d answers left to expire: %s", len(keys), exc)

    if keys:
        drop()
        transaction.on_commit(drop)


class CacheAwayMiddleware:
    """A view stopped by an unreachable cache (a logout or login, whose session deletes must
    not half-happen: see `gallery.sessions`) answers 503 with a page asking to try again."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception
                          ) -> HttpResponse | None:
        return unavailable(request, exception) if isinstance(exception, RedisError) else None


def unavailable(request: HttpRequest, exc: Exception) -> HttpResponse:
    """503 with a page asking to try again shortly, for a request the cache stopped."""
    log.warning("cache unreachable, %s %s refused with 503: %s", request.method, request.path,
                exc)
    response = render(request, "gallery/unavailable.html", status=503)
    response["Retry-After"] = str(RETRY_SECONDS)
    return response


# View name -> the key of its cached page for a request (see PrefetchMiddleware).
PAGE_KEYS: dict[str, Callable[[HttpRequest], str]] = {}
# What PrefetchMiddleware read for this request: the keys it asked for and what it found.
_prefetched: ContextVar[tuple[frozenset[str], dict[str, Any]] | None] = ContextVar(
    "gallery_prefetched", default=None)


class PrefetchMiddleware:
    """For a view that shows a cached page, reads in one round trip what the request will ask
    the shared cache for: the user of the session, the gallery's stamp, the page and the
    unread count. Without it they took two (the user, then the rest).

    A view opts in through PAGE_KEYS: its view name (as `reverse` knows it) and a function of
    the request that gives the key of its page, or "" when it has none. What is read here is
    used by this request alone, a moment later.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _prefetched.set(None)
        try:
            return self.get_response(request)
        finally:
            _prefetched.reset(token)

    def process_view(self, request: HttpRequest, view: Callable[..., Any], args: Any,
                     kwargs: Any) -> None:
        match = request.resolver_match
        key_of = PAGE_KEYS.get(match.view_name) if match is not None else None
        if key_of is None or not shared():
            return
        user_id = request.session.get(SESSION_KEY)  # else no user to read: nothing to gain
        page_key = key_of(request) if user_id is not None else ""
        if page_key:
            # The page of the public audience: most people's; a group member's key needs
            # their groups first (`audience`), which are read here too.
            keys = [STAMP_KEY, page_key, _user_key(user_id), _unread_key(user_id),
                    _groups_key(user_id), AUDIENCES_KEY]
            _prefetched.set((frozenset(keys), cache.get_many(keys)))


def _get_many(keys: list[str]) -> dict[str, Any]:
    """`cache.get_many`, from this request's prefetch when it read them all."""
    prefetched = _prefetched.get()
    if prefetched is not None and prefetched[0].issuperset(keys):
        return {k: prefetched[1][k] for k in keys if k in prefetched[1]}
    return cache.get_many(keys)


def gallery_stamp() -> tuple[Any, ...]:
    """`Example.objects.stamp()`: changes whenever what pages show for everyone changes."""
    from .models import Example

    if not shared():
        return Example.objects.stamp()
    return cache.get_or_set(STAMP_KEY, Example.objects.stamp, STAMP_SECONDS)


_rendering: ContextVar[tuple[Any, ...] | None] = ContextVar("rendering", default=None)


def cached_parts(prefix: str, ids: list[int], make: Callable[[list[int]], dict[int, T]]
                 ) -> list[T]:
    """The parts of a page that are the same for everyone who sees them (an example's card,
    its item in the list API), kept per example and gallery stamp and so shared by every
    audience: a person whose groups no one shares gets the page's frame rendered for them,
    not its cards. `make` makes the missing ones, all at once. In the order of `ids`."""
    if not ids:
        return []
    stamp = hashlib.sha256(repr(_rendering.get() or gallery_stamp()).encode()).hexdigest()[:16]
    keys = {pk: f"gallery:{prefix}:{stamp}:{pk}" for pk in ids}
    found = cache.get_many(list(keys.values()))
    missing = [pk for pk in ids if keys[pk] not in found]
    if missing:
        made = {keys[pk]: part for pk, part in make(missing).items()}
        cache.set_many(made, PAGE_SECONDS)
        found.update(made)
    return [found[keys[pk]] for pk in ids if keys[pk] in found]


def cached_page(key: str, render: Callable[[], T], *, user: Any = None
                ) -> tuple[T, int | None]:
    """What a page shows for everyone, rendered once per change of the gallery's stamp (so a
    staged, approved or retired example shows at once), and the unread count of `user`.

    The stamp, the page and the count come in one round trip to a warm shared cache. A page
    is rendered again for its use counts after 80-100% of PAGE_SECONDS (spread, so pages
    rendered together are not all due together), by one request while the others still get
    it: a search page over thousands of examples takes some 100 ms to render.
    """
    user_id = None if user is None else user.pk
    wanted = [key] if user_id is None else [key, _unread_key(user_id)]
    found = _get_many([STAMP_KEY, *wanted]) if shared() else cache.get_many(wanted[:1])
    stamp = found.get(STAMP_KEY) or gallery_stamp()
    page = found.get(key)
    if (page is None or page[0] != stamp or time.time() > page[1]
            and cache.add(f"{key}:refreshing", 1, PAGE_SECONDS)):
        rendering = _rendering.set(stamp)  # the stamp of its parts (`cached_parts`)
        try:
            page = (stamp, time.time() + PAGE_SECONDS * random.uniform(0.8, 1.0), render())
        finally:
            _rendering.reset(rendering)
        cache.set(key, page, PAGE_KEEP_SECONDS)
    if user_id is None:
        return page[2], None
    unread = found.get(_unread_key(user_id))
    return page[2], unread_count(user) if unread is None else unread


GROUPS_SECONDS = 300  # a membership change made behind the signals' back stays unseen so long
AUDIENCES_KEY = "gallery:audiences"


def _groups_key(user_id: Any) -> str:
    return f"gallery:groups:{user_id}"


def audience(user: Any) -> Any:
    """`models.audience_of(user)`, from the shared cache: the groups whose examples the
    person's listings show, which names the cached pages they get (a page rendered for one
    set of groups is only ever served to people with the same set). Both of what it is made
    of are forgotten when a membership or an example's groups change."""
    from .models import audience_of, groups_of, groups_with_examples, narrow_audience

    if not user.is_authenticated:
        return ()
    if not shared():
        return audience_of(user)
    keys = [_groups_key(user.pk), AUDIENCES_KEY]
    found = _get_many(keys)
    mine = found.get(keys[0])
    if mine is None:
        groups = groups_of(user)
        mine = {"all": groups is None, "ids": list(groups or ())}
        cache.set(keys[0], mine, GROUPS_SECONDS)
    with_examples = found.get(AUDIENCES_KEY)
    if with_examples is None:
        with_examples = groups_with_examples()
        cache.set(AUDIENCES_KEY, with_examples, GROUPS_SECONDS)
    return narrow_audience(None if mine["all"] else tuple(mine["ids"]), with_examples)


def audience_key(value: Any) -> str:
    """The part of a cached page's key that names its audience ("" for the public one)."""
    if value is None:
        return ":all"
    return ":g" + ",".join(map(str, value)) if value else ""


def _user_key(pk: Any) -> str:
    return f"gallery:user:{pk}"


def _unread_key(user_id: Any) -> str:
    return f"gallery:unread:{user_id}"


def unread_count(user: Any) -> int:
    from .models import Notification

    def count() -> int:
        unread = Notification.objects.filter(user_id=user.pk).unread()
        # Only news of what they still see: a member who left a group keeps none of its.
        return unread.seen_by(user).count() if unread.exists() else 0

    return cache.get_or_set(_unread_key(user.pk), count, UNREAD_SECONDS) if shared() else count()


def forget_unread(user_ids: Any) -> None:
    forget(*(_unread_key(pk) for pk in user_ids))


class CachedModelBackend(ModelBackend):
    """Django's model backend, with the user of a session read from the cache.

    A saved or deleted user is forgotten at once (see `connect`); Django still checks the
    session's password hash against the cached user on every request.
    """

    def get_user(self, user_id: Any) -> Any:
        if not shared():
            return super().get_user(user_id)
        key = _user_key(user_id)
        user = _get_many([key]).get(key)
        if user is None:
            user = super().get_user(user_id)
            if user is None:
                return None
            cache.set(key, user, USER_SECONDS)
        return user if self.user_can_authenticate(user) else None


def connect() -> None:
    """Forget the cached answers whenever a model that feeds them is written."""
    from .models import Example, HubGroup, Notification, Revision

    def stamp_changed(**_: Any) -> None:
        forget(STAMP_KEY)

    def audiences_changed(**_: Any) -> None:
        forget(STAMP_KEY, AUDIENCES_KEY)

    def memberships_changed(instance: Any, pk_set: Any = None, **_: Any) -> None:
        # From the user's side (user.hub_groups.set) the instance is the user; from the
        # group's, pk_set names the users (None when a group is cleared: its members are not
        # known here, and their entries expire after GROUPS_SECONDS).
        user_ids = [instance.pk] if not isinstance(instance, HubGroup) else list(pk_set or ())
        forget(*(_groups_key(pk) for pk in user_ids))
        forget_unread(user_ids)

    def user_changed(instance: Any, **_: Any) -> None:
        forget(_user_key(instance.pk), _groups_key(instance.pk))

    def notification_changed(instance: Any, **_: Any) -> None:
        forget_unread([instance.user_id])

    user_model = get_user_model()
    receivers = [(post_save, stamp_changed, Example), (post_delete, stamp_changed, Example),
                 (post_save, stamp_changed, Revision), (post_delete, stamp_changed, Revision),
                 (m2m_changed, stamp_changed, Example.tags.through),
                 (m2m_changed, audiences_changed, Example.groups.through),
                 (m2m_changed, memberships_changed, HubGroup.members.through),
                 (m2m_changed, memberships_changed, HubGroup.reviewers.through),
                 (post_save, user_changed, user_model), (post_delete, user_changed, user_model),
                 (post_save, notification_changed, Notification),
                 (post_delete, notification_changed, Notification)]
    for signal, receiver, sender in receivers:
        # weak=False: the receivers are local functions that would otherwise be collected.
        signal.connect(receiver, sender=sender, weak=False,
                       dispatch_uid=f"gallery-caching-{id(signal)}-{receiver.__name__}-"
                                    f"{sender._meta.label}")

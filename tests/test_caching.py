"""What the pages read from a shared cache instead of the database, and the writes that
forget it; without a shared cache, nothing of it is kept."""

import os
import time
from typing import Any
from unittest import mock

import redis
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core.cache import cache
from django.db import transaction
from django.test import TestCase, override_settings
from django.urls import reverse

from gallery import caching, redis_cache, services
from gallery.models import Example, Job, Notification
from gallery.sessions import SessionStore

from .base import GalleryTestCase, stage
from .conftest import SHARED_CACHE_URL as SHARED_URL

# A Redis database of its own, next to the broker's of this test process.
shared_cache = override_settings(
    GALLERY_CACHE_URL=SHARED_URL,
    CACHES={"default": {"BACKEND": "gallery.redis_cache.RedisCache", "LOCATION": SHARED_URL,
                        "KEY_PREFIX": "gallery-test"}},
    SESSION_ENGINE="gallery.sessions")


class CountedCacheReads:
    """The keys of each read from the shared cache (one list per round trip) while open."""

    def __enter__(self) -> list[list[str]]:
        self.reads: list[list[str]] = []
        client = redis_cache.RedisCacheClient
        self.patches = [
            mock.patch.object(client, "get", autospec=True, side_effect=self._one(client.get)),
            mock.patch.object(client, "get_many", autospec=True,
                              side_effect=self._many(client.get_many))]
        for patch in self.patches:
            patch.start()
        return self.reads

    def _one(self, real: Any) -> Any:
        def get(client: Any, key: str, default: Any = None) -> Any:
            self.reads.append([key])
            return real(client, key, default)
        return get

    def _many(self, real: Any) -> Any:
        def get_many(client: Any, keys: Any) -> Any:
            self.reads.append(list(keys))
            return real(client, keys)
        return get_many

    def __exit__(self, *exc: Any) -> None:
        for patch in self.patches:
            patch.stop()


@shared_cache
class WarmPagesTests(GalleryTestCase):
    def setUp(self) -> None:
        cache.clear()
        self.client.force_login(self.user)
        self.approved = self.stage_and_approve(title="Broadcasting in NumPy")

    def test_a_warm_gallery_page_and_list_ask_the_database_nothing(self):
        for url in (reverse("index"), reverse("index") + "?q=numpy", "/api/v1/examples?q=numpy"):
            with self.subTest(url=url):
                self.client.get(url)
                with self.assertNumQueries(0):
                    response = self.client.get(url)
                self.assertContains(response, "Broadcasting in NumPy")

    def test_a_warm_gallery_page_and_list_take_two_round_trips_to_the_cache(self):
        # The session, then the user, the stamp, the page, the unread count and the groups
        # whose examples the person sees (with those that have examples) at once.
        for url in (reverse("index"), reverse("index") + "?q=numpy&approved_page=1",
                    "/api/v1/examples?q=numpy&page=1", "/api/v1/examples?state=staged"):
            with self.subTest(url=url):
                self.client.get(url)
                with CountedCacheReads() as reads:
                    self.assertEqual(self.client.get(url).status_code, 200)
                self.assertEqual(len(reads), 2, reads)
                self.assertEqual(len(reads[1]), 6, reads)
        self.assertIsNone(caching._prefetched.get())  # nothing of a request outlives it

    def test_a_new_example_shows_at_once_on_a_warm_page(self):
        self.client.get(reverse("index"))
        with self.captureOnCommitCallbacks(execute=True):
            stage(self.contributor, title="Dask on the cluster")
        self.assertContains(self.client.get(reverse("index")), "Dask on the cluster")
        self.assertEqual(self.json(self.client.get("/api/v1/examples?state=staged"))["count"], 1)

    def test_a_retired_example_leaves_a_warm_page_at_once(self):
        self.client.get(reverse("index"))
        example = self.approved.example
        services.retire_example(example=example, actor=self.reviewer, reason="Superseded.")
        self.assertNotContains(self.client.get(reverse("index")), "Broadcasting in NumPy")

    def test_the_unread_count_follows_notifications_made_and_read(self):
        badge = 'class="badge"'
        self.assertNotContains(self.client.get(reverse("index")), badge)
        services.notify(user=self.user, kind=Notification.Kind.REVIEW, message="Hello.")
        self.assertContains(self.client.get(reverse("index")), "1<span class=\"visually-hidden\">")
        # Users of an example hear of a new version through bulk_create, which sends no signal.
        Job.objects.create(kind=Job.Kind.USE, state=Job.State.DONE, user=self.user,
                           revision=self.approved.revision)
        services.notify_users_of(self.approved.example, kind=Notification.Kind.UPDATED,
                                  message="A newer version.")
        self.assertContains(self.client.get(reverse("index")), "2<span class=\"visually-hidden\">")
        services.mark_notifications_read(user=self.user)  # an update: no signal either
        self.assertNotContains(self.client.get(reverse("index")), badge)

    def test_a_change_to_the_user_applies_on_the_next_request(self):
        self.assertNotContains(self.client.get(reverse("index")), "Reviewer's desk")
        user = get_user_model().objects.get(pk=self.user.pk)
        user.is_staff = True
        user.save()
        self.assertContains(self.client.get(reverse("index")), "Reviewer's desk")
        user.is_active = False
        user.save()
        response = self.client.get(reverse("index"))
        self.assertEqual(response.status_code, 302)
        self.assertIn("login", response["Location"])

    def test_a_new_password_ends_sessions_made_with_the_old_one(self):
        self.client.get(reverse("index"))
        user = get_user_model().objects.get(pk=self.user.pk)
        user.set_password("another-" + "y" * 12)
        user.save()
        self.assertEqual(self.client.get(reverse("index")).status_code, 302)


@shared_cache
class CommitTests(TestCase):
    def setUp(self) -> None:
        cache.clear()

    def test_an_answer_read_before_the_commit_is_forgotten_when_it_commits(self):
        owner = get_user_model().objects.create_user("olga")
        with self.captureOnCommitCallbacks(execute=True):
            with transaction.atomic():
                Example.objects.create(slug="late", title="Late", contributor=owner)
                # Another process reads the stamp before this transaction commits ...
                cache.set(caching.STAMP_KEY, ("stale", 0), 60)
        # ... and the commit forgets it.
        self.assertIsNone(cache.get(caching.STAMP_KEY))
        self.assertEqual(caching.gallery_stamp()[1], 1)


@shared_cache
class PageAgeTests(TestCase):
    def setUp(self) -> None:
        cache.clear()
        self.renders = 0

    def page(self) -> str:
        def render() -> str:
            self.renders += 1
            return f"render {self.renders}"

        return caching.cached_page("gallery:page:test", render)[0]

    def test_an_old_page_is_rendered_again_by_one_request_while_others_get_it(self):
        from unittest import mock

        self.assertEqual([self.page(), self.page()], ["render 1", "render 1"])
        later = time.time() + caching.PAGE_SECONDS + 1  # due by then, whatever the spread
        with mock.patch("gallery.caching.time.time", return_value=later):
            cache.add("gallery:page:test:refreshing", 1, 30)  # another request is at it
            self.assertEqual(self.page(), "render 1")
            cache.delete("gallery:page:test:refreshing")
            self.assertEqual([self.page(), self.page()], ["render 2", "render 2"])
        self.assertEqual(self.renders, 2)

    def test_a_change_renders_the_page_again_at_once(self):
        self.assertEqual(self.page(), "render 1")
        Example.objects.create(slug="new", title="New",
                               contributor=get_user_model().objects.create_user("nina"))
        cache.add("gallery:page:test:refreshing", 1, 30)  # no waiting for anyone
        self.assertEqual(self.page(), "render 2")


cache_away = override_settings(
    GALLERY_CACHE_URL="redis://127.0.0.1:1/0",  # nothing listens there
    CACHES={"default": {"BACKEND": "gallery.redis_cache.RedisCache",
                        "LOCATION": "redis://127.0.0.1:1/0"}},
    SESSION_ENGINE="gallery.sessions")


class CacheAwayTests(GalleryTestCase):
    def setUp(self) -> None:
        redis_cache._warned_at = -redis_cache.WARN_EVERY  # a warning of an earlier test is not ours

    def test_pages_and_changes_go_on_from_the_database_while_the_cache_is_away(self):
        self.client.force_login(self.user)  # sessions are in the database, the cache only reads
        with cache_away:
            self.stage_and_approve(title="Broadcasting in NumPy")  # saves forget into the void
            services.notify(user=self.user, kind=Notification.Kind.REVIEW, message="Hello.")
            with self.assertLogs("gallery.redis_cache", "WARNING"):
                page = self.client.get(reverse("index"))
            self.assertContains(page, "Broadcasting in NumPy")
            self.assertContains(page, 'class="badge"')
            self.assertEqual(self.json(self.client.get("/api/v1/examples"))["count"], 1)
            self.assertEqual(self.client.get(
                reverse("example", args=["broadcasting-in-numpy"])).status_code, 200)


class SessionsWhileTheCacheIsAwayTests(GalleryTestCase):
    """A logout or login the cache cannot record does not half-happen: a session deleted from
    the database alone would come back from the cache's copy once Redis answers again."""

    def session_is_cached(self, key: str) -> bool:
        return cache.get(f"{SessionStore.cache_key_prefix}{key}") is not None

    def test_a_logout_is_refused_whole_and_works_once_the_cache_is_back(self):
        with shared_cache:
            self.client.force_login(self.user)
            key = self.client.session.session_key
            self.client.get(reverse("index"))
            self.assertTrue(self.session_is_cached(key))
        with cache_away, self.assertLogs("gallery", "WARNING"):
            response = self.client.post(reverse("logout"))
        self.assertContains(response, "try again", status_code=503)
        self.assertEqual(response["Retry-After"], "30")
        self.assertTrue(Session.objects.filter(session_key=key).exists())
        with shared_cache:
            self.assertEqual(self.client.get(reverse("index")).context["user"], self.user)
            self.client.post(reverse("logout"))
            self.assertFalse(Session.objects.filter(session_key=key).exists())
            self.assertFalse(self.session_is_cached(key))
            self.assertFalse(self.client.get(reverse("index")).wsgi_request.user.is_authenticated)

    def test_a_login_is_refused_with_a_clear_answer(self):
        with shared_cache:
            session = self.client.session  # a session of its own before logging in
            session["seen"] = True
            session.save()
        with cache_away, self.assertLogs("gallery", "WARNING"):
            response = self.client.post(reverse("login"), {"username": "ursula",
                                                           "password": "pw-" + "x" * 10})
        self.assertContains(response, "try again", status_code=503)
        with shared_cache:
            self.assertFalse(self.client.get(reverse("index")).wsgi_request.user.is_authenticated)


    def test_the_async_delete_drops_the_cache_first_too(self):
        store = SessionStore()
        store["seen"] = True
        store.create()
        with cache_away:
            with self.assertRaises(redis.RedisError):
                async_to_sync(SessionStore(store.session_key).adelete)()
        self.assertTrue(Session.objects.filter(session_key=store.session_key).exists())
        async_to_sync(SessionStore(store.session_key).adelete)()
        self.assertFalse(Session.objects.filter(session_key=store.session_key).exists())


class UnsharedCacheTests(GalleryTestCase):
    """The default: each process has its own memory, so the answers come from the database."""

    def setUp(self) -> None:
        self.client.force_login(self.user)

    def test_a_change_made_elsewhere_applies_at_once(self):
        self.client.get(reverse("index"))
        # As another process would: no signal reaches this one.
        get_user_model().objects.filter(pk=self.user.pk).update(is_active=False)
        self.assertEqual(self.client.get(reverse("index")).status_code, 302)

    def test_a_notification_made_elsewhere_shows_at_once(self):
        self.client.get(reverse("index"))
        Notification.objects.bulk_create([Notification(user=self.user, kind="review",
                                                       message="Hello.")])
        self.assertContains(self.client.get(reverse("index")), 'class="badge"')


@shared_cache
def test_the_redis_cache_keeps_one_client_and_works_after_a_fork():
    from django.core.cache import caches

    shared = caches["default"]
    shared.clear()
    client = shared._cache.get_client()
    assert shared._cache.get_client() is client
    assert shared._cache.get_client(write=True) is client  # one server: one pool
    shared.set("k", {"a": 1}, 30)
    shared.set_many({"x": 1, "y": 2}, 30)
    assert shared.get("k") == {"a": 1}
    assert shared.get_many(["x", "y"]) == {"x": 1, "y": 2}
    shared.delete_many(["x", "y"])
    assert shared.get("x") is None
    pid = os.fork()
    if pid == 0:  # the child makes a client of its own: never the parent's socket
        ok = shared.get("k") == {"a": 1} and shared.add("from-child", 1, 30)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert shared.get("from-child") == 1
    assert shared.get("k") == {"a": 1}  # the parent's connection still answers
    # A connection the server dropped (a Redis restart, an idle timeout) is made again.
    redis.Redis.from_url(SHARED_URL).client_kill_filter(_id=client.client_id())
    assert shared.get("k") == {"a": 1}
    shared.delete_many(["k", "from-child"])

"""Django's Redis cache, keeping one redis-py client per process, and answering as a miss
while Redis is away.

Django's client makes a new `redis.Redis` for every cache operation; building one sets up
some two hundred response callbacks, a third of a millisecond each time, which made the
cache slower than the database queries it replaces. Each process keeps one client with a
connection of its own (`single_connection_client`: no pool checkout and readiness poll per
command, about 40% less per call). Clients are keyed by process id, so a forked child (a
Celery pool process, a render child) never talks over its parent's socket.

Everything the gallery keeps in the cache can be had from the database, so while Redis
cannot be reached a read is a miss and a store does nothing, with a warning: pages get slower,
never fail. A delete still fails, as Django's own session store expects: a logout must not
seem done while the session it ends stays in the cache.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from django.core.cache.backends import redis as django_redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

log = logging.getLogger(__name__)
WARN_EVERY = 10.0  # seconds between warnings while Redis stays away
_warned_at = -WARN_EVERY  # so the first failure is always told


class RedisCacheClient(django_redis.RedisCacheClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[tuple[int, int], Any] = {}
        # A connection the server dropped (a restart, an idle timeout) fails the command sent
        # on it; the retry sends it again on a new connection.
        self._pool_options.setdefault("retry", Retry(NoBackoff(), 1))
        # A Redis host that does not answer costs a page a second, not a TCP timeout.
        self._pool_options.setdefault("socket_connect_timeout", 1)
        self._pool_options.setdefault("socket_timeout", 2)

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)
        slot = (os.getpid(), id(pool))
        client = self._clients.get(slot)
        if client is None:
            client = self._clients[slot] = self._client(connection_pool=pool,
                                                        single_connection_client=True)
        return client

    # Reads answer as a miss and stores do nothing while Redis cannot be reached.
    def get(self, key: Any, default: Any) -> Any:
        return _tolerant(default, super().get, key, default)

    def get_many(self, keys: Any) -> Any:
        return _tolerant({}, super().get_many, keys)

    def has_key(self, key: Any) -> Any:
        return _tolerant(False, super().has_key, key)

    def set(self, key: Any, value: Any, timeout: Any) -> None:
        _tolerant(None, super().set, key, value, timeout)

    def set_many(self, data: Any, timeout: Any) -> None:
        _tolerant(None, super().set_many, data, timeout)

    def add(self, key: Any, value: Any, timeout: Any) -> Any:
        return _tolerant(False, super().add, key, value, timeout)

    def touch(self, key: Any, timeout: Any) -> Any:
        return _tolerant(False, super().touch, key, timeout)


def _tolerant(missing: Any, call: Callable[..., Any], *args: Any) -> Any:
    global _warned_at
    try:
        return call(*args)
    except RedisError as exc:
        if time.monotonic() - _warned_at > WARN_EVERY:
            _warned_at = time.monotonic()
            log.warning("cache unreachable, answering from the database: %s", exc)
        return missing


class RedisCache(django_redis.RedisCache):
    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = RedisCacheClient

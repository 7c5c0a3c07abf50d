"""Sessions in the database, read through the shared cache (SESSION_ENGINE with
GALLERY_CACHE_URL set): Django's `cached_db`, with deletes that cannot half-happen."""

from __future__ import annotations

from django.contrib.sessions.backends import cached_db


class SessionStore(cached_db.SessionStore):
    def delete(self, session_key: str | None = None) -> None:
        """Forget the session in the cache first, then in the database.

        Django deletes the row first: with the cache unreachable, a logout then removed the
        row and failed, and the cache's copy brought the session back once Redis answered
        again. Here the cache's failure stops the delete before anything changed; the view
        answers 503 (`caching.CacheAwayMiddleware`) and the person can try again.
        """
        key = session_key or self.session_key
        if key is None:
            return
        self._cache.delete(self.cache_key_prefix + key)
        super(cached_db.SessionStore, self).delete(key)

    async def adelete(self, session_key: str | None = None) -> None:
        key = session_key or self.session_key
        if key is None:
            return
        await self._cache.adelete(self.cache_key_prefix + key)
        await super(cached_db.SessionStore, self).adelete(key)

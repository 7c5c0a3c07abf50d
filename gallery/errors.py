"""Refusals the gallery answers with: a message a person can act on, and the HTTP status
that fits. Raised by the metadata schema and the service functions, turned into answers by
the pages and the API.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class GalleryError(Exception):
    """A request the gallery refuses; `status` is the HTTP status that fits."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class NotAllowed(GalleryError):
    status = 403


class NotFound(GalleryError):
    status = 404


class Conflict(GalleryError):
    status = 409


class TooManyRequests(GalleryError):
    """A limit of how often one may do something; `retry_after` is the seconds until it can
    be done again (the Retry-After header)."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(int(retry_after), 1)

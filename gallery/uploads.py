"""Upload limits enforced while the request streams in, before anything is stored."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest, HttpResponse, JsonResponse


class UploadTooLarge(Exception):
    """The upload passed the configured limit; nothing of it is kept."""


def _limit_message() -> str:
    limit = settings.GALLERY_MAX_UPLOAD_BYTES
    shown = f"{limit / 2**20:.0f} MB" if limit >= 2**20 else f"{limit:,} bytes"
    return f"The upload is larger than the limit of {shown}."


class LimitedUploadHandler(FileUploadHandler):
    """Counts the bytes of all files of one request and stops at the limit."""

    def __init__(self, request: HttpRequest | None = None) -> None:
        super().__init__(request)
        self.total = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.total += len(raw_data)
        if self.total > settings.GALLERY_MAX_UPLOAD_BYTES:
            self._drop_partial_files()
            raise UploadTooLarge(_limit_message())
        return raw_data

    def _drop_partial_files(self) -> None:
        """Close, and so delete, the file the next handlers are writing: when an upload stops
        with an error, Django's parser closes only the files it completed, and the temporary
        file of the one half-received would stay until the garbage collector found it."""
        for handler in getattr(self.request, "upload_handlers", []):
            partial = getattr(handler, "file", None)
            if handler is not self and partial is not None:
                partial.close()

    def file_complete(self, file_size: int) -> None:
        return None


class UploadLimitMiddleware:
    """Refuses a declared oversize body at once and counts a streamed one as it arrives."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method in ("POST", "PUT", "PATCH"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return JsonResponse({"error": "Content-Length is not a number."}, status=400)
            if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1024 * 1024:
                return JsonResponse({"error": _limit_message()}, status=413)
            request.upload_handlers.insert(0, LimitedUploadHandler(request))
        return self.get_response(request)

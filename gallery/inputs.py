"""What a request carries is text the gallery can use, checked before any view runs.

A NUL character in a URL or a form field reached database queries and PostgreSQL refused it
with an error (a 500); a body Django could not parse answered with Django's HTML page, also
under the API. `RequestInputMiddleware` reads the address, the query and the form fields
once, early, and refuses what no view could use with a 4xx that says why: JSON
`{"error": …}` under /api/, a short HTML page elsewhere. It also keeps the API's promise
that every error it answers is JSON, for the errors Django and django-ninja answer
themselves (an unknown address, a method the address does not take).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import unquote

from django.conf import settings
from django.core.exceptions import (
    BadRequest,
    DisallowedHost,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import HttpRequest, HttpResponse, JsonResponse, UnreadablePostError
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import render
from django.urls import reverse
from django.views import defaults

from .schema import unstorable
from .uploads import UploadTooLarge

log = logging.getLogger(__name__)

API_PREFIX = "/api/"
TITLES = {400: "The request cannot be used", 404: "There is no such page",
          413: "The upload is too large"}


def is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith(API_PREFIX)


def refuse(request: HttpRequest, status: int, message: str) -> HttpResponse:
    """The answer to a request refused before its view: JSON under the API, a page elsewhere."""
    log.info("refused %s %r with %d: %s", request.method, request.path_info[:200], status,
             message)
    if is_api(request):
        return JsonResponse({"error": message}, status=status)
    return render(request, "gallery/refused.html",
                  {"title": TITLES.get(status, "The request cannot be used"),
                   "message": message}, status=status)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """`handler400`: what Django answers to a request it refuses before any view (a Host the
    gallery does not serve, another suspicious request): JSON under the API, as every API
    error is; Django's own page elsewhere, which renders without the request's context."""
    if is_api(request):
        message = ("This request is not addressed to the gallery: its Host header is not one "
                   "the gallery serves." if isinstance(exception, DisallowedHost) else
                   "The request cannot be used: it is malformed.")
        return JsonResponse({"error": message}, status=400)
    return defaults.bad_request(request, exception)


def _wsgi_text(value: str) -> str | None:
    """The text a WSGI string carries (its latin-1 code points are the bytes sent), or None
    when those bytes are not UTF-8. Already text (ASGI) is returned as it is."""
    try:
        return value.encode("iso-8859-1").decode("utf-8")
    except UnicodeEncodeError:
        return value
    except UnicodeDecodeError:
        return None


def path_problem(request: HttpRequest) -> str:
    """Why the address names no page: a NUL (or a lone surrogate). Bytes that are not UTF-8
    need no check: Django has already turned them back into percent-escapes."""
    return f"The address {why}." if (why := unstorable(request.path_info)) else ""


def query_problem(request: HttpRequest) -> str:
    """Why the query string cannot be used. Django would read an undecodable percent-escape
    as U+FFFD and pass a NUL on to the view; both are refused here instead."""
    raw = _wsgi_text(request.META.get("QUERY_STRING", ""))
    try:
        query = unquote(raw, errors="strict") if raw is not None else None
    except UnicodeDecodeError:
        query = None
    if query is None:
        return "The query string is not UTF-8 text (a percent-escape decodes to no character)."
    return f"The query string {why}." if (why := unstorable(query)) else ""


def form_problem(request: HttpRequest) -> str:
    """Why the form fields of a POST cannot be used (the body is parsed here, once)."""
    for name, values in request.POST.lists():
        for text in (name, *values):
            if why := unstorable(text):
                return f"The form field {name[:50]!r} {why}."
    return ""


def _body_error(exc: Exception) -> tuple[int, str]:
    """The status and the message for the sender of a body Django could not parse."""
    if isinstance(exc, UploadTooLarge):
        return 413, str(exc)
    if isinstance(exc, RequestDataTooBig):
        return 413, ("The form fields are larger than the limit; send large content as a "
                     "file part.")
    if isinstance(exc, TooManyFilesSent):
        return 400, f"At most {settings.GALLERY_MAX_FILES} files per example."
    if isinstance(exc, TooManyFieldsSent):
        return 400, (f"The request has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} "
                     "fields.")
    if isinstance(exc, MultiPartParserError):
        return 400, (f"The multipart body cannot be read ({exc}). Send multipart/form-data "
                     "with the boundary its Content-Type header names, and base64 parts "
                     "that are valid base64.")
    if isinstance(exc, UnreadablePostError):
        return 400, "The request body ended before its declared length; send it again."
    return 400, f"The request body cannot be read: {exc}"


BODY_ERRORS = (UploadTooLarge, MultiPartParserError, UnreadablePostError, BadRequest,
               SuspiciousOperation)


class RequestInputMiddleware:
    """Refuses, before any view or database query, an address, query or form field that is
    not text a database takes, and a body that cannot be parsed.

    It stands after `uploads.UploadLimitMiddleware` (whose handler counts the upload it parses
    here) and before the session, CSRF and authentication middleware, which would otherwise
    parse the body first and fail in their own way.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if why := path_problem(request):
            return refuse(request, 404, why)
        if why := query_problem(request):
            return refuse(request, 400, why)
        if request.method == "POST":
            try:
                why = form_problem(request)
            except BODY_ERRORS as exc:
                return refuse(request, *_body_error(exc))
            if why:
                return refuse(request, 400, why)
        return as_api_error(request, self.get_response(request))


# Errors Django and django-ninja answer themselves, as the API says them.
API_MESSAGES = {
    404: "There is no such address in the API; {schema} lists them all.",
    405: "This address does not take {method}; it takes {allow}.",
}


def as_api_error(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """`response`, or under /api/ a JSON `{"error": …}` in place of a 4xx that is not JSON."""
    if (not is_api(request) or not 400 <= response.status_code < 500
            or response.get("Content-Type", "").startswith("application/json")):
        return response
    template = API_MESSAGES.get(response.status_code, "The request was refused: {reason}.")
    message = template.format(method=request.method, allow=response.get("Allow", "nothing"),
                              reason=response.reason_phrase, schema=reverse("api:openapi-json"))
    answer = JsonResponse({"error": message}, status=response.status_code)
    if response.has_header("Allow"):
        answer["Allow"] = response["Allow"]
    return answer

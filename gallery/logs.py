"""Logging: one line per event, tagged with the request or job it belongs to, never a secret.

`LOGGING` in settings attaches `ContextFilter` and `RedactFilter` to the console handler, so
every record that reaches it, from the gallery, Django, Celery or a library, carries
`request_id` and `job_id` and has tokens, passwords and session ids masked. The format is
plain text or one JSON object per line (`GALLERY_LOG_FORMAT=json`).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from django.http import HttpRequest, HttpResponse

request_id: ContextVar[str] = ContextVar("request_id", default="")
job_id: ContextVar[str] = ContextVar("job_id", default="")

REDACTED = "[redacted]"
_SECRET_KEYS = (
    r"password|passwd|pwd|secret|secret_key|client_secret|token|access_token|refresh_token|"
    r"api_token|"
    r"api_key|apikey|sessionid|session_id|csrftoken|csrfmiddlewaretoken|code_verifier|"
    r"authorization_code|private_key"
)
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization: token abc / "Authorization": "Bearer abc"
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:token|bearer|basic)\s+)"
                r"[^\s\"',;]+"), r"\1" + REDACTED),
    # Cookie: a=b; c=d  (every cookie value may be a session)
    (re.compile(r"(?i)((?:set-)?cookie[\"']?\s*[:=]\s*[\"']?)[^\n\"']+"), r"\1" + REDACTED),
    # password=abc, "token": "abc", gallery-sessionid=abc, ?token=abc
    (re.compile(r"(?i)(\b[\w-]*(?:" + _SECRET_KEYS + r")[\"']?\s*[:=]\s*[\"']?)"
                r"[^\s\"'&,;)}]+"), r"\1" + REDACTED),
    # scheme://user:password@host
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1" + REDACTED + "@"),
]


def redact(text: str) -> str:
    """`text` with credentials masked: header values, key=value pairs, URL passwords and the
    secrets this process was configured with."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    for secret in _configured_secrets():
        text = text.replace(secret, REDACTED)
    return text


def _configured_secrets() -> list[str]:
    from django.conf import settings

    if not settings.configured:
        return []
    values = [getattr(settings, name, "") for name in (
        "SECRET_KEY", "JUPYTERHUB_API_TOKEN", "GALLERY_METRICS_TOKEN")]
    return [v for v in values if isinstance(v, str) and len(v) >= 8]


class RedactFilter(logging.Filter):
    """Masks secrets in the message, its arguments and the traceback before formatting."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: log what was given
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class ContextFilter(logging.Filter):
    """Adds `request_id` and `job_id` to every record (empty when there is none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = getattr(record, "request_id", "") or request_id.get()
        record.job_id = getattr(record, "job_id", "") or job_id.get()
        return True


def _one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", "\\n")


class PlainFormatter(logging.Formatter):
    """`time level logger [req=… job=…] message`, tracebacks folded onto the same line."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        ids = " ".join(f"{name}={value}" for name, value in (
            ("req", getattr(record, "request_id", "")), ("job", getattr(record, "job_id", "")))
            if value)
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        return _one_line(f"{when} {record.levelname} {record.name}"
                         f"{f' [{ids}]' if ids else ''} {text}")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, job_id, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", ""),
            "job_id": getattr(record, "job_id", ""),
            "process": record.process,
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str)


@contextmanager
def job_context(job: str) -> Iterator[None]:
    """Tag every log line inside the block with the job id."""
    token = job_id.set(job)
    try:
        yield
    finally:
        job_id.reset(token)


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
access_log = logging.getLogger("gallery.request")


class RequestLogMiddleware:
    """Gives each request an id (kept from a well-formed `X-Request-Id`, else new), returns it
    in the response, and logs one line per request: method, path, status, duration."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.headers.get("X-Request-Id", "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        started = time.monotonic()
        try:
            response = self.get_response(request)
            response["X-Request-Id"] = rid
            # The path only: query strings may carry tokens.
            access_log.info("%s %s %s %.0fms", request.method, request.path,
                            response.status_code, (time.monotonic() - started) * 1000)
            return response
        finally:
            request_id.reset(token)

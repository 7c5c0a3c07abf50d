"""A real Chromium for end-to-end tests: Debian's /usr/bin/chromium driven by Playwright.

`scripts/ensure-browser` installs both (apt `chromium`, pip `playwright`); Playwright never
downloads a browser of its own here. Use the fixtures in a test module with

    from tests.e2e.browser import browser, page  # noqa: F401  (pytest fixtures)

or call `launch()` as a context manager. While Playwright's sync API is running, its event
loop is current in this thread, which makes Django refuse database calls
(SynchronousOnlyOperation) although nothing runs concurrently; the fixtures set
DJANGO_ALLOW_ASYNC_UNSAFE for the duration of the test so a test may still query the database.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def missing() -> str:
    """Why no browser can be launched here, or "" when one can."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing; run scripts/ensure-browser"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is missing; run scripts/ensure-browser"
    return ""


@contextmanager
def launch(**options: Any) -> Iterator[Any]:
    """A launched headless Chromium (a Playwright `Browser`), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True,
                                     **options)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A launched Chromium for one test; skipped with a reason when none is installed."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with launch() as launched:
        yield launched


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page in its own browser context (no cookies shared with other tests)."""
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


@dataclass
class Watch:
    """What a page did that an inert page must not: dialogs, requests, navigations, errors."""

    allowed_origins: tuple[str, ...]
    dialogs: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    navigations: list[str] = field(default_factory=list)
    popups: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)


def watch(page: Any, *allowed_origins: str) -> Watch:
    """Record everything a page tries; requests outside `allowed_origins` are aborted."""
    seen = Watch(allowed_origins=allowed_origins)

    def on_dialog(dialog: Any) -> None:
        seen.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_route(route: Any) -> None:
        url = route.request.url
        seen.requests.append(url)
        if url.startswith(allowed_origins) or url.startswith(("data:", "about:")):
            route.continue_()
        else:
            seen.blocked.append(url)
            route.abort()

    page.on("dialog", on_dialog)
    page.on("popup", lambda popup: seen.popups.append(popup.url))
    page.on("console", lambda msg: seen.console.append(f"{msg.type}: {msg.text}"))
    page.on("framenavigated", lambda frame: seen.navigations.append(frame.url)
            if frame == page.main_frame else None)
    page.context.route("**/*", on_route)
    return seen

"""Every page people and reviewers use, audited in a real Chromium with axe-core (the rules
of WCAG 2.2 levels A and AA that a program can check: names, labels, contrast, landmarks,
headings, lists, tables, ARIA). A page passes with no violation at all.

axe-core comes from npm, pinned by tests/e2e/axe/package-lock.json and installed by
`scripts/ensure-browser`; it is injected into each page (the context bypasses the pages' CSP
for that). The sandboxed preview's own document is audited on its own address.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gallery import services
from gallery.models import Notification
from gallery.previews import preview_url, revision_preview_key
from tests.base import make_user, notebook_bytes, stage
from tests.e2e.browser import browser  # noqa: F401  (pytest fixture)
from tests.e2e.test_journeys import approved, log_in
from tests.e2e.test_preview_browser import figure_png, multi_file_notebook

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
AXE = Path(__file__).resolve().parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
RULES = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


def audit(tab: Any, url: str) -> list[str]:
    """What axe-core finds wrong on the page at `url`, one line per rule and element."""
    response = tab.goto(url)
    assert response is not None and response.ok, f"{url}: {response and response.status}"
    tab.add_script_tag(path=str(AXE))
    found = tab.evaluate(
        """rules => axe.run(document, {runOnly: {type: "tag", values: rules},
                                       resultTypes: ["violations"], iframes: false})""", RULES)
    return [f"{url}: {v['id']} ({v['impact']}): {v['help']} at {node['target']}: "
            f"{node['failureSummary']}"
            for v in found["violations"] for node in v["nodes"]]


@pytest.fixture
def audited(browser: Any, live_server: Any) -> Iterator[Any]:  # noqa: F811
    if not AXE.exists():
        pytest.skip(f"{AXE} is missing; run scripts/ensure-browser")

    contexts: list[Any] = []

    def for_user(user: Any | None) -> Any:
        contexts.append(browser.new_context(bypass_csp=True))
        tab = contexts[-1].new_page()
        tab.set_default_timeout(30_000)
        if user is not None:
            log_in(tab, live_server, user)
        return lambda path: audit(tab, live_server.url + path)

    yield for_user
    for context in contexts:
        context.close()


def test_every_page_passes_an_automated_accessibility_audit(audited, live_server):
    contributor, reviewer = make_user("connor"), make_user("rita", reviewer=True)
    user = make_user("ursula")
    first = approved(contributor, reviewer, title="Broadcasting in NumPy",
                     data_links=[{"name": "era5", "target": "https://example.org/era5",
                                  "size": 2_500_000_000, "licence": "CC-BY-4.0",
                                  "description": "Hourly reanalysis"}])
    example = first.example
    use = services.queue_use(example=example, user=user, folder_name="broadcasting")
    approved(contributor, reviewer, title="Broadcasting in NumPy", example_slug=example.slug,
             notebook=notebook_bytes(4))
    staged = stage(contributor, title="Dask on the cluster")
    asked = stage(contributor, title="Heat diffusion")
    services.request_changes(submission=asked, reviewer=reviewer,
                             comment="Please say which grid sizes are safe.")
    revision = stage(contributor, title="Broadcasting in NumPy", example_slug=example.slug,
                     notebook=notebook_bytes(5, text="np.ones(3)"))
    figures = stage(contributor, title="Fitting a line", notebook=multi_file_notebook(),
                    files={"figures/fit.png": figure_png(), "points.csv": b"x,y\n1,2\n"})
    services.notify(user=user, kind=Notification.Kind.REVIEW, message="A newer version is out.",
                    example=example)
    example.refresh_from_db()
    # A copy the contributor sent the user: one waiting, one accepted.
    offers = [services.send_copy(
        sender=contributor, to=[user.username], message="The notebook from the workshop.",
        staged=services.StagedFiles(notebook_name="workshop.ipynb", notebook=notebook_bytes(),
                                    files={"data/points.csv": b"x,y\n1,2\n"})
    ).deliveries.get() for _ in range(2)]
    accepted = services.accept_delivery(delivery=offers[1], user=user)

    problems: list[str] = []
    anonymous = audited(None)
    problems += anonymous("/accounts/login/")
    person = audited(user)
    for path in ["/", "/?q=numpy", "/?tag=demo", "/?q=nothing-matches-this",
                 f"/examples/{example.slug}/", f"/examples/{staged.example.slug}/",
                 f"/jobs/{use.pk}/", "/stage/", "/notifications/", "/submissions/",
                 "/copies/", f"/copies/{offers[0].pk}/", f"/jobs/{accepted.pk}/",
                 preview_url(revision_preview_key(example.current_revision)),
                 preview_url(revision_preview_key(figures.revision))]:  # equations and a figure
        problems += person(path)
    author = audited(contributor)
    for path in ["/submissions/", f"/submissions/{asked.pk}/",
                 f"/stage/?example={example.slug}", "/copies/send/", "/copies/sent/"]:
        problems += author(path)
    desk = audited(reviewer)
    for path in ["/admin/", "/admin/gallery/submission/",
                 f"/admin/gallery/submission/{revision.pk}/change/",
                 f"/admin/gallery/submission/{staged.pk}/change/",
                 "/admin/gallery/submission/import/",
                 f"/admin/gallery/example/{example.pk}/change/"]:
        problems += desk(path)
    assert not problems, "\n".join(problems)

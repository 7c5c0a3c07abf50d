"""The three journeys in a real Chromium against a live gallery: a user finds an example and
gets a copy, a contributor stages and revises a notebook, a reviewer decides at the desk.
Each saves screenshots (GALLERY_SCREENSHOTS, default tests/e2e/screenshots/; the README's
set is in docs/screenshots/).

Jobs run inline here (eager Celery): the worker-process paths have their own tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from playwright.sync_api import expect

from gallery import services
from gallery.models import Example, Job, Submission
from tests.base import make_user, notebook_bytes, stage
from tests.e2e.browser import browser, page  # noqa: F401  (pytest fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parent.parent.parent
SHOTS = Path(os.environ.get("GALLERY_SCREENSHOTS", ROOT / "tests" / "e2e" / "screenshots"))


def shot(tab: Any, name: str, *, full: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)


def log_in(tab: Any, live_server: Any, user: Any) -> None:
    """A logged-in browser: the session cookie of a real login, handed to Chromium."""
    client = Client()
    client.force_login(user)
    cookie = client.cookies["gallery-sessionid"]
    tab.context.add_cookies([{"name": "gallery-sessionid", "value": cookie.value,
                               "url": live_server.url}])


def notebook_file(tmp_path: Path, name: str, *sources: str) -> Path:
    nb = json.loads(notebook_bytes(0))
    nb["cells"] = [{"cell_type": "markdown", "metadata": {}, "id": "m0",
                    "source": "# Heat diffusion\n\nSolve the heat equation on a grid."}] + [
        {"cell_type": "code", "metadata": {}, "source": s, "id": f"c{i}",
         "execution_count": i + 1,
         "outputs": [{"output_type": "stream", "name": "stdout", "text": f"step {i}\n"}]}
        for i, s in enumerate(sources)]
    path = tmp_path / name
    path.write_text(json.dumps(nb))
    return path


def approved(contributor: Any, reviewer: Any, **kwargs: Any) -> Submission:
    submission = stage(contributor, **kwargs)
    services.approve_submission(submission=submission, reviewer=reviewer, comment="Clear.")
    submission.refresh_from_db()
    return submission


def test_it_walks_a_user_from_search_to_a_copy_in_jupyterlab(live_server, page, settings):  # noqa: F811
    contributor, reviewer = make_user("connor"), make_user("rita", reviewer=True)
    user = make_user("ursula")
    approved(contributor, reviewer, title="Broadcasting in NumPy",
             notebook=notebook_bytes(text="np.arange(3) + np.arange(3)[:, None]"),
             data_links=[{"name": "era5", "target": "https://example.org/era5",
                          "size": 2_500_000_000, "licence": "CC-BY-4.0",
                          "description": "Hourly reanalysis"}])
    approved(contributor, reviewer, title="Time zones with pandas")
    stage(contributor, title="Dask on the cluster")
    log_in(page, live_server, user)

    page.goto(live_server.url + "/")
    expect(page.get_by_role("heading", name="Curated, reviewed examples")).to_be_visible()
    expect(page.get_by_role("heading", name="Staged examples still under review")).to_be_visible()
    cards = page.locator("li.card")
    assert cards.count() == 3
    for i in range(3):
        card = cards.nth(i)
        expect(card.get_by_role("link", name="Preview")).to_be_visible()
        expect(card.get_by_role("link", name="Use").first).to_be_visible()
    shot(page, "gallery")

    page.get_by_label("Search examples").fill("arange")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**/?q=arange")
    assert page.locator("li.card").count() == 1
    assert "Broadcasting in NumPy" in page.locator("li.card").inner_text()
    shot(page, "search")

    page.get_by_role("link", name="Use Broadcasting in NumPy").click()
    expect(page.get_by_role("heading", name="Broadcasting in NumPy")).to_be_visible()
    frame = page.frame_locator("iframe.preview")
    assert "arange" in frame.locator("body").inner_text(timeout=10_000)
    expect(page.get_by_role("cell", name="era5", exact=True)).to_be_visible()
    expect(page.get_by_text("2.3 GB")).to_be_visible()
    shot(page, "example")

    page.get_by_label("Folder name in").fill("broadcasting")
    page.get_by_role("button", name="Use this example").click()
    page.wait_for_url("**/jobs/**")
    open_link = page.get_by_role("link", name="Open in JupyterLab")
    open_link.wait_for(timeout=20_000)
    assert open_link.get_attribute("href").endswith("/lab/tree/examples/broadcasting/hello.ipynb")
    assert Job.objects.get(kind="use").state == "done"
    shot(page, "use-done")


def test_it_walks_a_contributor_and_a_reviewer_through_a_review(live_server, browser, tmp_path,  # noqa: F811
                                                                settings):
    contributor, reviewer = make_user("connor"), make_user("rita", reviewer=True)
    mine = browser.new_context(viewport={"width": 1280, "height": 900})
    # Tall enough for the whole desk page: a full-page shot would resize and blank the iframe.
    desk = browser.new_context(viewport={"width": 1280, "height": 2200})
    who, rev = mine.new_page(), desk.new_page()
    log_in(who, live_server, contributor)
    log_in(rev, live_server, reviewer)

    # The contributor stages a notebook from the form.
    who.goto(live_server.url + "/stage/")
    who.get_by_label("Notebook").set_input_files(
        str(notebook_file(tmp_path, "heat.ipynb", "grid = make_grid(64)", "solve(grid)")))
    who.get_by_label("Title").fill("Heat diffusion on a grid")
    who.get_by_label("Summary").fill("Solve the heat equation with NumPy.")
    who.get_by_label("Tags").fill("numpy, pde")
    who.get_by_role("button", name="Stage").click()
    who.wait_for_url("**/submissions/*/")
    assert who.locator("#submission-state").inner_text() == "staged"
    expect(who.get_by_text("✓ pass").first).to_be_visible()
    shot(who, "contributor-staged")

    # The reviewer finds it in the queue, reads checks, preview and diff, asks for changes.
    rev.goto(live_server.url + "/admin/gallery/submission/")
    rev.get_by_role("link", name="Heat diffusion on a grid").click()
    expect(rev.locator("#h-diff")).to_contain_text("first version: every cell is new")
    assert "solve(grid)" in rev.frame_locator("iframe.preview").locator("body").inner_text(
        timeout=10_000)
    rev.get_by_label("Request changes").check()
    rev.get_by_label("Comment").fill("Please say which grid sizes are safe on a login node.")
    rev.get_by_role("button", name="Send the decision").click()
    expect(rev.get_by_text("changes requested").first).to_be_visible()

    # The contributor is told, reads the comment and sends a new revision.
    who.goto(live_server.url + "/submissions/")
    expect(who.locator("#nav-notifications .badge")).to_be_visible()
    expect(who.get_by_text("rita: Please say which grid sizes")).to_be_visible()
    shot(who, "my-submissions")
    who.get_by_role("link", name="Submit a new revision").click()
    who.wait_for_url("**/stage/?example=*")
    assert who.get_by_label("Title").input_value() == "Heat diffusion on a grid"
    who.get_by_label("Notebook").set_input_files(str(notebook_file(
        tmp_path, "heat.ipynb", "grid = make_grid(32)  # safe on a login node", "solve(grid)")))
    who.get_by_role("button", name="Stage the new revision").click()
    who.wait_for_url("**/submissions/*/")
    example = Example.objects.get(title="Heat diffusion on a grid")
    assert example.revisions.count() == 2

    # First approval publishes revision 2; the desk then shows it with its diff.
    rev.goto(live_server.url + "/admin/gallery/submission/")
    rev.get_by_role("link", name="Heat diffusion on a grid").click()
    rev.get_by_label("Approve").check()
    rev.get_by_label("Comment").fill("Thanks, clear now.")
    rev.get_by_role("button", name="Send the decision").click()
    rev.wait_for_url("**/admin/gallery/submission/")
    example.refresh_from_db()
    assert example.state == "approved" and example.current_revision.number == 2

    revision3 = notebook_file(tmp_path, "heat.ipynb", "grid = make_grid(32)", "solve(grid)",
                              "plot(grid)")
    third = services.stage_submission(
        contributor=contributor,
        staged=services.StagedFiles(notebook_name="heat.ipynb",
                                    notebook=revision3.read_bytes()),
        meta=services.ExampleMeta(title="Heat diffusion on a grid", tags=["numpy"]),
        example_slug=example.slug)
    rev.goto(live_server.url + f"/admin/gallery/submission/{third.pk}/change/")
    expect(rev.get_by_text("Changes since approved version 2")).to_be_visible()
    assert rev.locator("#diff-counts").inner_text().startswith("Cells: 1 changed, 1 added")
    expect(rev.frame_locator("iframe.preview").locator("body")).to_contain_text("plot(grid)")
    shot(rev, "desk-diff")
    rev.goto(live_server.url + "/admin/gallery/submission/")
    shot(rev, "desk-queue")

    who.goto(live_server.url + "/notifications/")
    expect(who.get_by_text("version 2 is published")).to_be_visible()
    shot(who, "notifications")
    mine.close()
    desk.close()


def test_it_reads_without_javascript_and_works_with_the_keyboard(live_server, browser):  # noqa: F811
    contributor, reviewer = make_user("connor"), make_user("rita", reviewer=True)
    user = make_user("ursula")
    example = approved(contributor, reviewer, title="Broadcasting in NumPy").example
    context = browser.new_context(java_script_enabled=False)
    tab = context.new_page()
    log_in(tab, live_server, user)

    tab.goto(live_server.url + "/")
    tab.keyboard.press("Tab")
    assert tab.evaluate("document.activeElement.textContent") == "Skip to content" or \
        tab.locator("a.skip:focus").count() == 1
    tab.goto(live_server.url + f"/examples/{example.slug}/")
    expect(tab.get_by_role("heading", name="What it contains")).to_be_visible()
    # Use without JavaScript: the form posts, the job tab says where the copy is.
    tab.get_by_label("Folder name in").focus()
    tab.keyboard.press("Enter")
    tab.wait_for_url("**/jobs/**")
    assert "Your copy is in" in tab.locator("#job-result").inner_text()
    shot(tab, "use-without-javascript")
    context.close()


def test_it_shows_live_progress_until_the_copy_is_ready(live_server, page, settings):  # noqa: F811
    from gallery.celery import app

    contributor, reviewer = make_user("connor"), make_user("rita", reviewer=True)
    user = make_user("ursula")
    example = approved(contributor, reviewer, title="Broadcasting in NumPy").example
    app.conf.task_always_eager = False  # the job waits in the queue, as behind a busy worker
    try:
        job = services.queue_use(example=example, user=user, folder_name="live")
    finally:
        app.conf.task_always_eager = True
    log_in(page, live_server, user)
    page.goto(live_server.url + f"/jobs/{job.pk}/")
    expect(page.locator("#job-state")).to_have_text("queued")
    assert page.get_by_role("link", name="Open in JupyterLab").count() == 0
    services.perform_job(str(job.pk), worker="e2e")  # what a worker does
    # The page notices by itself: no reload from the test.
    expect(page.get_by_role("link", name="Open in JupyterLab")).to_be_visible(timeout=15_000)
    expect(page.locator("#job-state")).to_have_text("done")

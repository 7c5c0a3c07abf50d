"""The gallery's examples inside JupyterLab, end to end: a real JupyterHub with the gallery, a
real single-user JupyterLab with the extension, and a real Chromium. The examples are staged
and approved through the gallery's API first; then, in Lab: the Launcher's Examples section,
the side panel's search, an example's tab with its sandboxed preview, Use with a folder name,
and the copied notebook opening in a new tab. Then Update my copy from the same tab: a second
approved version is merged into an edited copy, the plan shown first.

The hub writes copies straight into the homes (the `filesystem` backend), which updates need;
tests/e2e/test_kernels.py drives Use in Lab through the `contents` backend.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import nbformat
import pytest
import requests
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from gallery import homes, previews
from tests.e2e.browser import browser, page  # noqa: F401  (pytest fixtures)
from tests.e2e.hub import ROOT, RunningHub, start_hub
from tests.e2e.test_hub import csrf, gallery_login, wait_json
from tests.e2e.test_stage_button import (  # noqa: F401
    extension_installed,
    hub_login,
    open_from_side_panel,
)

pytestmark = pytest.mark.e2e
USER = "demo-user"
SHOTS = ROOT / "docs" / "screenshots"
FAILURES = ROOT / "tests" / "e2e" / "screenshots"


@pytest.fixture(scope="module")
def lab_hub(extension_installed: None,  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    hub = start_hub(tmp_path_factory.mktemp("lab-hub"), env={"GALLERY_USE_BACKEND": "filesystem"})
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def published(lab_hub: RunningHub) -> RunningHub:
    publish(lab_hub)
    return lab_hub


def example_notebook(title: str, text: str, *more: str) -> bytes:
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}})
    # Fixed cell ids, as a notebook keeps them from one version to the next.
    nb.cells = [new_markdown_cell(f"# {title}\n\n{text}", id="title"),
                new_code_cell("extent = [13.9, 14.6, 14.8]\nprint(max(extent))", id="extent",
                              execution_count=1,
                              outputs=[new_output("stream", name="stdout", text="14.8\n")]),
                *(new_code_cell(source, id=f"more-{n}") for n, source in enumerate(more))]
    return nbformat.writes(nb).encode()


def stage(user: requests.Session, hub: RunningHub, slug: str, title: str, summary: str,
          tags: str, *more: str, revision_of: str = "") -> int:
    answer = user.post(hub.gallery("/api/v1/submissions"), headers=csrf(user), timeout=60,
                       files={"notebook": (f"{slug}.ipynb",
                                           example_notebook(title, summary, *more))},
                       data={"title": title, "slug": slug, "summary": summary, "tags": tags,
                             "licence": "CC-BY-4.0",
                             **({"example": revision_of} if revision_of else {})})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def publish(hub: RunningHub) -> None:
    """Two curated examples and one still under review, each with its preview rendered."""
    user = gallery_login(hub, USER)
    reviewer = gallery_login(hub, "demo-reviewer")
    staged = [stage(user, hub, "sea-ice", "Sea ice extent", "Arctic sea ice, month by month.",
                    "climate,ice"),
              stage(user, hub, "tides", "Tide tables", "Harmonic analysis of tide gauges.",
                    "ocean"),
              stage(user, hub, "ocean-heat", "Ocean heat content", "Heat in the upper ocean.",
                    "climate,ocean")]
    for pk in staged[:2]:
        approved = reviewer.post(hub.gallery(f"/submissions/{pk}/review"), timeout=60,
                                 headers=csrf(reviewer),
                                 data={"decision": "approve", "comment": "fine"})
        assert approved.status_code == 200
    for slug in ("sea-ice", "tides"):
        wait_json(user, hub.gallery(f"/api/v1/examples/{slug}"),
                  lambda e: e.get("state") == "approved")
    for pk in staged:
        wait_json(user, hub.gallery(f"/api/v1/submissions/{pk}"),
                  lambda s: s["preview"]["state"] == "ready")


def test_it_finds_opens_and_uses_an_example_inside_jupyterlab(
        published: RunningHub, page: Any) -> None:  # noqa: F811
    try:
        find_open_and_use(published, page)
    except Exception:
        FAILURES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(FAILURES / "lab-examples-failure.png"))
        print("hub log (tail):\n" + published.log_text()[-6000:])
        raise


def find_open_and_use(hub: RunningHub, page: Any) -> None:  # noqa: F811
    page.set_viewport_size({"width": 1366, "height": 860})
    to_gallery_api: list[str] = []
    page.on("request", lambda r: to_gallery_api.append(r.url)
            if "/services/gallery/api/" in r.url else None)
    hub_login(page, hub)
    page.goto(f"{hub.url}/hub/spawn/{USER}?next=/user/{USER}/lab")

    # The Launcher's Examples section: curated examples and "Browse all".
    section = page.locator(".jp-Launcher-section", has_text="Examples")
    section.locator(".jp-LauncherCard", has_text="Sea ice extent").wait_for(timeout=120_000)
    assert section.locator(".jp-LauncherCard", has_text="Tide tables").count() == 1
    assert section.locator(".jp-LauncherCard", has_text="Ocean heat").count() == 0  # staged
    news = page.locator(".jp-toast-button", has_text="No")  # JupyterLab's news question
    if news.count():
        news.first.click()
    section.locator(".jp-LauncherCard", has_text="Browse all examples").click()

    # The side panel: curated and staged (marked), then a search.
    panel = page.locator("#gallery-examples-panel")
    panel.locator("button.jp-GalleryExamples-item", has_text="Ocean heat content").wait_for()
    staged_item = panel.locator("button.jp-GalleryExamples-item", has_text="Ocean heat content")
    assert staged_item.locator(".jp-GalleryExamples-badge").inner_text() == "staged"
    search = panel.get_by_label("Search examples")
    assert search.evaluate("node => node === document.activeElement")  # focus is in the search
    assert sorted(panel.get_by_label("Tag").locator("option").all_inner_texts()) == [
        "All tags", "climate", "ice", "ocean"]
    search.fill("sea ice")
    panel.get_by_role("status").filter(has_text="1 example matches").wait_for(timeout=30_000)
    items = panel.locator("button.jp-GalleryExamples-item")
    assert items.all_inner_texts() and all("Sea ice extent" in t for t in items.all_inner_texts())
    page.screenshot(path=str(SHOTS / "lab-examples-panel.png"))

    # Open it with the keyboard, as a tab of its own.
    items.first.focus()
    page.keyboard.press("Enter")
    tab = page.locator(".jp-GalleryExample")
    tab.get_by_role("heading", name="Sea ice extent", level=1).wait_for(timeout=30_000)
    assert "Arctic sea ice, month by month." in tab.inner_text()
    assert "sea-ice.ipynb (main notebook)" in tab.locator("table").inner_text()
    assert "No environment file" in tab.inner_text()
    frame = tab.locator("iframe.jp-GalleryExample-preview")
    # Scripts and same-origin both off, as on the gallery's pages.
    assert frame.get_attribute("sandbox") == previews.FRAME_SANDBOX
    assert frame.get_attribute("referrerpolicy") == "no-referrer"
    assert frame.get_attribute("title") == "Preview of Sea ice extent"
    assert (frame.get_attribute("src") or "").startswith("/services/gallery/previews/")
    frame.scroll_into_view_if_needed()
    preview = tab.frame_locator("iframe.jp-GalleryExample-preview")
    preview.get_by_role("heading", name="Sea ice extent").wait_for(timeout=30_000)
    tab.locator(".jp-GalleryExample-plan", has_text="~/examples/sea-ice").wait_for(timeout=30_000)
    tab.get_by_role("heading", name="Sea ice extent", level=1).scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "lab-example-tab.png"))

    # The page cannot post to the server part without Jupyter's XSRF token.
    use_url = f"/user/{USER}/gallery-stage/examples/sea-ice/use"
    refused = page.evaluate("async url => (await fetch(url, {method: 'POST', body: '{}'}))"
                            ".status", use_url)
    assert refused == 403

    # Use it, in a folder of its own name: progress, then the notebook in a new tab.
    folder = tab.get_by_label("Folder name in ~/examples")
    assert folder.input_value() == "sea-ice"
    folder.fill("my-ice")
    tab.get_by_role("button", name="Use this example").click()
    notebook_tab = page.locator(".lm-TabBar-tab", has_text="sea-ice.ipynb")
    notebook_tab.wait_for(timeout=120_000)
    status = tab.locator(".jp-GalleryExample-status").inner_text()
    assert "Copied to ~/examples/my-ice" in status, status
    page.locator(".jp-NotebookPanel:visible .jp-Cell", has_text="Sea ice extent").first.wait_for(
        timeout=60_000)
    current = page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current")
    assert "sea-ice.ipynb" in current.inner_text()
    assert page.locator("#jp-main-dock-panel .lm-TabBar-tab", has_text="Sea ice extent").count()
    copied = hub.home / USER / "examples" / "my-ice"
    cells = nbformat.read(copied / "sea-ice.ipynb", as_version=4).cells
    assert cells[0].source.startswith("# Sea ice extent")
    # Every call went to the user's own server; the page never called the gallery's API.
    assert to_gallery_api == []


def test_it_updates_an_edited_copy_from_the_example_tab(
        published: RunningHub, page: Any) -> None:  # noqa: F811
    try:
        update_from_lab(published, page)
    except Exception:
        FAILURES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(FAILURES / "lab-update-failure.png"))
        print("hub log (tail):\n" + published.log_text()[-6000:])
        raise


MY_EDIT = "extent = [13.9, 14.6, 14.8, 15.1]  # my own measurements\nprint(max(extent))"
NEW_CELL = "print(min(extent))  # new in version 2"


def update_from_lab(hub: RunningHub, page: Any) -> None:  # noqa: F811
    # A copy of version 1, which its owner edits; then version 2 adds a cell.
    user = gallery_login(hub, USER)
    used = user.post(hub.gallery("/api/v1/examples/sea-ice/use"), headers=csrf(user),
                     json={"folder": "ice-update"}, timeout=60)
    assert used.status_code == 202, used.text
    job = wait_json(user, hub.gallery(f"/api/v1/jobs/{used.json()['id']}"),
                    lambda j: j["state"] in ("done", "failed"))
    assert job["state"] == "done", job["message"]
    copy = hub.home / USER / "examples" / "ice-update"
    mine = nbformat.read(copy / "sea-ice.ipynb", as_version=4)
    mine.cells[1].source = MY_EDIT
    nbformat.write(mine, copy / "sea-ice.ipynb")
    reviewer = gallery_login(hub, "demo-reviewer")
    pk = stage(user, hub, "sea-ice", "Sea ice extent", "Arctic sea ice, month by month.",
               "climate,ice", NEW_CELL, revision_of="sea-ice")
    approved = reviewer.post(hub.gallery(f"/submissions/{pk}/review"), timeout=60,
                             headers=csrf(reviewer), data={"decision": "approve"})
    assert approved.status_code == 200
    wait_json(user, hub.gallery("/api/v1/examples/sea-ice"), lambda e: e.get("version") == 2)

    # In Lab: the example's tab offers the update of that copy, plan first.
    page.set_viewport_size({"width": 1366, "height": 860})
    hub_login(page, hub)
    page.goto(f"{hub.url}/hub/spawn/{USER}?next=/user/{USER}/lab")
    open_from_side_panel(page, "Sea ice extent")
    section = page.locator(".jp-GalleryExample .jp-GalleryExample-update")
    section.get_by_role("heading", name="Update my copy").wait_for(timeout=60_000)
    assert "Version 2 is approved" in section.inner_text()
    section.get_by_role(
        "button", name="See what updating ~/examples/ice-update will change").click()
    status = section.locator(".jp-GalleryExample-updatestatus")
    status.filter(has_text="From version 1 to version 2").wait_for(timeout=60_000)
    assert "Nothing has been written yet" in status.inner_text()
    row = section.locator('tr[data-path="sea-ice.ipynb"]')
    assert "merged" in row.inner_text() and "(yours)" in row.inner_text(), row.inner_text()
    assert "(new version)" in row.inner_text()
    assert nbformat.read(copy / "sea-ice.ipynb", as_version=4).cells[1].source == MY_EDIT
    news = page.locator(".jp-toast-button", has_text="No")  # JupyterLab's news question
    if news.count():
        news.first.click()
    section.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "lab-example-update.png"))

    # Update: the updated notebook opens in a new tab; the example's tab (now behind it)
    # reports the merge, with the backup.
    section.get_by_role("button", name="Update my copy").click()
    cells = page.locator(".jp-NotebookPanel:visible .jp-Cell")
    cells.filter(has_text="new in version 2").first.wait_for(timeout=120_000)
    assert cells.filter(has_text="my own measurements").count() == 1
    current = page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current")
    assert "sea-ice.ipynb" in current.inner_text()
    heading = section.locator("h3", has_text="~/examples/ice-update is now of version 2")
    heading.wait_for(state="attached", timeout=30_000)
    result = section.locator(".jp-GalleryExample-updateresult").text_content() or ""
    assert "It was of version 1" in result and "~/examples/ice-update/.gallery-backup/" in result
    assert section.locator(".jp-GalleryExample-conflicts").count() == 0
    assert "Updated to version 2" in (status.text_content() or "")

    # On disk: the user's edit kept, the new cell there, the provenance naming version 2.
    sources = [c.source for c in nbformat.read(copy / "sea-ice.ipynb", as_version=4).cells]
    assert sources[1:] == [MY_EDIT, NEW_CELL], sources
    provenance = json.loads((copy / homes.PROVENANCE_FILE).read_text())
    assert (provenance["version"], provenance["updated_from"]) == (2, 1), provenance
    [backup] = (copy / homes.BACKUP_DIR).iterdir()
    assert nbformat.read(backup / "sea-ice.ipynb", as_version=4).cells[1].source == MY_EDIT

"""The stage button end to end: a real JupyterHub with the gallery, a real single-user JupyterLab
with the extension installed, and a real Chromium clicking "Submit to gallery".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import nbformat
import pytest
import requests
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tests.conftest import wait_for
from tests.e2e.browser import browser, page  # noqa: F401  (pytest fixtures)
from tests.e2e.hub import ROOT, RunningHub, start_hub

pytestmark = pytest.mark.e2e
USER = "demo-user"


@pytest.fixture(scope="module")
def extension_installed() -> None:
    """The extension in the environment the hub spawns servers from (idempotent, fast)."""
    if shutil.which("node") is None:
        pytest.skip("node is missing, so the JupyterLab extension cannot be built")
    subprocess.run([str(ROOT / "scripts" / "build-labextension")], check=True, timeout=900,
                   capture_output=True)


@pytest.fixture(scope="module")
def stage_hub(extension_installed: None,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    hub = start_hub(tmp_path_factory.mktemp("stage-hub"))
    try:
        yield hub
    finally:
        hub.stop()


def write_example(home: Path) -> Path:
    folder = home / "ice"
    folder.mkdir(parents=True)
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                               "display_name": "Python 3"}})
    nb.cells = [
        new_markdown_cell("# Sea ice extent\n\nArctic sea ice, month by month."),
        new_code_cell('import yaml\nrows = open("data.csv").read().splitlines()\n'
                      'grid = "/shared/climate/grid.nc"\nprint(len(rows), yaml.__name__)'),
    ]
    nbformat.write(nb, folder / "ice.ipynb")
    (folder / "data.csv").write_text("month,extent\n1,13.9\n2,14.6\n")
    (folder / "notes.txt").write_text("not part of the example\n")
    return folder / "ice.ipynb"


def hub_login(page: Any, hub: RunningHub) -> None:  # noqa: F811
    page.goto(f"{hub.url}/hub/login")
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", hub.password)
    page.click("#login_submit, input[type=submit], button[type=submit]")
    page.wait_for_url(f"{hub.url}/hub/**")


def open_from_side_panel(page: Any, title: str, timeout: float = 120.0) -> None:  # noqa: F811
    """Open an example from the side panel. JupyterLab may still be restoring the layout of
    the last visit (which opens or closes the left area) when the panel's tab appears, so the
    panel is shown again until the example's button takes the click."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    side = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="gallery-examples-panel"]')
    side.wait_for(timeout=120_000)
    panel = page.locator("#gallery-examples-panel")
    item = panel.locator("button.jp-GalleryExamples-item", has_text=title)
    deadline = time.monotonic() + timeout
    while True:
        if not panel.is_visible():
            side.click()
        try:
            item.click(timeout=10_000)
            return
        except PlaywrightTimeoutError:
            if time.monotonic() > deadline:
                raise


def run_first_cell(page: Any) -> None:  # noqa: F811
    editor = page.locator(".jp-Notebook .jp-CodeCell .jp-InputArea-editor").first
    output = page.locator(".jp-OutputArea-output", has_text="yaml")
    choose_kernel = page.locator(".jp-Dialog", has_text="Select Kernel")
    deadline = time.monotonic() + 120
    pressed = 0.0
    while not output.is_visible():
        assert time.monotonic() < deadline, "the cell did not run"
        if choose_kernel.is_visible():  # JupyterLab may ask which kernel to start
            choose_kernel.locator(".jp-mod-accept").click()
        elif time.monotonic() - pressed > 10:  # a key pressed before the kernel is up is lost
            editor.click()
            page.keyboard.press("Control+Enter")
            pressed = time.monotonic()
        page.wait_for_timeout(250)


def open_dialog(page: Any) -> Any:  # noqa: F811
    page.locator(".jp-NotebookPanel-toolbar .jp-GalleryStage-button").first.click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for(state="visible", timeout=60_000)
    return dialog


SHOTS = ROOT / "tests" / "e2e" / "screenshots"


def test_it_stages_the_open_notebook_and_a_new_revision_from_jupyterlab(
        stage_hub: RunningHub, page: Any) -> None:  # noqa: F811
    try:
        stage_and_revise(stage_hub, page)
    except Exception:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "stage-button-failure.png"))
        print("hub log (tail):\n" + stage_hub.log_text()[-6000:])
        raise


def stage_and_revise(stage_hub: RunningHub, page: Any) -> None:  # noqa: F811
    notebook_path = write_example(stage_hub.home / USER)
    hub_login(page, stage_hub)
    # The hub spawns the server and lands in JupyterLab with the notebook open.
    lab = f"/user/{USER}/lab/tree/ice/ice.ipynb"
    page.goto(f"{stage_hub.url}/hub/spawn/{USER}?next={lab}")
    button = page.locator(".jp-NotebookPanel-toolbar .jp-GalleryStage-button").first
    button.wait_for(state="visible", timeout=120_000)

    # Run the cell, so the kernel has imported yaml and the notebook has unsaved outputs.
    run_first_cell(page)

    dialog = open_dialog(page)
    assert "unsaved changes" in dialog.inner_text()
    dialog.locator(".jp-mod-accept").click()  # "Save and continue"
    form = page.locator(".jp-Dialog .jp-GalleryStage-form")
    form.wait_for(timeout=60_000)
    assert form.locator("input[name=title]").input_value() == "Sea ice extent"
    assert form.locator("input[name=file][value='data.csv']").is_checked()  # named in the code
    assert not form.locator("input[name=file][value='notes.txt']").is_checked()
    environment = form.locator("textarea[name=environment]").input_value()
    assert f"PyYAML=={metadata.version('PyYAML')}" in environment.splitlines()
    form.locator("input[name=title]").fill("Sea ice extent, month by month")
    form.locator("textarea[name=summary]").fill("Arctic sea ice extent since 1979.")
    form.locator("input[name=tags]").fill("climate, sea ice")
    form.locator("input[name=licence]").fill("CC-BY-4.0")
    form.locator("input[name=data-link][value='/shared/climate/grid.nc']").check()
    page.locator(".jp-Dialog .jp-mod-accept").click()

    result = page.locator(".jp-Dialog .jp-GalleryStage-result")
    result.wait_for(timeout=120_000)
    link = result.locator("a").get_attribute("href")
    assert link and link.startswith("/services/gallery/submissions/")
    page.locator(".jp-Dialog .jp-mod-accept").click()

    # The notebook remembers the example for next time (saved, so on disk).
    stored = wait_for(lambda: json.loads(notebook_path.read_text())["metadata"].get("gallery"),
                      what="the gallery metadata saved in the notebook")
    slug = stored["example"]
    assert stored["url"] == link and stored["files"] == ["data.csv"]

    # The gallery lists it in its staged section, with its files and environment spec.
    page.goto(stage_hub.gallery("/"))
    page.locator("section#staged", has_text="Sea ice extent, month by month").wait_for(
        timeout=60_000)
    api = requests.Session()
    api.headers["Authorization"] = "token " + stage_hub.user_token(
        stage_hub.login(USER), USER, scopes=["access:services!service=gallery"])
    listed = api.get(stage_hub.gallery("/api/v1/examples"), params={"state": "staged"},
                     timeout=30).json()
    assert slug in [e["slug"] for e in listed["results"]]
    detail = api.get(stage_hub.gallery(f"/api/v1/examples/{slug}"), timeout=30).json()
    assert {f["path"] for f in detail["files"]} >= {"ice.ipynb", "data.csv", "requirements.txt"}
    assert "notes.txt" not in {f["path"] for f in detail["files"]}
    assert detail["environment"] == "requirements.txt"
    assert [d["target"] for d in detail["data_links"]] == ["/shared/climate/grid.nc"]
    assert sorted(detail["tags"]) == ["climate", "sea-ice"] and detail["author"] == USER

    # Submitting again: the dialog is filled from last time and makes revision 2.
    page.goto(stage_hub.url + lab)
    button.wait_for(state="visible", timeout=120_000)
    dialog = open_dialog(page)
    if "unsaved changes" in dialog.inner_text():  # the reopened notebook may count as changed
        dialog.locator(".jp-mod-accept").click()
    form.wait_for(timeout=60_000)
    assert form.locator("input[name=title]").input_value() == "Sea ice extent, month by month"
    assert form.locator("input[name=revise]").is_checked()
    assert form.locator("input[name=data-link][value='/shared/climate/grid.nc']").is_checked()
    page.locator(".jp-Dialog .jp-mod-accept").click()
    result.wait_for(timeout=120_000)
    assert "revision 2" in result.inner_text()
    mine = api.get(stage_hub.gallery("/api/v1/submissions"), timeout=30).json()
    assert sorted(s["revision"] for s in mine if s["example"] == slug) == [1, 2]

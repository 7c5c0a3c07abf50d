"""Use hands over a kernel that works, in the real hub: an example with a requirements.txt is
approved, its environment is built once by the real uv as an unprivileged build account, Use
installs the kernel through the user's own server, and a cell run in that kernel, started
through the user's Jupyter server, imports the package of the spec. Then the same in
JupyterLab (a real Chromium): Use from the example's tab opens the notebook in the example's
kernel, where the cell runs.

The package of the spec comes from the tests' own wheels; ipykernel and what it needs come
from the package index, so this test needs the network as well as the hub.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from gallery import environments
from tests.base import notebook_bytes
from tests.conftest import wait_for
from tests.test_environments import IS_ROOT, make_wheel
from tests.unixusers import TAG, make_account, remove_account

from .browser import browser, page  # noqa: F401  (pytest fixtures)
from .hub import ROOT, RunningHub, start_hub
from .test_hub import csrf, gallery_login, wait_json
from .test_stage_button import (  # noqa: F401
    extension_installed,
    hub_login,
    open_from_side_panel,
)

pytestmark = [pytest.mark.e2e, pytest.mark.network,
              pytest.mark.skipif(not IS_ROOT, reason="the build account needs root")]


def _online() -> bool:
    try:
        return requests.head("https://pypi.org/simple/ipykernel/", timeout=10).status_code < 500
    except requests.RequestException:
        return False


FAILURES = ROOT / "tests" / "e2e" / "screenshots"


@pytest.fixture(scope="module")
def hub(extension_installed: None,  # noqa: F811
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    if not _online():
        pytest.skip("the package index cannot be reached")
    shared = Path(tempfile.mkdtemp(prefix="gallery-e2e-envs-"))
    shared.chmod(0o755)
    wheels = shared / "wheels"
    wheels.mkdir(mode=0o755)
    make_wheel(wheels, "galleryfake-a", "1.0", (),
               {"galleryfake_a/__init__.py": b"ANSWER = 42\n"})
    for path in wheels.iterdir():
        path.chmod(0o644)
    builder = f"ge{TAG}"
    make_account(shared, builder)
    running = start_hub(tmp_path_factory.mktemp("hub"), env={
        "GALLERY_BUILD_USER": builder,
        "GALLERY_ENV_DIR": str(shared / "store"),
        "GALLERY_BUILD_INDEX_OPTIONS": f"--find-links {wheels}",
    })
    try:
        yield running
    finally:
        running.stop()
        remove_account(builder)
        environments._remove(shared)


def run_cell(hub: RunningHub, token: str, kernel_name: str, code: str) -> str:
    """Start a kernel by name through the user's Jupyter server, run one cell, return what it
    printed (or the error it raised)."""
    server = f"{hub.url}/user/demo-user/api"
    headers = {"Authorization": f"token {token}"}
    started = requests.post(f"{server}/kernels", json={"name": kernel_name}, headers=headers,
                            timeout=120)
    assert started.status_code == 201, started.text
    kernel = started.json()
    assert kernel["name"] == kernel_name
    ws_url = (server.replace("http://", "ws://") + f"/kernels/{kernel['id']}/channels")
    ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"],
                                     timeout=120)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                       "session": uuid.uuid4().hex, "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False},
        }))
        printed, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline:
            message: dict[str, Any] = json.loads(ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                printed.append(content["text"])
            elif kind == "error":
                printed.append(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(printed)
        raise AssertionError("the cell did not finish")
    finally:
        ws.close()
        requests.delete(f"{server}/kernels/{kernel['id']}", headers=headers, timeout=60)


def test_use_gives_a_kernel_where_the_imports_of_the_spec_work(
        hub: RunningHub, page: Any) -> None:  # noqa: F811
    user = gallery_login(hub, "demo-user")
    reviewer = gallery_login(hub, "demo-reviewer")
    token = hub.user_token(hub.login("demo-user"), "demo-user")
    as_user = {"Authorization": f"token {token}"}
    staged = user.post(hub.gallery("/api/v1/submissions"), headers=csrf(user), timeout=60,
                       files={"notebook": ("fake.ipynb", notebook_bytes(
                           text="import galleryfake_a\nprint(galleryfake_a.ANSWER)")),
                              "environment": ("requirements.txt", b"galleryfake-a\n")},
                       data={"title": "Fake kernel", "slug": "fake-kernel", "tags": "demo"})
    assert staged.status_code == 201, staged.text
    approve = reviewer.post(hub.gallery(f"/submissions/{staged.json()['id']}/review"),
                            headers=csrf(reviewer), data={"decision": "approve"}, timeout=60)
    assert approve.status_code == 200
    # Built once, at approval, before anyone clicks Use.
    detail = wait_json(user, hub.gallery("/api/v1/examples/fake-kernel"),
                       lambda e: e.get("environment_state") in ("ready", "failed"),
                       timeout=600, headers=as_user)
    assert detail["environment_state"] == "ready", hub.log_text()[-3000:]
    plan = requests.get(hub.gallery("/api/v1/examples/fake-kernel/use-plan"), headers=as_user,
                        timeout=60).json()
    assert plan["environment_state"] == "ready" and plan["kernel"]
    kernels = hub.home / "demo-user" / ".local/share/jupyter/kernels"
    assert not (kernels / plan["kernel"]).exists()

    # In JupyterLab, loaded before the kernel exists: Use opens the notebook in it.
    try:
        use_in_lab(hub, page, as_user, plan["kernel"], kernels)
    except Exception:
        FAILURES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(FAILURES / "lab-kernel-failure.png"))
        print("hub log (tail):\n" + hub.log_text()[-6000:])
        raise

    # Through the API, as a script would.
    queued = requests.post(hub.gallery("/api/v1/examples/fake-kernel/use"), headers=as_user,
                           timeout=60)
    assert queued.status_code == 202, queued.text
    job = wait_json(user, hub.gallery(f"/api/v1/jobs/{queued.json()['id']}"),
                    lambda j: j["state"] in ("done", "failed"), timeout=300, headers=as_user)
    assert job["state"] == "done", job["message"]
    kernel = job["result"]["kernel"]
    assert kernel["installed"] and kernel["name"] == plan["kernel"], kernel
    assert "Fake kernel" in kernel["display_name"]

    copy = hub.home / "demo-user" / "examples" / job["result"]["folder"]
    nb = json.loads((copy / "fake.ipynb").read_text())
    assert nb["metadata"]["kernelspec"]["name"] == kernel["name"]
    assert os.path.isfile(kernels / kernel["name"] / "kernel.json")

    # The user's server knows the kernel, and its cells import the spec's package.
    specs = requests.get(f"{hub.url}/user/demo-user/api/kernelspecs", headers=as_user,
                         timeout=60).json()
    assert kernel["name"] in specs["kernelspecs"], sorted(specs["kernelspecs"])
    out = run_cell(hub, token, nb["metadata"]["kernelspec"]["name"],
                   "import galleryfake_a, sys\nprint(galleryfake_a.ANSWER, sys.prefix)")
    assert out.startswith("42 "), out
    assert out.split()[1].startswith(str(Path(hub.env["GALLERY_ENV_DIR"]))), out


def use_in_lab(hub: RunningHub, page: Any, as_user: dict[str, str],  # noqa: F811
               name: str, kernels: Path) -> None:
    """Use from the example's tab in JupyterLab, open since before the kernel was installed:
    the notebook opens in the example's kernel (not another Python kernel, and without
    asking), and its cell imports the spec's package there."""
    page.set_viewport_size({"width": 1366, "height": 860})
    hub_login(page, hub)
    page.goto(f"{hub.url}/hub/spawn/demo-user?next=/user/demo-user/lab")
    open_from_side_panel(page, "Fake kernel")
    tab = page.locator(".jp-GalleryExample")
    tab.locator(".jp-GalleryExample-plan", has_text=f"Kernel: {name}").wait_for(timeout=60_000)
    tab.get_by_label("Folder name in ~/examples").fill("lab-kernel")
    tab.get_by_role("button", name="Use this example").click()

    notebook = page.locator(".jp-NotebookPanel:visible")
    notebook.locator(".jp-Cell", has_text="galleryfake_a").first.wait_for(timeout=180_000)
    display_name = json.loads((kernels / name / "kernel.json").read_text())["display_name"]
    assert "Fake kernel" in display_name
    status = tab.locator(".jp-GalleryExample-status").text_content() or ""
    assert f"with the kernel {display_name}" in status, status
    # The toolbar names the example's kernel, and the server's session runs it.
    shown = notebook.locator(".jp-KernelName")
    shown.filter(has_text=display_name).wait_for(timeout=60_000)
    assert shown.inner_text().strip() == display_name
    assert page.locator(".jp-Dialog", has_text="Select Kernel").count() == 0

    def session_of_the_copy() -> list[dict[str, Any]]:
        sessions = requests.get(f"{hub.url}/user/demo-user/api/sessions", headers=as_user,
                                timeout=60).json()
        return [s for s in sessions if s["path"].endswith("examples/lab-kernel/fake.ipynb")]

    opened = wait_for(session_of_the_copy, timeout=120, what="the notebook's session")
    assert [s["kernel"]["name"] for s in opened] == [name], opened

    # A cell run there imports the spec's package.
    editor = notebook.locator(".jp-CodeCell .jp-InputArea-editor").first
    output = notebook.locator(".jp-CodeCell").first.locator(".jp-OutputArea-output",
                                                            has_text="42")
    deadline, pressed = time.monotonic() + 120, 0.0
    while not output.is_visible():
        assert time.monotonic() < deadline, "the cell did not run"
        if time.monotonic() - pressed > 10:  # a key pressed before the kernel is up is lost
            editor.click()
            page.keyboard.press("Control+Enter")
            pressed = time.monotonic()
        page.wait_for_timeout(250)
    errors = notebook.locator(".jp-CodeCell").first.locator(".jp-OutputArea-output",
                                                            has_text="Error")
    assert errors.count() == 0

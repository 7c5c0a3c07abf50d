"""Examples of a hub group, end to end with a real JupyterHub: the hub's admin makes the
groups through the hub's REST API, a member stages an example for the group, the group's own
reviewer approves it, members see it everywhere and others nowhere, and a member the hub's
admin removes from the group loses it within the recheck interval while keeping the copy
they made. Then the same journey in a real Chromium through JupyterLab: the stage button
choosing the group, the reviewer's desk, Use from the Lab panel, and a non-member who never
sees it.

One hub for the module: `physics` (alice, bob), `physics-reviewers` (carol), dave in
neither, hubadmin the hub's admin (GALLERY_DEMO_ADMIN_USERS). Each test puts bob back in
`physics` when it is done.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import nbformat
import pytest
import requests
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from gallery.previews import FRAME_SANDBOX
from tests.conftest import wait_for
from tests.e2e.browser import browser  # noqa: F401  (pytest fixture)
from tests.e2e.hub import ROOT, RunningHub, start_hub
from tests.e2e.test_hub import csrf, gallery_login, wait_json
from tests.e2e.test_stage_button import extension_installed, open_dialog  # noqa: F401

pytestmark = pytest.mark.e2e
GROUP, REVIEWERS = "physics", "physics-reviewers"
MEMBERS, REVIEWER, OUTSIDER, ADMIN = ("alice", "bob"), "carol", "dave", "hubadmin"
ADMIN_PASSWORD = secrets.token_urlsafe(32)  # the shared-password login's admins have their own
RECHECK_SECONDS = 3  # the gallery asks the hub again after this: a few seconds for the test
LOSES_ACCESS_WITHIN = 120  # a generous limit on waiting for the condition, not a measure
FAILURES = ROOT / "tests" / "e2e" / "screenshots"


class HubAdmin:
    """The hub's admin, calling the hub's REST API with a token of their own."""

    def __init__(self, hub: RunningHub) -> None:
        self.hub = hub
        self.token = hub.user_token(hub.login(ADMIN, ADMIN_PASSWORD), ADMIN)

    def call(self, method: str, path: str, users: list[str]) -> requests.Response:
        response = requests.request(method, f"{self.hub.url}/hub/api/{path}",
                                    json={"users": users}, timeout=30,
                                    headers={"Authorization": f"token {self.token}"})
        assert response.status_code in (200, 201), f"{method} {path}: {response.text}"
        return response

    def make_group(self, name: str, users: list[str]) -> None:
        self.call("POST", f"groups/{name}", users)

    def add(self, name: str, users: list[str]) -> None:
        self.call("POST", f"groups/{name}/users", users)

    def remove(self, name: str, users: list[str]) -> None:
        self.call("DELETE", f"groups/{name}/users", users)

    def members(self, name: str) -> list[str]:
        response = requests.get(f"{self.hub.url}/hub/api/groups/{name}", timeout=30,
                                headers={"Authorization": f"token {self.token}"})
        assert response.status_code == 200, response.text
        return sorted(response.json()["users"])


@pytest.fixture(scope="module")
def groups_hub(extension_installed: None,  # noqa: F811
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    hub = start_hub(tmp_path_factory.mktemp("groups-hub"), env={
        "GALLERY_USE_BACKEND": "filesystem",
        "GALLERY_DEMO_EXTRA_USERS": ",".join([*MEMBERS, REVIEWER, OUTSIDER]),
        "GALLERY_DEMO_ADMIN_USERS": ADMIN,
        "GALLERY_DEMO_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "GALLERY_HUB_RECHECK_SECONDS": str(RECHECK_SECONDS),
        "GALLERY_HUB_TOKEN_CACHE_SECONDS": str(RECHECK_SECONDS),
    })
    try:
        admin = HubAdmin(hub)
        admin.make_group(GROUP, list(MEMBERS))
        admin.make_group(REVIEWERS, [REVIEWER])
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def admin(groups_hub: RunningHub) -> Iterator[HubAdmin]:
    """The hub's admin; bob is in the group before and after each test."""
    hub_admin = HubAdmin(groups_hub)
    hub_admin.add(GROUP, ["bob"])
    try:
        yield hub_admin
    finally:
        hub_admin.add(GROUP, ["bob"])


def api_session(hub: RunningHub, username: str) -> requests.Session:
    """A client of the gallery's API with the user's own hub token."""
    session = requests.Session()
    session.headers["Authorization"] = "token " + hub.user_token(
        hub.login(username), username, scopes=["access:services!service=gallery"])
    return session


def notebook_text(title: str, word: str) -> str:
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}})
    nb.cells = [new_markdown_cell(f"# {title}\n\nCounting {word}s for the {GROUP} group."),
                new_code_cell(f"print('{word}', 3)", execution_count=1,
                              outputs=[new_output("stream", name="stdout", text=f"{word} 3\n")])]
    return nbformat.writes(nb)


# --- over HTTP: the hub's admin takes a member out of the group --------------------------


def test_it_shows_a_group_example_to_members_only_until_the_hub_removes_one(
        groups_hub: RunningHub, admin: HubAdmin) -> None:
    try:
        members_only_until_removed(groups_hub, admin)
    except Exception:
        print("hub log (tail):\n" + groups_hub.log_text()[-6000:])
        raise


def members_only_until_removed(hub: RunningHub, admin: HubAdmin) -> None:
    assert admin.members(GROUP) == sorted(MEMBERS)
    apis = {who: api_session(hub, who) for who in [*MEMBERS, REVIEWER, OUTSIDER]}
    assert apis["alice"].get(hub.gallery("/api/v1/me"), timeout=30).json()["groups"] == [GROUP]
    assert apis[OUTSIDER].get(hub.gallery("/api/v1/me"), timeout=30).json()["groups"] == []

    # alice stages it for her group with her hub token; carol, the group's reviewer, finds it
    # at the desk and approves it there.
    staged = apis["alice"].post(hub.gallery("/api/v1/submissions"), timeout=60, json={
        "title": "Quark counting", "summary": "Quarks, counted.", "tags": ["particles"],
        "groups": [GROUP], "notebook": notebook_text("Quark counting", "quark"),
        "notebook_name": "quarks.ipynb"})
    assert staged.status_code == 201, staged.text
    assert staged.json()["groups"] == [GROUP]
    pk, slug = staged.json()["id"], staged.json()["example"]
    carol = gallery_login(hub, REVIEWER)
    desk = carol.get(hub.gallery("/admin/gallery/submission/"), timeout=30)
    assert desk.status_code == 200 and "Quark counting" in desk.text
    decided = carol.post(hub.gallery(f"/admin/gallery/submission/{pk}/decide/"), timeout=60,
                         headers=csrf(carol), allow_redirects=False,
                         data={"decision": "approve", "comment": "Counts add up."})
    assert decided.status_code == 302, decided.text
    wait_json(apis["alice"], hub.gallery(f"/api/v1/examples/{slug}"),
              lambda e: e.get("state") == "approved")
    wait_json(apis["alice"], hub.gallery(f"/api/v1/submissions/{pk}"),
              lambda s: s["preview"]["state"] == "ready")

    # Members see it on every surface; dave gets nothing, a 404 where it has an address.
    browsers = {who: gallery_login(hub, who) for who in [*MEMBERS, OUTSIDER]}
    page = hub.gallery(f"/examples/{slug}/")
    signed = {}
    for who, ok in [("alice", True), ("bob", True), (OUTSIDER, False)]:
        session, api = browsers[who], apis[who]
        assert session.get(page, timeout=30).status_code == (200 if ok else 404), who
        assert ("Quark counting" in session.get(hub.gallery("/"), timeout=30).text) == ok, who
        searched = session.get(hub.gallery("/"), params={"q": "quark"}, timeout=30).text
        assert (f'href="/services/gallery/examples/{slug}/"' in searched) == ok, who
        listed = api.get(hub.gallery("/api/v1/examples"), timeout=30).json()
        assert (slug in [e["slug"] for e in listed["results"]]) == ok, who
        found = api.get(hub.gallery("/api/v1/examples"), params={"q": "quark"}, timeout=30)
        assert found.json()["count"] == (1 if ok else 0), who
        detail = api.get(hub.gallery(f"/api/v1/examples/{slug}"), timeout=30)
        assert detail.status_code == (200 if ok else 404), who
        if ok:
            signed[who] = hub.url + detail.json()["preview_url"]
            assert "?token=" in signed[who]
            # The preview: through the session, and through the signed address alone.
            preview = session.get(signed[who].split("?")[0], timeout=30)
            assert preview.status_code == 200 and "quark" in preview.text, who
            assert preview.headers["Cache-Control"].startswith("private")
            alone = requests.get(signed[who], timeout=30, allow_redirects=False)
            assert alone.status_code == 200 and "quark" in alone.text, who
        else:
            preview = session.get(signed["alice"].split("?")[0], timeout=30)
            assert preview.status_code == 404
            use = api.post(hub.gallery(f"/api/v1/examples/{slug}/use"), json={}, timeout=30)
            assert use.status_code == 404

    # bob makes his own copy.
    used = apis["bob"].post(hub.gallery(f"/api/v1/examples/{slug}/use"), json={}, timeout=60)
    assert used.status_code == 202, used.text
    job = wait_json(apis["bob"], hub.gallery(f"/api/v1/jobs/{used.json()['id']}"),
                    lambda j: j["state"] in ("done", "failed"))
    assert job["state"] == "done", job["message"]
    copy = hub.home / "bob" / "examples" / slug / "quarks.ipynb"
    assert copy.is_file()

    # The hub's admin takes bob out of physics. Within the recheck interval the gallery
    # shows him nothing of it: page, lists, search, API, preview, his earlier signed link.
    admin.remove(GROUP, ["bob"])
    assert admin.members(GROUP) == ["alice"]
    bob, bob_api = browsers["bob"], apis["bob"]
    wait_for(lambda: bob.get(page, timeout=30).status_code == 404,
             timeout=LOSES_ACCESS_WITHIN, what="bob's session to lose the group's example")
    wait_for(lambda: bob_api.get(hub.gallery(f"/api/v1/examples/{slug}"),
                                 timeout=30).status_code == 404,
             timeout=LOSES_ACCESS_WITHIN, what="bob's hub token to lose the group's example")
    assert "Quark counting" not in bob.get(hub.gallery("/"), params={"q": "quark"},
                                           timeout=30).text
    assert bob_api.get(hub.gallery("/api/v1/examples"), params={"q": "quark"},
                       timeout=30).json()["count"] == 0
    assert bob.get(signed["bob"].split("?")[0], timeout=30).status_code == 404
    assert requests.get(signed["bob"], timeout=30, allow_redirects=False).status_code == 404
    assert bob_api.post(hub.gallery(f"/api/v1/examples/{slug}/use"), json={},
                        timeout=30).status_code == 404
    # What he keeps: his own copy, as it was.
    assert copy.is_file() and "quark" in copy.read_text()
    # alice still sees it, and so does carol, its reviewer.
    assert browsers["alice"].get(page, timeout=30).status_code == 200
    assert requests.get(signed["alice"], timeout=30).status_code == 200
    assert carol.get(page, timeout=30).status_code == 200


# --- in the browser, through JupyterLab ------------------------------------------------------


def hub_login(page: Any, hub: RunningHub, username: str) -> None:
    page.goto(f"{hub.url}/hub/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", hub.password)
    page.click("#login_submit, input[type=submit], button[type=submit]")
    page.wait_for_url(f"{hub.url}/hub/**")


def open_lab(page: Any, hub: RunningHub, username: str, path: str = "", *,
             log_in: bool = True) -> None:
    if log_in:
        hub_login(page, hub, username)
    page.goto(f"{hub.url}/hub/spawn/{username}?next=/user/{username}/lab{path}")


def examples_panel(page: Any) -> Any:
    side = page.locator('.jp-SideBar .lm-TabBar-tab[data-id="gallery-examples-panel"]')
    side.wait_for(timeout=120_000)
    panel = page.locator("#gallery-examples-panel")
    if not panel.is_visible():
        side.click()
    news = page.locator(".jp-toast-button", has_text="No")  # JupyterLab's news question
    if news.count():
        news.first.click()
    return panel


def test_it_stages_approves_uses_and_hides_a_group_example_through_jupyterlab(
        groups_hub: RunningHub, admin: HubAdmin, browser: Any) -> None:  # noqa: F811
    pages: dict[str, Any] = {}
    try:
        group_journey(groups_hub, browser, pages)
    except Exception:
        FAILURES.mkdir(parents=True, exist_ok=True)
        for who, page in pages.items():
            page.screenshot(path=str(FAILURES / f"groups-{who}-failure.png"))
        print("hub log (tail):\n" + groups_hub.log_text()[-6000:])
        raise


def group_journey(hub: RunningHub, browser: Any, pages: dict[str, Any]) -> None:  # noqa: F811
    def new_page(who: str) -> Any:
        pages[who] = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
        return pages[who]

    # alice stages her notebook from JupyterLab, choosing physics in the stage dialog.
    folder = hub.home / "alice" / "photon"
    folder.mkdir(parents=True)
    (folder / "photon.ipynb").write_text(notebook_text("Photon puzzle", "photon"))
    lab = new_page("alice")
    open_lab(lab, hub, "alice", "/tree/photon/photon.ipynb")
    lab.locator(".jp-NotebookPanel-toolbar .jp-GalleryStage-button").first.wait_for(
        state="visible", timeout=120_000)
    dialog = open_dialog(lab)
    if "unsaved changes" in dialog.inner_text():
        dialog.locator(".jp-mod-accept").click()
    form = lab.locator(".jp-Dialog .jp-GalleryStage-form")
    form.wait_for(timeout=60_000)
    audience = form.locator("fieldset.jp-GalleryStage-audience")
    assert audience.get_by_role("radio", name="Everyone who uses the gallery").is_checked()
    offered = audience.locator("input[name=group]").evaluate_all("boxes => boxes.map(b => b.value)")
    assert offered == [GROUP]
    audience.get_by_role("checkbox", name=GROUP, exact=True).check()
    assert audience.get_by_role("radio", name="Only the members of these hub groups:").is_checked()
    form.locator("input[name=title]").fill("Photon puzzle")
    form.locator("input[name=tags]").fill("optics")
    lab.locator(".jp-Dialog .jp-mod-accept").click()
    result = lab.locator(".jp-Dialog .jp-GalleryStage-result")
    unsaved = lab.locator(".jp-Dialog", has_text="Unsaved changes")
    deadline = time.monotonic() + 120
    while not result.is_visible():  # the starting kernel may have touched the notebook
        assert time.monotonic() < deadline, "the submission did not finish"
        if unsaved.is_visible():
            unsaved.locator(".jp-mod-accept").click()  # "Save and continue"
        lab.wait_for_timeout(250)
    assert f"Only the members of {GROUP} will see it." in result.inner_text()
    lab.locator(".jp-Dialog .jp-mod-accept").click()
    stored = wait_for(lambda: json.loads((folder / "photon.ipynb").read_text())["metadata"]
                      .get("gallery"), what="the gallery metadata saved in the notebook")
    slug, pk = stored["example"], stored["submission"]
    assert stored["groups"] == [GROUP]

    # carol, physics' own reviewer, approves it at the reviewer's desk.
    desk = new_page(REVIEWER)
    hub_login(desk, hub, REVIEWER)
    desk.goto(hub.gallery("/admin/gallery/submission/"))
    desk.get_by_role("link", name="Photon puzzle").click()
    desk.get_by_label("Approve").check()
    desk.get_by_label("Comment").fill("Clear, and for physics only.")
    desk.get_by_role("button", name="Send the decision").click()
    desk.wait_for_url("**/admin/gallery/submission/")
    alice_api = api_session(hub, "alice")
    wait_json(alice_api, hub.gallery(f"/api/v1/examples/{slug}"),
              lambda e: e.get("state") == "approved")
    wait_json(alice_api, hub.gallery(f"/api/v1/submissions/{pk}"),
              lambda s: s["preview"]["state"] == "ready")

    # bob, a member, finds it in the Lab panel, reads its preview and Uses it: the copy opens.
    lab = new_page("bob")
    open_lab(lab, hub, "bob")
    panel = examples_panel(lab)
    panel.get_by_label("Search examples").fill("photon")
    panel.get_by_role("status").filter(has_text="1 example matches").wait_for(timeout=60_000)
    panel.locator("button.jp-GalleryExamples-item", has_text="Photon puzzle").click()
    tab = lab.locator(".jp-GalleryExample")
    tab.get_by_role("heading", name="Photon puzzle", level=1).wait_for(timeout=30_000)
    assert tab.locator(".jp-GalleryExample-audience").inner_text() == (
        f"For the members of {GROUP} only.")
    frame = tab.locator("iframe.jp-GalleryExample-preview")
    assert frame.get_attribute("sandbox") == FRAME_SANDBOX  # as on the gallery's pages
    assert frame.get_attribute("referrerpolicy") == "no-referrer"
    assert f"/services/gallery/examples/{slug}/previews/" in (frame.get_attribute("src") or "")
    assert "?token=" in (frame.get_attribute("src") or "")  # the frame has no gallery session
    frame.scroll_into_view_if_needed()
    preview = tab.frame_locator("iframe.jp-GalleryExample-preview")
    preview.get_by_role("heading", name="Photon puzzle").wait_for(timeout=30_000)
    tab.get_by_role("button", name="Use this example").click()
    lab.locator(".lm-TabBar-tab", has_text="photon.ipynb").wait_for(timeout=120_000)
    lab.locator(".jp-NotebookPanel:visible .jp-Cell", has_text="Photon puzzle").first.wait_for(
        timeout=60_000)
    assert (hub.home / "bob" / "examples" / slug / "photon.ipynb").is_file()

    # dave, in no group, never sees it: not in the gallery, its search, its address, or the
    # Lab panel.
    outside = new_page(OUTSIDER)
    hub_login(outside, hub, OUTSIDER)
    outside.goto(hub.gallery("/"))
    outside.locator("main").wait_for()
    assert "Photon puzzle" not in outside.content()
    outside.goto(hub.gallery("/?q=photon"))
    assert "Photon puzzle" not in outside.content()
    assert outside.goto(hub.gallery(f"/examples/{slug}/")).status == 404
    open_lab(outside, hub, OUTSIDER, log_in=False)
    panel = examples_panel(outside)
    panel.get_by_label("Search examples").fill("photon")
    panel.get_by_role("status").filter(has_text="0 examples match").wait_for(timeout=60_000)
    assert panel.locator("button.jp-GalleryExamples-item", has_text="Photon puzzle").count() == 0
    assert not (hub.home / OUTSIDER / "examples" / slug).exists()


def test_it_sends_a_copy_that_the_recipient_accepts_and_opens(
        groups_hub: RunningHub, admin: HubAdmin, browser: Any,  # noqa: F811
        tmp_path: Any) -> None:
    """alice sends a notebook of hers to bob with a message from the gallery's page; bob is
    told, accepts it, the copy is written into his home as him and opens in JupyterLab;
    nothing is published or reviewed, and dave is never told of it."""
    pages: dict[str, Any] = {}
    try:
        send_journey(groups_hub, browser, pages, tmp_path)
    except Exception:
        FAILURES.mkdir(parents=True, exist_ok=True)
        for who, page in pages.items():
            page.screenshot(path=str(FAILURES / f"send-{who}-failure.png"))
        print("hub log (tail):\n" + groups_hub.log_text()[-6000:])
        raise


def send_journey(hub: RunningHub, browser: Any, pages: dict[str, Any],  # noqa: F811
                 tmp_path: Any) -> None:
    def new_page(who: str) -> Any:
        pages[who] = browser.new_context(viewport={"width": 1366, "height": 900}).new_page()
        return pages[who]

    notebook = tmp_path / "lattice.ipynb"
    notebook.write_text(notebook_text("Lattice sums", "lattice"))
    before = api_session(hub, "alice").get(hub.gallery("/api/v1/examples?q=lattice"),
                                           timeout=30).json()["count"]

    # alice sends it to bob, with a message.
    sender = new_page("alice")
    hub_login(sender, hub, "alice")
    sender.goto(hub.gallery("/copies/send/"))
    sender.get_by_label("Notebook").set_input_files(str(notebook))
    sender.get_by_label("To people").fill("bob")
    sender.get_by_label("Message").fill("The lattice sums we spoke of: try cell 2.")
    sender.locator("#send-button").click()
    sender.wait_for_url("**/copies/sent/**")
    assert "bob" in sender.locator("main").inner_text()

    # bob is told, opens the copy, reads the message and accepts it into his home.
    recipient = new_page("bob")
    hub_login(recipient, hub, "bob")
    recipient.goto(hub.gallery("/notifications/"))
    assert "lattice" in recipient.locator("main").inner_text().lower()
    recipient.get_by_role("link", name="See the copy").first.click()
    offer = recipient.url
    assert "try cell 2" in recipient.locator("#offer-message").inner_text()
    recipient.locator("#id_folder").fill("lattice-from-alice")
    recipient.locator("#accept-button").click()
    # The job's page follows the job live until the copy is written.
    recipient.locator("#open-link").wait_for(timeout=120_000)
    copy = hub.home / "bob" / "examples" / "lattice-from-alice" / "lattice.ipynb"
    assert "".join(json.loads(copy.read_text())["cells"][0]["source"]).startswith(
        "# Lattice sums")
    recipient.locator("#open-link").click()
    launch = recipient.get_by_role("button", name="Launch Server")  # the hub's page, when
    notebook_tab = recipient.locator(".lm-TabBar-tab", has_text="lattice.ipynb")  # not running
    launch.or_(notebook_tab).first.wait_for(timeout=120_000)
    if launch.is_visible():
        launch.click()  # the hub starts his server and goes on to the notebook
    notebook_tab.wait_for(timeout=120_000)
    recipient.locator(".jp-NotebookPanel:visible .jp-Cell", has_text="Lattice sums").first.wait_for(
        timeout=60_000)

    # Nothing was published or reviewed; dave hears nothing of it.
    after = api_session(hub, "alice").get(hub.gallery("/api/v1/examples?q=lattice"),
                                          timeout=30).json()["count"]
    assert after == before
    outsider = api_session(hub, OUTSIDER)
    assert outsider.get(hub.gallery("/api/v1/copies/received"), timeout=30).json() == []
    dave = new_page(OUTSIDER)
    hub_login(dave, hub, OUTSIDER)
    dave.goto(hub.gallery("/notifications/"))
    assert "lattice" not in dave.locator("main").inner_text().lower()
    assert dave.goto(offer).status == 404
    assert not (hub.home / OUTSIDER / "examples" / "lattice-from-alice").exists()

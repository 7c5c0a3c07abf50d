"""The stage button's server part (labextension/gallery_stage): what the dialog offers, and the
submission from a real Jupyter server with a real kernel to the real gallery.

The hub is the one thing stood in for here: a tiny HTTP server answering the gallery's
`GET /hub/api/user` for the single-user server's token. tests/e2e/test_stage_button.py runs
the same path through a real JupyterHub.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any

import nbformat
import pytest
import requests
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "labextension"))

from gallery_stage import detect  # noqa: E402
from gallery_stage.gallery import Config, StageError, explain, send_submission  # noqa: E402
from gallery_stage.handlers import check_groups, clean_relpath  # noqa: E402

from gallery.models import Example, Submission  # noqa: E402

pytest.importorskip("jupyter_server", reason="jupyterlab is in the test extras")

HUB_TOKEN = "single-user-token-of-connor"
JUPYTER_TOKEN = "jupyter-test-token"
ACCESS = "access:services!service=gallery"


def notebook(*code: str, heading: str = "# Sea ice extent") -> dict[str, Any]:
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                               "display_name": "Python 3"}})
    nb.cells.append(new_markdown_cell(heading + "\n\nA small example."))
    nb.cells += [new_code_cell(source) for source in code]
    return nb


# --- detection --------------------------------------------------------------------------------


def test_it_finds_the_imports_even_around_magics_and_broken_cells() -> None:
    nb = notebook("%matplotlib inline\nimport numpy as np, os.path\nfrom pandas.io import sql",
                  "!pip install xarray\nfrom . import local\nimport __future__",
                  "def broken(:\nimport scipy.stats\nfrom sklearn import svm")
    assert detect.imports(nb) == ["numpy", "os", "pandas", "scipy", "sklearn"]


def test_it_offers_absolute_paths_and_urls_in_the_code_as_data_links() -> None:
    nb = notebook(
        'ds = open("/shared/climate/era5/t2m.nc")\n'
        'url = "https://example.org/data/ice.csv?raw=1"\n'
        'tmp = "/tmp/scratch/x"; dev = "/dev/null"; rel = "data/local.csv"\n'
        'f"/shared/{user}/x"  # an f-string is no fixed target\n'
        '# see doi:10.5281/zenodo.12345 and https://example.org/data/ice.csv?raw=1\n',
        "!wget -q https://example.org/archive/ice.tar.gz",
    )
    links = detect.data_links(nb)
    assert [link["target"] for link in links] == [
        "/shared/climate/era5/t2m.nc",
        "https://example.org/data/ice.csv?raw=1",
        "doi:10.5281/zenodo.12345",
        "https://example.org/archive/ice.tar.gz",
    ]
    assert [link["name"] for link in links] == ["t2m", "ice", "zenodo-12345", "ice-2"]


def test_it_marks_the_sibling_files_that_the_code_names() -> None:
    nb = notebook('pd.read_csv("./data.csv")', 'open("sub/more.txt")')
    found = detect.referenced_files(nb, ["data.csv", "sub/more.txt", "unused.txt"])
    assert found == {"data.csv", "sub/more.txt"}


def test_it_pins_the_draft_to_what_a_real_kernel_process_has_imported() -> None:
    # The snippet runs in a real interpreter, the way the kernel runs it.
    code = ("import yaml, json\n"
            f"print(eval({detect.KERNEL_EXPRESSION!r}))\n"
            "print('result' in globals(), 'found' in globals())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    report = detect.parse_kernel_report(repr(out[0]))
    assert out[1] == "False False"  # nothing left in the kernel's namespace
    assert report["modules"]["yaml"] == ["PyYAML", metadata.version("PyYAML")]
    nb = notebook("import yaml\nimport json\nimport helpers\nimport not_installed_anywhere")
    draft = detect.draft_requirements(nb, report, local_modules={"helpers"})
    lines = [line for line in draft.splitlines() if not line.startswith("#")]
    assert lines == [f"PyYAML=={metadata.version('PyYAML')}", "not_installed_anywhere"]
    assert "Not imported by the kernel yet, so not pinned: not_installed_anywhere." in draft


def test_it_drafts_unpinned_names_when_no_kernel_runs() -> None:
    draft = detect.draft_requirements(notebook("import yaml\nimport os"), None)
    assert [line for line in draft.splitlines() if not line.startswith("#")] == ["PyYAML"]
    assert "kernel is not running" in draft


def test_it_refuses_file_names_that_leave_the_notebooks_folder() -> None:
    assert clean_relpath("sub/more.txt") == "sub/more.txt"
    for bad in ["../x", "/etc/passwd", "sub/../../x", ".env", "sub/.git/config", "", "a//b"]:
        with pytest.raises(StageError):
            clean_relpath(bad)


def test_it_checks_the_audience_before_asking_the_gallery() -> None:
    assert check_groups(None) == [] and check_groups([]) == []
    assert check_groups([" physics", "chemistry", "physics"]) == ["chemistry", "physics"]
    for bad in ["physics", {"physics": 1}, [3], [""], ["  "], ["a b"], ["a/b"], ["x" * 256],
                ["tab\there"], [".hidden"], [f"g{n}" for n in range(21)]]:
        with pytest.raises(StageError) as refused:
            check_groups(bad)
        assert refused.value.status == 400 and refused.value.kind == "invalid"


def test_it_explains_each_refusal_of_the_gallery_in_plain_words() -> None:
    url = "http://gallery/"
    assert (explain(401, None, url).status, explain(401, None, url).kind) == (403, "not-allowed")
    assert explain(403, {"error": "Only rita may revise it."}, url).message.endswith(
        "Only rita may revise it.")
    assert explain(413, {"error": "The example is 30 MB."}, url).kind == "too-large"
    assert explain(400, {"error": "A title is required."}, url).message == (
        "The gallery found the submission invalid: A title is required.")
    assert explain(404, {"error": "There is no example 'x' to revise."}, url).status == 404
    assert explain(503, None, url).kind == "unreachable"


def test_it_says_the_gallery_is_unreachable_when_nothing_answers() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the request
    config = Config(gallery_url=f"http://127.0.0.1:{port}/", public_url="", token="t",
                    max_bytes=1000, timeout=5)
    with pytest.raises(StageError) as caught:
        asyncio.run(send_submission(config, {"title": "x"}))
    assert caught.value.kind == "unreachable" and caught.value.status == 502
    assert f"127.0.0.1:{port}" in caught.value.message


def test_it_refuses_early_without_a_gallery_address_or_a_hub_identity() -> None:
    with pytest.raises(StageError) as caught:
        Config.from_env({"JUPYTERHUB_API_TOKEN": "t"}).require()
    assert caught.value.kind == "unreachable" and "GALLERY_URL" in caught.value.message
    with pytest.raises(StageError) as caught:
        Config.from_env({"GALLERY_URL": "http://g/"}).require()
    assert caught.value.kind == "not-allowed"


# --- a real Jupyter server against the real gallery ------------------------------------------


class HubStub(ThreadingHTTPServer):
    """Answers `GET /hub/api/user` for known tokens the way JupyterHub does."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.users: dict[str, dict[str, Any]] = {}
        self.calls = 0


class _HubHandler(BaseHTTPRequestHandler):
    server: HubStub

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.calls += 1
        token = self.headers.get("Authorization", "").partition(" ")[2]
        model = self.server.users.get(token) if self.path == "/hub/api/user" else None
        body = json.dumps(model or {"status": 403, "message": "not allowed"}).encode()
        self.send_response(200 if model else 403)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def hub() -> Iterator[HubStub]:
    stub = HubStub()
    thread = threading.Thread(target=stub.serve_forever, daemon=True)
    thread.start()
    yield stub
    stub.shutdown()
    stub.server_close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Jupyter:
    def __init__(self, url: str, root: Path, runtime: Path) -> None:
        self.url, self.root, self.runtime = url, root, runtime
        self.headers = {"Authorization": f"token {JUPYTER_TOKEN}"}

    def get(self, endpoint: str, **params: str) -> requests.Response:
        return requests.get(self.url + endpoint, params=params, headers=self.headers, timeout=60)

    def post(self, endpoint: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(self.url + endpoint, json=body, headers=self.headers, timeout=120)


@pytest.fixture(scope="module")
def jupyter(live_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jupyter]:
    """A real `jupyter server` with gallery_stage enabled, pointed at the live gallery."""
    base = tmp_path_factory.mktemp("jupyter")
    root, runtime = base / "root", base / "runtime"
    root.mkdir()
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "labextension"), str(ROOT)]),
        "JUPYTER_CONFIG_DIR": str(base / "config"), "JUPYTER_DATA_DIR": str(base / "data"),
        "JUPYTER_RUNTIME_DIR": str(runtime), "IPYTHONDIR": str(base / "ipython"),
        "GALLERY_URL": live_server.url + "/",
        "JUPYTERHUB_API_TOKEN": HUB_TOKEN,
    }
    log = (base / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", "--port-retries=0", f"--ServerApp.root_dir={root}",
         f"--IdentityProvider.token={JUPYTER_TOKEN}",
         '--ServerApp.jpserver_extensions={"gallery_stage": True, "jupyterlab": False, '
         '"jupyter_lsp": False, "jupyter_server_terminals": False, "notebook_shim": False}',
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = Jupyter(f"http://127.0.0.1:{port}", root, runtime)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError((base / "server.log").read_text()[-3000:])
            try:
                if server.get("/api/status").status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("jupyter server did not start")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            process.wait(20)
        log.close()


@pytest.fixture
def gallery_hub(settings: Any, hub: HubStub) -> HubStub:
    """The gallery validating tokens at the stub hub, which knows connor's server token."""
    return trust_hub(settings, hub)


def trust_hub(settings: Any, hub: HubStub) -> HubStub:
    from django.core.cache import cache

    settings.HUB_ENABLED = True
    settings.JUPYTERHUB_API_URL = f"http://127.0.0.1:{hub.server_address[1]}/hub/api"
    settings.JUPYTERHUB_API_TOKEN = "gallery-service-token"
    settings.JUPYTERHUB_OAUTH_ACCESS_SCOPES = {ACCESS}
    hub.users.clear()
    hub.users[HUB_TOKEN] = {"kind": "user", "name": "connor", "groups": [],
                            "scopes": [ACCESS, "access:servers!user=connor"]}
    cache.clear()
    return hub


def write_folder(jupyter: Jupyter, name: str, nb: dict[str, Any],
                 files: dict[str, str]) -> str:
    folder = jupyter.root / name
    (folder / "sub").mkdir(parents=True)
    nbformat.write(nbformat.from_dict(nb), folder / "ice.ipynb")
    for rel, text in files.items():
        (folder / rel).write_text(text)
    return f"{name}/ice.ipynb"


@pytest.mark.django_db(transaction=True)
def test_it_needs_jupyters_own_login_and_xsrf_for_every_call(jupyter: Jupyter) -> None:
    path = write_folder(jupyter, "auth", notebook("print(1)"), {})
    assert requests.get(f"{jupyter.url}/gallery-stage/context", params={"path": path},
                        timeout=30).status_code == 403
    # A browser session (cookie) without the XSRF header is refused, with it accepted.
    session = requests.Session()
    session.get(f"{jupyter.url}/login?next=/api/status", timeout=30)
    login = session.post(f"{jupyter.url}/login", data={
        "password": JUPYTER_TOKEN, "_xsrf": session.cookies.get("_xsrf")}, timeout=30)
    assert login.status_code == 200
    body = {"path": path, "title": ""}
    assert session.post(f"{jupyter.url}/gallery-stage/submit", json=body,
                        timeout=30).status_code == 403
    answer = session.post(f"{jupyter.url}/gallery-stage/submit", json=body, timeout=30,
                          headers={"X-XSRFToken": session.cookies.get("_xsrf")})
    assert answer.status_code == 400 and answer.json()["kind"] == "invalid"


@pytest.mark.django_db(transaction=True)
def test_it_offers_the_siblings_the_environment_file_and_the_data_links(
        jupyter: Jupyter) -> None:
    nb = notebook('import pandas as pd\ndf = pd.read_csv("data.csv")\n'
                  'grid = "/shared/climate/grid.nc"')
    nb.metadata["gallery"] = {"example": "sea-ice", "title": "Sea ice, v1"}
    path = write_folder(jupyter, "ctx", nb, {
        "data.csv": "a,b\n1,2\n", "helpers.py": "X = 1\n", "sub/more.txt": "more\n",
        ".secret": "no", "requirements.txt": "pandas==2.2.2\n"})
    answer = jupyter.get("/gallery-stage/context", path=path)
    assert answer.status_code == 200, answer.text
    context = answer.json()
    assert context["configured"] is True
    assert [(f["path"], f["referenced"]) for f in context["files"]] == [
        ("data.csv", True), ("helpers.py", False), ("sub/more.txt", False)]
    assert context["environment"] == {"source": "file", "name": "requirements.txt",
                                      "content": "pandas==2.2.2\n"}
    assert context["data_links"] == [{"name": "grid", "target": "/shared/climate/grid.nc"}]
    assert context["previous"]["example"] == "sea-ice"
    assert context["title"] == "Sea ice extent"


@pytest.mark.django_db(transaction=True)
def test_it_drafts_the_environment_from_the_running_kernel(jupyter: Jupyter) -> None:
    from jupyter_client import BlockingKernelClient

    path = write_folder(jupyter, "kern", notebook("import yaml\nimport helpers"),
                        {"helpers.py": "X = 1\n"})
    kernel = jupyter.post("/api/kernels", {"name": "python3"}).json()["id"]
    client = BlockingKernelClient(connection_file=str(jupyter.runtime / f"kernel-{kernel}.json"))
    client.load_connection_file()
    client.start_channels(iopub=False, stdin=False, hb=False, control=False)

    def run(code: str, **options: Any) -> dict[str, Any]:
        msg_id = client.execute(code, **options)
        while True:  # the shell channel's reply, which (unlike iopub) cannot be missed
            reply = client.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"]

    try:
        assert run("import yaml")["status"] == "ok"
        context = jupyter.get("/gallery-stage/context", path=path, kernel=kernel).json()
        env = context["environment"]
        assert env["source"] == "kernel" and env["name"] == "requirements.txt"
        assert f"PyYAML=={metadata.version('PyYAML')}" in env["content"].splitlines()
        assert "helpers" not in env["content"]
        # The question left nothing in the user's namespace.
        left = run("", user_expressions={"left": "'result' in globals() or 'found' in globals()"})
        assert left["user_expressions"]["left"]["data"]["text/plain"] == "False"
    finally:
        client.stop_channels()
        requests.delete(f"{jupyter.url}/api/kernels/{kernel}", headers=jupyter.headers,
                        timeout=30)


@pytest.mark.django_db(transaction=True)
def test_it_stages_the_saved_notebook_with_its_files_under_the_hub_identity(
        jupyter: Jupyter, gallery_hub: HubStub) -> None:
    path = write_folder(jupyter, "stage", notebook('import pandas\npandas.read_csv("data.csv")'),
                        {"data.csv": "a,b\n1,2\n", "sub/more.txt": "more\n"})
    form = {"path": path, "title": "Sea ice extent", "summary": "Arctic ice, 1979 on.",
            "tags": ["climate", "Sea Ice"], "licence": "CC-BY-4.0", "example": "",
            "files": ["data.csv", "sub/more.txt"],
            "environment": {"name": "requirements.txt", "content": "pandas==2.2.2\n"},
            "data_links": [{"name": "grid", "target": "/shared/climate/grid.nc"}]}
    answer = jupyter.post("/gallery-stage/submit", form)
    assert answer.status_code == 201, answer.text
    reply = answer.json()
    submission = Submission.objects.get(pk=reply["submission"]["id"])
    assert submission.contributor.username == "connor"
    assert submission.state == Submission.State.STAGED
    assert {f["path"] for f in submission.revision.files} == {
        "ice.ipynb", "data.csv", "sub/more.txt", "requirements.txt", "example.toml"}
    assert submission.revision.metadata["environment"] == "requirements.txt"
    assert list(submission.revision.data_links.values_list("target", flat=True)) == [
        "/shared/climate/grid.nc"]
    assert sorted(submission.example.tags.values_list("name", flat=True)) == [
        "climate", "sea-ice"]
    assert reply["url"] == f"/submissions/{submission.pk}/"
    assert reply["metadata"]["example"] == submission.example.slug
    assert reply["metadata"]["files"] == ["data.csv", "sub/more.txt"]

    # Submitting again with the slug from the metadata makes revision 2 of the same example.
    again = jupyter.post("/gallery-stage/submit", {**form, "example": reply["metadata"]["example"],
                                                   "files": []})
    assert again.status_code == 201, again.text
    assert again.json()["submission"]["revision"] == 2
    assert Example.objects.count() == 1


def _hub_groups(hub: HubStub, *groups: str) -> None:
    """The hub now says connor is in `groups`; the gallery asks it again at the next call."""
    from django.core.cache import cache

    hub.users[HUB_TOKEN] = {**hub.users[HUB_TOKEN], "groups": list(groups)}
    cache.clear()


@pytest.mark.django_db(transaction=True)
def test_it_offers_the_contributors_hub_groups_as_the_audience(
        jupyter: Jupyter, settings: Any, hub: HubStub) -> None:
    path = write_folder(jupyter, "aud", notebook("print(1)"), {})
    # The gallery does not take this server's token: the dialog says so, and offers everyone.
    context = jupyter.get("/gallery-stage/context", path=path).json()
    assert context["audience"]["groups"] == []
    assert "did not accept your hub identity" in context["audience"]["error"]

    trust_hub(settings, hub)  # now it does
    _hub_groups(hub, "physics", "physics-reviewers", "chemistry")
    context = jupyter.get("/gallery-stage/context", path=path).json()
    assert context["audience"] == {"groups": ["chemistry", "physics", "physics-reviewers"],
                                   "error": ""}


@pytest.mark.django_db(transaction=True)
def test_it_stages_for_the_chosen_groups_only_those_of_the_contributor(
        jupyter: Jupyter, gallery_hub: HubStub) -> None:
    path = write_folder(jupyter, "groups", notebook("print(1)"), {})
    form = {"path": path, "title": "Photon puzzle", "files": [], "environment": None,
            "data_links": []}
    _hub_groups(gallery_hub, "physics")

    staged = jupyter.post("/gallery-stage/submit", {**form, "groups": ["physics"]})
    assert staged.status_code == 201, staged.text
    reply = staged.json()
    example = Example.objects.get(slug=reply["submission"]["example"])
    assert example.group_names() == ["physics"]
    assert reply["submission"]["groups"] == ["physics"] and reply["metadata"]["groups"] == [
        "physics"]

    # A group connor is not in: the gallery's 403, passed on; nothing staged.
    refused = jupyter.post("/gallery-stage/submit", {**form, "title": "Sneaky",
                                                     "groups": ["chemistry"]})
    assert refused.status_code == 403 and refused.json()["kind"] == "not-allowed"
    assert "chemistry" in refused.json()["message"]
    # Not a list of group names: refused here, before the gallery.
    for bad in ["physics", ["a b"], [None], [f"g{n}" for n in range(21)]]:
        answer = jupyter.post("/gallery-stage/submit", {**form, "title": "Bad", "groups": bad})
        assert answer.status_code == 400 and answer.json()["kind"] == "invalid", answer.text
    assert jupyter.post("/gallery-stage/submit", ["not", "an", "object"]).status_code == 400
    assert not Example.objects.filter(title__in=["Sneaky", "Bad"]).exists()

    # Everyone: no groups. A new revision keeps its example's groups whatever is sent.
    public = jupyter.post("/gallery-stage/submit", {**form, "title": "Open otter"})
    assert public.status_code == 201, public.text
    assert public.json()["submission"]["groups"] == []
    revised = jupyter.post("/gallery-stage/submit", {**form, "example": example.slug,
                                                     "groups": ["chemistry"]})
    assert revised.status_code == 201, revised.text
    assert revised.json()["submission"]["revision"] == 2
    assert revised.json()["metadata"]["groups"] == ["physics"]
    assert Example.objects.get(pk=example.pk).group_names() == ["physics"]


@pytest.mark.django_db(transaction=True)
def test_it_says_not_allowed_too_large_and_invalid(jupyter: Jupyter, gallery_hub: HubStub,
                                                    settings: Any) -> None:
    path = write_folder(jupyter, "refuse", notebook("print(1)"), {"big.bin": "x" * 5000})
    form = {"path": path, "title": "Refused", "files": [], "environment": None,
            "data_links": []}

    bad_link = jupyter.post("/gallery-stage/submit", {
        **form, "data_links": [{"name": "x", "target": "relative/path"}]})
    assert bad_link.status_code == 400 and bad_link.json()["kind"] == "invalid"
    assert "absolute path" in bad_link.json()["message"]

    outside = jupyter.post("/gallery-stage/submit", {**form, "files": ["../auth/ice.ipynb"]})
    assert outside.status_code == 400 and "not inside" in outside.json()["message"]

    settings.GALLERY_MAX_UPLOAD_BYTES = 4000
    too_large = jupyter.post("/gallery-stage/submit", {**form, "files": ["big.bin"]})
    assert too_large.status_code == 413 and too_large.json()["kind"] == "too-large"

    not_mine = jupyter.post("/gallery-stage/submit", {**form, "example": "no-such-example"})
    assert not_mine.status_code == 404 and "no-such-example" in not_mine.json()["message"]

    from django.core.cache import cache

    gallery_hub.users.clear()  # the hub no longer accepts the server's token
    cache.clear()
    refused = jupyter.post("/gallery-stage/submit", form)
    assert refused.status_code == 403 and refused.json()["kind"] == "not-allowed"
    assert Submission.objects.count() == 0


# --- browsing and Use through the server part ------------------------------------------------


def test_it_checks_names_folders_and_searches_before_asking_the_gallery() -> None:
    from gallery_stage.browse import check_folder, check_listing, check_slug

    assert check_slug("sea-ice_2") == "sea-ice_2"
    assert check_folder(" my copy ") == "my copy" and check_folder(None) == ""
    for bad in ["..", "a/b", ".hidden", "x" * 101, "a\x00b", "trailing.", 3]:
        with pytest.raises(StageError) as refused:
            check_folder(bad)
        assert refused.value.status == 400
    for bad in ["", "a b", "../x", "x" * 81, "é"]:
        with pytest.raises(StageError):
            check_slug(bad)
    assert check_listing("sea ice", "climate", "staged", "2")["q"] == "sea ice"
    for args in [("x" * 201, "", "", ""), ("", "a b", "", ""), ("", "", "retired", ""),
                 ("", "", "", "0"), ("", "", "", "x"), ("a\nb", "", "", "")]:
        with pytest.raises(StageError):
            check_listing(*args)


def test_it_places_the_copy_relative_to_the_servers_root(tmp_path: Path) -> None:
    from gallery_stage.browse import local_path

    home = str(tmp_path / "home")
    assert local_path("~/examples/sea-ice", home, home) == "examples/sea-ice"
    assert local_path("~/examples/sea-ice", home + "/examples", home) == "sea-ice"
    assert local_path("~/examples/sea-ice", str(tmp_path / "elsewhere"), home) == ""
    assert local_path("~/../etc", home, home) == ""
    assert local_path("/etc/passwd", home, home) == "" and local_path(None, home, home) == ""


def test_it_hands_the_browser_only_paths_and_http_links() -> None:
    from gallery_stage.browse import safe_link

    local = Config("http://gallery/", "", "t", 1, 1.0)
    assert safe_link(local, "/services/gallery/previews/ab.html") == (
        "/services/gallery/previews/ab.html")
    assert safe_link(local, "https://previews.example.org/ab.html") == (
        "https://previews.example.org/ab.html")
    for bad in ["javascript:alert(1)", "//evil.example/x", "data:text/html,x", "", None, 3]:
        assert safe_link(local, bad) is None
    public = Config("http://gallery/", "https://hub.example.org", "t", 1, 1.0)
    assert safe_link(public, "/services/gallery/x") == "https://hub.example.org/services/gallery/x"


@pytest.mark.django_db(transaction=True)
def test_it_lists_details_plans_and_uses_examples_under_the_hub_identity(
        jupyter: Jupyter, gallery_hub: HubStub) -> None:
    from gallery import services
    from gallery.models import Job
    from tests.base import make_user, stage

    contributor = make_user("ada")
    reviewer = make_user("rev", reviewer=True)
    approved = stage(contributor, title="Sea ice extent", environment=None)
    services.approve_submission(submission=approved, reviewer=reviewer)
    staged = stage(contributor, title="Ocean heat", environment=None)
    slug = approved.example.slug

    listed = jupyter.get("/gallery-stage/examples", state="approved")
    assert listed.status_code == 200, listed.text
    assert [e["slug"] for e in listed.json()["results"]] == [slug]
    found = jupyter.get("/gallery-stage/examples", q="ocean", state="staged").json()
    assert [e["slug"] for e in found["results"]] == [staged.example.slug]
    assert jupyter.get("/gallery-stage/examples", tag="demo").json()["count"] == 2

    detail = jupyter.get(f"/gallery-stage/examples/{slug}").json()
    assert detail["notebook"] == "hello.ipynb" and detail["state"] == "approved"
    assert detail["preview_url"].startswith("/previews/") and detail["preview_url"].endswith(
        ".html")
    plan = jupyter.get(f"/gallery-stage/examples/{slug}/use-plan", folder="mine").json()
    assert plan["target"] == "~/examples/mine"

    queued = jupyter.post(f"/gallery-stage/examples/{slug}/use", {"folder": "mine"})
    assert queued.status_code == 202, queued.text
    job = Job.objects.get(pk=queued.json()["id"])
    assert job.user.username == "connor" and job.params["folder"] == "mine"
    status = jupyter.get(f"/gallery-stage/jobs/{job.pk}")
    assert status.status_code == 200 and status.json()["id"] == str(job.pk)
    assert "local_path" in status.json()

    # The gallery's refusals come back with their status and message.
    staged_use = jupyter.post(f"/gallery-stage/examples/{staged.example.slug}/use", {})
    assert staged_use.status_code == 409, staged_use.text
    assert "approved" in staged_use.json()["message"]
    missing = jupyter.get("/gallery-stage/examples/no-such-example")
    assert missing.status_code == 404 and missing.json()["message"] == "There is no such example."
    unknown_job = jupyter.get("/gallery-stage/jobs/00000000-0000-0000-0000-000000000000")
    assert unknown_job.status_code == 404
    # Bad input stops at the server, before the gallery.
    for answer in [jupyter.get("/gallery-stage/examples/a%20b"),
                   jupyter.get("/gallery-stage/jobs/not-a-job"),
                   jupyter.get("/gallery-stage/examples", tag="a b"),
                   jupyter.post(f"/gallery-stage/examples/{slug}/use", {"folder": "../x"}),
                   jupyter.post(f"/gallery-stage/examples/{slug}/use", ["x"])]:
        assert answer.status_code == 400 and answer.json()["kind"] == "invalid", answer.text
    assert Job.objects.filter(kind=Job.Kind.USE).count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_shows_a_groups_examples_in_the_lab_panel_to_its_members_only(
        jupyter: Jupyter, gallery_hub: HubStub, live_server: Any) -> None:
    from gallery import services
    from tests.base import make_user, stage

    ada, reviewer = make_user("ada"), make_user("rev", reviewer=True)
    services.set_hub_groups(ada, member_of={"physics"}, reviews=set())
    group = services.stage_submission(
        contributor=ada, staged=services.StagedFiles(
            notebook_name="photon.ipynb", notebook=nbformat.writes(nbformat.from_dict(
                notebook("print('photon')", heading="# Photon puzzle"))).encode()),
        meta=services.ExampleMeta(title="Photon puzzle", summary="Light.", tags=["optics"],
                                  groups=["physics"]))
    services.approve_submission(submission=group, reviewer=reviewer)
    public = stage(ada, title="Open otter", environment=None)
    services.approve_submission(submission=public, reviewer=reviewer)
    slug = group.example.slug

    def listed(**query: str) -> list[str]:
        answer = jupyter.get("/gallery-stage/examples", **query)
        assert answer.status_code == 200, answer.text
        return [e["slug"] for e in answer.json()["results"]]

    # connor is in no group: the panel, its search and tag filter, the tab and Use know
    # nothing of it, as for an example that does not exist.
    _hub_groups(gallery_hub)
    assert listed() == [public.example.slug]
    assert listed(q="photon") == [] and listed(tag="optics") == []
    for answer in [jupyter.get(f"/gallery-stage/examples/{slug}"),
                   jupyter.get(f"/gallery-stage/examples/{slug}/use-plan"),
                   jupyter.get(f"/gallery-stage/examples/{slug}/copies"),
                   jupyter.post(f"/gallery-stage/examples/{slug}/use", {})]:
        assert answer.status_code == 404, answer.text
        assert answer.json()["message"] == "There is no such example."

    # In physics: listed, found, opened; the tab's preview address is signed for connor and
    # opens without the gallery's session, as the tab's frame has none.
    _hub_groups(gallery_hub, "physics")
    assert set(listed()) == {slug, public.example.slug}
    assert listed(q="photon") == [slug] and listed(tag="optics") == [slug]
    detail = jupyter.get(f"/gallery-stage/examples/{slug}").json()
    assert detail["title"] == "Photon puzzle"
    preview_url = detail["preview_url"]
    assert preview_url.startswith(f"/examples/{slug}/previews/") and "?token=" in preview_url
    framed = requests.get(live_server.url + preview_url, timeout=30, allow_redirects=False)
    assert framed.status_code == 200 and "photon" in framed.text
    assert framed.headers["Cache-Control"] == "private, no-store"
    assert jupyter.post(f"/gallery-stage/examples/{slug}/use", {}).status_code == 202

    # Out of physics again (the hub says so): gone from the panel, and the link stops.
    _hub_groups(gallery_hub)
    assert listed() == [public.example.slug]
    assert jupyter.get(f"/gallery-stage/examples/{slug}").status_code == 404
    assert requests.get(live_server.url + preview_url, timeout=30,
                        allow_redirects=False).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_it_needs_jupyters_login_and_xsrf_to_browse_and_use(jupyter: Jupyter) -> None:
    assert requests.get(f"{jupyter.url}/gallery-stage/examples", timeout=30).status_code == 403
    session = requests.Session()
    session.get(f"{jupyter.url}/login?next=/api/status", timeout=30)
    session.post(f"{jupyter.url}/login", data={
        "password": JUPYTER_TOKEN, "_xsrf": session.cookies.get("_xsrf")}, timeout=30)
    use = f"{jupyter.url}/gallery-stage/examples/sea-ice/use"
    assert session.post(use, json={}, timeout=30).status_code == 403
    # With the header it reaches the handler (and the gallery, which is not this test's).
    answer = session.post(use, json={"folder": "../x"}, timeout=30,
                          headers={"X-XSRFToken": session.cookies.get("_xsrf")})
    assert answer.status_code == 400 and answer.json()["kind"] == "invalid"


def _cells(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells]


@pytest.mark.django_db(transaction=True)
def test_it_plans_and_applies_an_update_of_the_copy_under_the_hub_identity(
        jupyter: Jupyter, gallery_hub: HubStub, settings: Any) -> None:
    from gallery import homes, services
    from gallery.models import Job
    from tests.base import make_user, stage

    settings.GALLERY_USE_BACKEND = "filesystem"
    contributor, reviewer = make_user("ada"), make_user("rev", reviewer=True)
    first = notebook("a = 1", "print(a)")
    v1 = stage(contributor, title="Sea ice extent", environment=None, data_links=[],
               notebook=nbformat.writes(nbformat.from_dict(first)).encode())
    services.approve_submission(submission=v1, reviewer=reviewer)
    slug = v1.example.slug
    queued = jupyter.post(f"/gallery-stage/examples/{slug}/use", {"folder": "mine"})
    assert queued.status_code == 202, queued.text
    assert Job.objects.get(pk=queued.json()["id"]).state == Job.State.DONE
    [copy] = jupyter.get(f"/gallery-stage/examples/{slug}/copies").json()
    assert (copy["folder"], copy["version"], copy["outdated"]) == ("mine", 1, False)
    assert "local_path" in copy

    # connor edits a cell; version 2 adds one.
    folder = Path(settings.GALLERY_HOME_TEMPLATE.format(username="connor")) / "examples/mine"
    mine = nbformat.read(folder / "hello.ipynb", as_version=4)
    mine.cells[1].source = "a = 10  # mine"
    nbformat.write(mine, folder / "hello.ipynb")
    second = notebook("a = 1", "print(a)", "print(a * 2)")
    v2 = stage(contributor, environment=None, data_links=[], example_slug=slug,
               notebook=nbformat.writes(nbformat.from_dict(second)).encode())
    services.approve_submission(submission=v2, reviewer=reviewer)
    [copy] = jupyter.get(f"/gallery-stage/examples/{slug}/copies").json()
    assert (copy["version"], copy["outdated"]) == (1, True)

    # The plan: 202 with the job reading the copy, then 200 with the plan, as the gallery
    # answers them; nothing is written yet.
    reading = jupyter.get(f"/gallery-stage/examples/{slug}/update-plan", folder="mine")
    assert reading.status_code == 202, reading.text
    assert reading.json()["kind"] == "update"
    plan = jupyter.get(f"/gallery-stage/examples/{slug}/update-plan", folder="mine")
    assert plan.status_code == 200, plan.text
    assert (plan.json()["from_version"], plan.json()["to_version"]) == (1, 2)
    assert {f["path"]: f["status"] for f in plan.json()["files"]}["hello.ipynb"] == "merged"
    assert _cells(folder / "hello.ipynb")[1] == "a = 10  # mine"
    again = jupyter.get(f"/gallery-stage/examples/{slug}/update-plan", folder="mine",
                        refresh="true")
    assert again.status_code == 202 and again.json()["id"] != reading.json()["id"]

    applied = jupyter.post(f"/gallery-stage/examples/{slug}/update", {"folder": "mine"})
    assert applied.status_code == 202, applied.text
    job = jupyter.get(f"/gallery-stage/jobs/{applied.json()['id']}").json()
    assert job["state"] == "done", job["message"]
    assert job["result"]["backup"].startswith("~/examples/mine/.gallery-backup/")
    assert _cells(folder / "hello.ipynb")[1:] == ["a = 10  # mine", "print(a)", "print(a * 2)"]
    assert json.loads((folder / homes.PROVENANCE_FILE).read_text())["version"] == 2
    assert Job.objects.get(pk=job["id"]).user.username == "connor"

    # The gallery's refusals come back as it gave them; bad input stops at the server.
    elsewhere = jupyter.post(f"/gallery-stage/examples/{slug}/update", {"folder": "nothing"})
    assert elsewhere.status_code == 202  # the job fails, and says why
    failed = jupyter.get(f"/gallery-stage/jobs/{elsewhere.json()['id']}").json()
    assert failed["state"] == "failed" and "~/examples/nothing" in failed["message"]
    staged = stage(contributor, title="Ocean heat", environment=None)
    refused = jupyter.get(f"/gallery-stage/examples/{staged.example.slug}/update-plan")
    assert refused.status_code == 409 and "approved" in refused.json()["message"]
    assert jupyter.get("/gallery-stage/examples/no-such/copies").status_code == 404
    before = Job.objects.count()
    for answer in [jupyter.get(f"/gallery-stage/examples/{slug}/update-plan", folder="../x"),
                   jupyter.get(f"/gallery-stage/examples/{slug}/update-plan", refresh="maybe"),
                   jupyter.get("/gallery-stage/examples/a%20b/copies"),
                   jupyter.post(f"/gallery-stage/examples/{slug}/update", {"folder": "a/b"}),
                   jupyter.post(f"/gallery-stage/examples/{slug}/update", ["mine"])]:
        assert answer.status_code == 400 and answer.json()["kind"] == "invalid", answer.text
    assert Job.objects.count() == before


@pytest.mark.django_db(transaction=True)
def test_it_needs_jupyters_login_and_xsrf_to_update(jupyter: Jupyter) -> None:
    slug = "sea-ice"
    for endpoint in ["copies", "update-plan"]:
        assert requests.get(f"{jupyter.url}/gallery-stage/examples/{slug}/{endpoint}",
                            timeout=30).status_code == 403
    session = requests.Session()
    session.get(f"{jupyter.url}/login?next=/api/status", timeout=30)
    session.post(f"{jupyter.url}/login", data={
        "password": JUPYTER_TOKEN, "_xsrf": session.cookies.get("_xsrf")}, timeout=30)
    update = f"{jupyter.url}/gallery-stage/examples/{slug}/update"
    assert session.post(update, json={"folder": "mine"}, timeout=30).status_code == 403
    answer = session.post(update, json={"folder": "../x"}, timeout=30,
                          headers={"X-XSRFToken": session.cookies.get("_xsrf")})
    assert answer.status_code == 400 and answer.json()["kind"] == "invalid"
    # No cross-origin reading: the answers carry no CORS permission.
    probe = session.get(f"{jupyter.url}/gallery-stage/examples/{slug}/copies", timeout=30,
                        headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in probe.headers

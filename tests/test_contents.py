"""The contents backend against a real Jupyter server (and a stand-in hub whose users' servers
all are that server)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from django.utils import timezone

from gallery import services
from gallery.homes.contents import (
    Contents,
    ContentsError,
    copy_folder,
    copy_through_contents,
    install_kernel,
)

from .base import make_user


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def jupyter_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """A real Jupyter server (no hub) with a token; yields (base URL, token, root folder).

    It deletes for good rather than into a trash folder (outside the test's folders), so it
    refuses to delete a folder that is not empty, as such servers do.
    """
    yield from _server(tmp_path_factory)


@pytest.fixture(scope="module")
def server_showing_dot_folders(
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """A server whose contents API reaches dot folders, as the README asks of user servers
    under the contents backend (so kernels can go to ~/.local/share/jupyter/kernels)."""
    yield from _server(tmp_path_factory, "--ContentsManager.allow_hidden=True")


def _server(tmp_path_factory: pytest.TempPathFactory,
            *options: str) -> Iterator[tuple[str, str, Path]]:
    pytest.importorskip("jupyter_server", reason="the hub extra is not installed "
                                                 "(pip install -e '.[hub]')")
    root = tmp_path_factory.mktemp("home")
    port, token = _free_port(), "test-token-" + os.urandom(8).hex()
    log = (tmp_path_factory.mktemp("log") / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--ip=127.0.0.1", f"--port={port}",
         "--no-browser", "--allow-root", f"--ServerApp.root_dir={root}",
         f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0",
         "--FileContentsManager.delete_to_trash=False", *options],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(base + "api/status", headers={"Authorization": f"token {token}"},
                                timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "no Jupyter server"
            time.sleep(0.2)
        yield base, token, root
    finally:
        process.terminate()
        process.wait(20)


def _example(tmp_path: Path) -> Path:
    source = tmp_path / "export"
    (source / "sub").mkdir(parents=True)
    (source / "hello.ipynb").write_bytes(b'{"cells": [], "nbformat": 4}\n')
    (source / "sub" / "data.bin").write_bytes(bytes(range(256)))
    return source


def _visible(folder: Path) -> list[str]:
    """What a person sees (the server keeps its own hidden checkpoints beside)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


LINKS = [{"name": "era5", "target": "/shared/era5", "description": "reanalysis"},
         {"name": "docs", "target": "https://example.org/data"}]


def test_it_copies_byte_for_byte_through_the_contents_api(jupyter_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, token, root = jupyter_server
    contents = Contents(base=base, token=token)
    recorded: list[str] = []
    name = copy_folder(contents, source=_example(tmp_path), parent="examples/a",
                           wanted="hello", job_id="job-one-1234", provenance={"slug": "hello"},
                           data_links=LINKS, record=recorded.append)
    target = root / "examples" / "a" / "hello"
    assert name == "hello" and recorded == ["hello"]
    assert (target / "sub" / "data.bin").read_bytes() == bytes(range(256))
    assert (target / "hello.ipynb").read_bytes() == b'{"cells": [], "nbformat": 4}\n'
    # This server hides dot files, so provenance goes to the visible name.
    assert json.loads((target / "gallery-provenance.json").read_text())["job"] == "job-one-1234"
    manifest = (target / "DATA.md").read_text()
    assert "cannot make symbolic links" in manifest and "/shared/era5" in manifest
    assert not (target / "data").exists()
    assert _visible(target.parent) == ["hello"]  # no work folder left


def test_it_never_overwrites_and_picks_the_next_free_name(jupyter_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, token, root = jupyter_server
    mine = root / "examples" / "b" / "hello"
    mine.mkdir(parents=True)
    (mine / "hello.ipynb").write_text("my own work")
    contents = Contents(base=base, token=token)
    source = _example(tmp_path)
    names = [copy_folder(contents, source=source, parent="examples/b",
                             wanted="hello", job_id=job, provenance={}, data_links=[])
             for job in ("job-two-aaaa", "job-three-bb")]
    assert names == ["hello-2", "hello-3"]
    assert (mine / "hello.ipynb").read_text() == "my own work"


def test_it_finishes_the_same_copy_when_a_job_is_retried(jupyter_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, token, root = jupyter_server
    contents = Contents(base=base, token=token)
    parent = root / "examples" / "c"
    # An earlier attempt died after choosing the name, leaving a half-written work folder.
    (parent / "hello.gallery-job-four").mkdir(parents=True)
    (parent / "hello.gallery-job-four" / "hello.ipynb").write_text("half")
    kwargs = {"source": _example(tmp_path), "parent": "examples/c", "wanted": "hello",
              "job_id": "job-four-cccc", "provenance": {}, "data_links": []}
    first = copy_folder(contents, decided="hello", **kwargs)  # type: ignore[arg-type]
    again = copy_folder(contents, decided=first, **kwargs)  # type: ignore[arg-type]
    assert first == again == "hello"
    assert _visible(parent) == ["hello"]
    assert (parent / "hello" / "hello.ipynb").read_bytes() == b'{"cells": [], "nbformat": 4}\n'


def test_it_moves_on_when_the_decided_name_was_taken(jupyter_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, token, root = jupyter_server
    taken = root / "examples" / "d" / "hello"
    taken.mkdir(parents=True)
    contents = Contents(base=base, token=token)
    recorded: list[str] = []
    name = copy_folder(contents, source=_example(tmp_path), parent="examples/d",
                           wanted="hello", job_id="job-five-dddd", provenance={}, data_links=[],
                           decided="hello", record=recorded.append)
    assert name == "hello-2" and recorded == ["hello", "hello-2"]
    assert list(taken.iterdir()) == []


def test_it_explains_a_server_that_refuses_the_token(jupyter_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, _, _ = jupyter_server
    contents = Contents(base=base, token="wrong")
    with pytest.raises(ContentsError, match="not allowed to write"):
        copy_folder(contents, source=_example(tmp_path), parent="examples/e",
                        wanted="hello", job_id="job-six-eeee", provenance={}, data_links=[])


@pytest.mark.django_db
def test_it_acts_only_for_the_user_who_asked(settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gallery.models import Job

    owner, other = make_user("owner"), make_user("other")
    job = Job(kind=Job.Kind.USE, user=owner, params={"username": other.username,
                                                      "folder": "x", "backend": "contents"})
    with pytest.raises(ContentsError, match="does not belong"):
        copy_through_contents(job=job, source=tmp_path, provenance={}, data_links=[])


def test_it_keeps_an_examples_own_data_md_and_beats_while_copying(jupyter_server,  # type: ignore[no-untyped-def]
                                                                    tmp_path: Path) -> None:
    base, token, root = jupyter_server
    source = _example(tmp_path)
    (source / "DATA.md").write_text("the author's own notes")
    beats: list[int] = []
    copy_folder(Contents(base=base, token=token), source=source, parent="examples/f",
                    wanted="hello", job_id="job-seven-ff", provenance={}, data_links=LINKS,
                    beat=lambda: beats.append(1))
    target = root / "examples" / "f" / "hello"
    assert (target / "DATA.md").read_text() == "the author's own notes"
    assert "/shared/era5" in (target / "DATA.gallery.md").read_text()
    assert len(beats) >= 4  # once per file or folder of the example


def test_it_removes_its_work_folder_when_a_copy_fails(jupyter_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, token, root = jupyter_server
    source = _example(tmp_path)
    (source / "sub" / ".hidden").write_text("a name this server refuses")
    with pytest.raises(ContentsError, match="refused the file name sub/.hidden"):
        copy_folder(Contents(base=base, token=token), source=source,
                        parent="examples/g", wanted="hello", job_id="job-eight-gg",
                        provenance={}, data_links=[])
    assert _visible(root / "examples" / "g") == []  # no work folder, none renamed away


def test_it_leaves_the_work_folder_to_the_attempt_that_took_the_job_over(  # type: ignore[no-untyped-def]
        jupyter_server, tmp_path: Path) -> None:
    base, token, root = jupyter_server
    beats: list[int] = []

    def beat() -> None:
        beats.append(1)
        if len(beats) == 3:
            raise services.LeaseLost("taken over")

    with pytest.raises(services.LeaseLost):
        copy_folder(Contents(base=base, token=token), source=_example(tmp_path),
                        parent="examples/i", wanted="hello", job_id="job-ten-iiii",
                        provenance={}, data_links=[], beat=beat)
    # The attempt holding the job now writes into the same work folder and finishes it.
    assert _visible(root / "examples" / "i") == ["hello.gallery-job-ten-"]


class _HubHandler(BaseHTTPRequestHandler):
    """The one call of the hub's API a Use needs here: every user's server is ready at `/`."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        name = self.path.rpartition("/users/")[2]
        body = json.dumps({"name": name, "servers": {"": {"ready": True, "url": "/"}}})
        self.send_response(200 if "/hub/api/users/" in self.path else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub_api(jupyter_server, settings) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """A stand-in hub whose users' servers all are the real Jupyter server."""
    base, token, _ = jupyter_server
    stub = ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    thread = threading.Thread(target=stub.serve_forever, daemon=True)
    thread.start()
    settings.HUB_ENABLED = True
    settings.JUPYTERHUB_API_URL = f"http://127.0.0.1:{stub.server_address[1]}/hub/api"
    settings.JUPYTERHUB_API_TOKEN = token
    settings.GALLERY_HUB_URL = base.rstrip("/")
    try:
        yield
    finally:
        stub.shutdown()
        stub.server_close()


@pytest.mark.django_db
def test_it_clears_the_work_folder_of_a_use_it_gives_up_on(hub_api, jupyter_server,  # type: ignore[no-untyped-def]
                                                            settings) -> None:
    from gallery.models import Job

    _, _, root = jupyter_server
    settings.GALLERY_USE_DIR = "examples/h"
    owner = make_user("owner")
    job = Job.objects.create(
        kind=Job.Kind.USE, user=owner, state=Job.State.RUNNING, worker="killed",
        attempts=services.MAX_ATTEMPTS + 2, lease_until=timezone.now() - timedelta(seconds=1),
        params={"username": "owner", "folder": "hello", "backend": "contents"})
    # What attempts killed mid-copy left: the job's work folder, half written.
    work = root / "examples" / "h" / f"hello.gallery-{str(job.pk)[:8]}"
    (work / "sub").mkdir(parents=True)
    (work / "hello.ipynb").write_text('{"cel')
    services.sweep_jobs()  # eager here: the last ring runs at once
    job.refresh_from_db()
    assert job.state == Job.State.FAILED
    assert "interrupted too many times" in job.message
    assert _visible(work.parent) == []


KERNEL = {"name": "gallery-hello-0123456789",
          "spec": {"argv": ["/srv/envs/k/bin/python", "-m", "ipykernel_launcher", "-f",
                            "{connection_file}"],
                   "display_name": "Hello (Python 3.11, gallery)", "language": "python"}}


def test_it_installs_the_kernel_through_the_contents_api(server_showing_dot_folders) -> None:  # type: ignore[no-untyped-def]
    base, token, root = server_showing_dot_folders
    assert install_kernel(Contents(base=base, token=token), KERNEL) == ""
    path = root / ".local" / "share" / "jupyter" / "kernels" / KERNEL["name"] / "kernel.json"
    assert json.loads(path.read_text()) == KERNEL["spec"]


def test_it_says_why_a_server_hiding_dot_folders_gets_no_kernel(jupyter_server) -> None:  # type: ignore[no-untyped-def]
    base, token, root = jupyter_server
    note = install_kernel(Contents(base=base, token=token), KERNEL)
    assert "The kernel could not be installed in ~/.local/share/jupyter/kernels" in note
    assert "allow_hidden = True" in note
    assert not (root / ".local" / "share" / "jupyter" / "kernels" / KERNEL["name"]).exists()

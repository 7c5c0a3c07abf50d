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


# --- Update my copy through the contents API ---------------------------------------------------


def _cells(data: bytes) -> list[str]:
    import nbformat

    return [c.source for c in nbformat.reads(data.decode(), as_version=4).cells]


def _notebook(*sources: str) -> bytes:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(s, id=f"cell-{i}") for i, s in enumerate(sources)])
    return nbformat.writes(nb).encode()


def _edit_cell(path: Path, index: int, source: str) -> None:
    nb = json.loads(path.read_text())
    nb["cells"][index]["source"] = source
    path.write_text(json.dumps(nb))


def _tree(root: Path, *, skip: Path) -> dict[str, bytes]:
    """Every file under `root` but those in `skip`, with its bytes."""
    return {str(p): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and skip not in p.parents}


@pytest.fixture
def contents_versions(hub_api, jupyter_server, settings, django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
                      request):
    """Version 1 of an example used by "owner" through the contents API into
    ~/<test's folder>/demo; yields (copy folder, publish(notebook, helper), update(apply))."""
    from gallery.models import Example, Job

    from .base import stage

    _, _, root = jupyter_server
    capture = django_capture_on_commit_callbacks
    settings.GALLERY_USE_BACKEND = "contents"
    settings.GALLERY_USE_DIR = f"updates/{request.node.name[:40]}"
    contributor, reviewer = make_user("ada"), make_user("rev", reviewer=True)
    owner = make_user("owner")

    def publish(notebook: bytes, helper: bytes, slug: str = "") -> Example:
        with capture(execute=True):
            submission = stage(contributor, notebook=notebook, example_slug=slug,
                               files={"helper.py": helper}, environment=None, data_links=[])
        with capture(execute=True):
            services.approve_submission(submission=submission, reviewer=reviewer)
        return Example.objects.get(pk=submission.example_id)

    example = publish(_notebook("a = 1", "b = 2", "print(a + b)"), b"X = 1\n")
    with capture(execute=True):
        use = services.queue_use(example=example, user=owner, folder_name="demo")
    use.refresh_from_db()
    assert use.state == Job.State.DONE, use.message

    def update(apply: bool = True) -> Job:
        with capture(execute=True):
            job = services.queue_update(example=Example.objects.get(pk=example.pk), user=owner,
                                        folder="demo", apply=apply)
        job.refresh_from_db()
        return job

    yield (root / settings.GALLERY_USE_DIR / "demo",
           lambda nb, helper: publish(nb, helper, example.slug), update)


@pytest.mark.django_db
def test_it_updates_a_copy_through_the_contents_api_keeping_the_edits(  # type: ignore[no-untyped-def]
        contents_versions, jupyter_server) -> None:
    from gallery.homes.shared import PROVENANCE_VISIBLE

    copy_dir, publish, update = contents_versions
    _, _, root = jupyter_server
    _edit_cell(copy_dir / "hello.ipynb", 0, "a = 10  # mine")
    (copy_dir / "helper.py").write_bytes(b"X = 100  # mine\n")
    (copy_dir / "notes.txt").write_text("my own file")
    publish(_notebook("a = 1", "b = 2", "print(a + b)", "print(a * b)"), b"X = 2\n")

    before = _tree(root, skip=copy_dir)
    plan = update(apply=False)
    assert plan.state == "done", plan.message
    statuses = {f["path"]: f["status"] for f in plan.result["files"]}
    assert (statuses["hello.ipynb"], statuses["helper.py"]) == ("merged", "kept")
    assert plan.result["backup"].startswith(f"{plan.result['path']}/gallery-backup/v1-")
    assert _cells((copy_dir / "hello.ipynb").read_bytes())[0] == "a = 10  # mine"

    job = update()
    assert job.state == "done", job.message
    assert _cells((copy_dir / "hello.ipynb").read_bytes()) == [
        "a = 10  # mine", "b = 2", "print(a + b)", "print(a * b)"]
    assert (copy_dir / "helper.py").read_bytes() == b"X = 100  # mine\n"
    assert (copy_dir / "helper.v2.py").read_bytes() == b"X = 2\n"
    assert (copy_dir / "notes.txt").read_text() == "my own file"
    # This server hides dot files: the record and the backup have visible names.
    backup = copy_dir / "gallery-backup" / job.result["backup"].rsplit("/", 1)[1]
    assert _cells((backup / "hello.ipynb").read_bytes())[0] == "a = 10  # mine"
    assert (backup / "helper.py").read_bytes() == b"X = 100  # mine\n"
    assert json.loads((backup / PROVENANCE_VISIBLE).read_text())["version"] == 1
    provenance = json.loads((copy_dir / PROVENANCE_VISIBLE).read_text())
    assert (provenance["version"], provenance["updated_from"], provenance["job"]) == (
        2, 1, str(job.pk))
    assert not list(copy_dir.rglob("*.gallery-tmp-*"))
    assert _tree(root, skip=copy_dir) == before  # nothing outside the copy
    # Done once: the same job run again changes nothing.
    services.perform_job(str(job.pk))
    assert json.loads((copy_dir / PROVENANCE_VISIBLE).read_text())["job"] == str(job.pk)
    assert [p.name for p in (copy_dir / "gallery-backup").iterdir()] == [backup.name]


@pytest.mark.django_db
def test_it_marks_a_conflict_through_the_contents_api(contents_versions) -> None:  # type: ignore[no-untyped-def]
    copy_dir, publish, update = contents_versions
    _edit_cell(copy_dir / "hello.ipynb", 1, "b = 20")
    publish(_notebook("a = 1", "b = 3", "print(a + b)"), b"X = 1\n")
    job = update()
    assert job.state == "done", job.message
    [result] = [f for f in job.result["files"] if f["path"] == "hello.ipynb"]
    assert result["status"] == "conflict" and job.result["conflicts"] >= 1
    assert _cells((copy_dir / "hello.ipynb").read_bytes())[1] == (
        "<<<<<<< local\nb = 20\n=======\nb = 3\n>>>>>>> remote")
    [backup] = (copy_dir / "gallery-backup").iterdir()
    assert _cells((backup / "hello.ipynb").read_bytes())[1] == "b = 20"


def _bundle(tmp_path: Path, changes: dict[str, tuple[bytes | None, bytes | None]]) -> tuple[
        dict[str, object], Path]:
    """An update bundle as services/updates.py writes it: path -> (bytes before, after)."""
    from gallery.merge import sha256

    bundle = tmp_path / "bundle"
    (bundle / "files").mkdir(parents=True)
    out = []
    for n, (path, (old, new)) in enumerate(sorted(changes.items())):
        if new is not None:
            (bundle / "files" / str(n)).write_bytes(new)
        out.append({"path": path, "expect": sha256(old), "new": sha256(new),
                    "file": f"files/{n}" if new is not None else ""})
    manifest = {"changes": out, "backup": "v1-20260101-000000",
                "save": sorted(p for p, (old, _) in changes.items() if old is not None),
                "provenance": {"slug": "hello", "version": 2},
                "backup_dir": "gallery-backup", "provenance_name": "gallery-provenance.json"}
    return manifest, bundle


CHANGES = {"hello.ipynb": (b"old notebook", b"new notebook"),
           "sub/data.bin": (b"old data", b"new data"),
           "gone.txt": (b"removed in v2", None),
           "added.txt": (None, b"added in v2")}


def _plant_copy(root: Path, folder: str) -> Path:
    copy_dir = root / "upd" / folder
    (copy_dir / "sub").mkdir(parents=True)
    for path, (old, _) in CHANGES.items():
        if old is not None:
            (copy_dir / path).write_bytes(old)
    (copy_dir / "gallery-provenance.json").write_text('{"slug": "hello", "version": 1}')
    return copy_dir


def test_it_refuses_an_update_when_a_file_changed_since_the_plan(jupyter_server,  # type: ignore[no-untyped-def]
                                                                 tmp_path: Path) -> None:
    from gallery.homes.contents_inplace import Refused, update_copy_folder

    base, token, root = jupyter_server
    copy_dir = _plant_copy(root, "changed")
    (copy_dir / "sub" / "data.bin").write_bytes(b"edited after the plan")
    before = _tree(root, skip=root / "nothing")
    manifest, bundle = _bundle(tmp_path, CHANGES)
    with pytest.raises(Refused, match="sub/data.bin in your copy changed"):
        update_copy_folder(Contents(base=base, token=token), parent="upd", folder="changed",
                           manifest=manifest, bundle=bundle, job_id="job-refused-1")
    assert _tree(root, skip=root / "nothing") == before
    assert _visible(copy_dir) == ["gallery-provenance.json", "gone.txt", "hello.ipynb", "sub"]


class _Killed(Exception):
    """A worker killed mid-update (not a ContentsError: nothing tidies up after it)."""


class _DyingContents(Contents):
    """A server client whose worker dies before its n-th write or rename."""

    def __init__(self, base: str, token: str, die_at: int) -> None:
        super().__init__(base=base, token=token)
        self.left = die_at

    def _step(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _Killed

    def write(self, path: str, data: bytes) -> bool:
        self._step()
        return super().write(path, data)

    def rename(self, old: str, new: str) -> bool:
        self._step()
        return super().rename(old, new)


def test_it_finishes_an_interrupted_update_when_retried(jupyter_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gallery.homes.contents_inplace import update_copy_folder

    base, token, root = jupyter_server
    manifest, bundle = _bundle(tmp_path, CHANGES)
    # An update here writes 3 temporary files, renames 3 old files into the backup and 3 new
    # ones into place, then the record (the same three steps): cut short before each of them.
    steps = 0
    while True:
        folder = f"killed-{steps}"
        copy_dir = _plant_copy(root, folder)
        kwargs = {"parent": "upd", "folder": folder, "manifest": manifest, "bundle": bundle,
                  "job_id": "job-killed-1"}
        try:
            update_copy_folder(_DyingContents(base, token, steps), **kwargs)  # type: ignore[arg-type]
            finished = True
        except _Killed:
            finished = False
        report = update_copy_folder(Contents(base=base, token=token), **kwargs)  # type: ignore[arg-type]
        assert bool(report.get("already")) is finished
        assert (copy_dir / "hello.ipynb").read_bytes() == b"new notebook", steps
        assert (copy_dir / "sub" / "data.bin").read_bytes() == b"new data", steps
        assert (copy_dir / "added.txt").read_bytes() == b"added in v2"
        assert not (copy_dir / "gone.txt").exists()
        saved = copy_dir / "gallery-backup" / "v1-20260101-000000"
        assert (saved / "hello.ipynb").read_bytes() == b"old notebook", steps
        assert (saved / "sub" / "data.bin").read_bytes() == b"old data"
        assert (saved / "gone.txt").read_bytes() == b"removed in v2"
        assert json.loads((saved / "gallery-provenance.json").read_text())["version"] == 1
        assert json.loads((copy_dir / "gallery-provenance.json").read_text()) == {
            "slug": "hello", "version": 2, "job": "job-killed-1"}
        assert not list(copy_dir.rglob("*.gallery-tmp-*")), steps
        if finished:
            break
        steps += 1
    assert steps == 12, steps  # every step was cut short once


class _RefusingPlacement(Contents):
    """A server that fails to move a new file into place (a network error, say)."""

    def rename(self, old: str, new: str) -> bool:
        if old.endswith("/hello.ipynb.gallery-tmp-jobunplaced1"):
            raise ContentsError("Your Jupyter server could not be reached (ConnectionError).")
        return super().rename(old, new)


def test_it_puts_the_old_file_back_when_the_new_one_cannot_be_placed(jupyter_server,  # type: ignore[no-untyped-def]
                                                                     tmp_path: Path) -> None:
    from gallery.homes.contents_inplace import update_copy_folder

    base, token, root = jupyter_server
    copy_dir = _plant_copy(root, "unplaced")
    manifest, bundle = _bundle(tmp_path, CHANGES)
    with pytest.raises(ContentsError, match="could not be reached"):
        update_copy_folder(_RefusingPlacement(base=base, token=token), parent="upd",
                           folder="unplaced", manifest=manifest, bundle=bundle,
                           job_id="job-unplaced-1")
    assert (copy_dir / "added.txt").read_bytes() == b"added in v2"  # before it, in order
    assert (copy_dir / "hello.ipynb").read_bytes() == b"old notebook"
    assert not (copy_dir / "gallery-backup" / "v1-20260101-000000" / "hello.ipynb").exists()
    assert json.loads((copy_dir / "gallery-provenance.json").read_text())["version"] == 1

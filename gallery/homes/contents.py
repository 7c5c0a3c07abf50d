"""The `contents` Use backend: a copy written through the user's own Jupyter server (its
contents API), as the gallery service, for homes the workers cannot reach. The hub starts
that server if need be (`start_server`, through the hub's client in gallery/hub.py).

A copy never overwrites: its files go into a work folder, which is renamed to the first free
name; the name is recorded on the job before the rename, so a retry finishes the same copy.
The data manifest and the provenance record are written by homes/shared.py, as for the
`filesystem` backend; a server that hides dot files gets the provenance under a visible name.
"""

from __future__ import annotations

import base64
import logging
import posixpath
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests
from django.conf import settings

from .. import hub, kernels
from .shared import (
    PROVENANCE_FILE,
    PROVENANCE_VISIBLE,
    CopyError,
    recorded_job,
    write_data_manifest,
    write_provenance,
)

if TYPE_CHECKING:
    from ..models import Job

log = logging.getLogger(__name__)


class ContentsError(CopyError):
    """A Use through the contents API that could not be written; the message is for the user."""


@dataclass
class Contents:
    """The contents API of one Jupyter server (`base` ends in `/`), with a token that may use it.

    Paths are relative to the server's root, separated by `/`.
    """

    base: str
    token: str
    timeout: float = 60.0

    def _url(self, path: str) -> str:
        return self.base + "api/contents/" + quote(path.strip("/"), safe="/")

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        headers = {"Authorization": f"token {self.token}"}
        for attempt in range(3):  # a route just added by the proxy may answer 502/503 at first
            try:
                response = requests.request(method, self._url(path), headers=headers, **kwargs)
            except requests.RequestException as exc:
                raise ContentsError("Your Jupyter server could not be reached "
                                    f"({type(exc).__name__}). Try again in a minute.") from None
            if response.status_code not in (502, 503) or attempt == 2:
                return response
            time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    def _fail(self, response: requests.Response, what: str) -> ContentsError:
        if response.status_code in (401, 403):
            return ContentsError("The gallery is not allowed to write into your Jupyter server; "
                                 "tell the centre's support.")
        try:
            reason = response.json().get("message", "")
        except ValueError:
            reason = ""
        return ContentsError(f"Your Jupyter server refused to {what}: "
                             f"{reason or f'HTTP {response.status_code}'}")

    def model(self, path: str, *, content: bool = False) -> dict[str, Any] | None:
        """The server's model of a path (with a folder's entries when `content`), or None."""
        response = self._call("GET", path, params={"content": "1" if content else "0"})
        if response.status_code == 404:
            return None
        if response.status_code == 200:
            return dict(response.json())
        raise self._fail(response, f"look at {path}")

    def exists(self, path: str) -> bool:
        return self.model(path) is not None

    def read(self, path: str) -> bytes | None:
        """A file's bytes, or None when it is absent (or hidden from the API)."""
        response = self._call("GET", path, params={"type": "file", "format": "base64"})
        if response.status_code in (400, 404):
            return None
        if response.status_code != 200:
            raise self._fail(response, f"read {path}")
        return base64.b64decode(response.json()["content"])

    def mkdir(self, path: str) -> None:
        if self.exists(path):
            return
        response = self._call("PUT", path, json={"type": "directory"})
        if response.status_code not in (200, 201):
            raise self._fail(response, f"create the folder {path}")

    def write(self, path: str, data: bytes) -> bool:
        """Write a file byte for byte; False when the server refuses the name (hidden files)."""
        response = self._call("PUT", path, json={
            "type": "file", "format": "base64", "content": base64.b64encode(data).decode()})
        if response.status_code in (200, 201):
            return True
        if response.status_code == 400:
            return False
        raise self._fail(response, f"save {path}")

    def rename(self, old: str, new: str) -> bool:
        """Rename; False when `new` exists already (the server refuses to replace it)."""
        response = self._call("PATCH", old, json={"path": new.strip("/")})
        if response.status_code == 200:
            return True
        if response.status_code == 409:
            return False
        raise self._fail(response, f"rename {old}")

    def remove(self, path: str) -> None:
        """Delete a file, or a folder with what it holds; nothing there is fine.

        A server that keeps deleted things in the trash (the default) takes a folder at once;
        one that deletes for good refuses a folder that is not empty, so its entries go first.
        """
        response = self._call("DELETE", path)
        if response.status_code == 400:
            folder = self.model(path, content=True)
            if folder and folder.get("type") == "directory":
                for entry in folder.get("content") or []:
                    self.remove(entry["path"])
                response = self._call("DELETE", path)
        if response.status_code not in (204, 404):
            raise self._fail(response, f"remove {path}")


NO_SYMLINKS = ("The gallery wrote this copy through your Jupyter server, which cannot make "
               "symbolic links; link a path yourself with `ln -s <target> data/<name>`.")


def _walk(source: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(source.rglob("*")):
        yield path.relative_to(source).as_posix(), path


def _not_linked(name: str, target: str) -> dict[str, str]:
    """What the manifest says of a link: the contents API can make no symbolic links."""
    if target.startswith("/"):
        return {"note": "a path on the centre's filesystem; not linked (see DATA.md)"}
    return {}


def copied_by(contents: Contents, folder: str) -> str | None:
    """The job id in a folder's provenance file, if the gallery made it."""
    for name in (PROVENANCE_FILE, PROVENANCE_VISIBLE):
        data = contents.read(f"{folder}/{name}")
        if data is not None:
            return recorded_job(data)
    return None


def free_name(contents: Contents, parent: str, wanted: str) -> str:
    """`wanted`, or `wanted-2`, `wanted-3`… whichever does not exist yet."""
    for n in range(1, 1000):
        name = wanted if n == 1 else f"{wanted}-{n}"
        if not contents.exists(f"{parent}/{name}"):
            return name
    raise ContentsError(f"Too many copies of {wanted} in ~/{parent}; remove some first.")


def _no_beat() -> None:
    pass


def work_folder(parent: str, wanted: str, job_id: str) -> str:
    """Where a job's files go before the rename (the same for every attempt of the job)."""
    return f"{parent.strip('/')}/{wanted}.gallery-{job_id[:8]}"


def clear_work_folder(contents: Contents, *, parent: str, wanted: str, job_id: str) -> int:
    """Remove the job's work folder and what an interrupted removal left; returns how many.

    The work folder is renamed out of the way before its files are deleted: an attempt still
    writing into it then fails instead of renaming a folder with files missing into place.
    """
    work = work_folder(parent, wanted, job_id)
    listing = contents.model(parent.strip("/"), content=True) or {}
    cleared = 0
    for entry in listing.get("content") or []:
        path = str(entry.get("path", ""))
        if entry.get("type") != "directory" or not (
                path == work or path.startswith(work + ".gone-")):
            continue
        if path == work:
            gone = f"{work}.gone-{secrets.token_hex(4)}"
            if not contents.rename(work, gone):
                continue
            path = gone
        contents.remove(path)
        cleared += 1
    return cleared


def copy_folder(contents: Contents, *, source: Path, parent: str, wanted: str, job_id: str,
                provenance: dict[str, Any], data_links: list[dict[str, Any]],
                decided: str = "", record: Callable[[str], object] = lambda name: None,
                beat: Callable[[], None] = _no_beat) -> str:
    """Copy a folder into `parent/<name>` through the contents API; returns the name.

    Never overwrites: the files go into a work folder first, which is then renamed to a name
    that is free (the server refuses to rename onto an existing one). `record` is told the name
    before the rename, and a retry with that name as `decided` finishes the same copy.
    `beat` is called between requests (the job renews its lease there); an exception from it
    stops the copy and leaves the work folder to the attempt that holds the job now. A copy
    that fails for any other reason removes its work folder before the error goes on.
    """
    parent = parent.strip("/")
    if decided and copied_by(contents, f"{parent}/{decided}") == job_id:
        return decided  # an earlier attempt of this job finished
    path = ""
    for part in parent.split("/"):
        path = posixpath.join(path, part)
        contents.mkdir(path)
    handed_over = False

    def checked_beat() -> None:
        nonlocal handed_over
        try:
            beat()
        except BaseException:
            handed_over = True
            raise

    try:
        return _copy_into_work_folder(
            contents, source=source, parent=parent, wanted=wanted, job_id=job_id,
            provenance=provenance, data_links=data_links, decided=decided, record=record,
            beat=checked_beat)
    except BaseException:
        if not handed_over:
            try:
                clear_work_folder(contents, parent=parent, wanted=wanted, job_id=job_id)
            except ContentsError as exc:  # the copy's own error matters more
                log.warning("could not remove the work folder of job %s: %s", job_id, exc)
        raise


def _copy_into_work_folder(contents: Contents, *, source: Path, parent: str, wanted: str,
                           job_id: str, provenance: dict[str, Any],
                           data_links: list[dict[str, Any]], decided: str,
                           record: Callable[[str], object], beat: Callable[[], None]) -> str:
    work = work_folder(parent, wanted, job_id)
    contents.mkdir(work)
    for rel, path_ in _walk(source):
        beat()
        if path_.is_dir():
            contents.mkdir(f"{work}/{rel}")
        elif not contents.write(f"{work}/{rel}", path_.read_bytes()):
            raise ContentsError(f"Your Jupyter server refused the file name {rel}.")
    def write(name: str, data: bytes) -> bool:
        return contents.write(f"{work}/{name}", data)

    write_data_manifest(data_links, place=_not_linked, preface=(NO_SYMLINKS, ""), write=write,
                        taken=lambda name: (source / name).exists())
    write_provenance(write, provenance, job_id=job_id, backend="contents")
    name = decided or free_name(contents, parent, wanted)
    for _ in range(20):
        record(name)
        if contents.rename(work, f"{parent}/{name}"):
            return name
        if copied_by(contents, f"{parent}/{name}") == job_id:  # an attempt alongside was first
            clear_work_folder(contents, parent=parent, wanted=wanted, job_id=job_id)
            return name
        name = free_name(contents, parent, wanted)
    raise ContentsError(f"Could not find a free name for {wanted} in ~/{parent}.")


def start_server(username: str, *, timeout: float, beat: Callable[[], None] = _no_beat) -> str:
    """Start the user's default server if needed and wait until it is ready; returns its URL
    path (such as `/user/<name>/`)."""
    session = hub.service_session()
    name = quote(username, safe="")
    deadline = time.monotonic() + timeout
    started = False
    while True:
        try:
            response = session.get(hub.api_url(f"/users/{name}"), timeout=10)
            if response.status_code == 404:
                raise ContentsError(f"The hub has no user named {username!r}.")
            if response.status_code != 200:
                raise ContentsError(f"The hub refused to tell whether your server runs "
                                    f"(HTTP {response.status_code}); tell the centre's support.")
            server = response.json().get("servers", {}).get("")
            if server and server.get("ready"):
                return str(server["url"])
            if not started and not (server and server.get("pending") == "spawn"):
                started = True
                response = session.post(hub.api_url(f"/users/{name}/server"), timeout=30)
                if response.status_code not in (201, 202, 400):
                    raise ContentsError(f"The hub could not start your Jupyter server "
                                        f"(HTTP {response.status_code}). Start it from the hub's "
                                        "home page, then click Use again.")
        except requests.RequestException as exc:
            raise ContentsError(f"The hub could not be reached ({type(exc).__name__}). "
                                "Try again in a minute.") from None
        if time.monotonic() > deadline:
            raise ContentsError(
                f"Your Jupyter server did not start within {timeout:.0f} seconds. Start it "
                "from the hub's home page, then click Use again.")
        beat()
        time.sleep(0.5)


def _every(heartbeat: Callable[[], object], seconds: float) -> Callable[[], None]:
    """A `beat` that calls `heartbeat` at most every `seconds` (the job renews its lease
    there, and raises when it lost it)."""
    last = time.monotonic()

    def beat() -> None:  # keep the job's lease while the server starts and files go over
        nonlocal last
        if time.monotonic() - last >= seconds:
            heartbeat()
            last = time.monotonic()

    return beat


def _user_contents(job: Job, beat: Callable[[], None]) -> Contents:
    """The contents API of the server of the user recorded on the job, started if need be."""
    username = job.params["username"]
    if job.user is None or job.user.get_username() != username:
        raise ContentsError("This copy does not belong to the user who asked for it.")
    if not settings.HUB_ENABLED:
        raise ContentsError("The contents backend needs a hub (JUPYTERHUB_API_URL is not set).")
    server = start_server(username, timeout=settings.GALLERY_HUB_SPAWN_TIMEOUT, beat=beat)
    return Contents(base=settings.GALLERY_HUB_URL.rstrip("/") + server,
                    token=settings.JUPYTERHUB_API_TOKEN)


def install_kernel(contents: Contents, kernel: dict[str, Any]) -> str:
    """Write a kernelspec to ~/.local/share/jupyter/kernels/<name>/kernel.json through the
    server; returns "" when it is in place, else why not, for the person (a server that hides
    dot folders from its API refuses them: the copy goes ahead without the kernel)."""
    path = ""
    try:
        for part in (*kernels.KERNELS_DIR, kernel["name"]):
            path = posixpath.join(path, part)
            contents.mkdir(path)
        if contents.write(f"{path}/kernel.json", kernels.spec_bytes(kernel["spec"])):
            return ""
        reason = "your Jupyter server refused to save kernel.json there"
    except ContentsError as exc:
        reason = str(exc).rstrip(".")
    return (f"The kernel could not be installed in {kernels.KERNELS_SHOWN} ({reason}); a "
            "server that hides dot folders from the gallery needs "
            "c.ContentsManager.allow_hidden = True. Install it yourself with the command below.")


def copy_through_contents(*, job: Job, source: Path, provenance: dict[str, Any],
                          data_links: list[dict[str, Any]],
                          kernel: dict[str, Any] | None = None,
                          kernel_note: Callable[[str], object] = lambda note: None,
                          record: Callable[[str], object] = lambda name: None,
                          heartbeat: Callable[[], object] = _no_beat,
                          heartbeat_every: float = 0.0) -> str:
    """The `contents` Use backend: write the copy through the user's own Jupyter server, as
    the gallery service, for the user recorded on the job and nobody else.

    `record` is told the folder's name before the rename (the caller keeps it on the job, so
    that a retry finishes the same copy); `heartbeat` is called at most every
    `heartbeat_every` seconds while the server starts and the files go over. A `kernel` is
    installed first; `kernel_note` is told why when it could not be.
    """
    beat = _every(heartbeat, heartbeat_every)
    contents = _user_contents(job, beat)
    if kernel:
        note = install_kernel(contents, kernel)
        if note:
            kernel_note(note)
    return copy_folder(contents, source=source, parent=settings.GALLERY_USE_DIR,
                       wanted=job.params["folder"], job_id=str(job.pk), provenance=provenance,
                       data_links=data_links, decided=job.result.get("folder", ""),
                       record=record, beat=beat)


def clear_through_contents(*, job: Job, heartbeat: Callable[[], object] = _no_beat,
                           heartbeat_every: float = 0.0) -> int:
    """Remove the work folder a Use's interrupted attempts left in the user's server (started
    if need be, as the Use itself would); returns how many folders went."""
    contents = _user_contents(job, _every(heartbeat, heartbeat_every))
    return clear_work_folder(contents, parent=settings.GALLERY_USE_DIR,
                             wanted=job.params["folder"], job_id=str(job.pk))

"""What "Update my copy" does inside a person's copy under the `contents` backend: read the
example's files of the copy, and later write the update into it, through the person's own
Jupyter server (homes/contents.py), as homes/inplace.py does for the `filesystem` backend.

The contents API writes a file in one PUT and renames without replacing (it refuses a name
that exists). So a file is replaced in three steps: the new bytes go to a temporary name
beside it (`<name>.gallery-tmp-<job>`), the old file is renamed into the backup folder, and
the temporary one is renamed into place. A retry of the same job recognises what an
interruption left: a file with the new bytes is done; a file that is missing while the backup
holds the bytes the plan saw and the temporary file the new ones gets the last rename. Every
file is checked against the hash the plan saw before anything is written; the provenance
record is replaced last and names the job, so a copy whose record names it is done.

Every path is the copy folder joined with a name of the example's files, each part checked:
nothing outside the copy folder is read or written. The server runs as the person, so a link
they planted in their copy leads only where they can write themselves.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings

from .contents import Contents, ContentsError, _every, _no_beat, _user_contents, install_kernel
from .inplace import BACKUP_DIR, MANIFEST
from .shared import PROVENANCE_FILE, PROVENANCE_VISIBLE, recorded_job

if TYPE_CHECKING:
    from ..models import Job

BACKUP_VISIBLE = BACKUP_DIR.lstrip(".")  # for a server that hides dot files


class Refused(ContentsError):
    """Something in the copy is not what an update may touch (a changed file, not a folder)."""


def _hash(data: bytes | None) -> str:
    return hashlib.sha256(data).hexdigest() if data is not None else ""


def _checked(path: str) -> str:
    """A relative path below the copy, or Refused."""
    parts = str(path).split("/")
    if not path or any(p in ("", ".", "..") or "\\" in p for p in parts):
        raise Refused("A file of the example has an unusable name; nothing was changed.")
    return "/".join(parts)


def _copy_folder(contents: Contents, parent: str, folder: str) -> str:
    """The copy's path on the server, after making sure it is a folder."""
    shown = f"~/{parent}/{folder}"
    if not folder or "/" in folder or folder in (".", ".."):
        raise ContentsError("That is not a folder name.")
    path = f"{parent.strip('/')}/{folder}"
    model = contents.model(path)
    if model is None:
        raise ContentsError(f"There is no folder {shown} any more; nothing to update.")
    if model.get("type") != "directory":
        raise Refused(f"{shown} is not a folder; the gallery updates only a folder. Nothing "
                      "was changed.")
    return path


def _mkdirs(contents: Contents, base: str, rel: str) -> None:
    path = base
    for part in [p for p in rel.split("/") if p]:
        path = f"{path}/{part}"
        contents.mkdir(path)


def _temp(path: str, job_id: str) -> str:
    """Where the new bytes of `path` wait (the same name for every attempt of the job)."""
    return f"{path}.gallery-tmp-{job_id.replace('-', '')[:12]}"


def read_copy_folder(contents: Contents, *, parent: str, folder: str, paths: list[str],
                     max_bytes: int) -> dict[str, Any]:
    """The copy's provenance record and the files `paths` it holds: {"provenance": {…},
    "files": {path: bytes}, "provenance_name": …, "backup_dir": …}. Writes nothing."""
    copy = _copy_folder(contents, parent, folder)
    provenance: dict[str, Any] = {}
    name = PROVENANCE_FILE
    for candidate in (PROVENANCE_FILE, PROVENANCE_VISIBLE):  # a hiding server 404s the first
        data = contents.read(f"{copy}/{candidate}")
        if data is not None:
            try:
                record = json.loads(data[:65536])
            except ValueError:
                record = {}
            provenance = record if isinstance(record, dict) else {}
            name = candidate
            break
    files: dict[str, bytes] = {}
    total = 0
    for path in paths:
        data = contents.read(f"{copy}/{_checked(path)}")
        if data is None:
            continue
        total += len(data)
        if total > max_bytes:
            raise ContentsError("Your copy holds more than the gallery can compare; move large "
                                "files out of it and try again.")
        files[path] = data
    # Where the copy's provenance is visible, so must the backup be (the server hides dots).
    return {"provenance": provenance, "files": files, "provenance_name": name,
            "backup_dir": BACKUP_DIR if name == PROVENANCE_FILE else BACKUP_VISIBLE}


def update_copy_folder(contents: Contents, *, parent: str, folder: str,
                       manifest: dict[str, Any], bundle: Path, job_id: str,
                       beat: Callable[[], None] = _no_beat) -> dict[str, Any]:
    """Apply an update bundle (update.json's `manifest` and the new files in `bundle`, see
    services/updates.py) to the copy; safe to call again for the same job."""
    copy = _copy_folder(contents, parent, folder)
    prov_name = manifest.get("provenance_name", PROVENANCE_FILE)
    if prov_name not in (PROVENANCE_FILE, PROVENANCE_VISIBLE):
        raise Refused("The update names an unusable provenance file; nothing was changed.")
    if recorded_job(contents.read(f"{copy}/{prov_name}") or b"{}") == job_id:
        return {"updated": 0, "already": True}  # an earlier attempt finished it
    backup_rel = (f"{_checked(manifest.get('backup_dir', BACKUP_DIR))}/"
                  f"{_checked(manifest['backup'])}")
    backup = f"{copy}/{backup_rel}"

    # Every check first: nothing is written when one fails.
    todo: list[tuple[dict[str, Any], str, bool]] = []
    for change in manifest["changes"]:
        beat()
        path = _checked(change["path"])
        now = _hash(contents.read(f"{copy}/{path}"))
        if now == change["new"]:
            continue  # written by an earlier attempt of this job
        if now == change["expect"]:
            todo.append((change, path, now != ""))
        elif now == "" and _halfway(contents, change, f"{backup}/{path}",
                                    _temp(f"{copy}/{path}", job_id)):
            todo.append((change, path, False))  # the old one is in the backup already
        else:
            raise Refused(f"{path} in your copy changed while the update was being prepared; "
                          "nothing was changed. Try the update again.")

    # The backup: the example's files the update leaves as they are, copied; the ones it
    # replaces or removes are renamed into it below, each just before its new version.
    _mkdirs(contents, copy, backup_rel)
    moved = {path for _, path, present in todo if present}
    for path in manifest.get("save", []):
        if _checked(path) not in moved:
            beat()
            _save_copy(contents, f"{copy}/{path}", backup, path)

    for change, path, present in todo:
        beat()
        target = f"{copy}/{path}"
        tmp = _temp(target, job_id)
        if change["file"]:
            _mkdirs(contents, copy, posixpath.dirname(path))
            data = (bundle / change["file"]).read_bytes()
            if _hash(contents.read(tmp)) != change["new"] and not contents.write(tmp, data):
                raise ContentsError(f"Your Jupyter server refused to save {path}.")
        _replace(contents, target, tmp if change["file"] else "", backup, path, present)

    record = {**manifest["provenance"], "job": job_id}
    prov = f"{copy}/{prov_name}"
    tmp = _temp(prov, job_id)
    if not contents.write(tmp, json.dumps(record, indent=2).encode()):
        raise ContentsError("Your Jupyter server refused to save the update's record.")
    _replace(contents, prov, tmp, backup, prov_name, contents.exists(prov))  # last: done
    return {"updated": len(todo)}


def _halfway(contents: Contents, change: dict[str, Any], saved: str, tmp: str) -> bool:
    """Whether an earlier attempt was cut short between moving the old file into the backup
    and moving the new one into place."""
    return (bool(change["expect"]) and bool(change["file"])
            and _hash(contents.read(saved)) == change["expect"]
            and _hash(contents.read(tmp)) == change["new"])


def _save_copy(contents: Contents, source: str, backup: str, path: str) -> None:
    """Copy a file of the copy into the backup, unless it is there (an earlier attempt saved
    the file as it was before the update)."""
    saved = f"{backup}/{path}"
    if contents.exists(saved):
        return
    data = contents.read(source)
    if data is None:
        return
    _mkdirs(contents, backup, posixpath.dirname(path))
    if not contents.write(saved, data):
        raise ContentsError(f"Your Jupyter server refused to save {path} in the backup.")


def _replace(contents: Contents, target: str, tmp: str, backup: str, path: str,
             present: bool) -> None:
    """Move the old `target` (when `present`) into the backup, then `tmp` (if any) into its
    place. If the second step fails, the old file goes back where it was."""
    saved = f"{backup}/{path}"
    if present:
        _mkdirs(contents, backup, posixpath.dirname(path))
        if not contents.rename(target, saved):
            raise ContentsError(f"The backup of {path} exists already; nothing more was "
                                "changed. Try the update again.")
    if not tmp:
        return
    try:
        if contents.rename(tmp, target):
            return
        error = ContentsError(f"{path} appeared in your copy while the update wrote it; the "
                              "new version is beside it. Try the update again.")
    except ContentsError as exc:
        error = exc
    if present:
        try:
            back = contents.rename(saved, target)
        except ContentsError:
            back = False
        if not back:  # a retry of this job finishes it; a person should know where it is
            raise ContentsError(f"{error} The update stopped halfway: your {path} is in the "
                                "backup folder until it is finished.") from None
    raise error


# --- for services/updates.py: the user's server, started if need be ---------------------------


def read_through_contents(*, job: Job, paths: list[str], max_bytes: int,
                          heartbeat: Callable[[], object] = _no_beat,
                          heartbeat_every: float = 0.0) -> dict[str, Any]:
    """Read the copy named on the update job through its owner's Jupyter server."""
    contents = _user_contents(job, _every(heartbeat, heartbeat_every))
    return read_copy_folder(contents, parent=settings.GALLERY_USE_DIR,
                            folder=job.params["folder"], paths=paths, max_bytes=max_bytes)


def update_through_contents(*, job: Job, bundle: Path, kernel: dict[str, Any] | None = None,
                            heartbeat: Callable[[], object] = _no_beat,
                            heartbeat_every: float = 0.0) -> dict[str, Any]:
    """Write the update bundle into the copy named on the job through its owner's Jupyter
    server, after installing the new version's kernel (`kernel_note` in the report says why
    it could not be)."""
    beat = _every(heartbeat, heartbeat_every)
    contents = _user_contents(job, beat)
    note = install_kernel(contents, kernel) if kernel else ""
    manifest = json.loads((bundle / MANIFEST).read_text())
    report = update_copy_folder(contents, parent=settings.GALLERY_USE_DIR,
                                folder=job.params["folder"], manifest=manifest, bundle=bundle,
                                job_id=str(job.pk), beat=beat)
    return {**report, "kernel_note": note}

"""Update my copy: bring a person's copy of an example to the approved version, keeping their
edits. A three-way merge (gallery/merge.py, nbdime for notebooks) of the version the copy came
from (its provenance names it; the examples repository has it), the copy as it is now, and the
approved version; written into the copy as its owner (homes/inplace.py, or through their
own Jupyter server under the `contents` backend: homes/contents_inplace.py), with a backup of
what it replaces inside the copy, and the provenance then naming the new version.

Both the plan (what would change; nothing written) and the update itself are jobs of kind
`update` (params `apply` false or true): reading a home is the workers' work, as copying into
it is, on the nodes that mount the homes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from .. import homes, kernels, merge, repo
from ..errors import Conflict, GalleryError, NotAllowed
from ..models import Example, Job, Revision
from .environments import for_use, kernel_of
from .queue import queue_job, record_result, renew_lease
from .use import _beat_every, copy_folder_name

log = logging.getLogger(__name__)

PLAN_FRESH = timedelta(minutes=5)  # a plan this recent is shown again rather than redone
MAX_READ_BYTES = 100 * 1024 * 1024  # the most of a copy an update reads


def find_copies(*, example: Example, user: AbstractBaseUser) -> list[dict[str, Any]]:
    """The copies of `example` a person made (by Use) or updated, newest first: folder, the
    version the gallery last wrote there, and whether a newer one is approved. From the jobs'
    records; the copy's provenance file is read (and trusted over these) by the update."""
    if not user.is_authenticated:
        return []
    jobs = (Job.objects.filter(user=user, kind__in=[Job.Kind.USE, Job.Kind.UPDATE],
                               state=Job.State.DONE, revision__example=example)
            .exclude(kind=Job.Kind.UPDATE, params__apply=False)
            .select_related("revision").order_by("finished_at"))
    copies: dict[str, dict[str, Any]] = {}
    current = example.current_revision
    for job in jobs:
        folder = job.result.get("folder")
        if not isinstance(folder, str) or not folder:
            continue
        version = job.result.get("version", job.revision.number if job.revision else 0)
        copies[folder] = {"folder": folder, "path": f"~/{settings.GALLERY_USE_DIR}/{folder}",
                          "version": version,
                          "outdated": bool(example.state == Example.State.APPROVED and current
                                           and version < current.number),
                          "at": (job.finished_at or job.queued_at).isoformat()}
    return sorted(copies.values(), key=lambda c: c["at"], reverse=True)


def queue_update(*, example: Example, user: AbstractBaseUser, folder: str,
                 apply: bool = True) -> Job:
    """Queue the plan (`apply` false) or the update of the person's copy in `folder`."""
    revision = _check(example, user)
    folder = copy_folder_name(folder, default=example.slug)
    with transaction.atomic():
        return queue_job(Job.Kind.UPDATE, user=user, revision=revision, params={
            "username": user.get_username(), "folder": folder, "apply": apply,
            "backend": settings.GALLERY_USE_BACKEND},
            message="Waiting for a free worker; this page updates by itself.")


def plan_job(*, example: Example, user: AbstractBaseUser, folder: str,
             refresh: bool = False) -> Job:
    """The plan job for the person's copy in `folder` against the approved version: a recent
    one (finished or on its way), or a new one."""
    revision = _check(example, user)
    folder = copy_folder_name(folder, default=example.slug)
    recent = Job.objects.filter(
        user=user, kind=Job.Kind.UPDATE, revision=revision, params__folder=folder,
        params__apply=False, queued_at__gte=timezone.now() - PLAN_FRESH).first()
    if recent is not None and not refresh:
        return recent
    return queue_update(example=example, user=user, folder=folder, apply=False)


def _check(example: Example, user: AbstractBaseUser) -> Revision:
    if not user.is_authenticated:
        raise NotAllowed("Log in to update your copy.")
    if example.state != Example.State.APPROVED or example.current_revision is None:
        raise Conflict(f"{example.slug} has no approved version to update to.")
    return example.current_revision


def update_plan(*, example: Example, user: AbstractBaseUser, folder: str) -> dict[str, Any]:
    """What updating the copy in `folder` would change, file by file (with a cell-level
    summary of each notebook); reads the copy as its owner, writes nothing."""
    revision = _check(example, user)
    job = Job(kind=Job.Kind.UPDATE, user=user, revision=revision, params={
        "username": user.get_username(), "folder": copy_folder_name(folder, default=example.slug),
        "apply": False, "backend": settings.GALLERY_USE_BACKEND})
    return _prepare(job)[0]


def do_update(job: Job) -> dict[str, Any]:
    """A job of kind `update`: the plan, or (`apply`) the update written as the user.

    Safe to retry: the update's bundle (what to write, and what each file must hold before)
    is kept until it is written, so a retry writes the same thing; a file an earlier attempt
    wrote is recognised by its hash, and a copy whose provenance names this job is done.
    """
    revision = job.revision
    assert revision is not None
    username, folder = job.params["username"], job.params["folder"]
    if not job.params.get("apply"):
        _progress(job, "Reading your copy and comparing it with the new version.")
        return _prepare(job)[0]
    bundle = Path(settings.GALLERY_DATA_DIR) / "updates" / str(job.pk)
    kernel_note = ""
    if (bundle / homes.UPDATE_MANIFEST).is_file():
        plan = json.loads((bundle / "plan.json").read_text())
        kernel = plan.pop("_kernel", None)
    else:
        _progress(job, "Reading your copy and merging the new version into it.")
        plan, outcomes, extra = _prepare(job)
        kernel = extra["kernel"]
        if not plan["up_to_date"]:
            _write_bundle(bundle, job, plan, outcomes, extra)
    if not plan["up_to_date"]:
        _progress(job, f"Writing {plan['changes']} file{'s' if plan['changes'] != 1 else ''} "
                       f"into {plan['path']} (a backup of the old ones goes to "
                       f"{plan['backup']}).")
        if _through_contents(job):
            report = homes.update_through_contents(
                job=job, bundle=bundle, kernel=kernel, heartbeat=lambda: renew_lease(job),
                heartbeat_every=_beat_every())
            kernel_note = report.get("kernel_note", "")
        else:
            homes.update_copy(_home_plan(job, folder, kernel=kernel), bundle,
                              as_user=settings.GALLERY_USE_AS_USER,
                              timeout=settings.GALLERY_COPY_TIMEOUT,
                              heartbeat=lambda: renew_lease(job), heartbeat_every=_beat_every())
        shutil.rmtree(bundle, ignore_errors=True)
    rel = f"{settings.GALLERY_USE_DIR}/{folder}"
    return {**plan, "applied": not plan["up_to_date"],
            "lab_url": settings.GALLERY_LAB_URL_TEMPLATE.format(
                username=quote(username), path=quote(f"{rel}/{revision.notebook_name}")),
            "kernel": ({"name": kernel["name"], "display_name": kernel["spec"]["display_name"],
                        "installed": not kernel_note, "note": kernel_note} if kernel else {})}


def _through_contents(job: Job) -> bool:
    return bool(job.params.get("backend", "filesystem") == "contents")


def _progress(job: Job, message: str) -> None:
    Job.objects.filter(pk=job.pk, state=Job.State.RUNNING).update(message=message)


def _home_plan(job: Job, folder: str, *, paths: list[str] | None = None,
               kernel: dict[str, Any] | None = None) -> homes.CopyPlan:
    username = job.params["username"] if job.pk else ""
    return _copy_plan(username, folder, str(job.pk), paths=paths, kernel=kernel)


def _copy_plan(username: str, folder: str, job_id: str, *, paths: list[str] | None = None,
               kernel: dict[str, Any] | None = None) -> homes.CopyPlan:
    return homes.CopyPlan(
        username=username, source=Path(), parent=homes.use_parent(username),
        home=homes.home_of(username), folder_name=folder, job_id=job_id, provenance={},
        shown_parent=f"~/{settings.GALLERY_USE_DIR}", kernel=kernel,
        request={"folder": folder, "paths": paths or [], "max_bytes": MAX_READ_BYTES})


def _files_of(folder: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(folder).as_posix()] = path.read_bytes()
    return out


def _export(revision: Revision) -> Path:
    return repo.export_example(
        Path(settings.GALLERY_REPO_PATH), revision.git_commit, revision.example.slug,
        Path(settings.GALLERY_DATA_DIR) / "exports" / revision.git_commit
        / revision.example.slug)


def _prepare(job: Job) -> tuple[dict[str, Any], list[merge.FileOutcome], dict[str, Any]]:
    """Read the copy named on the update job, find its base, merge: the plan, the outcomes
    and what writing needs."""
    revision = job.revision
    assert revision is not None
    username, folder = job.params["username"], job.params["folder"]
    example = revision.example
    remote_dir = _export(revision)
    env = for_use(revision)
    kernel = kernel_of(revision, env.environment) if (
        env.state == "ready" and env.environment is not None) else None
    remote_files = _files_of(remote_dir)
    # The base's paths are not known before the provenance is read: read every version's.
    paths: set[str] = set()
    for rev in example.revisions.exclude(git_commit=""):
        paths.update(f["path"] for f in rev.files)
    paths |= remote_files.keys()
    paths |= {merge.beside_name(p, revision.number) for p in remote_files}
    if _through_contents(job):
        state = homes.read_through_contents(
            job=job, paths=sorted(paths), max_bytes=MAX_READ_BYTES,
            heartbeat=lambda: renew_lease(job) if job.pk and job.worker else None,
            heartbeat_every=_beat_every())
    else:
        state = homes.read_copy(_copy_plan(username, folder, "", paths=sorted(paths)),
                                as_user=settings.GALLERY_USE_AS_USER,
                                timeout=settings.GALLERY_COPY_TIMEOUT)
    # A server hiding dot files keeps the record, and so the backup, under visible names.
    backup_dir = state.get("backup_dir", homes.BACKUP_DIR)
    provenance, local = state["provenance"], state["files"]
    base_rev = _base_revision(example, provenance, folder)
    base_dir = _export(base_rev)
    copied_kernel = str(provenance.get("kernel") or "")
    if copied_kernel and kernels.NAME_OK.fullmatch(copied_kernel):
        shown = _display_name(base_rev, copied_kernel, local)
        if shown:
            base_dir = kernels.with_kernel(base_dir, name=copied_kernel, display_name=shown)
            if kernel is None:  # no new kernel: the copy keeps the one it has
                remote_dir = kernels.with_kernel(remote_dir, name=copied_kernel,
                                                 display_name=shown)
    if kernel is not None:
        remote_dir = kernels.with_kernel(remote_dir, name=kernel["name"],
                                         display_name=kernel["spec"]["display_name"])
    remote_files = _files_of(remote_dir)
    base_files = _files_of(base_dir)
    up_to_date = base_rev.pk == revision.pk
    outcomes = [] if up_to_date else merge.merge_example(
        base_files, local, remote_files, version=revision.number)
    backup = f"v{base_rev.number}-{timezone.now():%Y%m%d-%H%M%S}"
    shown = f"~/{settings.GALLERY_USE_DIR}/{folder}"
    writes = [o for o in outcomes if o.writes]
    plan = {
        "folder": folder, "path": shown, "from_version": base_rev.number,
        "to_version": revision.number, "commit": revision.git_commit,
        "up_to_date": up_to_date,
        "files": [o.summary() for o in outcomes],
        "changes": len(writes),
        "conflicts": sum(len(o.conflicts) for o in outcomes),
        "backup": f"{shown}/{backup_dir}/{backup}",
        "kernel_name": kernel["name"] if kernel else copied_kernel,
    }
    new_provenance = {
        **{k: v for k, v in provenance.items() if k in ("copied_at", "user", "title")},
        "slug": example.slug, "version": revision.number, "commit": revision.git_commit,
        "title": revision.metadata.get("title", example.title),
        "updated_at": timezone.now().isoformat(), "updated_from": base_rev.number,
        "backup": f"{backup_dir}/{backup}",
        **({"kernel": plan["kernel_name"]} if plan["kernel_name"] else {}),
    }
    return plan, outcomes, {"backup": backup, "provenance": new_provenance, "local": local,
                            "kernel": kernel, "backup_dir": backup_dir,
                            "provenance_name": state.get("provenance_name",
                                                         homes.PROVENANCE_FILE)}


def _base_revision(example: Example, provenance: dict[str, Any], folder: str) -> Revision:
    """The approved version the copy's provenance names (only this example's)."""
    where = f"~/{settings.GALLERY_USE_DIR}/{folder}"
    if not provenance:
        raise GalleryError(f"{where} has no record of where it came from "
                           f"({homes.PROVENANCE_FILE}), so the gallery cannot tell which "
                           "version to merge from. Use the example again instead.")
    if provenance.get("slug") != example.slug:
        raise GalleryError(f"{where} is a copy of another example "
                           f"({str(provenance.get('slug'))[:100]!r}), not of {example.slug}.")
    commit = str(provenance.get("commit", ""))
    base = example.revisions.exclude(git_commit="").filter(git_commit=commit).first()
    if base is None:
        raise GalleryError(f"The record in {where} names a version of {example.slug} the "
                           "gallery does not know; Use the example again instead.")
    return base


def _display_name(revision: Revision, name: str, local: dict[str, bytes]) -> str:
    """The display name the Use gave the copy's kernel: from that version's environment, else
    as the copy's main notebook says it."""
    env = revision.environment
    if env is not None:
        kernel = kernel_of(revision, env)
        if kernel["name"] == name:
            return str(kernel["spec"]["display_name"])
    try:
        spec = json.loads(local.get(revision.notebook_name, b"{}"))["metadata"]["kernelspec"]
        if spec.get("name") == name:
            return str(spec.get("display_name") or name)
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return ""


def _write_bundle(bundle: Path, job: Job, plan: dict[str, Any],
                  outcomes: list[merge.FileOutcome], extra: dict[str, Any]) -> None:
    """What the user's child writes: the new files and update.json (what each file must hold
    before, and will hold after); made in a temporary folder and renamed into place whole."""
    local = extra["local"]
    bundle.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.", dir=bundle.parent))
    try:
        changes = []
        for n, outcome in enumerate(o for o in outcomes if o.writes):
            target = outcome.beside or outcome.path
            name = f"files/{n}" if outcome.data is not None else ""
            if outcome.data is not None:
                (tmp / "files").mkdir(exist_ok=True)
                (tmp / name).write_bytes(outcome.data)
            changes.append({"path": target, "expect": merge.sha256(local.get(target)),
                            "new": merge.sha256(outcome.data), "file": name})
        (tmp / "plan.json").write_text(json.dumps({**plan, "_kernel": extra["kernel"]}))
        (tmp / homes.UPDATE_MANIFEST).write_text(json.dumps({
            "changes": changes, "backup": extra["backup"], "save": sorted(local),
            "provenance": extra["provenance"], "backup_dir": extra["backup_dir"],
            "provenance_name": extra["provenance_name"]}))
        for path in [tmp, *tmp.rglob("*")]:  # the child reads it as the user
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.rename(tmp, bundle)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    record_result(job, {"plan": {k: plan[k] for k in ("from_version", "to_version",
                                                       "changes", "conflicts", "backup")}})

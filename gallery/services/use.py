"""Use: queue a copy of an approved example into a person's home, the plan shown before it,
and the copy job itself through the configured backend.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from .. import homes, kernels, notebooks, repo
from ..errors import Conflict, GalleryError, NotAllowed
from ..models import Example, Job, Revision
from .environments import ForUse, for_use, kernel_of, queue_environment
from .queue import Waiting, queue_job, record_result, renew_lease

log = logging.getLogger(__name__)


def queue_use(*, example: Example, user: AbstractBaseUser, folder_name: str = "") -> Job:
    """Record a user's Use and queue the copy; the job runs even if the broker is down now."""
    if not user.is_authenticated:
        raise NotAllowed("Log in to use an example.")
    if example.state != Example.State.APPROVED or example.current_revision is None:
        raise Conflict(f"{example.slug} has no approved version to use.")
    folder = copy_folder_name(folder_name, default=example.slug)
    with transaction.atomic():
        job = queue_job(Job.Kind.USE, user=user, revision=example.current_revision,
                     params={"username": user.get_username(), "folder": folder,
                             "backend": settings.GALLERY_USE_BACKEND},
                     message="Waiting for a free worker; this page updates by itself.")
    return job


def count_uses(*, since: timedelta = timedelta(hours=1)) -> int:
    """Bring `use_count` (copies made) up to date for the examples used lately; returns how
    many changed. The sweep calls it.

    Counting from the jobs instead of adding one at each click keeps a hot row out of every
    Use request: at a workshop, hundreds of clicks on one example would queue on its lock.
    """
    recent = Job.objects.filter(kind=Job.Kind.USE, state=Job.State.DONE,
                                queued_at__gte=timezone.now() - since).values(
        "revision__example_id")
    counts = Job.objects.filter(
        kind=Job.Kind.USE, state=Job.State.DONE, revision__example_id__in=recent,
    ).values("revision__example_id").annotate(n=Count("pk"))
    changed = 0
    for row in counts:
        changed += Example.objects.filter(pk=row["revision__example_id"]).exclude(
            use_count=row["n"]).update(use_count=row["n"])
    return changed


def copy_folder_name(wanted: str, *, default: str) -> str:
    """The name of the new folder in the Use directory a person asked for (`default` when
    they gave none), or GalleryError: one plain name, as a file name of an example is."""
    folder = wanted.strip() or default
    try:
        folder = notebooks.clean_relpath(folder)
    except notebooks.NotebookError as exc:
        raise GalleryError(str(exc).replace("file name", "folder name")) from None
    if "/" in folder:
        raise GalleryError("The folder name must be a single name, not a path.")
    if len(folder) > 100:
        raise GalleryError("The folder name is longer than 100 characters.")
    return folder


def use_plan(*, example: Example, user: AbstractBaseUser, folder_name: str = "") -> dict[str, Any]:
    """What a Use would do, shown before the user confirms: nothing is written."""
    revision = example.current_revision
    if example.state != Example.State.APPROVED or revision is None:
        raise Conflict(f"{example.slug} has no approved version to use.")
    folder = copy_folder_name(folder_name, default=example.slug)
    env_file = revision.metadata.get("environment", "")
    env = for_use(revision)
    return {
        **planned_target(folder),
        "version": revision.number,
        "commit": revision.git_commit,
        "files": revision.files,
        "environment": env_file,
        "environment_state": env.state,
        "environment_text": env.text(),
        "kernel": (kernels.kernel_name(example.slug, env.environment.key)
                   if env.state == "ready" and env.environment else ""),
        "environment_commands": (environment_instructions(env_file, example.slug)
                                 if env.state in ("failed", "cannot_build") else
                                 {"conda": "", "pip": ""}),
        "data_links": [{"name": d.name, "target": d.target, "description": d.description,
                        "size": d.size, "checksum": d.checksum, "licence": d.licence,
                        "kind": "symlink" if d.is_path else "manifest",
                        "where": f"data/{d.name}" if d.is_path else homes.DATA_MANIFEST}
                       for d in revision.data_links.all()],
        "note": planned_target(folder)["note"] + " Data is linked, never copied.",
    }


def planned_target(folder: str) -> dict[str, str]:
    """Where a copy into the Use directory goes, as a plan shows it before anything is
    written (a Use's, or a copy someone sent: services/copies.py)."""
    parent = f"~/{settings.GALLERY_USE_DIR}"
    return {"folder": folder, "target": f"{parent}/{folder}",
            "provenance_file": homes.PROVENANCE_FILE,
            "note": f"An existing folder is never overwritten: if {parent}/{folder} exists, "
                    f"the copy goes to {folder}-2 (or -3, …)."}


def lab_url(username: str, path: str) -> str:
    """The link that opens `path` (relative to the home) in the person's JupyterLab."""
    return settings.GALLERY_LAB_URL_TEMPLATE.format(username=quote(username), path=quote(path))


def environment_instructions(env_file: str, name: str, folder: str = "") -> dict[str, str]:
    """The exact commands that turn the copied spec into a kernel; with the copy's `folder`
    (relative to the home), they start by going there, so they run from anywhere."""
    env = f"~/envs/{name}"
    kernel = f'python -m ipykernel install --user --name {name} --display-name "{name}"'
    go = f"cd ~/{shlex.quote(folder)} && " if folder else ""
    if env_file.startswith("environment"):
        return {"conda": f"{go}conda env create -p {env} -f {env_file} && "
                         f"conda run -p {env} {kernel}",
                "pip": ""}
    if env_file:
        return {"conda": "",
                "pip": f"{go}python3 -m venv {env} && {env}/bin/pip install -r {env_file} "
                       f"ipykernel && {env}/bin/{kernel}"}
    return {"conda": "", "pip": ""}


def do_use(job: Job) -> dict[str, Any]:
    """Copy the revision into the user's home with the kernel of its environment. A Use whose
    environment is still being built waits for it in the queue (not in a worker) and is rung
    again when the build ends; one that cannot have it is copied without, saying why."""
    revision = job.revision
    assert revision is not None
    example = revision.example
    username = job.params["username"]
    env = _environment_for(job, revision)
    export = repo.export_example(
        Path(settings.GALLERY_REPO_PATH), revision.git_commit, example.slug,
        Path(settings.GALLERY_DATA_DIR) / "exports" / revision.git_commit / example.slug,
    )
    kernel = None
    if env.state == "ready" and env.environment is not None:
        kernel = kernel_of(revision, env.environment)
        export = kernels.with_kernel(export, name=kernel["name"],
                                     display_name=kernel["spec"]["display_name"])
    provenance = {
        "slug": example.slug, "version": revision.number, "commit": revision.git_commit,
        "title": revision.metadata.get("title", example.title),
        "copied_at": timezone.now().isoformat(), "user": username,
        **({"kernel": kernel["name"]} if kernel else {}),
    }
    links = [{"name": d.name, "target": d.target, "description": d.description, "size": d.size,
              "checksum": d.checksum, "licence": d.licence} for d in revision.data_links.all()]
    kernel_notes: list[str] = []
    folder = write_copy(job, source=export, provenance=provenance, data_links=links,
                        kernel=kernel, kernel_note=kernel_notes.append)
    rel = f"{settings.GALLERY_USE_DIR}/{folder}"
    env_file = revision.metadata.get("environment", "")
    return {
        "folder": folder,
        "path": f"~/{rel}",
        "lab_url": lab_url(username, f"{rel}/{revision.notebook_name}"),
        "environment": {"file": env_file, "state": env.state, "reason": env.reason,
                        "text": env.text() if kernel is None else "",
                        **(environment_instructions(env_file, example.slug, rel)
                           if kernel is None else {"conda": "", "pip": ""})},
        "kernel": _kernel_result(kernel, kernel_notes),
        **({"waited_for_environment": since} if (since := job.result.get("waiting_since"))
           else {}),
        "data_links": [d["name"] for d in links],
        "version": revision.number,
    }


def write_copy(job: Job, *, source: Path, provenance: dict[str, Any],
               data_links: list[dict[str, Any]] | None = None,
               kernel: dict[str, Any] | None = None,
               kernel_note: Callable[[str], object] = lambda note: None) -> str:
    """Write the folder `source` into a new folder of the Use directory of the job's person,
    as them, through the job's backend; returns the folder's name. The job's params name the
    person and the folder wanted (`username`, `folder`, `backend`).

    Every job that writes a new folder into a home does it here: a Use, and the acceptance of
    a copy someone sent (services/copies.py). Safe to call again for the same job: a retry
    finds the copy an earlier attempt finished, by the job id in its provenance record.
    """
    links = data_links or []
    if job.params.get("backend", "filesystem") == "contents":
        return homes.copy_through_contents(
            job=job, source=source, provenance=provenance, data_links=links, kernel=kernel,
            kernel_note=kernel_note,
            record=lambda name: record_result(job, {**job.result, "folder": name}),
            heartbeat=lambda: renew_lease(job), heartbeat_every=_beat_every())
    # The name is settled inside the copy (the first of folder, folder-2, … that is free);
    # a retry finds the folder an earlier attempt finished by the job id in it.
    return homes.copy_into_home(
        _copy_plan(job, source=source, provenance=provenance, data_links=links, kernel=kernel),
        as_user=settings.GALLERY_USE_AS_USER, timeout=settings.GALLERY_COPY_TIMEOUT,
        heartbeat=lambda: renew_lease(job), heartbeat_every=_beat_every(),
    ).name


def _environment_for(job: Job, revision: Revision) -> ForUse:
    """The revision's environment for this Use; raises Waiting (after making sure a build is
    on its way) while it is being built, until GALLERY_USE_WAIT_FOR_BUILD has passed."""
    env = for_use(revision)
    if env.state != "waiting":
        return env
    since = job.result.get("waiting_since")
    if since is None:
        since = timezone.now().isoformat()
        record_result(job, {**job.result, "waiting_since": since})
        job.result["waiting_since"] = since
    waited = (timezone.now() - datetime.fromisoformat(since)).total_seconds()
    if waited > settings.GALLERY_USE_WAIT_FOR_BUILD:
        minutes = max(round(waited / 60), 1)
        return ForUse("failed", env.environment, instead=env.instead, reason=
                      f"it was still being built after {minutes} min; click Use again later "
                      "for a copy with its kernel")
    queue_environment(revision)
    raise Waiting(f"Building the example's environment first (about {env.estimate} s); your "
                  "copy follows by itself.",
                  ready=lambda: for_use(revision).state != "waiting")


def _kernel_result(kernel: dict[str, Any] | None, notes: list[str]) -> dict[str, Any]:
    """What the result says of the kernel: its name and display name, whether it is in
    place, and if not, why and the command that installs it."""
    if kernel is None:
        return {}
    spec = kernel["spec"]
    python = spec["argv"][0]
    return {
        "name": kernel["name"], "display_name": spec["display_name"],
        "installed": not notes, "note": " ".join(notes),
        "command": "" if not notes else (
            f"{shlex.quote(python)} -m ipykernel install --user --name {kernel['name']} "
            f"--display-name {shlex.quote(spec['display_name'])}"),
    }


def _beat_every() -> float:
    """How often a backend at work renews the job's lease: every third of the lease (it raises
    LeaseLost when another worker holds the job now, which stops the copy)."""
    return max(settings.GALLERY_JOB_LEASE / 3, 0.5)


def _copy_plan(job: Job, *, source: Path = Path(), provenance: dict[str, Any] | None = None,
               data_links: list[dict[str, Any]] | None = None,
               kernel: dict[str, Any] | None = None) -> homes.CopyPlan:
    """The `filesystem` backend's plan for a Use job (source and provenance matter to a copy
    only: clearing a job's leftovers needs the rest)."""
    username = job.params["username"]
    return homes.CopyPlan(
        username=username, source=source, parent=homes.use_parent(username),
        home=homes.home_of(username), folder_name=job.params["folder"], job_id=str(job.pk),
        provenance=provenance or {}, data_links=data_links or [],
        delay=settings.GALLERY_COPY_DELAY, shown_parent=f"~/{settings.GALLERY_USE_DIR}",
        kernel=kernel,
    )


def clear_use(job: Job) -> None:
    """Remove what the attempts of a job that writes a copy (`write_copy`) may have left
    half-written (a temporary folder beside the target, a work folder in the user's server);
    a finished copy stays."""
    if job.params.get("backend", "filesystem") == "contents":
        homes.clear_through_contents(job=job, heartbeat=lambda: renew_lease(job),
                                     heartbeat_every=_beat_every())
    else:
        homes.clear_leftovers(_copy_plan(job), as_user=settings.GALLERY_USE_AS_USER)


"""Runs of examples: queued as jobs on their own queue, made by `gallery.runs` as the right
account in the right kernel, recorded per revision; an example's badge (verified or broken)
follows the last run of its current content, and a change of verdict is told to its
contributor and the reviewers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import pwd
import random
import secrets
import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import models, transaction
from django.utils import timezone

from .. import previews, runs
from ..errors import GalleryError, NotAllowed
from ..models import Environment, Example, Job, Notification, Preview, Revision, Run
from .notifications import notify
from .queue import keeping_lease, queue_job

log = logging.getLogger(__name__)

DEFAULT_KERNEL = "python3"
TRUE = {"1", "true", "yes", "on"}


def queue_run(revision: Revision, *, kind: str, requested_by: AbstractBaseUser | None = None,
              candidate: str = "", batch: str = "", params: dict[str, Any] | None = None
              ) -> Run:
    """Queue a run of a revision, or return the one of the same kind already on its way."""
    with transaction.atomic():
        waiting = Run.objects.filter(revision=revision, kind=kind, candidate=candidate,
                                     state__in=[Run.State.QUEUED, Run.State.RUNNING]).first()
        if waiting is not None:
            return waiting
        job = queue_job(Job.Kind.RUN, revision=revision, user=requested_by,
                        params=params or {},
                        message="Waiting for a free worker to run the example.")
        return Run.objects.create(revision=revision, job=job, kind=kind, candidate=candidate,
                                  batch=batch, requested_by=requested_by)


def queue_run_at_staging(revision: Revision) -> Run | None:
    """A submission's run, as its contributor, shown with its checks (GALLERY_RUN_AT_STAGING)."""
    if not settings.GALLERY_RUN_AT_STAGING:
        return None
    return queue_run(revision, kind=Run.Kind.STAGING)


def queue_verification(revision: Revision) -> Run | None:
    """A scheduled run of an approved revision that is its example's current one (after it
    is published, and whenever its environment is built again)."""
    example = Example.objects.get(pk=revision.example_id)
    if example.current_revision_id != revision.pk or not revision.approved:
        return None
    return queue_run(revision, kind=Run.Kind.SCHEDULED)


def rerun(*, revision: Revision, user: AbstractBaseUser) -> Run:
    """Run a revision again on request: its contributor and the reviewers may."""
    if not revision.example.revisable_by(user):
        raise NotAllowed("Only the example's contributor and the reviewers can run it again.")
    kind = Run.Kind.SCHEDULED if revision.approved else Run.Kind.STAGING
    return queue_run(revision, kind=kind, requested_by=user)


# --- doing a run ---------------------------------------------------------------------------


def do_run(job: Job) -> dict[str, Any]:
    """Make the job's run and record what came of it. A run that cannot be made here (no
    runner account, no kernel) ends `not run` with the reason; the job is done either way."""
    run = Run.objects.select_related("revision__example__contributor",
                                     "revision__environment").get(job=job)
    with keeping_lease(job, what="running an example"):
        make_run(run)
    return _report(run)


def make_run(run: Run) -> Run:
    """Run a Run's revision now, in this process, and record the result on it."""
    revision = run.revision
    Run.objects.filter(pk=run.pk).update(state=Run.State.RUNNING, started=timezone.now())
    try:
        account, note = _account(run)
        kernel, env = _kernel(run)
    except runs.RunRefused as exc:
        _finish(run, state=Run.State.NOT_RUN, reason=str(exc))
        return run
    links = {d.name: d.target for d in revision.data_links.all() if d.is_path}
    wants_network = str(revision.metadata.get("resources", {}).get("network", "")).lower()
    result = runs.run_example(
        _folder(revision), notebook_names(revision), kernel=kernel, account=account,
        config=runs.RunConfig.from_settings(), links=links, network=wants_network in TRUE)
    _store_outputs(run, result.executed)
    if result.passed and run.kind != Run.Kind.CANDIDATE:
        _preview_outputs(run, result.executed.get(revision.notebook_name))
    failure = result.failure
    _finish(run, state=Run.State.PASSED if result.passed else Run.State.FAILED,
            reason=result.reason + (f" ({note})" if note else ""), account=result.account,
            sandboxed=result.sandboxed, kernel=result.kernel, environment=env,
            environment_key=env.key if env else "", seconds=result.seconds,
            cells=result.cells, differences=result.differences,
            failed_notebook=failure.notebook if failure else "",
            failed_cell=failure.cell if failure else None,
            error_name=failure.error if failure else "",
            error_text=failure.text if failure else "")
    return run


def _folder(revision: Revision) -> Path:
    return Path(settings.GALLERY_STAGING_DIR) / revision.content_hash  # staging.staged_folder


def notebook_names(revision: Revision) -> list[str]:
    """The notebooks of a revision, its main one first."""
    others = sorted(f["path"] for f in revision.files if f["path"].endswith(".ipynb")
                    and f["path"] != revision.notebook_name)
    return [revision.notebook_name, *others]


def _account(run: Run) -> tuple[runs.Account, str]:
    """A submission runs as its contributor's own account when there is one here; anything
    else (and a contributor without an account here) as the runner account."""
    if run.kind == Run.Kind.STAGING:
        name = run.revision.example.contributor.get_username()
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            pw = None
        if pw is not None and pw.pw_uid != 0:
            return runs.account_named(name), ""
        return runs.runner_account(), f"ran as the runner account: no account {name!r} here"
    return runs.runner_account(), ""


def _kernel(run: Run) -> tuple[runs.Kernel, Environment | None]:
    """The candidate stack for a candidate run; else the revision's built environment; else
    the kernel its example.toml names (python3 when it names none)."""
    if run.kind == Run.Kind.CANDIDATE:  # "python:PATH" or "kernel:NAME"
        how, _, what = run.candidate.partition(":")
        if how == "python":
            return runs.python_kernel(what), None
        return runs.named_kernel(what or DEFAULT_KERNEL), None
    env = run.revision.environment
    if env is not None and env.state == Environment.State.READY and env.path \
            and os.path.isdir(env.path):
        return runs.environment_kernel(env.path, f"environment {env.key[:12]} (Python "
                                                 f"{env.python})"), env
    return runs.named_kernel(run.revision.metadata.get("kernel") or DEFAULT_KERNEL), None


def _finish(run: Run, **fields: Any) -> None:
    fields["finished"] = timezone.now()
    for name, value in fields.items():
        setattr(run, name, value)
    with transaction.atomic():
        run.save(update_fields=list(fields))
        if run.state in Run.VERDICTS and run.kind != Run.Kind.CANDIDATE:
            _record_verdict(run)


def _report(run: Run) -> dict[str, Any]:
    return {"run": run.pk, "state": run.state, "reason": run.reason}


def _record_verdict(run: Run) -> None:
    """The run becomes its example's badge when it ran the example's current content; a
    change from passing to failing (or back) is told to the contributor and reviewers."""
    # Locked alone: PostgreSQL locks no row on the nullable side of a join (last_run).
    example = Example.objects.select_for_update().get(pk=run.revision.example_id)
    current = example.current_revision_id or example.revisions.order_by("-number").values_list(
        "pk", flat=True).first()
    if run.revision_id != current:
        return
    before = example.last_run
    if before is not None and before.finished and run.finished and before.finished > run.finished:
        return  # a later run already decided
    changed = before is None or before.state != run.state
    example.last_run = run
    if changed or example.verdict_since is None:
        example.verdict_since = run.finished
    example.save(update_fields=["last_run", "verdict_since"])
    if before is not None and changed and before.state in Run.VERDICTS:
        _tell_verdict(example, run)


def _tell_verdict(example: Example, run: Run) -> None:
    if run.state == Run.State.PASSED:
        message = (f"\u201c{example.title}\u201d runs again: every cell passed in "
                   f"{run.kernel}.")
    else:
        message = (f"\u201c{example.title}\u201d is broken: "
                   f"{run.where_it_failed(run.revision.notebook_name)} "
                   f"(in {run.kernel}).")
    people = {example.contributor_id: example.contributor}
    for reviewer in reviewers():
        people.setdefault(reviewer.pk, reviewer)
    for person in people.values():
        notify(user=person, kind=Notification.Kind.RUN, message=message, example=example)


def reviewers() -> models.QuerySet:
    perm = models.Q(user_permissions__codename="review_submission") | models.Q(
        groups__permissions__codename="review_submission") | models.Q(is_superuser=True)
    return get_user_model().objects.filter(perm, is_active=True).distinct()


# --- executed notebooks --------------------------------------------------------------------


def _outputs_folder(run: Run | int) -> Path:
    pk = run if isinstance(run, int) else run.pk
    return Path(settings.GALLERY_RUN_OUTPUT_DIR) / str(pk)


def _store_outputs(run: Run, executed: dict[str, bytes]) -> None:
    """Keep the executed notebooks of a run (written whole, then renamed into place), and
    forget those of the revision's older runs but its last passing one."""
    folder = _outputs_folder(run)
    for name, data in executed.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    older = Run.objects.filter(revision=run.revision_id, pk__lt=run.pk).exclude(
        kind=Run.Kind.CANDIDATE)
    keep = older.filter(state=Run.State.PASSED).order_by("-pk").values_list("pk", flat=True)[:1]
    for pk in older.exclude(pk__in=list(keep)).values_list("pk", flat=True):
        shutil.rmtree(_outputs_folder(pk), ignore_errors=True)


def _preview_outputs(run: Run, executed: bytes | None) -> None:
    """A main notebook saved without outputs is previewed with the outputs of its passing run
    (the page labels it): render the executed copy as a preview of its own."""
    import nbformat

    saved = _folder(run.revision) / run.revision.notebook_name
    try:
        nb = nbformat.reads(saved.read_text("utf-8"), as_version=4)
    except (OSError, ValueError):
        return
    if executed is None or any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
        return
    sha = hashlib.sha256(executed).hexdigest()
    run.outputs_sha256 = sha
    Run.objects.filter(pk=run.pk).update(outputs_sha256=sha)
    key = previews.revision_preview_key(run.revision, notebook_sha256=sha)
    preview, _ = Preview.objects.get_or_create(sha256=key)
    if preview.state != Preview.State.READY and not Job.objects.filter(
            kind=Job.Kind.PREVIEW, params__sha256=key,
            state__in=[Job.State.QUEUED, Job.State.RUNNING]).exists():
        # A group's example's outputs are previewed apart from the public ones too.
        queue_job(Job.Kind.PREVIEW, revision=run.revision, params={
            "sha256": key, "run": run.pk, "private": run.revision.example.groups.exists()})


def verified_preview(revision: Revision) -> Run | None:
    """The passing run whose outputs preview a notebook saved without them, when its preview
    is ready."""
    run = revision.runs.filter(state=Run.State.PASSED).exclude(outputs_sha256="").order_by(
        "-finished").first()
    if run is None or not Preview.objects.filter(
            sha256=previews.revision_preview_key(revision, notebook_sha256=run.outputs_sha256),
            state=Preview.State.READY).exists():
        return None
    return run


def executed_notebook(run: Run, name: str) -> bytes | None:
    try:
        return (_outputs_folder(run) / name).read_bytes()
    except (OSError, ValueError):
        return None


def verified_notebook(revision: Revision, name: str = "") -> tuple[Run, bytes] | None:
    """The executed notebook of the revision's last passing run (a notebook saved without
    outputs is previewed with these, labelled as such), or None."""
    run = revision.runs.filter(state=Run.State.PASSED).exclude(
        kind=Run.Kind.CANDIDATE).order_by("-finished").first()
    if run is None:
        return None
    data = executed_notebook(run, name or revision.notebook_name)
    return (run, data) if data is not None else None


# --- the schedule --------------------------------------------------------------------------


def schedule_verifications(*, now: Any = None) -> int:
    """Queue a scheduled run of each approved example that is due: every example runs once
    per GALLERY_VERIFY_INTERVAL, at its own moment of the interval (a fixed phase from its
    id), so a catalogue spreads over the interval instead of running all at once. Called
    often by beat; returns how many runs were queued."""
    now = now or timezone.now()
    interval = max(settings.GALLERY_VERIFY_INTERVAL, 60)
    latest = Run.objects.filter(revision=models.OuterRef("current_revision")).exclude(
        kind=Run.Kind.CANDIDATE).order_by("-queued")
    examples = Example.objects.curated().select_related("current_revision").annotate(
        last_queued=models.Subquery(latest.values("queued")[:1]),
        last_state=models.Subquery(latest.values("state")[:1]))
    queued = 0
    for example in examples.iterator():
        if example.last_state in (Run.State.QUEUED, Run.State.RUNNING):
            continue  # on its way
        if example.last_queued is not None and now.timestamp() < next_slot(
                example.pk, example.last_queued.timestamp(), interval):
            continue
        queue_run(example.current_revision, kind=Run.Kind.SCHEDULED)
        queued += 1
    return queued


def next_slot(pk: int, last: float, interval: int) -> float:
    """When an example that last ran at `last` runs again: at its phase of the interval, at
    least half an interval later (so the first round spreads out, then it keeps its beat)."""
    phase = random.Random(pk).random() * interval
    earliest = last + interval / 2
    return phase + math.ceil((earliest - phase) / interval) * interval


def give_up_run(job: Job, reason: str) -> None:
    """A run job that ended without a result (the runner gave up, an error in the gallery):
    its run says why instead of "running" for ever."""
    Run.objects.filter(job=job, state__in=[Run.State.QUEUED, Run.State.RUNNING]).update(
        state=Run.State.NOT_RUN, reason=reason, finished=timezone.now())


# --- a candidate software stack ------------------------------------------------------------


def check_candidate(*, kernel: str = "", python: str = "", only: list[str] | None = None,
                    progress: Any = None) -> dict[str, Any]:
    """Run every approved example's current revision (or those of `only`) against a
    candidate stack (an installed kernel by name, or a Python by path), here and now, as the
    runner account, without changing any badge; returns the report (`candidate_report`)."""
    if bool(kernel) == bool(python):
        raise GalleryError("Name a candidate kernel or a candidate Python, not both.")
    candidate = f"python:{python}" if python else f"kernel:{kernel}"
    examples = Example.objects.curated().select_related("current_revision").order_by("slug")
    if only:
        examples = examples.filter(slug__in=only)
        missing = set(only) - set(examples.values_list("slug", flat=True))
        if missing:
            raise GalleryError(f"No approved example is named {', '.join(sorted(missing))}.")
    batch = timezone.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    for example in examples:
        run = Run.objects.create(revision=example.current_revision, kind=Run.Kind.CANDIDATE,
                                 candidate=candidate, batch=batch)
        make_run(run)
        if progress is not None:
            progress(example, run)
    return candidate_report(batch)


def candidate_report(batch: str) -> dict[str, Any]:
    """What a candidate check found: each example's verdict today and in the candidate, and
    first the examples that pass today and fail in the candidate, with their first error."""
    found = Run.objects.filter(batch=batch, kind=Run.Kind.CANDIDATE).select_related(
        "revision__example__last_run").order_by("revision__example__slug")
    entries = []
    for run in found:
        example = run.revision.example
        today = example.last_run
        entries.append({
            "slug": example.slug, "title": example.title, "revision": run.revision.number,
            "today": today.state if today and today.revision_id == run.revision_id else "",
            "candidate": run.state, "error": run.error_name,
            "where": run.where_it_failed(run.revision.notebook_name)
            if run.state != Run.State.PASSED else "",
            "seconds": run.seconds})
    first = found.first()
    return {
        "batch": batch, "candidate": first.candidate if first else "",
        "started": first.queued.isoformat() if first else None, "examples": len(entries),
        "regressions": [e for e in entries if e["today"] == Run.State.PASSED
                        and e["candidate"] != Run.State.PASSED],
        "passing": sum(e["candidate"] == Run.State.PASSED for e in entries),
        "entries": entries,
    }


def candidate_batches(limit: int = 20) -> list[dict[str, Any]]:
    """The latest candidate checks, newest first: batch, candidate, when, how many."""
    rows = (Run.objects.filter(kind=Run.Kind.CANDIDATE).values("batch", "candidate")
            .annotate(started=models.Min("queued"), n=models.Count("pk"),
                      failed=models.Count("pk", filter=~models.Q(state=Run.State.PASSED)))
            .order_by("-started")[:limit])
    return list(rows)

"""Environments: an approved revision's spec locked once (the lock kept on the revision) and
built once per environment key, by a job on a queue of its own, for everyone who uses it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .. import environments, kernels
from ..errors import GalleryError
from ..models import Environment, Example, Job, Revision
from .queue import keeping_lease, queue_job
from .runs import queue_verification
from .staging import RESOLVE_CHECK, record_check, staged_folder

log = logging.getLogger(__name__)


def queue_environment(revision: Revision) -> Job | None:
    """Queue the build of a revision's environment, or return the job already on its way;
    None when the revision has no environment file."""
    if not revision.metadata.get("environment"):
        return None
    with transaction.atomic():
        # Uses of one example at once ask together: the revision's row lets one in at a time.
        Revision.objects.select_for_update().filter(pk=revision.pk).first()
        waiting = _builds(revision).filter(
            state__in=[Job.State.QUEUED, Job.State.RUNNING]).first()
        if waiting is not None:
            return waiting
        return queue_job(Job.Kind.ENVIRONMENT, revision=revision,
                         message="Waiting for a free worker to build the environment.")


def _builds(revision: Revision) -> Any:
    """The revision's build jobs (not the resolving of its submission's spec)."""
    return Job.objects.filter(kind=Job.Kind.ENVIRONMENT, revision=revision).exclude(
        params__has_key="resolve")


def do_environment(job: Job) -> dict[str, Any]:
    """Lock the revision's spec (unless it has its lock already), then build its environment
    unless the store has it. A spec this gallery cannot build ends the job done, saying so;
    any other failure ends it failed with uv's reason. A job of a submission only resolves
    (`resolve`): the lock is kept on the revision and the result is one of its checks."""
    revision = job.revision
    assert revision is not None
    if job.params.get("resolve"):
        return _resolve(job, revision)
    name, data = _spec_file(revision)
    lock_text = revision.environment_lock
    try:
        if not lock_text:
            lock_text = environments.lock(environments.read_spec(name, data))
            Revision.objects.filter(pk=revision.pk).update(environment_lock=lock_text)
        key, python = environments.store_key(lock_text)
    except environments.SpecError as exc:
        return _failed(revision, _spec_key(name, data), environments.BuildError(str(exc)))
    except environments.BuildError as exc:
        return _failed(revision, _spec_key(name, data), exc, lock=lock_text)
    with transaction.atomic():
        env, _ = Environment.objects.select_for_update().get_or_create(
            key=key, defaults={"lock": lock_text, "python": python})
        Revision.objects.filter(pk=revision.pk).update(environment=env)
        if env.state == Environment.State.READY and _built(env.path):
            _set(env, last_used=timezone.now())
            return _report(env)
        _set(env, state=Environment.State.BUILDING, reason="", log="")
    # Outside the transaction: a job of another revision with the same key waits on the
    # build's lock of the key, then finds the environment finished.
    began: list[float] = []
    try:
        with keeping_lease(job, what="building its environment"):
            path = environments.build(lock_text,
                                      starting=lambda: began.append(time.monotonic()))
    except environments.BuildError as exc:
        return _failed(revision, key, exc, lock=lock_text)
    except Exception as exc:  # the runner retries the job; until then the page says so
        _set(env, state=Environment.State.FAILED,
             reason=f"The build stopped on an error in the gallery ({type(exc).__name__}).")
        raise
    _set(env, state=Environment.State.READY, path=str(path), reason="", log="")
    queue_verification(revision)  # the example runs in its new environment
    report = _report(env)
    if began:  # this job built it (another may have, at the same time, for the same key)
        report.update(built=True, build_seconds=round(time.monotonic() - began[0], 1))
    return report


# --- what a Use needs of an environment ------------------------------------------------------


@dataclass(frozen=True)
class ForUse:
    """Where a revision's environment stands for a Use: `none` (no environment file), `ready`,
    `waiting` (being built, or about to be), `failed` or `cannot_build` (with the reason)."""

    state: str
    environment: Environment | None = None
    reason: str = ""
    estimate: int = 0  # seconds until it is built, roughly, while waiting
    instead: str = ""  # the kernel the example names in example.toml, to use instead

    def text(self) -> str:
        """The plan's words for it, before the person clicks Use."""
        if self.state == "ready":
            return "Environment ready: the copy comes with a kernel that has its packages."
        if self.state == "waiting":
            return (f"The environment will be built first (about {self.estimate} s); the copy "
                    "then comes with a kernel that has its packages.")
        if self.state in ("failed", "cannot_build"):
            use = (f"use the kernel “{self.instead}” that the example names" if self.instead
                   else "use one of the centre's kernels that has what it needs")
            return (f"The environment could not be built here ({self.reason.rstrip('.')}). "
                    f"The copy is made without a kernel of its own; {use}.")
        return ""


def for_use(revision: Revision) -> ForUse:
    """Where the revision's environment stands now (read fresh: a build may have ended)."""
    if not revision.metadata.get("environment"):
        return ForUse("none")
    env = Environment.objects.filter(revisions=revision.pk).first()
    building = _builds(revision).filter(
        state__in=[Job.State.QUEUED, Job.State.RUNNING]).first()
    if env is not None and env.state == Environment.State.READY and _built(env.path):
        return ForUse("ready", env)
    instead = str(revision.metadata.get("kernel") or "")
    if env is not None and env.state == Environment.State.CANNOT_BUILD:
        return ForUse("cannot_build", env, env.reason, instead=instead)
    if env is not None and env.state == Environment.State.FAILED and building is None:
        return ForUse("failed", env, env.reason or "the build failed", instead=instead)
    return ForUse("waiting", env, estimate=_estimate(building), instead=instead)


def kernel_of(revision: Revision, env: Environment) -> dict[str, Any]:
    """The kernel a Use of the revision installs for its (built) environment."""
    slug = revision.example.slug
    name = kernels.kernel_name(slug, env.key)
    return kernels.kernel_for(name=name, spec=kernels.kernelspec(
        env_path=env.path, title=revision.metadata.get("title") or revision.example.title,
        slug=slug, key=env.key, python=env.python))


DEFAULT_ESTIMATE = 60  # seconds a build takes when none has been timed yet


def _estimate(building: Job | None) -> int:
    """Roughly how many seconds until the environment is built: the median of the last
    builds' times, less what the running build has done already."""
    times = sorted(
        float(t) for t in Job.objects.filter(
            kind=Job.Kind.ENVIRONMENT, state=Job.State.DONE, result__built=True,
        ).order_by("-finished_at").values_list("result__build_seconds", flat=True)[:20]
        if isinstance(t, (int, float)))
    total = times[len(times) // 2] if times else DEFAULT_ESTIMATE
    if building is not None and building.started_at and building.state == Job.State.RUNNING:
        total -= (timezone.now() - building.started_at).total_seconds()
    return max(int(total + 0.5), 5)


def uses_waiting_for(job: Job) -> list[Job]:
    """The parked Uses an environment job's end concerns: those of its revision, and of every
    revision that shares its environment."""
    env_ids = Environment.objects.filter(revisions=job.revision_id).values("pk")
    return list(Job.objects.filter(kind=Job.Kind.USE, state=Job.State.QUEUED).filter(
        Q(revision=job.revision_id) | Q(revision__environment__in=env_ids)))


def remove_unused_environments(*, unused_for: timedelta, dry_run: bool = False) -> list[str]:
    """Remove the environments no approved example's current revision has used for
    `unused_for`; returns their keys. Those in use are marked used now; one being built, or
    queued, is never removed. Each is checked again under its row's lock before it goes."""
    now = timezone.now()
    in_use = Example.objects.filter(
        state=Example.State.APPROVED, current_revision__environment__isnull=False,
    ).values("current_revision__environment")
    Environment.objects.filter(pk__in=in_use).update(last_used=now)
    removed = []
    for env in Environment.objects.exclude(pk__in=in_use).filter(
            last_used__lt=now - unused_for).exclude(
            state__in=[Environment.State.QUEUED, Environment.State.BUILDING]):
        if dry_run:
            removed.append(env.key)
            continue
        with transaction.atomic():
            locked = Environment.objects.select_for_update().filter(pk=env.pk).first()
            if locked is None or Environment.objects.filter(pk=env.pk, pk__in=in_use).exists() \
                    or locked.last_used >= now - unused_for \
                    or locked.state in (Environment.State.QUEUED, Environment.State.BUILDING):
                continue
            if locked.path:
                environments.remove(locked.key)
            locked.delete()  # its revisions keep their lock; a Use of one builds it again
        removed.append(env.key)
    return removed


def give_up_environment(job: Job, reason: str) -> None:
    """An environment job the runner gave up on: its environment, if still being built by
    nobody now, says why instead of "being built" for ever; a resolving one's check too."""
    if job.params.get("resolve"):
        if job.submission_id is not None:
            record_check(job.submission_id, {"name": RESOLVE_CHECK, "status": "warn",
                                             "message": f"Not resolved: {reason}"})
        return
    Environment.objects.filter(revisions=job.revision_id,
                               state=Environment.State.BUILDING).update(
        state=Environment.State.FAILED, reason=reason, updated=timezone.now())


def _resolve(job: Job, revision: Revision) -> dict[str, Any]:
    """Resolve a submitted spec with uv and say what came of it in the submission's checks:
    the packages it resolves to, or uv's reason (an unknown package, conflicting pins). The
    lock is kept, so the build after approval installs what the reviewer was shown."""
    name, data = _spec_file(revision)
    lock_text = revision.environment_lock
    try:
        if not lock_text:
            lock_text = environments.lock(environments.read_spec(name, data))
            Revision.objects.filter(pk=revision.pk).update(environment_lock=lock_text)
        found = environments.pins(lock_text)
        shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
        check = ("pass", f"{name} resolves to {len(found)} packages: {shown}.")
    except environments.NotConfigured as exc:
        check = ("warn", f"Not resolved here: {exc.reason}")
    except environments.CannotBuild as exc:
        check = ("warn", exc.reason)
    except (environments.SpecError, environments.BuildError) as exc:
        check = ("fail", f"{name} does not resolve: "
                         f"{getattr(exc, 'reason', None) or str(exc)}")
    if job.submission_id is not None:
        record_check(job.submission_id, {"name": RESOLVE_CHECK, "status": check[0],
                                         "message": check[1]})
    return {"resolved": check[0] == "pass", "check": check[1]}


def _spec_file(revision: Revision) -> tuple[str, bytes]:
    name = revision.metadata.get("environment", "")
    path = staged_folder(revision) / name
    if not name or not path.is_file():
        raise GalleryError(f"Revision {revision.number} of {revision.example.slug} has no "
                           "environment file to build.")
    return name, path.read_bytes()


def _spec_key(name: str, data: bytes) -> str:
    """The key of a spec that has no lock: its file, so revisions sharing it share the row."""
    return "spec-" + hashlib.sha256(name.encode() + b"\0" + data).hexdigest()


def _built(path: str) -> bool:
    return bool(path) and (Path(path) / environments.RECORD_FILE).is_file()


def _set(env: Environment, **fields: Any) -> None:
    fields["updated"] = timezone.now()
    for field, value in fields.items():
        setattr(env, field, value)
    env.save(update_fields=list(fields))


def _failed(revision: Revision, key: str, exc: environments.BuildError,
            lock: str = "") -> dict[str, Any]:
    """Record why an environment cannot be had; a spec this gallery cannot build is an answer
    (the job is done), any other failure fails the job with the reason."""
    cannot = isinstance(exc, environments.CannotBuild)
    state = Environment.State.CANNOT_BUILD if cannot else Environment.State.FAILED
    with transaction.atomic():
        env, _ = Environment.objects.select_for_update().get_or_create(
            key=key, defaults={"lock": lock})
        _set(env, state=state, reason=exc.reason, log=exc.log, lock=lock or env.lock)
        Revision.objects.filter(pk=revision.pk).update(environment=env)
    if not cannot:
        raise GalleryError(f"The environment could not be built: {exc.reason}")
    return _report(env)


def _report(env: Environment) -> dict[str, Any]:
    return {"environment": env.key, "state": env.state, "path": env.path,
            "reason": env.reason}

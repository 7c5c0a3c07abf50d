"""Environments: an approved revision's spec locked once (the lock kept on the revision) and
built once per environment key, by a job on a queue of its own, for everyone who uses it.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from .. import environments
from ..errors import GalleryError
from ..models import Environment, Job, Revision
from .queue import keeping_lease, queue_job
from .runs import queue_verification
from .staging import staged_folder

log = logging.getLogger(__name__)


def queue_environment(revision: Revision) -> Job | None:
    """Queue the build of a revision's environment, or return the job already on its way;
    None when the revision has no environment file."""
    if not revision.metadata.get("environment"):
        return None
    with transaction.atomic():
        waiting = Job.objects.filter(kind=Job.Kind.ENVIRONMENT, revision=revision,
                                     state__in=[Job.State.QUEUED, Job.State.RUNNING]).first()
        if waiting is not None:
            return waiting
        return queue_job(Job.Kind.ENVIRONMENT, revision=revision,
                         message="Waiting for a free worker to build the environment.")


def do_environment(job: Job) -> dict[str, Any]:
    """Lock the revision's spec (unless it has its lock already), then build its environment
    unless the store has it. A spec this gallery cannot build ends the job done, saying so;
    any other failure ends it failed with uv's reason."""
    revision = job.revision
    assert revision is not None
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
            return _report(env)
        _set(env, state=Environment.State.BUILDING, reason="", log="")
    # Outside the transaction: a job of another revision with the same key waits on the
    # build's lock of the key, then finds the environment finished.
    try:
        with keeping_lease(job, what="building its environment"):
            path = environments.build(lock_text)
    except environments.BuildError as exc:
        return _failed(revision, key, exc, lock=lock_text)
    except Exception as exc:  # the runner retries the job; until then the page says so
        _set(env, state=Environment.State.FAILED,
             reason=f"The build stopped on an error in the gallery ({type(exc).__name__}).")
        raise
    _set(env, state=Environment.State.READY, path=str(path), reason="", log="")
    queue_verification(revision)  # the example runs in its new environment
    return _report(env)


def give_up_environment(job: Job, reason: str) -> None:
    """An environment job the runner gave up on: its environment, if still being built by
    nobody now, says why instead of "being built" for ever."""
    Environment.objects.filter(revisions=job.revision_id,
                               state=Environment.State.BUILDING).update(
        state=Environment.State.FAILED, reason=reason, updated=timezone.now())


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

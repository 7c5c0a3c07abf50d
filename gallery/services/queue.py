"""Jobs as rows: queue one (the broker is rung by task name after the transaction commits),
claim it with a lease, renew the lease, finish it. The database is the truth for every job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import connection
from django.db.models import Case, F, Q, TextField, Value, When
from django.db.models.functions import Greatest
from django.utils import timezone

from ..models import Job

log = logging.getLogger(__name__)


# The Celery task (gallery/tasks.py) that performs each kind of job, sent by name: the tasks
# sit above the services and call them, so the services never import them.
TASKS = {
    Job.Kind.CHECKS: "gallery.tasks.run_checks", Job.Kind.PREVIEW: "gallery.tasks.render_preview",
    Job.Kind.COMMIT: "gallery.tasks.commit_revision", Job.Kind.USE: "gallery.tasks.run_use",
    Job.Kind.ENVIRONMENT: "gallery.tasks.build_environment",
    # An update reads and writes a home: the Use queue's workers reach the homes.
    Job.Kind.UPDATE: "gallery.tasks.run_use",
    Job.Kind.RUN: "gallery.tasks.run_example",
    # Accepting a copy someone sent writes into a home, as a Use does.
    Job.Kind.ACCEPT: "gallery.tasks.run_use",
}


def task(name: str) -> Any:
    """A task of the gallery's Celery app by name (the app imports gallery.tasks when Django
    is ready, so every process knows them)."""
    return current_app.tasks[name]


def queue_job(kind: str, **fields: Any) -> Job:
    """Record a job, and ring the broker for it once the transaction commits."""
    job = Job.objects.create(kind=kind, **fields)
    task(TASKS[Job.Kind(kind)]).delay_on_commit(str(job.pk))
    return job


def enqueue(job: Job) -> bool:
    """Ring the broker for a job; a broker that is down only delays it (the sweep rings again)."""
    return task(TASKS[Job.Kind(job.kind)]).delay(str(job.pk)) is not None


class LeaseLost(Exception):
    """Another worker took over a job whose lease this one failed to renew in time."""


# What the job page says while a job runs (set by the claim itself: no extra write).
RUNNING_MESSAGES = {Job.Kind.USE: "Copying the example into your home.",
                    Job.Kind.ENVIRONMENT: "Building the environment.",
                    Job.Kind.UPDATE: "Reading your copy.",
                    Job.Kind.RUN: "Running the example's notebooks.",
                    Job.Kind.ACCEPT: "Copying into your home."}


def claim_job(job_id: str, worker: str) -> Job | None:
    """Take a job for this worker, or None when it is finished or held by a live lease.

    `worker` should be unique per attempt: finishing and renewing check it.
    """
    now = timezone.now()
    lease = now + timedelta(seconds=settings.GALLERY_JOB_LEASE)
    claimed = Job.objects.filter(pk=job_id).filter(
        Q(state=Job.State.QUEUED) | Q(state=Job.State.RUNNING, lease_until__lt=now)
    ).update(state=Job.State.RUNNING, worker=worker, lease_until=lease,
             attempts=F("attempts") + 1, started_at=now,
             message=Case(*(When(kind=k, then=Value(m)) for k, m in RUNNING_MESSAGES.items()),
                          default=F("message"), output_field=TextField()))
    if not claimed:
        return None
    return Job.objects.select_related("revision__example", "submission", "user").get(pk=job_id)


def renew_lease(job: Job) -> None:
    """Extend a running job's lease; raises LeaseLost when this attempt no longer holds it."""
    lease = timezone.now() + timedelta(seconds=settings.GALLERY_JOB_LEASE)
    if not Job.objects.filter(pk=job.pk, state=Job.State.RUNNING, worker=job.worker).update(
            lease_until=lease):
        raise LeaseLost(f"job {job.pk} is no longer held by {job.worker}")


def finish_job(job: Job, state: str, *, result: dict[str, Any] | None = None,
            message: str = "") -> Job:
    fields = {"state": state, "result": result if result is not None else job.result,
              "message": message, "finished_at": timezone.now(), "lease_until": None}
    if Job.objects.filter(pk=job.pk, worker=job.worker).update(**fields):
        for name, value in fields.items():
            setattr(job, name, value)
    else:  # another attempt holds the job now: report what it did
        job.refresh_from_db()
    return job


class Waiting(Exception):  # noqa: N818 - a state, not an error
    """A job that cannot go on until another one ends (a Use whose environment is being
    built). It goes back to the queue without counting as an attempt and is rung again when
    the other job ends; `ready()` tells whether that happened already."""

    def __init__(self, message: str, ready: Callable[[], bool]) -> None:
        super().__init__(message)
        self.ready = ready


def park_job(job: Job, message: str) -> bool:
    """Put a running job back in the queue to wait, keeping its attempts as they were; False
    when this attempt no longer holds it. Marked as rung now: the sweep rings a parked job
    again only after GALLERY_REQUEUE_AFTER (in case its wake-up was lost)."""
    return bool(Job.objects.filter(pk=job.pk, worker=job.worker, state=Job.State.RUNNING).update(
        state=Job.State.QUEUED, worker="", lease_until=None, message=message,
        attempts=Greatest(F("attempts") - 1, 0), rung_at=timezone.now()))


def record_result(job: Job, result: dict[str, Any]) -> None:
    """Keep what a running job has settled so far (a Use's folder name, chosen before its
    rename) on the job, so that a retry of the job finishes the same work."""
    Job.objects.filter(pk=job.pk).update(result=result)


@contextlib.contextmanager
def keeping_lease(job: Job, *, what: str = "working") -> Iterator[None]:
    """Renew the job's lease while long work runs (a build or a run may take far longer than a
    lease), so the sweep does not hand it to a second worker."""
    stop = threading.Event()

    def beat() -> None:
        try:
            while not stop.wait(max(settings.GALLERY_JOB_LEASE / 3, 0.5)):
                renew_lease(job)
        except LeaseLost as exc:
            log.warning("%s while %s", exc, what)
        except Exception:  # the work goes on; at worst the sweep rings the job again
            log.exception("could not renew the lease of job %s", job.pk)
        finally:
            connection.close()  # this thread's own connection

    beater = threading.Thread(target=beat, name=f"lease-{job.pk}", daemon=True)
    beater.start()
    try:
        yield
    finally:
        stop.set()
        beater.join()

"""The job runner: perform a job of any kind to its end, give up on one cut short too often,
and sweep for jobs the broker may have lost.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from django.utils import timezone

from .. import homes, notebooks
from ..errors import GalleryError
from ..models import Job
from .copies import do_accept
from .environments import do_environment, give_up_environment, uses_waiting_for
from .queue import LeaseLost, Waiting, claim_job, enqueue, finish_job, park_job
from .review import do_commit
from .runs import do_run, give_up_run
from .staging import do_checks, do_preview
from .updates import do_update
from .use import clear_use, count_uses, do_use

log = logging.getLogger(__name__)


MAX_ATTEMPTS = 3


GIVE_UP_AFTER = MAX_ATTEMPTS + 2  # attempts cut short (worker killed, lease lost) at most


GAVE_UP = "The job was interrupted too many times; try again."


# Jobs that write a new folder into a person's home (`use.write_copy`): never retried after
# an unexpected error (it may have been the person's home), cleared when given up.
WRITES_COPY = (Job.Kind.USE, Job.Kind.ACCEPT)


def perform_job(job_id: str, *, worker: str = "") -> Job | None:
    """Run one job to its end. Safe to call any number of times for the same id."""
    # Node names repeat (both pool processes of a worker, a restarted worker): make each
    # attempt's name unique so that only the attempt holding the job can finish it.
    worker = f"{worker or socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
    job = claim_job(job_id, worker)
    if job is None:
        return None
    ended = _perform(job)
    if job.kind == Job.Kind.ENVIRONMENT and ended is not None and ended.finished:
        for waiting in uses_waiting_for(job):  # Uses parked until this build ended
            enqueue(waiting)
    return ended


def _perform(job: Job) -> Job | None:
    if job.attempts > GIVE_UP_AFTER:
        return _give_up(job)
    handler = {
        Job.Kind.CHECKS: do_checks,
        Job.Kind.PREVIEW: do_preview,
        Job.Kind.COMMIT: do_commit,
        Job.Kind.USE: do_use,
        Job.Kind.ENVIRONMENT: do_environment,
        Job.Kind.UPDATE: do_update,
        Job.Kind.RUN: do_run,
        Job.Kind.ACCEPT: do_accept,
    }[Job.Kind(job.kind)]
    started = time.monotonic()
    try:
        result = handler(job)
    except LeaseLost as exc:
        log.warning("%s; leaving it to the worker that holds it", exc)
        return None
    except Waiting as exc:
        # Parked first, then checked: a wake-up sent in between finds the job queued.
        if park_job(job, str(exc)) and exc.ready():
            enqueue(job)
        return job
    except (homes.CopyError, notebooks.NotebookError, GalleryError) as exc:
        _ended_without_result(job, str(exc))
        return finish_job(job, Job.State.FAILED, message=str(exc))
    except Exception as exc:
        log.exception("job %s (%s) failed", job.pk, job.kind)
        if job.attempts < MAX_ATTEMPTS and job.kind not in WRITES_COPY:
            Job.objects.filter(pk=job.pk, worker=job.worker).update(
                state=Job.State.QUEUED, worker="", message=f"retrying after {type(exc).__name__}")
            return job
        _ended_without_result(job, _internal_message(job, exc))
        return finish_job(job, Job.State.FAILED, message=_internal_message(job, exc))
    log.info("job %s (%s) done in %.0f ms", job.pk, job.kind, (time.monotonic() - started) * 1e3)
    return finish_job(job, Job.State.DONE, result=result)


def _give_up(job: Job) -> Job | None:
    """End a job whose attempts kept being cut short, after clearing what they left.

    The sweep rings such a Use (or an accepted copy) once more rather than failing it itself:
    clearing needs a worker that reaches the user's home, which is a worker of the Use queue.
    """
    if job.kind in WRITES_COPY:
        try:
            clear_use(job)
        except LeaseLost as exc:
            log.warning("%s; leaving it to the worker that holds it", exc)
            return None
        except Exception:  # the job ends all the same; what is left is logged
            log.exception("could not clear what job %s left behind", job.pk)
    _ended_without_result(job, GAVE_UP)
    return finish_job(job, Job.State.FAILED, message=GAVE_UP)


def _ended_without_result(job: Job, reason: str) -> None:
    """What a job of some kinds leaves saying "in progress" is told it ended, and why."""
    if job.kind == Job.Kind.ENVIRONMENT:
        give_up_environment(job, reason)
    elif job.kind == Job.Kind.RUN:
        give_up_run(job, reason)


def _internal_message(job: Job, exc: Exception) -> str:
    if job.kind == Job.Kind.UPDATE:
        return (f"Your copy could not be updated (an error in the gallery: "
                f"{type(exc).__name__}); nothing of yours was lost. Try again; if it keeps "
                "failing, tell the centre's support.")
    if job.kind in WRITES_COPY:  # the person sees this; the log has the details and paths
        return (f"The copy could not be made (an error in the gallery: {type(exc).__name__}). "
                "Try again; if it keeps failing, tell the centre's support.")
    return f"{type(exc).__name__}: {exc}"


def sweep_jobs() -> int:
    """Ring the broker again for jobs it may have lost; returns how many."""
    count = 0
    for job in Job.objects.stale().order_by("queued_at")[:500]:
        # A Use out of attempts is rung once more, for a worker to clear what it left and fail
        # it (`_give_up`); if even that is cut short, or for other kinds, the sweep fails it.
        last_ring = job.kind in WRITES_COPY and job.attempts == GIVE_UP_AFTER
        if job.attempts >= GIVE_UP_AFTER and not last_ring:
            if Job.objects.filter(pk=job.pk, state=job.state).update(
                    state=Job.State.FAILED, finished_at=timezone.now(), lease_until=None,
                    message=GAVE_UP):
                _ended_without_result(job, GAVE_UP)
            continue
        if not enqueue(job):
            break  # the broker is down: the next sweep tries again
        count += 1
        Job.objects.filter(pk=job.pk).update(rung_at=timezone.now())
    count_uses()
    return count


"""Celery tasks: thin doorbells that take a job id and hand it to `services.perform_job`.

The job row in the database is the truth; a task only says "look at job X". A task that is
delivered twice, or after the job finished, does nothing.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task
from celery.contrib.django.task import DjangoTask
from celery.signals import worker_process_init
from kombu.exceptions import OperationalError

from . import homes, logs, services

log = logging.getLogger(__name__)


class JobTask(DjangoTask):
    acks_late = True
    reject_on_worker_lost = True

    def delay(self, *args: object, **kwargs: object) -> object:
        """Ring the broker; when it is down the job row stays queued and the sweep rings later.

        `delay_on_commit` calls this after the transaction commits, so a broker outage never
        turns a recorded click into an error for the user.
        """
        try:
            return super().delay(*args, **kwargs)
        except OperationalError as exc:
            log.warning("broker unavailable, job %s stays queued for the sweep: %s", args, exc)
            return None
        except Exception:  # e.g. a Redis still loading its data: same outcome, with a trace
            log.exception("could not queue job %s; it stays queued for the sweep", args)
            return None


@worker_process_init.connect
def _start_copy_helper(**_: object) -> None:
    # Started with the pool process, so that the first Use after a deployment does not wait.
    homes.start_helper()


def _run(task: Task, job_id: str) -> None:
    with logs.job_context(job_id):
        services.perform_job(job_id, worker=task.request.hostname or "")


@shared_task(bind=True, base=JobTask, name="gallery.tasks.run_checks")
def run_checks(self: Task, job_id: str) -> None:
    _run(self, job_id)


@shared_task(bind=True, base=JobTask, name="gallery.tasks.render_preview")
def render_preview(self: Task, job_id: str) -> None:
    _run(self, job_id)


@shared_task(bind=True, base=JobTask, name="gallery.tasks.commit_revision")
def commit_revision(self: Task, job_id: str) -> None:
    _run(self, job_id)


@shared_task(bind=True, base=JobTask, name="gallery.tasks.run_use")
def run_use(self: Task, job_id: str) -> None:
    _run(self, job_id)


@shared_task(bind=True, base=JobTask, name="gallery.tasks.build_environment")
def build_environment(self: Task, job_id: str) -> None:
    _run(self, job_id)


@shared_task(bind=True, base=JobTask, name="gallery.tasks.run_example")
def run_example(self: Task, job_id: str) -> None:
    _run(self, job_id)


@shared_task(name="gallery.tasks.schedule_verifications", acks_late=False)
def schedule_verifications() -> int:
    """Queue the scheduled runs that are due (beat calls this every few minutes)."""
    return services.schedule_verifications()


@shared_task(base=JobTask, name="gallery.tasks.email_notification", autoretry_for=(Exception,),
             retry_backoff=30, max_retries=6)
def email_notification(notification_id: int) -> None:
    """Mail one notification; the service makes a second delivery a no-op."""
    services.email_notification(notification_id=notification_id)


@shared_task(name="gallery.tasks.sweep_jobs", acks_late=False)
def sweep_jobs() -> int:
    return services.sweep_jobs()


@shared_task(name="gallery.tasks.sweep_copies", acks_late=False)
def sweep_copies() -> dict[str, int]:
    """Expire copies waiting too long, remove the files nobody can accept any more."""
    return services.sweep_copies()


@shared_task(name="gallery.tasks.sweep_staging", acks_late=False)
def sweep_staging() -> int:
    return services.sweep_staging()

"""The Celery application; its configuration lives in Django settings under CELERY_*."""

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gallery.settings")

app = Celery("gallery")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _sweep_on_start(**_: object) -> None:
    # A worker that starts picks up what a dead worker or a broker outage left behind.
    from .tasks import sweep_jobs

    try:
        sweep_jobs.delay()
    except Exception:  # the broker may still be coming up; beat sweeps again soon
        pass

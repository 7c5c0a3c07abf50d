"""The Celery application; its configuration lives in Django settings under CELERY_*."""

import os

from celery import Celery
from celery.signals import celeryd_after_setup, worker_process_init, worker_ready

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


_renders_previews = False


@celeryd_after_setup.connect
def _note_preview_queue(sender: str, instance: object, **_: object) -> None:
    # Runs in the main worker process before the pool forks; its children inherit the flag.
    global _renders_previews
    route = app.conf.task_routes.get("gallery.tasks.render_preview", {})
    consumed = app.amqp.queues.consume_from or {}
    _renders_previews = not consumed or route.get("queue") in consumed


@worker_process_init.connect
def _warm_preview_exporter(**_: object) -> None:
    # Each pool process of a preview worker builds its exporter and starts its render child
    # once, before its first task.
    if not _renders_previews:
        return
    import logging
    import time

    from .previews import PreviewLimits, warm_exporter

    log = logging.getLogger(__name__)
    started = time.monotonic()
    try:
        warm_exporter(PreviewLimits.from_settings())
    except Exception:  # a cold exporter still works; the first render just pays for it
        log.exception("could not warm the preview exporter")
        return
    log.info("preview exporter warmed in %.0f ms", (time.monotonic() - started) * 1000)

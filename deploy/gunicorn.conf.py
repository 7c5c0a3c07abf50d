"""gunicorn settings for a gallery web node: `gunicorn -c deploy/gunicorn.conf.py gallery.wsgi`.

Bind address and worker count come from the command line (`--bind`, `--workers`); the web
processes are stateless, so any number of nodes can run behind the proxy.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

wsgi_app = "gallery.wsgi:application"
workers = 2
timeout = 60
graceful_timeout = 30
# Uploads stream through the worker; a slow client should not hold one forever.
keepalive = 5
# The gallery logs one line per request itself (with its request id, never a query string).
accesslog = None
errorlog = "-"


def on_starting(server: Any) -> None:
    """Start the Prometheus client's shared directory empty: old files would count twice."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True, exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """Forget a dead worker's live gauges; its counters and histograms keep counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

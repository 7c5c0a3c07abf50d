"""What operators observe: Prometheus metrics and the detailed health checks.

Request latency is measured in each web process (the Prometheus client's multiprocess mode
adds up gunicorn's workers when `PROMETHEUS_MULTIPROC_DIR` is set). Everything about jobs,
previews and queues is read from the database and the broker when Prometheus scrapes, so
workers on other machines need no exporter of their own and a restarted process loses nothing.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import connection
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

log = logging.getLogger(__name__)

REQUEST_DURATION = Histogram(
    "gallery_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, view and status.",
    ["method", "view", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=None,
)
JOB_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
RENDER_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RUN_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0)
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


class RequestMetricsMiddleware:
    """Observes every request's duration under its route name (bounded labels, no paths)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        REQUEST_DURATION.labels(
            request.method if request.method in _METHODS else "other",
            (match.view_name or "unnamed") if match else "unmatched",
            str(response.status_code),
        ).observe(time.perf_counter() - started)
        return response


# --- who may look ---------------------------------------------------------------------------


def operator_allowed(request: HttpRequest) -> bool:
    """A caller with the metrics token, or a direct (unproxied) caller from an allowed network."""
    token = settings.GALLERY_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() in ("bearer", "token") and hmac.compare_digest(
            given.strip().encode(), token.encode()):
        return True
    if "X-Forwarded-For" in request.headers or "Forwarded" in request.headers:
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False)
               for net in settings.GALLERY_METRICS_ALLOWED_NETWORKS)


# --- the broker -----------------------------------------------------------------------------


def queue_names() -> dict[str, str]:
    """The Celery queue of each kind of work, as the running app routes it."""
    # The gallery's app is the current one once Django has loaded the gallery package;
    # gallery/celery.py is an entry point this module must not import.
    routes = current_app.conf.task_routes or {}
    return {
        "default": current_app.conf.task_default_queue,
        "previews": routes.get("gallery.tasks.render_preview", {}).get("queue", ""),
        "use": routes.get("gallery.tasks.run_use", {}).get("queue", ""),
        "envs": routes.get("gallery.tasks.build_environment", {}).get("queue", ""),
        "runs": routes.get("gallery.tasks.run_example", {}).get("queue", ""),
    }


def _broker():  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(current_app.conf.broker_url, socket_connect_timeout=1,
                                socket_timeout=1)


def queue_lengths() -> dict[str, int]:
    """Messages waiting in each queue (Redis lists, priority sub-queues included)."""
    client = _broker()
    pipe = client.pipeline()
    names = queue_names()
    for name in names.values():
        for suffix in ("", "\x06\x163", "\x06\x166", "\x06\x169"):
            pipe.llen(name + suffix)
    counts = pipe.execute()
    return {kind: sum(counts[i * 4:i * 4 + 4]) for i, kind in enumerate(names)}


# --- metrics read at scrape time ------------------------------------------------------------


def _duration_histogram(name: str, doc: str, rows: Iterator[tuple[str, dict[str, Any]]],
                        buckets: tuple[float, ...]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["kind"])
    for kind, agg in rows:
        cumulative = [(str(b), agg[f"le_{i}"]) for i, b in enumerate(buckets)]
        cumulative.append(("+Inf", agg["count"]))
        total = agg["total"]
        seconds = total.total_seconds() if isinstance(total, timedelta) else (total or 0) / 1000
        family.add_metric([kind], cumulative, seconds)
    return family


def _runs() -> Iterator[Metric]:
    """Runs by kind and state, their durations, and approved examples whose verdict is older
    than GALLERY_VERIFY_INTERVAL (or that never ran), or broken."""
    from .models import Example, Run

    runs = GaugeMetricFamily("gallery_runs", "Runs of examples by kind and state.",
                             labels=["kind", "state"])
    counts = {(r["kind"], r["state"]): r["n"]
              for r in Run.objects.values("kind", "state").annotate(n=Count("pk"))}
    for kind in Run.Kind.values:
        for state in Run.State.values:
            runs.add_metric([kind, state], counts.get((kind, state), 0))
    yield runs
    aggregates = {f"le_{i}": Count("pk", filter=Q(seconds__lte=b))
                  for i, b in enumerate(RUN_BUCKETS)}
    rows = Run.objects.filter(seconds__isnull=False).values("kind").annotate(
        count=Count("pk"), total=Sum("seconds"), **aggregates).order_by("kind")
    yield _duration_histogram(
        "gallery_run_duration_seconds", "Time of finished runs, by kind.",
        ((r["kind"], {**r, "total": (r["total"] or 0) * 1000}) for r in rows), RUN_BUCKETS)
    due = timezone.now() - timedelta(seconds=settings.GALLERY_VERIFY_INTERVAL)
    curated = Example.objects.curated()
    yield GaugeMetricFamily(
        "gallery_examples_unverified",
        "Approved examples without a verdict of their current content within the interval.",
        curated.filter(Q(last_run__isnull=True) | Q(last_run__finished__lt=due)
                       | ~Q(last_run__revision=F("current_revision"))).count())
    yield GaugeMetricFamily("gallery_examples_broken",
                            "Approved examples whose last run failed.",
                            curated.broken().count())


class GalleryCollector:
    """Jobs, previews, examples and queues, read from the database and the broker."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._from_database()
            up = 1
        except Exception as exc:  # a scrape must still answer when the database is down
            log.warning("metrics: database unavailable: %s", exc)
            up = 0
        yield GaugeMetricFamily("gallery_database_up", "1 when the database answered.", up)
        yield from self._from_broker()

    def _from_database(self) -> Iterator[Metric]:
        from .models import Example, Job, Preview

        jobs = GaugeMetricFamily("gallery_jobs", "Jobs by kind and state.",
                                 labels=["kind", "state"])
        counts = {(r["kind"], r["state"]): r["n"]
                  for r in Job.objects.values("kind", "state").annotate(n=Count("pk"))}
        for kind in Job.Kind.values:
            for state in Job.State.values:
                jobs.add_metric([kind, state], counts.get((kind, state), 0))
        yield jobs
        yield GaugeMetricFamily(
            "gallery_jobs_stale", "Jobs waiting past the requeue delay or their lease.",
            Job.objects.stale().count())
        oldest = Job.objects.filter(state=Job.State.QUEUED).order_by("queued_at").values_list(
            "queued_at", flat=True).first()
        yield GaugeMetricFamily(
            "gallery_oldest_queued_job_age_seconds", "Age of the oldest queued job (0: none).",
            (timezone.now() - oldest).total_seconds() if oldest else 0)

        duration = ExpressionWrapper(F("finished_at") - F("started_at"),
                                     output_field=DurationField())
        finished = Job.objects.filter(state__in=[Job.State.DONE, Job.State.FAILED],
                                      started_at__isnull=False, finished_at__isnull=False)
        aggregates = {f"le_{i}": Count("pk", filter=Q(d__lte=timedelta(seconds=b)))
                      for i, b in enumerate(JOB_BUCKETS)}
        rows = finished.annotate(d=duration).values("kind").annotate(
            count=Count("pk"), total=Sum("d"), **aggregates).order_by("kind")
        yield _duration_histogram(
            "gallery_job_duration_seconds", "Run time of finished jobs (last attempt), by kind.",
            ((r["kind"], r) for r in rows), JOB_BUCKETS)

        rendered = Preview.objects.filter(state=Preview.State.READY, render_ms__gt=0)
        render_aggs = {f"le_{i}": Count("pk", filter=Q(render_ms__lte=int(b * 1000)))
                       for i, b in enumerate(RENDER_BUCKETS)}
        render = rendered.aggregate(count=Count("pk"), total=Sum("render_ms"), **render_aggs)
        yield _duration_histogram(
            "gallery_preview_render_duration_seconds", "Time to render a preview.",
            iter([("preview", render)]), RENDER_BUCKETS)
        previews = GaugeMetricFamily("gallery_previews", "Previews by state.", labels=["state"])
        by_state = dict(Preview.objects.values_list("state").annotate(n=Count("pk")))
        for state in Preview.State.values:
            previews.add_metric([state], by_state.get(state, 0))
        yield previews
        failed = Job.objects.filter(kind=Job.Kind.PREVIEW, state=Job.State.FAILED).count()
        yield GaugeMetricFamily("gallery_preview_render_failures",
                                "Preview jobs that ended failed.", failed)

        yield from _runs()

        examples = GaugeMetricFamily("gallery_examples", "Examples by state.", labels=["state"])
        by_state = dict(Example.objects.values_list("state").annotate(n=Count("pk")))
        for state in Example.State.values:
            examples.add_metric([state], by_state.get(state, 0))
        yield examples

    def _from_broker(self) -> Iterator[Metric]:
        try:
            lengths = queue_lengths()
            unacked = _broker().hlen("unacked")
            up = 1
        except Exception as exc:
            log.warning("metrics: broker unavailable: %s", exc)
            lengths, unacked, up = {}, 0, 0
        yield GaugeMetricFamily("gallery_broker_up", "1 when the broker answered.", up)
        depth = GaugeMetricFamily("gallery_queue_length", "Messages waiting in each queue.",
                                  labels=["kind", "queue"])
        names = queue_names()
        for kind, length in lengths.items():
            depth.add_metric([kind, names[kind]], length)
        yield depth
        if up:
            yield GaugeMetricFamily("gallery_broker_unacked",
                                    "Messages taken by workers and not yet acknowledged.",
                                    unacked)


def exposition() -> bytes:
    """The metrics in Prometheus' text format."""
    registry = CollectorRegistry(auto_describe=False)
    if settings.PROMETHEUS_MULTIPROC_DIR:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(REQUEST_DURATION)
    registry.register(GalleryCollector())  # type: ignore[arg-type]
    return generate_latest(registry)


# --- detailed health ------------------------------------------------------------------------

OK, WARNING, ERROR, UNKNOWN = "ok", "warning", "error", "unknown"


def _check(func: Callable[[], tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    started = time.monotonic()
    try:
        status, message, details = func()
    except Exception as exc:
        status, message, details = ERROR, f"{type(exc).__name__}: {exc}", {}
    return {"status": status, "message": message, **details,
            "ms": round((time.monotonic() - started) * 1000, 1)}


def check_database() -> tuple[str, str, dict[str, Any]]:
    from django.db.migrations.executor import MigrationExecutor

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    executor = MigrationExecutor(connection)
    pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if pending:
        return WARNING, f"{len(pending)} migrations not applied: run `manage.py migrate`", {
            "vendor": connection.vendor, "pending_migrations": len(pending)}
    return OK, f"{connection.vendor} answers, migrations applied", {"vendor": connection.vendor}


def check_broker() -> tuple[str, str, dict[str, Any]]:
    _broker().ping()
    lengths = queue_lengths()
    return OK, "the broker answers", {"queues": {
        kind: {"name": name, "waiting": lengths[kind]} for kind, name in queue_names().items()}}


def check_workers(timeout: float = 1.0) -> tuple[str, str, dict[str, Any]]:
    replies = current_app.control.inspect(timeout=timeout).active_queues() or {}
    consumers: dict[str, list[str]] = {}
    for host, queues in replies.items():
        for queue in queues or []:
            consumers.setdefault(queue["name"], []).append(host)
    by_kind = {kind: sorted(consumers.get(name, [])) for kind, name in queue_names().items()}
    missing = [kind for kind, hosts in by_kind.items() if not hosts]
    if missing:
        return ERROR, "no worker takes the " + ", ".join(missing) + " queue" + (
            "s" if len(missing) > 1 else ""), {"workers": by_kind}
    return OK, f"{len(replies)} workers answer, every queue is served", {"workers": by_kind}


def check_repository() -> tuple[str, str, dict[str, Any]]:
    import git

    from .models import Revision

    path = Path(settings.GALLERY_REPO_PATH)
    latest = Revision.objects.exclude(git_commit="").order_by("-created").values_list(
        "git_commit", flat=True).first()
    if not (path / ".git").is_dir():
        if latest:
            return ERROR, f"no repository at {path}, but the database has approvals", {}
        return WARNING, f"no repository at {path} yet; the first approval creates it", {}
    repo = git.Repo(path)
    head = repo.head.commit
    details = {"path": str(path), "head": head.hexsha, "head_date": head.committed_datetime}
    if latest:
        try:
            repo.commit(latest)
        except (ValueError, git.BadName):
            return ERROR, (f"the database names commit {latest[:10]}, which the repository "
                           "lacks: restore the repository, or run rebuild_index"), details
    return OK, f"HEAD {head.hexsha[:10]}", details


def check_disk() -> tuple[str, str, dict[str, Any]]:
    minimum = settings.GALLERY_MIN_FREE_DISK_MB * 1024 * 1024
    places = {"data": settings.GALLERY_DATA_DIR, "repository": settings.GALLERY_REPO_PATH,
              "previews": settings.GALLERY_PREVIEW_DIR, "staging": settings.GALLERY_STAGING_DIR}
    seen: dict[int, str] = {}
    report: dict[str, Any] = {}
    status = OK
    for name, raw in places.items():
        path = Path(raw)
        while not path.exists() and path != path.parent:
            path = path.parent
        device = path.stat().st_dev
        if device in seen:
            report[name] = {"same_filesystem_as": seen[device]}
            continue
        seen[device] = name
        usage = shutil.disk_usage(path)
        free_mb = usage.free // (1024 * 1024)
        report[name] = {"path": str(raw), "free_mb": free_mb,
                        "free_percent": round(100 * usage.free / usage.total, 1)}
        if usage.free < minimum:
            status = ERROR
        elif usage.free < 4 * minimum and status == OK:
            status = WARNING
    message = {OK: "enough free space", WARNING: "free space is getting low",
               ERROR: f"less than {settings.GALLERY_MIN_FREE_DISK_MB} MB free"}[status]
    return status, message, {"filesystems": report}


def check_jobs() -> tuple[str, str, dict[str, Any]]:
    from .models import Job

    counts = dict(Job.objects.values_list("state").annotate(n=Count("pk")))
    oldest = Job.objects.filter(state=Job.State.QUEUED).order_by("queued_at").values_list(
        "queued_at", flat=True).first()
    age = (timezone.now() - oldest).total_seconds() if oldest else 0
    details = {"by_state": counts, "oldest_queued_seconds": round(age)}
    if age > 300:
        return WARNING, f"a job has waited {age / 60:.0f} minutes: are the workers running?", \
            details
    return OK, f"{counts.get(Job.State.QUEUED, 0)} queued, {counts.get(Job.State.RUNNING, 0)} " \
        "running", details


def check_runs() -> tuple[str, str, dict[str, Any]]:
    """Whether examples can run here and in the sandbox, and how the catalogue stands."""
    from . import runs
    from .models import Example, Run

    works, why = runs.sandbox_state()
    day = timezone.now() - timedelta(days=1)
    recent = Run.objects.filter(finished__gte=day).exclude(account="")
    bare = recent.filter(sandboxed=False).count()
    by_state = dict(Run.objects.values_list("state").annotate(n=Count("pk")))
    details = {"sandbox": "bubblewrap works" if works else f"missing: {why}",
               "runs_by_state": by_state, "runs_without_sandbox_last_day": bare,
               "runner": settings.GALLERY_RUNNER_USER or None,
               "broken_examples": Example.objects.curated().broken().count()}
    if not settings.GALLERY_RUNNER_USER:
        return WARNING, ("examples are not run: set GALLERY_RUNNER_USER to an unprivileged "
                         "account"), details
    if bare:
        return WARNING, (f"the sandbox is missing: {bare} runs in the last day ran without "
                         "it (install bubblewrap on the runs workers)"), details
    if not works and settings.GALLERY_RUN_SANDBOX:
        return WARNING, f"the sandbox is missing here ({why})", details
    return OK, f"runs are sandboxed; {details['broken_examples']} approved examples broken", \
        details


def health_report() -> dict[str, Any]:
    """Each part of the gallery with a plain status; never raises."""
    checks = {"database": _check(check_database), "broker": _check(check_broker)}
    if checks["broker"]["status"] == OK:
        checks["workers"] = _check(check_workers)
    else:
        checks["workers"] = {"status": UNKNOWN,
                             "message": "cannot ask the workers: the broker is down"}
    database_ok = checks["database"]["status"] != ERROR
    for name, func in (("repository", check_repository), ("jobs", check_jobs),
                       ("runs", check_runs)):
        checks[name] = _check(func) if database_ok else {
            "status": UNKNOWN, "message": "needs the database"}
    checks["disk"] = _check(check_disk)
    order = [OK, UNKNOWN, WARNING, ERROR]
    worst = max((c["status"] for c in checks.values()), key=order.index)
    return {"status": worst, "checks": checks, "time": timezone.now()}

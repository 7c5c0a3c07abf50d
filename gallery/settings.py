"""Settings: one module, read from the environment (twelve-factor).

Every variable has a default that makes `manage.py runserver` work on SQLite with nothing
set. Secrets may also come from a file named by the same variable with a `_FILE` suffix.
A bad value stops the process with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shlex
import sys
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name: str, default: str = "") -> str:
    """A variable's value, or the contents of the file named by `<name>_FILE`."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc}") from exc
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = env(name, "1" if default else "0").strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use 1/0, true/false)")


def env_int(name: str, default: int) -> int:
    value = env(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


def env_choice(name: str, default: str, choices: set[str]) -> str:
    value = env(name, default)
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} must be one of {sorted(choices)}")
    return value


# --- where things live ---------------------------------------------------------------------
GALLERY_DATA_DIR = Path(env("GALLERY_DATA_DIR", str(BASE_DIR / "var"))).resolve()
GALLERY_REPO_PATH = Path(env("GALLERY_REPO_PATH", str(GALLERY_DATA_DIR / "examples.git")))
GALLERY_STAGING_DIR = Path(env("GALLERY_STAGING_DIR", str(GALLERY_DATA_DIR / "staging")))
GALLERY_PREVIEW_DIR = Path(env("GALLERY_PREVIEW_DIR", str(GALLERY_DATA_DIR / "previews")))
# Previews of groups' examples: served only through the gallery, to members; never inside
# the public GALLERY_PREVIEW_DIR, which a web server may serve to anyone.
GALLERY_GROUP_PREVIEW_DIR = Path(env("GALLERY_GROUP_PREVIEW_DIR",
                                     str(GALLERY_DATA_DIR / "group-previews")))
if GALLERY_GROUP_PREVIEW_DIR.resolve().is_relative_to(GALLERY_PREVIEW_DIR.resolve()):
    raise ImproperlyConfigured("GALLERY_GROUP_PREVIEW_DIR must not be inside GALLERY_PREVIEW_DIR, "
                               "whose files are served to anyone.")
# Seconds a signed address of a group's example's preview (given by the API's example
# detail, e.g. to the JupyterLab tab, which frames it without the gallery's session) works.
GALLERY_PREVIEW_LINK_SECONDS = env_int("GALLERY_PREVIEW_LINK_SECONDS", 600)
if GALLERY_PREVIEW_LINK_SECONDS < 1:
    raise ImproperlyConfigured("GALLERY_PREVIEW_LINK_SECONDS must be at least 1")
GALLERY_STARTER_DIR = BASE_DIR / "examples_repo"

# --- Use -----------------------------------------------------------------------------------
GALLERY_USE_BACKEND = env_choice("GALLERY_USE_BACKEND", "filesystem", {"filesystem", "contents"})
GALLERY_HOME_TEMPLATE = env("GALLERY_HOME_TEMPLATE", str(GALLERY_DATA_DIR / "homes" / "{username}"))
GALLERY_USE_DIR = env("GALLERY_USE_DIR", "examples")
# Write as the user's uid/gid (needs root); off means write as the worker's own user.
GALLERY_USE_AS_USER = env_bool("GALLERY_USE_AS_USER", os.geteuid() == 0)
GALLERY_LAB_URL_TEMPLATE = env("GALLERY_LAB_URL_TEMPLATE", "/user/{username}/lab/tree/{path}")
# Test-only: seconds to sleep between files of a copy, so fault tests can kill mid-copy.
GALLERY_COPY_DELAY = float(env("GALLERY_COPY_DELAY", "0") or 0)

# --- copies sent between people (services/copies.py) ----------------------------------------
# A sent notebook or folder is kept here until no recipient can still accept it.
GALLERY_SEND_DIR = Path(env("GALLERY_SEND_DIR", str(GALLERY_DATA_DIR / "sent")))
GALLERY_SEND_PER_HOUR = env_int("GALLERY_SEND_PER_HOUR", 20)  # sends per sender and hour
GALLERY_SEND_MAX_RECIPIENTS = env_int("GALLERY_SEND_MAX_RECIPIENTS", 100)  # people per send
GALLERY_SEND_KEEP_DAYS = env_int("GALLERY_SEND_KEEP_DAYS", 14)  # then a pending one expires

# Previews may be served from a separate origin (a registrable domain of their own, no
# cookies); empty means they are served by the gallery itself under /previews/.
GALLERY_PREVIEW_BASE_URL = env("GALLERY_PREVIEW_BASE_URL", "").rstrip("/")
# Origins whose pages may show a preview in a frame (CSP frame-ancestors). With previews on
# their own origin, name the gallery's origin here, e.g. "https://hub.example.org".
GALLERY_PREVIEW_FRAME_ANCESTORS = env("GALLERY_PREVIEW_FRAME_ANCESTORS", "'self'")
if any(c in GALLERY_PREVIEW_FRAME_ANCESTORS for c in ";,\r\n"):
    raise ImproperlyConfigured("GALLERY_PREVIEW_FRAME_ANCESTORS is a space-separated list of "
                               "origins, without ';' or ','")

# --- limits --------------------------------------------------------------------------------
GALLERY_MAX_UPLOAD_BYTES = env_int("GALLERY_MAX_UPLOAD_BYTES", 25 * 1024 * 1024)
GALLERY_MAX_FILES = env_int("GALLERY_MAX_FILES", 50)
GALLERY_MAX_OUTPUT_BYTES = env_int("GALLERY_MAX_OUTPUT_BYTES", 2 * 1024 * 1024)
GALLERY_MAX_CELLS = env_int("GALLERY_MAX_CELLS", 10_000)
# One preview render: seconds of wall time, MiB of memory on top of the worker's own, and
# the most pixels an image may have (bigger ones are shown as a notice, not decoded).
GALLERY_RENDER_TIME_LIMIT = env_int("GALLERY_RENDER_TIME_LIMIT", 30)
GALLERY_RENDER_MEMORY_LIMIT = env_int("GALLERY_RENDER_MEMORY_LIMIT", 1024)
GALLERY_PREVIEW_MAX_IMAGE_PIXELS = env_int("GALLERY_PREVIEW_MAX_IMAGE_PIXELS", 25_000_000)

# --- environments: built with uv, once per lock, into a read-only store users can read ------
GALLERY_ENV_DIR = Path(env("GALLERY_ENV_DIR", str(GALLERY_DATA_DIR / "envs")))
# The unprivileged account uv runs as; empty means the worker's own user, unless that is
# root: environments are never built as root.
GALLERY_BUILD_USER = env("GALLERY_BUILD_USER")
GALLERY_BUILD_TIMEOUT = env_int("GALLERY_BUILD_TIMEOUT", 600)
GALLERY_BUILD_MAX_MB = env_int("GALLERY_BUILD_MAX_MB", 10240)
# Days an environment no approved example uses any more is kept before
# `manage.py remove_unused_environments` removes it (copies of older versions lose its kernel).
GALLERY_ENV_KEEP_DAYS = env_int("GALLERY_ENV_KEEP_DAYS", 30)
# How long a Use waits (in the queue, not in a worker) for its environment's build before it
# copies without the kernel, saying so.
GALLERY_USE_WAIT_FOR_BUILD = env_int("GALLERY_USE_WAIT_FOR_BUILD", 2 * GALLERY_BUILD_TIMEOUT + 300)


def _build_python() -> str:
    """The interpreter environments are built on. Users' kernels run it, so it must be one
    every user can run: the system's python3 where there is one (the gallery's own may live
    somewhere private, such as a pyenv under /root), else the one the gallery runs on."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


GALLERY_BUILD_PYTHON = env("GALLERY_BUILD_PYTHON") or _build_python()
# Extra uv options naming where packages come from, e.g. "--index-url https://pypi.example.org
# /simple" or "--no-index --find-links /srv/wheels" (offline).
GALLERY_BUILD_INDEX_OPTIONS = env("GALLERY_BUILD_INDEX_OPTIONS")
try:
    shlex.split(GALLERY_BUILD_INDEX_OPTIONS)
except ValueError as exc:
    raise ImproperlyConfigured(f"GALLERY_BUILD_INDEX_OPTIONS cannot be read: {exc}") from exc
# Wheels only: no package's own build code runs during a build.
GALLERY_BUILD_ONLY_WHEELS = env_bool("GALLERY_BUILD_ONLY_WHEELS", True)
# The uv executable the build account runs; empty means the one installed with the gallery.
GALLERY_BUILD_UV = env("GALLERY_BUILD_UV")
# The conda-compatible executable (conda, mamba or micromamba; a path or a name on the
# worker's PATH) that builds the conda dependencies of an environment.yml; empty means such
# environments cannot be built here, and the gallery says so.
GALLERY_CONDA = env("GALLERY_CONDA")
# The channels conda dependencies come from when an environment.yml names none (names such as
# conda-forge, or a centre's mirror by URL), separated by commas or spaces.
GALLERY_CONDA_CHANNELS = env("GALLERY_CONDA_CHANNELS", "conda-forge").replace(",", " ").split() \
    or ["conda-forge"]
if any(channel.startswith("-") for channel in GALLERY_CONDA_CHANNELS):
    raise ImproperlyConfigured("GALLERY_CONDA_CHANNELS names channels, not options.")

# --- runs: every example run top to bottom, in a sandbox, as an unprivileged account ------
# Scratch folders of runs (one per run, removed after it) and the executed notebooks kept.
GALLERY_RUN_DIR = Path(env("GALLERY_RUN_DIR", str(GALLERY_DATA_DIR / "runs")))
GALLERY_RUN_OUTPUT_DIR = Path(env("GALLERY_RUN_OUTPUT_DIR", str(GALLERY_DATA_DIR / "run-outputs")))
# The account scheduled runs of approved examples use (no access to homes); submissions run
# as their contributor's own account when it exists here, else as this one. Empty: no runs.
GALLERY_RUNNER_USER = env("GALLERY_RUNNER_USER")
# Run a submission's notebooks when it is staged (shown with its checks).
GALLERY_RUN_AT_STAGING = env_bool("GALLERY_RUN_AT_STAGING", True)
GALLERY_RUN_CELL_TIMEOUT = env_int("GALLERY_RUN_CELL_TIMEOUT", 300)
GALLERY_RUN_TIMEOUT = env_int("GALLERY_RUN_TIMEOUT", 1800)
GALLERY_RUN_MEMORY_MB = env_int("GALLERY_RUN_MEMORY_MB", 2048)
GALLERY_RUN_MAX_OUTPUT_MB = env_int("GALLERY_RUN_MAX_OUTPUT_MB", 20)
GALLERY_RUN_MAX_DISK_MB = env_int("GALLERY_RUN_MAX_DISK_MB", 1024)
GALLERY_RUN_MAX_PROCESSES = env_int("GALLERY_RUN_MAX_PROCESSES", 256)
# Whether an example that declares `network = true` under [resources] may use the network.
GALLERY_RUN_NETWORK = env_bool("GALLERY_RUN_NETWORK", False)
# Sandbox runs with bubblewrap where it works (health says when it does not).
GALLERY_RUN_SANDBOX = env_bool("GALLERY_RUN_SANDBOX", True)
# Seconds between two scheduled runs of an approved example (default a week), spread out.
GALLERY_VERIFY_INTERVAL = env_int("GALLERY_VERIFY_INTERVAL", 7 * 24 * 3600)

# --- reviewers and the hub -----------------------------------------------------------------
GALLERY_REVIEW_SCOPE = env("GALLERY_REVIEW_SCOPE", "custom:gallery:review")
GALLERY_REVIEW_GROUP = env("GALLERY_REVIEW_GROUP", "gallery-reviewers")
# A project's reviewers: the members of the hub group this names for a group (with {group}).
GALLERY_GROUP_REVIEWERS = env("GALLERY_GROUP_REVIEWERS", "{group}-reviewers")
if GALLERY_GROUP_REVIEWERS and GALLERY_GROUP_REVIEWERS.count("{group}") != 1:
    raise ImproperlyConfigured("GALLERY_GROUP_REVIEWERS names a hub group with {group} in it "
                               "once, such as '{group}-reviewers' (empty: no project reviewers).")
JUPYTERHUB_API_URL = env("JUPYTERHUB_API_URL")
JUPYTERHUB_API_TOKEN = env("JUPYTERHUB_API_TOKEN")
JUPYTERHUB_CLIENT_ID = env("JUPYTERHUB_CLIENT_ID", "service-gallery")
JUPYTERHUB_SERVICE_PREFIX = env("JUPYTERHUB_SERVICE_PREFIX", "/")
JUPYTERHUB_BASE_URL = env("JUPYTERHUB_BASE_URL", "/")
JUPYTERHUB_OAUTH_CALLBACK_URL = env("JUPYTERHUB_OAUTH_CALLBACK_URL")
try:
    JUPYTERHUB_OAUTH_ACCESS_SCOPES = set(json.loads(env("JUPYTERHUB_OAUTH_ACCESS_SCOPES", "[]")))
except json.JSONDecodeError:
    raise ImproperlyConfigured("JUPYTERHUB_OAUTH_ACCESS_SCOPES is not a JSON list") from None
GALLERY_HUB_URL = env("GALLERY_HUB_URL", "http://127.0.0.1:8000")  # proxy, for user servers
HUB_ENABLED = bool(JUPYTERHUB_API_URL)
if HUB_ENABLED and not JUPYTERHUB_API_TOKEN:
    raise ImproperlyConfigured("JUPYTERHUB_API_URL is set but JUPYTERHUB_API_TOKEN is empty")
# Browser-facing hub, for the authorize step and logout; set only with subdomains.
JUPYTERHUB_PUBLIC_HUB_URL = env("JUPYTERHUB_PUBLIC_HUB_URL")
# Seconds between checks that a logged-in user's hub token still works (hub logout ends it).
GALLERY_HUB_RECHECK_SECONDS = env_int("GALLERY_HUB_RECHECK_SECONDS", 300)
# Seconds a hub token presented to the API is trusted before the hub is asked again.
GALLERY_HUB_TOKEN_CACHE_SECONDS = env_int("GALLERY_HUB_TOKEN_CACHE_SECONDS", 60)
# Seconds the contents backend waits for a user's server to start (the job's lease is renewed).
GALLERY_HUB_SPAWN_TIMEOUT = env_int("GALLERY_HUB_SPAWN_TIMEOUT", 90)

# --- notifications by email (off unless GALLERY_EMAIL_HOST is set) ---------------------------
EMAIL_HOST = env("GALLERY_EMAIL_HOST")
EMAIL_PORT = env_int("GALLERY_EMAIL_PORT", 25)
EMAIL_HOST_USER = env("GALLERY_EMAIL_USER")
EMAIL_HOST_PASSWORD = env("GALLERY_EMAIL_PASSWORD")
EMAIL_USE_TLS = env_bool("GALLERY_EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = env("GALLERY_EMAIL_FROM", "gallery@localhost")
# Users without an address in their account get username@this domain (empty: no email).
GALLERY_EMAIL_DOMAIN = env("GALLERY_EMAIL_DOMAIN")
# The gallery's address as people reach it, for links in emails, e.g.
# https://hub.example.org/services/gallery
GALLERY_PUBLIC_URL = env("GALLERY_PUBLIC_URL")
# Bulk import: the contributor of imported notebooks (any reviewer may then review them).
GALLERY_IMPORT_USER = env("GALLERY_IMPORT_USER", "gallery-import")
# Folders (and local repositories) the reviewer's desk may import from; the command line may
# import from anywhere.
GALLERY_IMPORT_ROOTS = env_list("GALLERY_IMPORT_ROOTS")

# A cache shared by the web processes (cards of the gallery page, the JSON list, hub token
# checks), e.g. redis://127.0.0.1:6379/1; empty means one in each process's memory.
GALLERY_CACHE_URL = env("GALLERY_CACHE_URL")
CACHES = {"default": (
    {"BACKEND": "gallery.redis_cache.RedisCache", "LOCATION": GALLERY_CACHE_URL,
     "KEY_PREFIX": "gallery", "TIMEOUT": 300}
    if GALLERY_CACHE_URL else
    {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "gallery"})}

# --- Django --------------------------------------------------------------------------------
DEBUG = env_bool("GALLERY_DEBUG", False)


def _secret_key() -> str:
    key = env("GALLERY_SECRET_KEY")
    if key:
        return key
    # Zero-setup default: one key per data dir, shared by web and worker on this machine.
    path = GALLERY_DATA_DIR / "secret_key"
    if not path.exists():
        GALLERY_DATA_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


try:
    SECRET_KEY = _secret_key()
except FileExistsError:  # another process created it first
    SECRET_KEY = (GALLERY_DATA_DIR / "secret_key").read_text().strip()

ALLOWED_HOSTS = env_list("GALLERY_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("GALLERY_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "gallery",
]

MIDDLEWARE = [
    "gallery.logs.RequestLogMiddleware",
    "gallery.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files from STATIC_ROOT (`manage.py collectstatic`), also under gunicorn.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "gallery.uploads.UploadLimitMiddleware",
    # Before anything reads the query or the body: refuses text no database takes (a NUL).
    "gallery.inputs.RequestInputMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "gallery.caching.CacheAwayMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "gallery.login.HubSessionMiddleware",
    "gallery.caching.PrefetchMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "gallery.urls"
WSGI_APPLICATION = "gallery.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "gallery.views.nav",
            ],
        },
    },
]

_database_url = env("GALLERY_DATABASE_URL", f"sqlite:///{GALLERY_DATA_DIR / 'gallery.sqlite3'}")
try:
    DATABASES = {"default": dj_database_url.parse(_database_url, conn_max_age=60)}
except ValueError as exc:
    raise ImproperlyConfigured(f"GALLERY_DATABASE_URL is not a database URL: {exc}") from exc
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Workers in other processes must see the test database, so it is a file, not memory.
    DATABASES["default"]["TEST"] = {"NAME": str(GALLERY_DATA_DIR / f"test-{os.getpid()}.sqlite3")}
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
else:
    # Parallel test runs on one server must not share a test database.
    DATABASES["default"]["TEST"] = {"NAME": f"test_gallery_{os.getpid()}"}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Under a hub the service lives below a prefix; gunicorn gets it as SCRIPT_NAME.
SERVICE_PREFIX = JUPYTERHUB_SERVICE_PREFIX if JUPYTERHUB_SERVICE_PREFIX.endswith("/") else (
    JUPYTERHUB_SERVICE_PREFIX + "/"
)
# The redirect_uri registered with the hub; it must be sent byte for byte as the hub has it.
JUPYTERHUB_OAUTH_CALLBACK_URL = JUPYTERHUB_OAUTH_CALLBACK_URL or SERVICE_PREFIX + "oauth_callback"
if not JUPYTERHUB_OAUTH_ACCESS_SCOPES:
    _service = JUPYTERHUB_CLIENT_ID.removeprefix("service-")
    JUPYTERHUB_OAUTH_ACCESS_SCOPES = {"access:services", f"access:services!service={_service}"}
# Under a prefix, Django knows it from the start (not only inside a request): WhiteNoise and
# Django read STATIC_URL once at start-up, and it must carry the prefix the proxy routes on.
if SERVICE_PREFIX != "/":
    FORCE_SCRIPT_NAME = SERVICE_PREFIX.rstrip("/")
STATIC_URL = SERVICE_PREFIX + "static/"  # absolute: read before any request sets the prefix
STATIC_ROOT = Path(env("GALLERY_STATIC_ROOT", str(GALLERY_DATA_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]
# Serve what collectstatic gathered, or straight from the source folders when it has not run.
WHITENOISE_USE_FINDERS = True

# Under a hub, people log in through the hub; without one, with Django's own form.
LOGIN_URL = "hub-login" if HUB_ENABLED else "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "index"

# With a shared cache, sessions and the user of a session are read from it (written through
# to the database), so a page costs no query before its view runs (see gallery/caching.py).
SESSION_ENGINE = "gallery.sessions" if GALLERY_CACHE_URL else "django.contrib.sessions.backends.db"
AUTHENTICATION_BACKENDS = ["gallery.caching.CachedModelBackend"]
SESSION_COOKIE_NAME = "gallery-sessionid"
SESSION_COOKIE_PATH = SERVICE_PREFIX
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = env_bool("GALLERY_SECURE_COOKIES", False)
CSRF_COOKIE_NAME = "gallery-csrftoken"
CSRF_COOKIE_PATH = SERVICE_PREFIX
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if env_bool("GALLERY_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# HTTPS hardening for production (see `manage.py check --deploy`); all off by default so that
# plain-HTTP development works. Health and metrics stay reachable over internal HTTP.
SECURE_SSL_REDIRECT = env_bool("GALLERY_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"(^|/)health(/detail)?$", r"(^|/)metrics$"]  # with or without prefix
SECURE_HSTS_SECONDS = env_int("GALLERY_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("GALLERY_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("GALLERY_HSTS_PRELOAD", False)

# Uploads stream to disk past 1 MB; the hard limit is enforced while streaming (uploads.py).
FILE_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
# JSON submissions carry files inline (base64 grows them by a third).
DATA_UPLOAD_MAX_MEMORY_SIZE = GALLERY_MAX_UPLOAD_BYTES * 4 // 3 + 1024 * 1024
DATA_UPLOAD_MAX_NUMBER_FIELDS = 200
DATA_UPLOAD_MAX_NUMBER_FILES = GALLERY_MAX_FILES + 1

# --- Celery --------------------------------------------------------------------------------
CELERY_BROKER_URL = env("GALLERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("GALLERY_VISIBILITY_TIMEOUT", 3 * 3600),
    # Fail fast when the broker is down: the job row stays queued and the sweep retries.
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2}
CELERY_TASK_DEFAULT_QUEUE = env("GALLERY_QUEUE_DEFAULT", "gallery")
CELERY_TASK_ROUTES = {
    "gallery.tasks.render_preview": {"queue": env("GALLERY_QUEUE_PREVIEWS", "gallery-previews")},
    "gallery.tasks.run_use": {"queue": env("GALLERY_QUEUE_USE", "gallery-use")},
    "gallery.tasks.build_environment": {"queue": env("GALLERY_QUEUE_ENVS", "gallery-envs")},
    "gallery.tasks.run_example": {"queue": env("GALLERY_QUEUE_RUNS", "gallery-runs")},
}
# A render stops itself at GALLERY_RENDER_TIME_LIMIT (in a forked child); this is the backstop
# for the task around it, so a stuck pool process is replaced and the worker carries on.
# Warming the preview exporter in each new pool process takes a second or two.
CELERY_WORKER_PROC_ALIVE_TIMEOUT = 30
CELERY_TASK_ANNOTATIONS = {
    # A run stops itself at GALLERY_RUN_TIMEOUT; this is the backstop for the task around it.
    "gallery.tasks.run_example": {"soft_time_limit": GALLERY_RUN_TIMEOUT + 120,
                                  "time_limit": GALLERY_RUN_TIMEOUT + 180},
    "gallery.tasks.render_preview": {"soft_time_limit": GALLERY_RENDER_TIME_LIMIT + 30,
                                     "time_limit": GALLERY_RENDER_TIME_LIMIT + 60},
}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Seconds between recovery sweeps (run by `celery beat`, or a worker started with -B).
GALLERY_SWEEP_INTERVAL = env_int("GALLERY_SWEEP_INTERVAL", 10)
CELERY_BEAT_SCHEDULE = {
    "sweep-jobs": {"task": "gallery.tasks.sweep_jobs", "schedule": GALLERY_SWEEP_INTERVAL},
    # Staged folders no revision names, kept a day after they were last stored.
    "sweep-staging": {"task": "gallery.tasks.sweep_staging", "schedule": 3600},
    # Sent copies waiting longer than GALLERY_SEND_KEEP_DAYS expire; files nobody can accept go.
    "sweep-copies": {"task": "gallery.tasks.sweep_copies", "schedule": 3600},
    # Scheduled runs of approved examples that are due (GALLERY_VERIFY_INTERVAL, spread out).
    "schedule-verifications": {"task": "gallery.tasks.schedule_verifications",
                               "schedule": max(60, min(600, GALLERY_VERIFY_INTERVAL // 100))},
}
# A job untouched this long after being queued is handed to the broker again by the sweep.
GALLERY_REQUEUE_AFTER = env_int("GALLERY_REQUEUE_AFTER", 15)
# Seconds a worker holds a running job without renewing it; a Use renews it every third of
# this while it copies, so after a worker dies its jobs run again within about this long.
GALLERY_JOB_LEASE = env_int("GALLERY_JOB_LEASE", 120)
# Seconds one copy into a home may take before it is stopped and reported as failed.
GALLERY_COPY_TIMEOUT = env_int("GALLERY_COPY_TIMEOUT", 300)

# --- operations: logs, metrics, health ---------------------------------------------------
# One line per event with the request or job id, secrets masked (gallery/logs.py).
GALLERY_LOG_FORMAT = env_choice("GALLERY_LOG_FORMAT", "plain", {"plain", "json"})
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "gallery.logs.ContextFilter"},
        "redact": {"()": "gallery.logs.RedactFilter"},
    },
    "formatters": {
        "plain": {"()": "gallery.logs.PlainFormatter"},
        "json": {"()": "gallery.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": GALLERY_LOG_FORMAT,
                             "filters": ["context", "redact"]}},
    "root": {"handlers": ["console"], "level": env("GALLERY_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
# /metrics and /health/detail: a bearer token, or callers from these networks (comma-separated
# addresses or CIDRs) that did not come through a proxy. Neither set: staff only for health,
# nobody for metrics.
GALLERY_METRICS_TOKEN = env("GALLERY_METRICS_TOKEN")
GALLERY_METRICS_ALLOWED_NETWORKS = env_list("GALLERY_METRICS_ALLOWED_NETWORKS")
for _net in GALLERY_METRICS_ALLOWED_NETWORKS:
    try:
        ipaddress.ip_network(_net, strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"GALLERY_METRICS_ALLOWED_NETWORKS: {_net!r} is not an address or a network") from None
# The standard variable of the Prometheus client: a directory shared by the gunicorn workers
# of one web node, emptied when gunicorn starts (deploy/gunicorn.conf.py).
PROMETHEUS_MULTIPROC_DIR = env("PROMETHEUS_MULTIPROC_DIR")
# Free space below this on a data filesystem is an error in the detailed health; below four
# times this, a warning.
GALLERY_MIN_FREE_DISK_MB = env_int("GALLERY_MIN_FREE_DISK_MB", 1024)

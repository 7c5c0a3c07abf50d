# JupyterHub configuration of the demo (and of the end-to-end tests): a real hub on loopback
# with the gallery as the hub-managed service `gallery`, its Celery worker beside it,
# shared-password login and single-user servers as local processes.
#
# Run it through `make demo` (scripts/demo), which installs the tools, migrates the database,
# creates the users and sets the password first. For production, where the gallery runs as an
# external service, see deploy/jupyterhub_config_external.py.
#
# Settings read from the environment (defaults in brackets):
#   GALLERY_DEMO_PASSWORD          the shared password of every hub user (required, >= 8 chars)
#   GALLERY_DEMO_PORT [8000]       the public port (configurable-http-proxy), on 127.0.0.1
#   GALLERY_DEMO_HUB_PORT [8081], GALLERY_DEMO_PROXY_API_PORT [8001],
#   GALLERY_DEMO_SERVICE_PORT [8010]   internal ports of the hub API, the proxy API, the gallery
#   GALLERY_HUB_STATE_DIR [var/hub]    hub database, cookie secret, the service token
#   GALLERY_HUB_ACCESS_GROUP [empty]   when set, only members of this hub group may open the
#                                      gallery; empty lets every hub user in
#   GALLERY_DEMO_EXTRA_USERS [empty]   more hub users (comma-separated), e.g. for tests
#   GALLERY_DEMO_ADMIN_USERS [empty]   hub admins (comma-separated; they are hub users too):
#                                      they manage users and groups on the hub's admin page
#                                      or through its REST API (/hub/api/groups/...), e.g. to
#                                      make the groups of project examples
#   GALLERY_DEMO_ADMIN_PASSWORD        the hub admins' own password (>= 32 chars, not the
#                                      users'); generated once into the state folder's
#                                      demo-admin-password when unset
#   GALLERY_CHP                        the configurable-http-proxy executable
#                                      [var/node/node_modules/.bin/configurable-http-proxy]
# Every other GALLERY_* variable is handed on to the gallery and its worker.
import os
import secrets
import sys
from pathlib import Path

c = get_config()  # noqa: F821

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
STATE = Path(os.environ.get("GALLERY_HUB_STATE_DIR") or ROOT / "var" / "hub").resolve()
STATE.mkdir(parents=True, exist_ok=True)
PORT = int(os.environ.get("GALLERY_DEMO_PORT") or 8000)
HUB_PORT = int(os.environ.get("GALLERY_DEMO_HUB_PORT") or 8081)
PROXY_API_PORT = int(os.environ.get("GALLERY_DEMO_PROXY_API_PORT") or 8001)
SERVICE_PORT = int(os.environ.get("GALLERY_DEMO_SERVICE_PORT") or 8010)
if len({PORT, HUB_PORT, PROXY_API_PORT, SERVICE_PORT}) < 4:
    sys.exit(f"The demo's ports must differ: GALLERY_DEMO_PORT={PORT}, GALLERY_DEMO_HUB_PORT="
             f"{HUB_PORT}, GALLERY_DEMO_PROXY_API_PORT={PROXY_API_PORT}, "
             f"GALLERY_DEMO_SERVICE_PORT={SERVICE_PORT}.")
REVIEW_SCOPE = os.environ.get("GALLERY_REVIEW_SCOPE") or "custom:gallery:review"
REVIEW_GROUP = os.environ.get("GALLERY_REVIEW_GROUP") or "gallery-reviewers"
ACCESS_GROUP = os.environ.get("GALLERY_HUB_ACCESS_GROUP", "")
USERS = ["demo-user", "demo-reviewer"]
EXTRA_USERS = [u.strip() for u in os.environ.get("GALLERY_DEMO_EXTRA_USERS", "").split(",")
               if u.strip()]
ADMIN_USERS = [u.strip() for u in os.environ.get("GALLERY_DEMO_ADMIN_USERS", "").split(",")
               if u.strip()]


def kept_secret(name: str, make: str) -> str:
    """A secret generated once and kept in the state folder (mode 0600)."""
    path = STATE / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(make)
    return path.read_text().strip()


def service_token() -> str:
    """The gallery's hub token, generated once and kept in the state folder (mode 0600).

    It is the gallery's OAuth client secret too, and the worker uses it for the contents
    backend, so web and worker share it.
    """
    return kept_secret("service-token", secrets.token_hex(32))


TOKEN = service_token()

# --- network: loopback only ---------------------------------------------------------------
c.JupyterHub.bind_url = f"http://127.0.0.1:{PORT}"  # the proxy: what browsers open
c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{HUB_PORT}"  # the hub itself, internal
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{PROXY_API_PORT}"
c.ConfigurableHTTPProxy.command = [os.environ.get("GALLERY_CHP") or str(
    ROOT / "var" / "node" / "node_modules" / ".bin" / "configurable-http-proxy")]
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(STATE / "jupyterhub.pid")
c.ConfigurableHTTPProxy.pid_file = str(STATE / "jupyterhub-proxy.pid")
c.JupyterHub.default_url = "/hub/home"  # land on the page with the Services menu

# --- login: one shared password (a test authenticator, never for production) ---------------
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ["GALLERY_DEMO_PASSWORD"]
c.Authenticator.allowed_users = set(USERS + EXTRA_USERS + ADMIN_USERS)
if ADMIN_USERS:
    # Hub admins may change every user's groups; the gallery follows at each user's next
    # recheck. The shared-password login lets them in with a password of their own only.
    c.Authenticator.admin_users = set(ADMIN_USERS)
    c.SharedPasswordAuthenticator.admin_password = (
        os.environ.get("GALLERY_DEMO_ADMIN_PASSWORD")
        or kept_secret("demo-admin-password", secrets.token_urlsafe(32)))

# --- single-user servers: local processes, homes under var/homes --------------------------
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = os.environ.get("GALLERY_HOME_TEMPLATE") or str(
    ROOT / "var" / "homes" / "{username}")
c.Spawner.cmd = [str(BIN / "jupyterhub-singleuser")]
c.Spawner.args = [
    "--ServerApp.allow_root=True",  # the demo runs as root; local processes do no setuid
    "--ContentsManager.allow_hidden=True",  # so a copy keeps its .gallery-provenance.json
]
c.Spawner.default_url = "/lab"
# The stage button (labextension/, gallery_stage) sends notebooks to the gallery with the
# server's own $JUPYTERHUB_API_TOKEN: besides the default 'server' role's two scopes it needs
# access to the gallery (granted only to users who hold that scope themselves).
c.Spawner.server_token_scopes = [
    "users:activity!user", "access:servers!server", "access:services!service=gallery"]
c.Spawner.environment.update({"GALLERY_URL": f"http://127.0.0.1:{PORT}/services/gallery/"})
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 60

# --- who reviews, who may open the gallery -------------------------------------------------
c.JupyterHub.custom_scopes = {
    REVIEW_SCOPE: {"description": "Approve or reject examples in the examples gallery"},
}
c.JupyterHub.load_groups = {REVIEW_GROUP: {"users": ["demo-reviewer"]}}
c.JupyterHub.load_roles = [
    {
        # Reviewers: whoever is in the review group holds the review scope.
        "name": "gallery-reviewer",
        "scopes": [REVIEW_SCOPE],
        "groups": [REVIEW_GROUP],
    },
    {
        # The gallery's own token, used by the worker for the contents backend; nothing else.
        "name": "gallery-service",
        "services": ["gallery"],
        "scopes": [
            "read:servers",  # see whether a user's server runs and where (also user names)
            "start:servers",  # start a user's server for a Use (not stop or delete it)
            "access:servers",  # write the copy through the server's contents API
            # On a big hub narrow all three to the people who use the gallery, for example
            # "access:servers!group=gallery-users".
        ],
    },
]
if ACCESS_GROUP:
    # Only members of this group may open the gallery (and see it in the Services menu).
    c.JupyterHub.load_groups[ACCESS_GROUP] = {"users": USERS}
    c.JupyterHub.load_roles.append({
        "name": "gallery-user",
        "scopes": ["access:services!service=gallery"],
        "groups": [ACCESS_GROUP],
    })
else:
    # Every hub user may open the gallery and finds it in the Services menu.
    c.JupyterHub.extra_user_scopes = {"access:services!service=gallery"}

# --- the gallery and its worker as hub-managed services ------------------------------------
PREFIX = "/services/gallery/"
env = {k: v for k, v in os.environ.items()
       if k.startswith("GALLERY_") and k not in ("GALLERY_DEMO_PASSWORD",
                                                 "GALLERY_DEMO_ADMIN_PASSWORD")}
# A proxy and its certificate authority reach the services too: environment builds fetch
# packages through them (a hub gives its services none of its own environment).
env.update({k: v for k, v in os.environ.items()
            if k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                     "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR")})
env.update({
    "PYTHONUNBUFFERED": "1",
    "GALLERY_USE_BACKEND": os.environ.get("GALLERY_USE_BACKEND") or "contents",
    "GALLERY_HUB_URL": f"http://127.0.0.1:{PORT}",  # user servers are reached through the proxy
    "GALLERY_HOME_TEMPLATE": c.SimpleLocalProcessSpawner.home_dir_template,
})
queues = ",".join([os.environ.get("GALLERY_QUEUE_DEFAULT") or "gallery",
                   os.environ.get("GALLERY_QUEUE_PREVIEWS") or "gallery-previews",
                   os.environ.get("GALLERY_QUEUE_USE") or "gallery-use",
                   os.environ.get("GALLERY_QUEUE_ENVS") or "gallery-envs",
                   os.environ.get("GALLERY_QUEUE_RUNS") or "gallery-runs"])
c.JupyterHub.services = [
    {
        "name": "gallery",
        "url": f"http://127.0.0.1:{SERVICE_PORT}",
        "api_token": TOKEN,
        "command": [
            str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{SERVICE_PORT}", "--workers", "2",
            # Paths only in the access log: a query string can carry an OAuth code.
            "--access-logfile", "-", "--access-logformat", '%(h)s "%(m)s %(U)s" %(s)s %(b)s',
            "gallery.wsgi",
        ],
        "cwd": str(ROOT),
        # gunicorn takes the prefix off PATH_INFO and Django puts it back on every URL.
        "environment": {**env, "SCRIPT_NAME": PREFIX.rstrip("/")},
        "oauth_no_confirm": True,  # run by the centre: no "authorize access" page
        # What a user's token issued to the gallery may carry besides the user's identity:
        # the review scope, so the gallery can tell reviewers. Nothing more.
        "oauth_client_allowed_scopes": [REVIEW_SCOPE],
        "display": True,
    },
    {
        # The Celery worker, with beat (-B) for the recovery sweep. It has no URL; it uses the
        # gallery's token (above), not a token of its own.
        "name": "gallery-worker",
        "command": [
            sys.executable, "-m", "celery", "-A", "gallery", "worker", "-B",
            "-s", str(STATE / "celerybeat-schedule"), "-Q", queues, "--concurrency", "2",
            "-n", "gallery-worker@%h", "--loglevel", "INFO",
        ],
        "cwd": str(ROOT),
        "environment": {
            **env,
            "JUPYTERHUB_API_TOKEN": TOKEN,
            "JUPYTERHUB_CLIENT_ID": "service-gallery",
            "JUPYTERHUB_SERVICE_PREFIX": PREFIX,
        },
        "display": False,
    },
]

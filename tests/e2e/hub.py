"""A real JupyterHub with the gallery registered, for end-to-end tests.

`start_hub()` uses the repository's own jupyterhub_config.py (the one `make demo` runs) with
free ports, a private state folder, database, homes and queue names, so it runs beside the
demo and beside other test runs. It installs configurable-http-proxy from npm into
var/node when it is missing. The `running_hub` fixture gives one hub per test module.

    def test_something(running_hub):
        browser = running_hub.login("demo-user")       # through the hub's login form
        page = browser.get(running_hub.gallery("/"))   # OAuth into the gallery happens here
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.conftest import BROKER_URL, QUEUES

ROOT = Path(__file__).resolve().parent.parent.parent
CHP = ROOT / "var" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
CHP_VERSION = "5.3.0"
PREFIX = "/services/gallery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_tools() -> None:
    """JupyterHub and JupyterLab come with the `hub` extra; the proxy comes from npm."""
    for module in ("jupyterhub", "jupyterlab"):
        pytest.importorskip(module, reason="the hub extra is not installed "
                                           "(pip install -e '.[hub]', as `make` does)")
    prefix = CHP.parent.parent.parent
    prefix.mkdir(parents=True, exist_ok=True)
    # Test processes running side by side (pytest-xdist) install it once: the others wait
    # for that install to finish rather than start a proxy that is half there.
    with (prefix / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if CHP.exists():
            return
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is missing, so configurable-http-proxy cannot be installed")
        subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                        "--loglevel=error", f"configurable-http-proxy@{CHP_VERSION}"],
                       check=True, capture_output=True, timeout=300)


@dataclass
class RunningHub:
    """A hub started by `start_hub`; `url` is the proxy, what a browser opens."""

    url: str
    password: str
    token: str  # the gallery service's token
    home: Path  # parent of the users' homes
    data: Path  # the gallery's data folder
    log: Path
    env: dict[str, str]
    process: subprocess.Popen = field(repr=False)

    def gallery(self, path: str = "/") -> str:
        return f"{self.url}{PREFIX}{path}"

    def login(self, username: str, password: str | None = None) -> requests.Session:
        """A browser session logged in to the hub through its login form."""
        browser = requests.Session()
        form = browser.get(f"{self.url}/hub/login", timeout=30)
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', form.text)
        assert xsrf, "no _xsrf field on the hub's login form"
        response = browser.post(f"{self.url}/hub/login", allow_redirects=False, timeout=30,
                                data={"username": username, "_xsrf": xsrf.group(1),
                                      "password": password or self.password})
        assert response.status_code == 302, f"hub login of {username}: {response.status_code}"
        return browser

    def user_token(self, browser: requests.Session, username: str,
                   scopes: list[str] | None = None) -> str:
        """A hub API token of a logged-in user, as they would make one on the token page."""
        body: dict[str, object] = {"note": "gallery e2e", "expires_in": 3600}
        if scopes is not None:
            body["scopes"] = scopes
        response = browser.post(f"{self.url}/hub/api/users/{username}/tokens", json=body,
                                headers={"X-XSRFToken": browser.cookies.get("_xsrf", "")},
                                timeout=30)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def stop(self) -> None:
        """Stop the hub; it stops the proxy, the services and the user servers it started."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(45)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_hub(folder: Path, *, env: dict[str, str] | None = None,
              timeout: float = 120.0) -> RunningHub:
    """Migrate a fresh gallery database and start a hub with the gallery registered.

    `env` adds or overrides variables (GALLERY_* reach the gallery and its worker).
    """
    ensure_tools()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    password = "pw-" + secrets.token_urlsafe(12)
    data = folder / "data"
    data.mkdir(exist_ok=True)
    full_env = {
        **os.environ,
        "GALLERY_DEMO_PASSWORD": password,
        "GALLERY_DEMO_PORT": str(port),
        "GALLERY_DEMO_HUB_PORT": str(free_port()),
        "GALLERY_DEMO_PROXY_API_PORT": str(free_port()),
        "GALLERY_DEMO_SERVICE_PORT": str(free_port()),
        "GALLERY_HUB_STATE_DIR": str(folder / "hub"),
        "GALLERY_HOME_TEMPLATE": str(folder / "homes" / "{username}"),
        "GALLERY_CHP": str(CHP),
        "GALLERY_DATA_DIR": str(data),
        "GALLERY_DATABASE_URL": f"sqlite:///{data / 'gallery.sqlite3'}",
        "GALLERY_SECRET_KEY": secrets.token_urlsafe(40),
        "GALLERY_BROKER_URL": BROKER_URL,
        "GALLERY_QUEUE_DEFAULT": QUEUES["default"],
        "GALLERY_QUEUE_PREVIEWS": QUEUES["previews"],
        "GALLERY_QUEUE_USE": QUEUES["use"],
        "GALLERY_QUEUE_ENVS": QUEUES["envs"],
        "GALLERY_USE_AS_USER": "0",
        "GALLERY_HUB_RECHECK_SECONDS": "0",  # every request asks the hub: logout shows at once
    }
    for key in [k for k in full_env if k.startswith("JUPYTERHUB_")]:
        del full_env[key]  # this process is no service; nothing may leak into the hub's
    full_env.update(env or {})
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT,
                   env=full_env, check=True, timeout=300)
    log = folder / "hub.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", str(ROOT / "jupyterhub_config.py")],
        cwd=folder, env=full_env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True)
    hub = RunningHub(url=f"http://127.0.0.1:{port}", password=password,
                     token=(folder / "hub").joinpath("service-token").read_text().strip()
                     if (folder / "hub" / "service-token").exists() else "",
                     home=folder / "homes", data=data, log=log, env=full_env, process=process)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{hub.url}/hub/health", timeout=2).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            hub.stop()
            raise AssertionError("the hub did not start:\n" + hub.log_text()[-4000:])
        time.sleep(0.3)
    hub.token = (folder / "hub" / "service-token").read_text().strip()
    return hub


@pytest.fixture(scope="module")
def running_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    """One hub per test module, with every hub user allowed into the gallery."""
    hub = start_hub(tmp_path_factory.mktemp("hub"))
    try:
        yield hub
    finally:
        hub.stop()

"""Running an example: its notebooks top to bottom with nbclient, in a scratch copy of its
folder, as an unprivileged account, inside a bubblewrap sandbox where the machine allows it.

The kernel is started from a kernelspec in a private folder whose argv is the sandbox around
the kernel's own command (an environment's `python -m ipykernel_launcher`, or the kernel an
example names); the client talks to it over unix sockets in a folder bound into the sandbox.
Limits: seconds per cell and per run, memory, processes, file size, scratch size and output
size; on any of them the kernel and everything it started are killed and the run fails with
a reason a person understands. Nothing here needs a request or the database: the service
(`services/runs.py`) decides what to run, as whom, and records the result.

This is the local executor; a batch system (Slurm, Kubernetes Jobs) would be another one
behind the same `run_example` call.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pwd
import re
import resource
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KERNEL_NAME = "gallery-run"
ERROR_TEXT_MAX = 4000
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Why a cell's error happened, when its name alone says little to a person.
HINTS = {
    "MemoryError": "the run may use at most {memory_mb} MB of memory (GALLERY_RUN_MEMORY_MB)",
    "BlockingIOError": "the run may start at most {max_processes} processes "
                       "(GALLERY_RUN_MAX_PROCESSES)",
    "ModuleNotFoundError": "the package is not in the example's environment or kernel",
}


class RunRefused(Exception):
    """A run that cannot be made here at all (no runner account, a root account, no kernel):
    the reason in plain words, shown where the result would be."""


# --- configuration and accounts ------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """Limits and places of runs, read from the settings once per run."""

    root: Path  # scratch folders, one per run
    cell_timeout: int = 300
    run_timeout: int = 1800
    memory_mb: int = 2048
    max_output_mb: int = 20
    max_disk_mb: int = 1024
    max_processes: int = 256
    startup_timeout: int = 60
    network: bool = False  # may an example that declares it needs the network have it
    sandbox: bool = True  # use bubblewrap where it works
    hidden: tuple[str, ...] = ()  # folders a run never sees (homes, the gallery's data)

    @classmethod
    def from_settings(cls) -> RunConfig:
        from django.conf import settings

        template = settings.GALLERY_HOME_TEMPLATE
        homes = template.split("{username}", 1)[0].rstrip("/") or "/home"
        hidden = {"/home", homes, str(settings.GALLERY_DATA_DIR), str(settings.GALLERY_REPO_PATH),
                  str(settings.GALLERY_STAGING_DIR), str(settings.GALLERY_PREVIEW_DIR),
                  str(settings.GALLERY_RUN_DIR), "/root"}
        return cls(
            root=Path(settings.GALLERY_RUN_DIR), cell_timeout=settings.GALLERY_RUN_CELL_TIMEOUT,
            run_timeout=settings.GALLERY_RUN_TIMEOUT, memory_mb=settings.GALLERY_RUN_MEMORY_MB,
            max_output_mb=settings.GALLERY_RUN_MAX_OUTPUT_MB,
            max_disk_mb=settings.GALLERY_RUN_MAX_DISK_MB,
            max_processes=settings.GALLERY_RUN_MAX_PROCESSES,
            network=settings.GALLERY_RUN_NETWORK, sandbox=settings.GALLERY_RUN_SANDBOX,
            hidden=tuple(sorted(hidden)),
        )


@dataclass(frozen=True)
class Account:
    """Who a run's kernel runs as: never root."""

    name: str
    uid: int
    gid: int


def account_named(name: str, *, setting: str = "") -> Account:
    """The unprivileged account `name`, or RunRefused saying why it cannot run examples."""
    where = f"{setting}={name!r}" if setting else f"The account {name!r}"
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise RunRefused(f"{where} is not an account on this machine.") from None
    if pw.pw_uid == 0:
        raise RunRefused(f"{where} is root; examples are never run as root.")
    if os.geteuid() not in (0, pw.pw_uid):
        me = pwd.getpwuid(os.geteuid()).pw_name
        raise RunRefused(f"{where}: the worker runs as {me}, not root, so it cannot run "
                         "code as another account.")
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid)


def runner_account() -> Account:
    """GALLERY_RUNNER_USER: the account scheduled runs use; RunRefused when it is not set."""
    from django.conf import settings

    if not settings.GALLERY_RUNNER_USER:
        raise RunRefused("Examples are never run as root or as the gallery itself: set "
                         "GALLERY_RUNNER_USER to an unprivileged account with no access to "
                         "homes (for example a 'gallery-run' system user).")
    return account_named(settings.GALLERY_RUNNER_USER, setting="GALLERY_RUNNER_USER")


# --- kernels -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    """What starts a run's kernel: its command (with `{connection_file}`), its variables,
    the folders it needs to see inside the sandbox, and its name for the record."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    needs: tuple[str, ...] = ()


def environment_kernel(path: str, name: str = "") -> Kernel:
    """The kernel of a built environment (or any Python with ipykernel): its own python."""
    python = str(Path(path) / "bin" / "python")
    return Kernel(name or f"environment {Path(path).name[:12]}",
                  (python, "-m", "ipykernel_launcher", "-f", "{connection_file}"),
                  needs=(str(Path(path)),))


def python_kernel(python: str) -> Kernel:
    """The kernel of a Python interpreter named by its path (a candidate software stack)."""
    prefix = Path(python).parent.parent
    return Kernel(f"python {python}", (python, "-m", "ipykernel_launcher", "-f",
                                       "{connection_file}"), needs=(str(prefix),))


def named_kernel(name: str) -> Kernel:
    """An installed kernelspec by name (the one an example's example.toml names)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise RunRefused(f"There is no kernel named {name!r} on the machine that runs "
                         "examples.") from None
    argv = tuple(spec.argv)
    needs = [spec.resource_dir]
    if argv and os.path.isabs(argv[0]):
        needs.append(str(Path(os.path.realpath(argv[0])).parent.parent))
    return Kernel(name, argv, tuple(sorted((spec.env or {}).items())), tuple(needs))


# --- the sandbox ---------------------------------------------------------------------------


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


_BASE = ("--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all",
         "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session")
_probed: dict[int, tuple[bool, str]] = {}
_probe_lock = threading.Lock()


def sandbox_state(account: Account | None = None) -> tuple[bool, str]:
    """Whether bubblewrap works here for `account` (the current user when None), and if not,
    why; found out once per account and process."""
    uid = account.uid if account else os.geteuid()
    with _probe_lock:
        if uid not in _probed:
            _probed[uid] = _probe(account)
        return _probed[uid]


def _probe(account: Account | None) -> tuple[bool, str]:
    bwrap = bwrap_path()
    if bwrap is None:
        return False, "bubblewrap (bwrap) is not installed"
    switch = ({"user": account.uid, "group": account.gid, "extra_groups": []}
              if account and account.uid != os.geteuid() else {})
    try:
        done = subprocess.run([bwrap, *_BASE, "--size", "1048576", "--tmpfs", "/tmp", "true"],
                              capture_output=True,
                              timeout=30, **switch)  # type: ignore[call-overload]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bwrap cannot be started: {exc}"
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return False, f"bwrap does not work here: {why[-1] if why else done.returncode}"
    return True, "bubblewrap works"


def sandbox_command(argv: tuple[str, ...], *, folder: Path, work: Path, config: RunConfig,
                    needs: tuple[str, ...], links: tuple[str, ...], network: bool) -> list[str]:
    """The kernel's command wrapped in bwrap: the system read-only, a private /tmp, the
    hidden folders empty, `folder` (the run's own) the one place it may write, no network
    unless allowed, its own process namespace that dies with the run."""
    bwrap = bwrap_path()
    assert bwrap is not None
    size = str(config.max_disk_mb * 1024 * 1024)
    # /tmp and /dev/shm are memory: bounded like the run's folder.
    cmd = [bwrap, *_BASE, "--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs",
           "/dev/shm"]
    for hidden in config.hidden:
        if os.path.isdir(hidden) and not _under(hidden, "/tmp"):
            cmd += ["--tmpfs", hidden]
    # Data links first, so a link into a hidden folder stays hidden; then what the kernel
    # needs (an environment in the store under the data folder), then the run's folder.
    for target in links:
        cmd += ["--ro-bind-try", target, target]
    for path in needs:
        cmd += ["--ro-bind-try", path, path]
    cmd += ["--bind", str(folder), str(folder), "--chdir", str(work)]
    if network:
        cmd += ["--share-net"]
    return [*cmd, "--", *argv]


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


# --- one run -------------------------------------------------------------------------------


@dataclass
class Failure:
    """The first thing that went wrong: where, its name, and the plain text."""

    notebook: str
    cell: int | None  # the cell's index in its notebook (0-based), None before any cell
    error: str
    text: str


@dataclass
class RunResult:
    passed: bool
    reason: str  # one line for the page
    account: str
    kernel: str
    sandboxed: bool
    failure: Failure | None = None
    cells: list[dict[str, Any]] = field(default_factory=list)  # notebook, cell, seconds
    seconds: float = 0.0
    differences: list[dict[str, Any]] = field(default_factory=list)  # notebook, cell
    executed: dict[str, bytes] = field(default_factory=dict)
    left_behind: int = 0  # processes that had to be killed after the run


class _Watchdog:
    """Ends a run at its deadline or when its scratch grows too big: kills the kernel and
    everything that carries the run's mark; `reason` says why."""

    def __init__(self, token: str, work: Path, config: RunConfig) -> None:
        self.token, self.work, self.config = token, work, config
        self.deadline = time.monotonic() + config.run_timeout
        self.reason = ""
        self.kill_kernel: Callable[[], None] = lambda: None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="run-watchdog")

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def stop(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
        with contextlib.suppress(Exception):
            self.kill_kernel()
        kill_marked(self.token)

    def _watch(self) -> None:
        limit = self.config.max_disk_mb * 1024 * 1024
        while not self._done.wait(0.5):
            if time.monotonic() > self.deadline:
                self.stop(f"The run took longer than {self.config.run_timeout} seconds "
                          "(GALLERY_RUN_TIMEOUT) and was stopped.")
            elif _size(self.work) > limit:
                self.stop(f"The run wrote more than {self.config.max_disk_mb} MB into its "
                          "folder (GALLERY_RUN_MAX_DISK_MB) and was stopped.")


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def kill_marked(token: str) -> int:
    """SIGKILL every process whose environment carries the run's mark, until none is left
    (a fork bomb forks while it is being killed); returns how many were killed."""
    mark = f"GALLERY_RUN={token}".encode()
    killed = 0
    for _ in range(50):
        found = [pid for pid in _pids() if pid != os.getpid() and mark in _environ(pid)]
        if not found:
            return killed
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.05)
    return killed


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _environ(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def run_example(folder: Path, notebooks: list[str], *, kernel: Kernel, account: Account,
                config: RunConfig, links: dict[str, str] | None = None,
                network: bool = False) -> RunResult:
    """Run the notebooks of `folder` (relative names, in order, each in a fresh kernel) in a
    scratch copy of it, as `account`. Data links (name -> shared path) appear as symlinks in
    the copy and are readable in the sandbox. The result says passed or where it failed."""
    if account.uid == 0:
        raise RunRefused("Examples are never run as root.")
    sandboxed = config.sandbox and sandbox_state(account)[0]
    result = RunResult(False, "", account.name, kernel.name, sandboxed)
    token = secrets.token_hex(8)
    started = time.monotonic()
    with _scratch(folder, token, account, config, links or {}) as (base, work):
        with _Watchdog(token, work, config) as watchdog:
            for name in notebooks:
                ok = _run_notebook(name, work, base, token, kernel, account, config, links or {},
                                   network and config.network, sandboxed, watchdog, result)
                if not ok:
                    break
            else:
                result.passed = True
                result.reason = "Every cell ran without an error."
        result.left_behind = kill_marked(token)
    result.seconds = round(time.monotonic() - started, 3)
    return result


@contextlib.contextmanager
def _scratch(folder: Path, token: str, account: Account, config: RunConfig,
             links: dict[str, str]) -> Iterator[tuple[Path, Path]]:
    """The run's own folder, the account's: `work` (the copy), `home`, `kernel` (the
    connection file and sockets). Removed afterwards, whatever the run left in it."""
    config.root.mkdir(parents=True, exist_ok=True)
    os.chmod(config.root, 0o711)  # others may pass through to their own run, not list them
    clear_stale(config)
    base = config.root / token
    base.mkdir(mode=0o700)
    try:
        work = base / "work"
        shutil.copytree(folder, work, symlinks=False)
        for name, target in links.items():
            link = work / name
            if os.path.isabs(target) and "/" not in name and not link.exists():
                link.symlink_to(target)
        for sub in ("home", "kernel", "tmp"):
            (base / sub).mkdir(mode=0o700)
        for root, dirs, files, dir_fd in os.fwalk(base, follow_symlinks=False):
            os.chown(root, account.uid, account.gid, follow_symlinks=False)
            for name in dirs + files:
                os.chown(name, account.uid, account.gid, dir_fd=dir_fd, follow_symlinks=False)
        yield base, work
    finally:
        shutil.rmtree(base, ignore_errors=True)


def clear_stale(config: RunConfig) -> int:
    """Remove what runs of a killed worker left: folders older than any run can last."""
    cutoff = time.time() - config.run_timeout - 3600
    removed = 0
    with os.scandir(config.root) as entries:
        for entry in entries:
            try:
                stale = entry.is_dir(follow_symlinks=False) and \
                    entry.stat(follow_symlinks=False).st_mtime < cutoff
            except OSError:
                continue
            if stale:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


def _run_notebook(name: str, work: Path, base: Path, token: str, kernel: Kernel,
                  account: Account, config: RunConfig, links: dict[str, str], network: bool,
                  sandboxed: bool, watchdog: _Watchdog, result: RunResult) -> bool:
    import nbformat
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    try:
        nb = nbformat.reads((work / name).read_text("utf-8"), as_version=4)
    except (OSError, ValueError) as exc:
        result.failure = Failure(name, None, "NotebookError", str(exc)[:ERROR_TEXT_MAX])
        result.reason = f"{name} cannot be read as a notebook."
        return False
    saved = [_texts(cell) for cell in nb.cells]
    spec_dir = config.root / f".spec-{token}"
    stderr_path = base / "kernel" / "stderr.txt"
    client, km = _client(nb, kernel, spec_dir, base, work, token, account, config, links,
                         network, sandboxed, watchdog)
    cell_index: int | None = None
    try:
        with open(stderr_path, "wb") as stderr:
            try:
                with client.setup_kernel(**_launch(kernel, base, work, token, account, config,
                                                   stderr, sandboxed)):
                    watchdog.kill_kernel = functools.partial(_kill_kernel, km)
                    for cell_index, cell in enumerate(nb.cells):
                        if cell.cell_type != "code":
                            continue
                        began = time.monotonic()
                        client.execute_cell(cell, cell_index)
                        result.cells.append({"notebook": name, "cell": cell_index,
                                             "seconds": round(time.monotonic() - began, 3)})
                    cell_index = None
            except CellTimeoutError:
                limit = watchdog.reason or (f"Cell {_n(cell_index)} of {name} did not finish "
                                            f"within {config.cell_timeout} seconds "
                                            "(GALLERY_RUN_CELL_TIMEOUT).")
                return _failed(result, name, cell_index, "Timeout", limit, limit)
            except CellExecutionError as exc:
                text = _plain(exc.traceback or str(exc))
                hint = HINTS.get(exc.ename, "").format(**vars(config))
                reason = (f"Cell {_n(cell_index)} of {name}: {exc.ename}: "
                          f"{_plain(exc.evalue)[:300]}" + (f" — {hint}" if hint else ""))
                if watchdog.reason:
                    reason = watchdog.reason
                return _failed(result, name, cell_index, exc.ename, text, reason)
            except DeadKernelError as exc:
                reason = watchdog.reason or _died(cell_index, name, exc, config)
                return _failed(result, name, cell_index, "KernelDied", reason, reason)
            except RuntimeError as exc:  # the kernel did not start
                why = _tail(stderr_path)
                reason = watchdog.reason or (
                    f"The kernel ({kernel.name}) did not start as {account.name}: "
                    f"{_plain(str(exc))[:200]}" + (f" — {why}" if why else ""))
                return _failed(result, name, cell_index, "KernelDidNotStart",
                               reason + ("\n" + _tail(stderr_path, 40) if why else ""), reason)
        return True
    finally:
        result.executed[name] = nbformat.writes(nb).encode()
        result.differences += [{"notebook": name, "cell": i} for i, cell in enumerate(nb.cells)
                               if saved[i] is not None and _texts(cell) != saved[i]
                               and cell.get("execution_count") is not None]
        shutil.rmtree(spec_dir, ignore_errors=True)


def _n(index: int | None) -> str:
    return "?" if index is None else str(index + 1)


def _died(index: int | None, name: str, exc: Exception, config: RunConfig) -> str:
    return (f"The kernel died while running cell {_n(index)} of {name} (killed, or out of "
            f"memory: a run may use {config.memory_mb} MB, GALLERY_RUN_MEMORY_MB).")


def _failed(result: RunResult, notebook: str, cell: int | None, error: str, text: str,
            reason: str) -> bool:
    result.failure = Failure(notebook, cell, error, text[:ERROR_TEXT_MAX])
    result.reason = reason
    return False


def _plain(text: str | list[str]) -> str:
    if isinstance(text, list):
        text = "\n".join(text)
    return _ANSI.sub("", text)


def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_bytes()[-20000:].decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(line for line in text.strip().splitlines()[-lines:])[:2000]


def _texts(cell: Any) -> str | None:
    """A code cell's text outputs as one string (None when it had none saved)."""
    if cell.get("cell_type") != "code" or not cell.get("outputs"):
        return None
    parts = []
    for out in cell.outputs:
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif out.get("output_type") in ("execute_result", "display_data"):
            parts.append(str(out.get("data", {}).get("text/plain", "")))
        elif out.get("output_type") == "error":
            parts.append(out.get("ename", ""))
    return "".join(parts)


def _kill_kernel(km: Any) -> None:
    provisioner = getattr(km, "provisioner", None)
    pgid = getattr(provisioner, "pgid", None)
    if pgid:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


def _launch(kernel: Kernel, base: Path, work: Path, token: str, account: Account,
            config: RunConfig, stderr: Any, sandboxed: bool) -> dict[str, Any]:
    """How the kernel process starts: as the account, with the run's limits and only the
    variables it needs (never the worker's: its secrets stay out)."""
    home = base / "home"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "USER": account.name, "LOGNAME": account.name, "TMPDIR": str(base / "tmp"),
           "IPYTHONDIR": str(home / ".ipython"), "MPLCONFIGDIR": str(home / ".matplotlib"),
           "JUPYTER_RUNTIME_DIR": str(base / "kernel"), "PYTHONNOUSERSITE": "1",
           "PYDEVD_DISABLE_FILE_VALIDATION": "1", "GALLERY_RUN": token}
    if kernel.argv and os.path.isabs(kernel.argv[0]):
        env["PATH"] = f"{Path(kernel.argv[0]).parent}:{env['PATH']}"
    env.update(dict(kernel.env))
    env["GALLERY_RUN"] = token
    memory = config.memory_mb * 1024 * 1024
    disk = config.max_disk_mb * 1024 * 1024
    cpu = config.run_timeout + 10

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (disk, disk))
        resource.setrlimit(resource.RLIMIT_NPROC, (config.max_processes, config.max_processes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    switch = ({"user": account.uid, "group": account.gid, "extra_groups": []}
              if account.uid != os.geteuid() else {})
    # In the sandbox the kernel cannot see the worker's pid (its own namespace): it must not
    # watch for it, and dies with the sandbox instead; outside, it exits when the worker does.
    return {"env": env, "cwd": str(work), "preexec_fn": limits, "stdout": stderr,
            "stderr": stderr, "independent": sandboxed, **switch}


def _client(nb: Any, kernel: Kernel, spec_dir: Path, base: Path, work: Path, token: str,
            account: Account, config: RunConfig, links: dict[str, str], network: bool,
            sandboxed: bool, watchdog: _Watchdog) -> tuple[Any, Any]:
    """The notebook client and its kernel manager, from a kernelspec written for this run
    into a private folder: the sandbox around the kernel's command."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    argv = list(kernel.argv)
    if sandboxed:
        argv = sandbox_command(kernel.argv, folder=base, work=work, config=config,
                               needs=kernel.needs,
                               links=tuple(t for t in links.values() if os.path.isabs(t)),
                               network=network)
    (spec_dir / KERNEL_NAME).mkdir(parents=True, mode=0o700)
    (spec_dir / KERNEL_NAME / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": kernel.name, "language": "python"}))

    class RunKernelManager(AsyncKernelManager):
        def write_connection_file(self, **kw: Any) -> None:
            super().write_connection_file(**kw)
            # The kernel, as the account, must read the file the worker wrote.
            os.chown(self.connection_file, account.uid, account.gid)

    limit = config.max_output_mb * 1024 * 1024

    class RunClient(NotebookClient):
        printed = 0

        def output(self, outs: list[Any], msg: dict[str, Any], display_id: str | None,
                   cell_index: int) -> Any:
            if watchdog.reason:
                return None
            self.printed += _message_size(msg)
            if self.printed > limit:
                watchdog.stop(f"The run printed more than {config.max_output_mb} MB of output "
                              "(GALLERY_RUN_MAX_OUTPUT_MB) and was stopped.")
                return None
            return super().output(outs, msg, display_id, cell_index)

    km = RunKernelManager(
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir)]),
        kernel_name=KERNEL_NAME, transport="ipc", ip=str(base / "kernel" / "k"),
        connection_file=str(base / "kernel" / "connection.json"))
    deadline = watchdog.deadline
    client = RunClient(
        nb, km=km, shutdown_kernel="immediate", allow_errors=False,
        startup_timeout=config.startup_timeout, iopub_timeout=10, raise_on_iopub_timeout=False,
        timeout_func=lambda cell: max(1, int(min(config.cell_timeout,
                                                 deadline - time.monotonic() + 1))),
        resources={"metadata": {"path": str(work)}})
    client.owns_km = True  # setup_kernel shuts the kernel down at the end
    return client, km


def _message_size(msg: dict[str, Any]) -> int:
    content = msg.get("content", {})
    size = len(content.get("text", ""))
    for value in (content.get("data") or {}).values():
        size += len(value) if isinstance(value, str) else len(json.dumps(value))
    return size + sum(len(b) for b in msg.get("buffers") or [])

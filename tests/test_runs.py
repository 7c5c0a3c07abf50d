"""Runs with real kernels: an example's notebooks top to bottom, as real unprivileged
run_accounts, in the bubblewrap sandbox; broken and hostile notebooks end as failed runs with a
plain reason, leave nothing behind, and the next run still works."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import nbformat
import pytest

from gallery import runs
from gallery.runs import Account, RunConfig, RunRefused

from .runkit import notebook
from .unixusers import TAG

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs switch to real run_accounts: root")
NEEDS_SANDBOX = pytest.mark.skipif(not runs.sandbox_state()[0],
                                   reason="bubblewrap is missing (scripts/ensure-sandbox)")


@pytest.fixture
def config(run_root: Path) -> RunConfig:
    return RunConfig(root=run_root / "scratch", cell_timeout=4, run_timeout=60, memory_mb=768,
                     max_output_mb=1, max_disk_mb=64, max_processes=48, startup_timeout=30,
                     hidden=(str(run_root / "home"), str(run_root / "scratch")))


def example(tmp_path: Path, *cells: str, outputs: dict[int, str] | None = None) -> Path:
    folder = tmp_path / "example"
    folder.mkdir()
    (folder / "main.ipynb").write_bytes(notebook(*cells, outputs=outputs))
    (folder / "data.csv").write_text("a,b\n1,2\n")
    return folder


def run(tmp_path: Path, kernel_env: Path, account: Account, config: RunConfig, *cells: str,
        **kw: object) -> runs.RunResult:
    folder = example(tmp_path, *cells, outputs=kw.pop("outputs", None))  # type: ignore[arg-type]
    result = runs.run_example(folder, ["main.ipynb"], kernel=runs.environment_kernel(
        str(kernel_env)), account=account, config=config, **kw)  # type: ignore[arg-type]
    assert processes_of(account) == [], "a process of the run was left behind"
    assert list(config.root.iterdir()) == [], "the run's scratch folder was left behind"
    return result


def processes_of(account: Account) -> list[int]:
    """The account's processes still alive (a zombie has ended; reaping it is init's job)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                status = Path(f"/proc/{name}/status").read_text()
                if os.stat(f"/proc/{name}").st_uid == account.uid and "\nState:\tZ" not in status:
                    found.append(int(name))
            except OSError:
                pass
    return found


# --- passing and failing -------------------------------------------------------------------


@NEEDS_SANDBOX
def test_it_runs_every_cell_in_the_sandbox_as_the_runner(tmp_path, kernel_env, run_accounts,
                                                         config) -> None:
    result = run(tmp_path, kernel_env, run_accounts["runner"], config,
                 "import os\nprint(os.getuid())",
                 "print(open('data.csv').read().splitlines()[1])",
                 "print('changed')", outputs={1: "1,2\n", 2: "saved\n"})
    assert (result.passed, result.reason) == (True, "Every cell ran without an error.")
    assert (result.account, result.sandboxed) == (run_accounts["runner"].name, True)
    assert [c["cell"] for c in result.cells] == [0, 1, 2]
    assert result.differences == [{"notebook": "main.ipynb", "cell": 2}]
    executed = nbformat.reads(result.executed["main.ipynb"].decode(), as_version=4)
    assert executed.cells[0].outputs[0]["text"] == f"{run_accounts['runner'].uid}\n"


@NEEDS_SANDBOX
def test_it_records_the_first_failing_cell_and_its_error(tmp_path, kernel_env, run_accounts,
                                                         config) -> None:
    result = run(tmp_path, kernel_env, run_accounts["contributor"], config,
                 "x = 1", "import numpy_that_is_not_here", "print('never')")
    assert not result.passed
    assert (result.failure.cell, result.failure.error) == (1, "ModuleNotFoundError")
    assert "No module named 'numpy_that_is_not_here'" in result.failure.text
    assert "\x1b[" not in result.failure.text
    assert result.reason.startswith("Cell 2 of main.ipynb: ModuleNotFoundError: No module named")
    assert [c["cell"] for c in result.cells] == [0]


def test_it_runs_as_the_contributor_without_a_sandbox_too(tmp_path, kernel_env, run_accounts,
                                                         config) -> None:
    result = run(tmp_path, kernel_env, run_accounts["contributor"], replace(config, sandbox=False),
                 f"import os\nassert os.getuid() == {run_accounts['contributor'].uid}\n"
                 "assert 'GALLERY_SECRET_KEY' not in os.environ")
    assert (result.passed, result.sandboxed, result.account) == (
        True, False, run_accounts["contributor"].name)


def test_it_never_runs_as_root(tmp_path, kernel_env, config) -> None:
    with pytest.raises(RunRefused, match="never run as root"):
        runs.run_example(example(tmp_path, "1"), ["main.ipynb"],
                         kernel=runs.environment_kernel(str(kernel_env)),
                         account=Account("root", 0, 0), config=config)
    with pytest.raises(RunRefused, match="is root"):
        runs.account_named("root")


def test_it_refuses_to_run_without_a_runner_account(settings) -> None:
    settings.GALLERY_RUNNER_USER = ""
    with pytest.raises(RunRefused, match="set GALLERY_RUNNER_USER"):
        runs.runner_account()
    settings.GALLERY_RUNNER_USER = "no-such-account-here"
    with pytest.raises(RunRefused, match="is not an account"):
        runs.runner_account()


def test_it_says_plainly_when_the_kernel_does_not_start(tmp_path, run_accounts, config) -> None:
    folder = example(tmp_path, "1")
    result = runs.run_example(folder, ["main.ipynb"], kernel=runs.environment_kernel(
        str(tmp_path / "no-env")), account=run_accounts["runner"], config=config)
    assert not result.passed and result.failure.error == "KernelDidNotStart"
    assert "did not start as" in result.reason


# --- hostile and broken code ---------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[tuple[int, list[object]]]:
    """A server on the host's loopback that records every connection it gets."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    got: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                got.append(server.accept())
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], got
    stop.set()
    thread.join()
    server.close()


@NEEDS_SANDBOX
def test_it_gives_no_network(tmp_path, kernel_env, run_accounts, config, listener) -> None:
    port, got = listener
    result = run(tmp_path, kernel_env, run_accounts["runner"], config,
                 f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
    assert (result.passed, result.failure.error) == (False, "ConnectionRefusedError")
    assert got == []


@NEEDS_SANDBOX
def test_it_gives_the_network_only_to_an_example_that_needs_it_where_allowed(
        tmp_path, kernel_env, run_accounts, config, listener) -> None:  # type: ignore[no-untyped-def]
    port, got = listener
    cell = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).close()"
    assert not run(tmp_path, kernel_env, run_accounts["runner"], config, cell,
                   network=True).passed  # declared, but the centre does not allow it
    (tmp_path / "allowed").mkdir()
    result = run(tmp_path / "allowed", kernel_env, run_accounts["runner"],
                 replace(config, network=True), cell, network=True)
    assert result.passed, result.reason
    assert len(got) == 1


@NEEDS_SANDBOX
def test_it_lets_nothing_outside_scratch_change(tmp_path, kernel_env, run_accounts, config) -> None:
    target = Path("/var/tmp") / f"gallery-run-escape-{TAG}"
    result = run(tmp_path, kernel_env, run_accounts["runner"], config,
                 "open('inside.txt', 'w').write('fine')",
                 f"open({str(target)!r}, 'w').write('escaped')")
    assert (result.passed, result.failure.cell, result.failure.error) == (False, 1, "OSError")
    assert "Read-only file system" in result.reason
    assert not target.exists()


@NEEDS_SANDBOX
def test_it_hides_other_peoples_homes(tmp_path, kernel_env, run_accounts, config, run_root) -> None:
    secret = run_root / "home" / run_accounts["victim"].name / "secret.txt"
    result = run(tmp_path, kernel_env, run_accounts["runner"], config,
                 f"print(open({str(secret)!r}).read())")
    assert (result.passed, result.failure.error) == (False, "FileNotFoundError")
    assert "the victim's secret" not in result.executed["main.ipynb"].decode()


@NEEDS_SANDBOX
def test_it_survives_a_fork_bomb(tmp_path, kernel_env, run_accounts, config) -> None:
    result = run(tmp_path, kernel_env, run_accounts["runner"], config,
                 "import os\nwhile True:\n    os.fork()")
    assert not result.passed
    assert result.failure.error in ("BlockingIOError", "KernelDied", "Timeout")
    assert result.reason
    (tmp_path / "again").mkdir()
    assert run(tmp_path / "again", kernel_env, run_accounts["runner"], config, "print('ok')").passed


@NEEDS_SANDBOX
def test_it_stops_a_notebook_that_takes_too_much_memory(tmp_path, kernel_env, run_accounts,
                                                        config) -> None:
    result = run(tmp_path, kernel_env, run_accounts["runner"], config,
                 "x = bytearray(4 * 1024 ** 3)")
    assert (result.passed, result.failure.error) == (False, "MemoryError")
    assert "768 MB of memory (GALLERY_RUN_MEMORY_MB)" in result.reason


@NEEDS_SANDBOX
def test_it_stops_a_cell_that_sleeps_for_ever(tmp_path, kernel_env, run_accounts, config) -> None:
    result = run(tmp_path, kernel_env, run_accounts["runner"], config, "1", "import time\n"
                 "time.sleep(10 ** 6)")
    assert (result.passed, result.failure.cell, result.failure.error) == (False, 1, "Timeout")
    assert result.reason == ("Cell 2 of main.ipynb did not finish within 4 seconds "
                             "(GALLERY_RUN_CELL_TIMEOUT).")


@NEEDS_SANDBOX
def test_it_stops_a_run_past_its_time(tmp_path, kernel_env, run_accounts, config) -> None:
    result = run(tmp_path, kernel_env, run_accounts["runner"], replace(config, run_timeout=5),
                 *["import time\ntime.sleep(2)"] * 5)
    assert not result.passed
    assert "took longer than 5 seconds (GALLERY_RUN_TIMEOUT)" in result.reason


@NEEDS_SANDBOX
def test_it_survives_a_notebook_that_kills_its_parent(tmp_path, kernel_env, run_accounts,
                                                      config) -> None:
    result = run(tmp_path, kernel_env, run_accounts["runner"], config,
                 "import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\n"
                 "except OSError as exc:\n    print(exc)",
                 "os.kill(os.getpid(), signal.SIGKILL)")
    assert (result.passed, result.failure.cell, result.failure.error) == (False, 1, "KernelDied")
    assert result.reason.startswith("The kernel died while running cell 2 of main.ipynb")


@NEEDS_SANDBOX
def test_it_stops_a_notebook_that_prints_gigabytes(tmp_path, kernel_env, run_accounts,
                                                   config) -> None:
    result = run(tmp_path, kernel_env, run_accounts["runner"], config,
                 "while True:\n    print('x' * 100_000, flush=True)")
    assert not result.passed
    assert result.reason == ("The run printed more than 1 MB of output "
                             "(GALLERY_RUN_MAX_OUTPUT_MB) and was stopped.")
    assert len(result.executed["main.ipynb"]) < 2 * 1024 * 1024


@NEEDS_SANDBOX
def test_it_bounds_the_memory_folders_of_the_sandbox(tmp_path, kernel_env, run_accounts,
                                                     config) -> None:  # type: ignore[no-untyped-def]
    result = run(tmp_path, kernel_env, run_accounts["runner"], config,
                 "for i in range(5):\n"
                 "    open(f'/dev/shm/big{i}', 'wb').write(b'0' * (30 * 1024 * 1024))")
    assert (result.passed, result.failure.error) == (False, "OSError")
    assert "No space left on device" in result.reason


@NEEDS_SANDBOX
def test_it_stops_a_notebook_that_fills_its_folder(tmp_path, kernel_env, run_accounts,
                                                   config) -> None:
    result = run(tmp_path, kernel_env, run_accounts["runner"], config,
                 "import os\nfor i in range(1000):\n"
                 "    open(f'big{i}', 'wb').write(os.urandom(1024 * 1024))")
    assert not result.passed
    assert "more than 64 MB" in result.reason


def test_it_clears_the_folders_a_killed_worker_left(config) -> None:  # type: ignore[no-untyped-def]
    config.root.mkdir(parents=True, exist_ok=True)
    old, fresh = config.root / "0ld", config.root / "fresh"
    for folder in (old, fresh):
        (folder / "work").mkdir(parents=True)
    os.utime(old, (0, 0))
    assert runs.clear_stale(config) == 1
    assert sorted(p.name for p in config.root.iterdir()) == ["fresh"]
    shutil.rmtree(fresh)

"""What tests and benchmarks of runs share: a kernel environment any account can run, made
offline from the packages of the test's own interpreter, and tiny notebooks.

The gallery's own interpreter may live where other accounts cannot go (a pyenv under /root);
a run's kernel runs as an unprivileged account, so the kit makes a venv on the system's
python3 and links ipykernel and its dependencies into it from the running environment (same
Python minor version, so compiled extensions fit).
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from gallery.runs import Account

from .unixusers import TAG, make_account, remove_account


def shared_folder(prefix: str) -> Path:
    """A folder every account can read, outside /tmp (a sandboxed run has its own /tmp)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    folder.chmod(0o755)
    return folder


def _closure(name: str) -> list[metadata.Distribution]:
    seen: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def kernel_environment(folder: Path, python: str = "/usr/bin/python3") -> Path:
    """A venv at `folder` whose python runs ipykernel, readable and runnable by everyone."""
    import uv

    if not os.access(python, os.X_OK):
        python = sys.executable
    subprocess.run([uv.find_uv_bin(), "venv", "--quiet", "--python", python, str(folder)],
                   check=True, env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    version = subprocess.run([str(folder / "bin" / "python"), "-c",
                              "import sys; print('%d.%d' % sys.version_info[:2])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    target = folder / "lib" / f"python{version}" / "site-packages"
    here = Path(sysconfig.get_paths()["purelib"])
    for dist in _closure("ipykernel"):
        for rel in dist.files or []:
            if str(rel).startswith(".."):
                continue
            source = Path(dist.locate_file(rel))
            if not source.is_file():
                continue
            dest = target / Path(source).relative_to(here) if source.is_relative_to(here) \
                else target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                try:
                    os.link(source, dest)
                except OSError:
                    shutil.copy2(source, dest)
    for root, dirs, _files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
    return folder


def install_kernels(root: Path, env: Path) -> str:
    """Kernelspecs under `root/jupyter` (a JUPYTER_PATH): `gallery-test`, the kit's kernel
    with a module of its own on its path (`gallery_today`), and `gallery-candidate`, the same
    without it (a candidate stack that lost a package)."""
    import json

    today = root / "today-site"
    today.mkdir(exist_ok=True, mode=0o755)
    (today / "gallery_today.py").write_text("ANSWER = 42\n")
    (today / "gallery_today.py").chmod(0o644)
    spec = {"argv": [str(env / "bin" / "python"), "-m", "ipykernel_launcher", "-f",
                     "{connection_file}"], "display_name": "Test kernel", "language": "python"}
    for name, extra in (("gallery-test", {"env": {"PYTHONPATH": str(today)}}),
                        ("gallery-candidate", {})):
        folder = root / "jupyter" / "kernels" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "kernel.json").write_text(json.dumps({**spec, **extra}))
    return str(root / "jupyter")


def notebook(*cells: str, outputs: dict[int, str] | None = None) -> bytes:
    """A notebook of code cells; `outputs` gives saved stdout text of some cells."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    for i, source in enumerate(cells):
        cell = nbformat.v4.new_code_cell(source)
        if outputs and i in outputs:
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=outputs[i])]
            cell.execution_count = i + 1
        nb.cells.append(cell)
    return nbformat.writes(nb).encode()


# --- fixtures (made available to every test by tests/conftest.py) ----------------------


@pytest.fixture(scope="session")
def run_root() -> Iterator[Path]:
    folder = shared_folder("gallery-runs-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def kernel_env(run_root: Path) -> Path:
    return kernel_environment(run_root / "env")


@pytest.fixture(scope="session")
def run_accounts(run_root: Path) -> Iterator[dict[str, Account]]:
    """A runner, a contributor and a victim whose home holds a world-readable secret."""
    made = {}
    for role in ("runner", "contributor", "victim"):
        acc = make_account(run_root, f"r{role[0]}{TAG}")
        made[role] = Account(acc.name, acc.uid, acc.gid)
        (acc.home).chmod(0o755)
    secret = run_root / "home" / made["victim"].name / "secret.txt"
    secret.write_text("the victim's secret\n")
    secret.chmod(0o644)
    yield made
    for acc in made.values():
        remove_account(acc.name)

"""The kernel a Use installs: its name and kernelspec for an example's built environment, and
the example's notebooks made to name it, so that they open in a kernel where their imports
work.

The kernelspec is written into the user's home by the Use backends (homes/child.py as the
user, homes/contents.py through their server); here it is only decided. Nothing here needs a
request or the database.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

# Where a kernelspec goes, below the user's home (Jupyter's per-user data folder).
KERNELS_DIR = (".local", "share", "jupyter", "kernels")
KERNELS_SHOWN = "~/" + "/".join(KERNELS_DIR)
NAME_OK = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")  # what Jupyter accepts, lower-cased
_NOT_NAME = re.compile(r"[^a-z0-9._-]+")


def kernel_name(slug: str, key: str) -> str:
    """The kernel's name: the example and the environment it runs in. A new version of an
    example with the same environment keeps its kernel; one with another gets a new one, so
    copies of the older version keep theirs."""
    name = f"gallery-{_NOT_NAME.sub('-', slug.lower())[:60]}-{key[:10]}".strip("-.")
    assert NAME_OK.fullmatch(name), name
    return name


def kernelspec(*, env_path: str, title: str, slug: str, key: str, python: str) -> dict[str, Any]:
    """The kernelspec of an example's environment: its own Python, started as a kernel; the
    display name names the example."""
    title = " ".join(title.split())[:80] or slug
    return {
        "argv": [str(Path(env_path) / "bin" / "python"), "-m", "ipykernel_launcher",
                 "-f", "{connection_file}"],
        "display_name": f"{title} (Python {python}, gallery)",
        "language": "python",
        "metadata": {"gallery": {"example": slug, "environment": key},
                     "debugger": True},
    }


def kernel_for(*, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """What a Use hands to the backend that writes the kernelspec."""
    if not NAME_OK.fullmatch(name):
        raise ValueError(f"not a kernel name: {name!r}")
    return {"name": name, "spec": spec}


def spec_bytes(spec: dict[str, Any]) -> bytes:
    return (json.dumps(spec, indent=1, ensure_ascii=False) + "\n").encode()


def with_kernel(export: Path, *, name: str, display_name: str) -> Path:
    """The exported example with every notebook's kernelspec metadata naming the kernel:
    a folder beside the export, made once (atomically) and shared by every Use of it."""
    dest = export.with_name(f"{export.name}.kernel-{name}")
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".{export.name}.", dir=export.parent))
    try:
        shutil.copytree(export, tmp, symlinks=True, dirs_exist_ok=True)
        for path in sorted(tmp.rglob("*.ipynb")):
            if path.is_file() and not path.is_symlink():
                _name_kernel(path, name, display_name)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, dest)
        except OSError:  # another Use made it first
            if not dest.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _name_kernel(path: Path, name: str, display_name: str) -> None:
    """Set a notebook's kernelspec metadata, leaving every other byte's meaning as it was; a
    file that is not a notebook's JSON is left as it is."""
    try:
        nb = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        return
    if not isinstance(nb, dict):
        return
    meta = nb.setdefault("metadata", {})
    if not isinstance(meta, dict):
        return
    meta["kernelspec"] = {"name": name, "display_name": display_name, "language": "python"}
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

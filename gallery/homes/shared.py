"""What the two Use backends share: the error and the plan of a copy, where a person's copies
go, the files the gallery adds to every copy (the data manifest and the provenance record,
each written by one function here), and the messages a person reads when a copy into their
home fails.

Only the standard library is imported here (Django's settings are read inside functions): the
copy helper of the `filesystem` backend runs this module in a bare interpreter.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROVENANCE_FILE = ".gallery-provenance.json"
PROVENANCE_VISIBLE = PROVENANCE_FILE.lstrip(".")  # for a Jupyter server that hides dot files
DATA_MANIFEST = "DATA.md"
DATA_MANIFEST_JSON = "data-links.json"
LINK_FIELDS = ("name", "target", "description", "size", "checksum", "licence")


class CopyError(Exception):
    """A Use that could not be written; the message is meant for the user."""


@dataclass
class CopyPlan:
    """Everything a copy needs, decided before it starts (so a retry does the same thing)."""

    username: str
    source: Path  # an exported example folder (see homes/filesystem.py for how it is read)
    parent: Path  # <home>/<GALLERY_USE_DIR>
    folder_name: str  # wanted name; folder-2, folder-3 … when it is taken
    job_id: str
    provenance: dict[str, Any]
    data_links: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0  # test-only pause before each file
    shown_parent: str = "~/examples"  # how messages name the parent folder
    home: Path | None = None  # the user's home: a missing one is told apart from ~/examples
    # The kernel to install for the example's environment: {"name": …, "spec": {…}}, written
    # to <home>/.local/share/jupyter/kernels/<name>/kernel.json before the copy.
    kernel: dict[str, Any] | None = None
    # What an action other than a copy needs (reading or updating a copy: homes/inplace.py).
    request: dict[str, Any] = field(default_factory=dict)

    @property
    def temp_prefix(self) -> str:
        """Temporary folders of this job start with it, so a retry can clear its leftovers."""
        return f".{self.folder_name}.tmp-{self.job_id.replace('-', '')[:12]}-"

    @property
    def gone_prefix(self) -> str:
        """Temporary folders of this job renamed out of the way, about to be removed."""
        return self.temp_prefix + "gone-"


def home_of(username: str) -> Path:
    """A person's home, as the worker sees it (GALLERY_HOME_TEMPLATE)."""
    from django.conf import settings

    return Path(settings.GALLERY_HOME_TEMPLATE.format(username=username))


def use_parent(username: str) -> Path:
    """The folder of a person's home that Use copies into (GALLERY_USE_DIR)."""
    from django.conf import settings

    return home_of(username) / settings.GALLERY_USE_DIR


# --- the files the gallery adds to a copy -----------------------------------------------------


def write_data_manifest(links: list[dict[str, Any]], *,
                        place: Callable[[str, str], dict[str, str]],
                        taken: Callable[[str], bool], write: Callable[[str, bytes], object],
                        preface: tuple[str, ...] = ()) -> None:
    """Write DATA.md and data-links.json, which list a copy's data links; nothing without any.

    `place(name, target)` is the backend's say on one link, as fields added to its entry (the
    `link` it made, or a `note`). A file of the example of the same name (`taken`) is kept:
    the manifest then goes to DATA.gallery.md. `preface` comes before the list in DATA.md.
    """
    entries, lines = [], ["# Data for this example", "", "Data is linked, never copied.", "",
                          *preface]
    for link in links:
        entry = {k: link.get(k) for k in LINK_FIELDS if link.get(k) not in (None, "")}
        name, target = str(link.get("name") or "data"), str(link.get("target") or "")
        entry.update(place(name, target))
        entries.append(entry)
        detail = ", ".join(f"{k}: {v}" for k, v in entry.items() if k not in ("name", "target"))
        lines.append(f"- **{name}**: {target}" + (f" ({detail})" if detail else ""))
    if not entries:
        return
    for file, data in ((DATA_MANIFEST_JSON, json.dumps(entries, indent=2)),
                       (DATA_MANIFEST, "\n".join(lines) + "\n")):
        if taken(file):
            stem, dot, ext = file.rpartition(".")
            file = f"{stem}.gallery{dot}{ext}"
        write(file, data.encode())


def write_provenance(write: Callable[[str, bytes], bool], provenance: dict[str, Any], *,
                     job_id: str, backend: str = "") -> None:
    """Write the record of where a copy came from and which job made it. Written last: a
    folder with it is a complete copy, and a retry of the job finds its copy by it.

    `write(name, data)` is False when the name is refused (a Jupyter server hides dot files);
    the record then goes to the visible name.
    """
    record = {**provenance, "job": job_id, **({"backend": backend} if backend else {})}
    data = json.dumps(record, indent=2).encode()
    if not write(PROVENANCE_FILE, data):
        write(PROVENANCE_VISIBLE, data)


def recorded_job(data: bytes) -> str | None:
    """The job id in a provenance record; None for anything else."""
    try:
        return str(json.loads(data).get("job"))
    except (ValueError, AttributeError):
        return None


def kernel_message(exc: OSError, shown: str) -> str:
    """Why the kernelspec could not be written into a home, for its owner."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
        return (f"The example's kernel could not be installed: a part of {shown} is a symbolic "
                "link or not a folder, and the gallery writes kernels only into real folders "
                "of your home. Make it a plain folder, then click Use again.")
    if isinstance(exc, PermissionError):
        return (f"The example's kernel could not be installed: {shown} is not writable for you "
                "(permission denied). Make it a folder you own, then click Use again.")
    if exc.errno == errno.EDQUOT:
        return "Your home is over its quota; free some space and try again."
    if exc.errno == errno.ENOSPC:
        return "The home filesystem is full; try again later or tell the centre's support."
    return (f"The example's kernel could not be installed in {shown}: "
            f"{exc.strerror or type(exc).__name__}. Try again.")


# --- messages a person can act on -------------------------------------------------------------


def describe_parent(plan: CopyPlan) -> str:
    try:
        return f"{plan.shown_parent} (a link to {os.readlink(plan.parent)})"
    except OSError:
        return plan.shown_parent


def parent_message(exc: OSError, plan: CopyPlan) -> str:
    if plan.home is not None and not _exists(plan.home):
        return (f"Your home folder {plan.home} does not exist, so there is nowhere to copy the "
                "example. Ask the centre's support to create it.")
    where = describe_parent(plan)
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return (f"{where} is not a folder; move it away (or make it a folder of yours) "
                "and try again.")
    if isinstance(exc, PermissionError):
        return (f"The gallery cannot open {where} as you (permission denied). Make "
                f"{plan.shown_parent} a folder you own and can write to, then try again.")
    return user_message(exc, plan)


def _exists(path: Path) -> bool:
    """Whether `path` leads somewhere (as whoever asks); unknown (no permission) counts as yes."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


def user_message(exc: BaseException, plan: CopyPlan) -> str:
    if isinstance(exc, CopyError):
        return str(exc)
    where = describe_parent(plan)
    if isinstance(exc, PermissionError):
        return (f"The gallery cannot write into {where} as you (permission denied). Make "
                f"{plan.shown_parent} a folder you own and can write to, then try again.")
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return f"{where} goes through too many symbolic links; make it a plain folder."
    if isinstance(exc, OSError) and exc.errno == errno.EDQUOT:
        return "Your home is over its quota; free some space and try again."
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "The home filesystem is full; try again later or tell the centre's support."
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return f"{where} is on a read-only filesystem; the gallery cannot copy there."
    if isinstance(exc, OSError):  # the strerror only: str(exc) may name paths under /proc
        return (f"The copy into {where} failed: {exc.strerror or type(exc).__name__}. "
                "Try again.")
    return f"The copy into {where} failed ({type(exc).__name__}); try again."

"""The three-way merge behind "Update my copy": the version a copy came from (base), the
person's copy as it is now (local) and the approved version (remote), file by file.

Notebooks are merged cell by cell with nbdime, the field's notebook-aware merge: edits to
different cells both survive; the same cell changed on both sides is marked the way nbdime
marks it (`<<<<<<< local` / `=======` / `>>>>>>> remote` in the source, marker outputs) and
listed. Another file is replaced when its owner did not change it, and otherwise kept, with
the new version written beside it. Pure functions on bytes: no request, no home, no database.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

import nbformat

# Paths whose conflicts nbdime resolves by itself and that a person need not hear about.
_TRANSIENT = {"id", "execution_count", "collapsed", "autoscroll", "scrolled"}


@dataclass
class FileOutcome:
    """What an update does to one file of the example.

    status: "updated" (the new version replaces a file you did not change), "added" (new in
    this version), "removed" (gone from this version, you had not changed it; it stays in the
    backup), "merged" (a notebook with your edits and the new version's, no conflict),
    "conflict" (a notebook where both changed the same thing, marked inside it), "kept" (you
    changed it: yours stays, the new version goes `beside` it, if there is one), "unchanged".
    """

    path: str
    status: str
    beside: str = ""
    cells: list[dict[str, Any]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    data: bytes | None = None  # what is written at `beside or path`; None: nothing

    @property
    def writes(self) -> bool:
        return self.data is not None or self.status == "removed"

    def summary(self) -> dict[str, Any]:
        """The outcome as a person (and the API) sees it: without the bytes."""
        out = asdict(self)
        out.pop("data")
        return out


def sha256(data: bytes | None) -> str:
    return hashlib.sha256(data).hexdigest() if data is not None else ""


def beside_name(path: str, version: int) -> str:
    """Where the new version of a file you changed goes: helper.py -> helper.v3.py."""
    p = PurePosixPath(path)
    return str(p.with_name(f"{p.stem}.v{version}{p.suffix}"))


def merge_example(base: dict[str, bytes], local: dict[str, bytes], remote: dict[str, bytes],
                  *, version: int) -> list[FileOutcome]:
    """Decide, file by file, how the copy `local` (made from `base`) takes in `remote`.

    The maps hold the files of the example only (relative path -> bytes); a path missing
    from `local` is one its owner removed. `version` is the remote's number (for the names
    of files written beside). Files of the copy that are not the example's are never looked
    at, so they are never touched.
    """
    out = []
    for path in sorted(base.keys() | remote.keys()):
        out.append(_merge_file(path, base.get(path), local.get(path), remote.get(path),
                               local, version))
    return out


def _merge_file(path: str, b: bytes | None, l: bytes | None, r: bytes | None,  # noqa: E741
                local: dict[str, bytes], version: int) -> FileOutcome:
    notebook = path.endswith(".ipynb")
    if r == l or r == b:  # nothing new for this copy (your edits, if any, stay)
        cells = _cells_summary(b, l, r) if notebook and r != l else []
        return FileOutcome(path, "unchanged", cells=cells)
    if l == b:  # you did not touch it: take the new version as it is
        status = "removed" if r is None else "added" if b is None else "updated"
        return FileOutcome(path, status, cells=_cells_summary(b, l, r) if notebook else [],
                           data=r)
    if notebook and b is not None and l is not None and r is not None:
        merged = _merge_notebook(b, l, r)
        if merged is not None:
            data, cells, conflicts = merged
            return FileOutcome(path, "conflict" if conflicts else "merged", cells=cells,
                               conflicts=conflicts, data=data)
    if r is None:  # the new version dropped a file you changed: yours stays
        return FileOutcome(path, "kept")
    beside = beside_name(path, version)
    if local.get(beside) == r:
        return FileOutcome(path, "kept", beside=beside)
    n = 2
    while beside in local:
        beside = beside_name(path, version).replace(f".v{version}", f".v{version}-{n}", 1)
        n += 1
    return FileOutcome(path, "kept", beside=beside, data=r)


def _read(data: bytes) -> Any:
    return nbformat.reads(data.decode("utf-8"), as_version=4)


def _merge_notebook(b: bytes, l: bytes, r: bytes  # noqa: E741
                    ) -> tuple[bytes, list[dict[str, Any]], list[dict[str, Any]]] | None:
    """nbdime's merge of three notebooks: the merged bytes, the cell summary and the
    conflicts; None when one of them is not a notebook (the file is then handled whole)."""
    from nbdime.merging import merge_notebooks

    try:
        base, mine, theirs = _read(b), _read(l), _read(r)
    except Exception:  # noqa: BLE001 - a broken notebook is merged as a plain file
        return None
    # nbdime logs "Unhandled conflict strategy" for conflicts it leaves to its decisions,
    # which are read below; the log would only alarm an operator.
    nblog = logging.getLogger("nbdime")
    level = nblog.level
    nblog.setLevel(logging.ERROR)
    try:
        merged, decisions = merge_notebooks(base, mine, theirs)
    finally:
        nblog.setLevel(level)
    cells, conflicts = _summarize(decisions)
    return nbformat.writes(merged).encode() + b"\n", cells, conflicts


def _cells_summary(b: bytes | None, l: bytes | None, r: bytes | None  # noqa: E741
                   ) -> list[dict[str, Any]]:
    """The cell-level summary of a notebook taken or kept whole (no merge is written)."""
    if b is None or l is None or r is None:
        return []
    try:
        from nbdime.merging.notebooks import decide_notebook_merge

        decisions = decide_notebook_merge(_read(b), _read(l), _read(r), None)
    except Exception:  # noqa: BLE001 - no summary for a file that is not a notebook
        return []
    return _summarize(decisions)[0]


def _what(path: tuple[Any, ...], diffs: list[dict[str, Any]]) -> str:
    """What of a cell a decision is about: source, outputs, metadata, attachments."""
    if len(path) > 2:
        return str(path[2])
    keys = {str(d.get("key")) for d in diffs or [] if isinstance(d, dict)}
    named = sorted(keys & {"source", "outputs", "metadata", "attachments", "cell_type"})
    return ", ".join(named) or "cell"


def _summarize(decisions: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """nbdime's decisions as a person reads them: per cell (numbered in the version the copy
    came from), which side changed what; and the conflicts among them."""
    cells: list[dict[str, Any]] = []
    conflicts: list[dict[str, Any]] = []
    seen = set()
    for d in decisions:
        path = tuple(d.common_path)
        diffs = [*(d.local_diff or []), *(d.remote_diff or [])]
        keys = {str(x.get("key")) for x in diffs if isinstance(x, dict)}
        if path[-1:] and str(path[-1]) in _TRANSIENT or (keys and keys <= _TRANSIENT):
            continue
        side = ("conflict" if d.conflict else "both" if d.local_diff and d.remote_diff
                else "yours" if d.local_diff else "new version")
        if path == ("cells",):  # cells inserted or removed
            for x in diffs:
                if not isinstance(x, dict):
                    continue
                added = x.get("op") == "addrange"
                count = len(x.get("valuelist") or []) if added else x.get("length", 1)
                who = "yours" if x in (d.local_diff or []) else "new version"
                item = {"cell": int(x.get("key", 0)) + 1,
                        "change": f"{count} cell{'s' if count != 1 else ''} "
                                  f"{'added' if added else 'removed'}",
                        "side": "conflict" if d.conflict else who}
                cells.append(item)
                if d.conflict:
                    conflicts.append(item)
            continue
        if path[:1] == ("cells",) and len(path) >= 2:
            item = {"cell": int(path[1]) + 1, "change": _what(path, diffs), "side": side}
        elif path[:1] == ("metadata",) or path == ():
            item = {"cell": None, "change": "notebook metadata", "side": side}
        else:
            item = {"cell": None, "change": "/".join(map(str, path)), "side": side}
        key = (item["cell"], item["change"], item["side"])
        if key in seen:
            continue
        seen.add(key)
        cells.append(item)
        if d.conflict:
            conflicts.append(item)
    return cells, conflicts

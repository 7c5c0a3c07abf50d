"""A cell-by-cell diff of two notebooks, for the reviewer's desk.

Cells are aligned by their type and source; a changed cell carries a line diff of its source
and says whether its outputs changed. Works on notebook bytes, without a request.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from . import notebooks


@dataclass
class CellChange:
    kind: str  # "same", "added", "removed" or "changed"
    cell_type: str
    old_number: int | None  # 1-based cell numbers, as a person counts them
    new_number: int | None
    source: str = ""
    lines: list[tuple[str, str]] = field(default_factory=list)  # ("+"|"-"|" ", text)
    outputs_changed: bool = False
    metadata_changed: bool = False  # the cell's metadata (tags, hidden source, …)


@dataclass
class NotebookDiff:
    cells: list[CellChange]
    metadata_changed: bool = False  # the notebook's own metadata (kernelspec, …)

    @property
    def counts(self) -> dict[str, int]:
        out = {"same": 0, "added": 0, "removed": 0, "changed": 0}
        for cell in self.cells:
            out[cell.kind] += 1
        return out

    @property
    def unchanged(self) -> bool:
        return not self.metadata_changed and all(
            c.kind == "same" and not c.outputs_changed and not c.metadata_changed
            for c in self.cells)


def _cells(data: bytes | None) -> list[dict[str, Any]]:
    if data is None:
        return []
    nb = notebooks.read_notebook(data)
    cells = []
    for cell in nb.cells:
        outputs = [{k: v for k, v in o.items() if k != "execution_count"}
                   for o in cell.get("outputs", [])]
        cells.append({"type": cell.cell_type, "source": str(cell.get("source", "")),
                      "outputs": repr(outputs), "metadata": _meta(cell.get("metadata", {}))})
    return cells


def _meta(metadata: Any) -> str:
    """Metadata as compared: what a reviewer should see change (tags, hidden source, a
    kernelspec), without what every run rewrites (execution timings, scroll state)."""
    noise = {"execution", "collapsed", "scrolled", "autoscroll"}
    return repr(sorted((k, repr(v)) for k, v in dict(metadata or {}).items() if k not in noise))


def _line_diff(old: str, new: str) -> list[tuple[str, str]]:
    lines = []
    for line in difflib.ndiff(old.splitlines(), new.splitlines()):
        tag = line[:1]
        if tag in "+- ":
            lines.append((tag, line[2:]))
    return lines


def diff_notebooks(old: bytes | None, new: bytes) -> NotebookDiff:
    """How `new` differs from `old`, cell by cell (`old` None: every cell is added)."""
    before, after = _cells(old), _cells(new)
    keys_before = [(c["type"], c["source"]) for c in before]
    keys_after = [(c["type"], c["source"]) for c in after]
    matcher = difflib.SequenceMatcher(a=keys_before, b=keys_after, autojunk=False)
    out: list[CellChange] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                out.append(CellChange("same", after[j]["type"], i + 1, j + 1, after[j]["source"],
                                      outputs_changed=before[i]["outputs"] != after[j]["outputs"],
                                      metadata_changed=before[i]["metadata"]
                                      != after[j]["metadata"]))
            continue
        # Within a changed stretch, a cell is edited when one of the same type takes its place.
        types = difflib.SequenceMatcher(a=[c["type"] for c in before[i1:i2]],
                                        b=[c["type"] for c in after[j1:j2]], autojunk=False)
        for top, a1, a2, b1, b2 in types.get_opcodes():
            if top == "equal":
                for i, j in zip(range(i1 + a1, i1 + a2), range(j1 + b1, j1 + b2), strict=True):
                    out.append(CellChange(
                        "changed", after[j]["type"], i + 1, j + 1, after[j]["source"],
                        _line_diff(before[i]["source"], after[j]["source"]),
                        outputs_changed=before[i]["outputs"] != after[j]["outputs"],
                        metadata_changed=before[i]["metadata"] != after[j]["metadata"]))
                continue
            for i in range(i1 + a1, i1 + a2):
                out.append(CellChange("removed", before[i]["type"], i + 1, None,
                                      before[i]["source"],
                                      [("-", line) for line in before[i]["source"].splitlines()]))
            for j in range(j1 + b1, j1 + b2):
                out.append(CellChange("added", after[j]["type"], None, j + 1, after[j]["source"],
                                      [("+", line) for line in after[j]["source"].splitlines()]))
    return NotebookDiff(out, metadata_changed=old is not None and _meta(
        notebooks.read_notebook(old).metadata) != _meta(notebooks.read_notebook(new).metadata))

"""What the stage dialog offers: imports, data links and an environment draft found in a notebook.

Everything here is a pure function of a notebook (and of what a kernel reports), so it is
tested without a server.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import PurePosixPath
from typing import Any

ENV_FILES = ("environment.yml", "environment.yaml", "requirements.txt")
MAX_DATA_LINKS = 50
# Absolute paths under these belong to the machine, not to a data set worth declaring.
SYSTEM_PREFIXES = ("/dev/", "/proc/", "/sys/", "/tmp/", "/usr/", "/etc/", "/bin/", "/sbin/",
                   "/lib/", "/lib64/", "/var/tmp/", "/run/", "/opt/conda/")
_URL = re.compile(r"""(?:https?|s3)://[^\s'"<>()\[\]{}`\\]+|doi:10\.\d{4,9}/[^\s'"<>]+""")
_IMPORT_LINE = re.compile(
    r"^\s*(?:from\s+([A-Za-z_]\w*)[\w.]*\s+import|import\s+([A-Za-z_][\w., ]*))")
_NAME = re.compile(r"[^a-z0-9]+")

# Run inside the user's kernel (any Python >= 3.10) as one expression, in a namespace of its
# own so nothing is left behind: which distributions its imported modules come from.
KERNEL_SNIPPET = r'''
import json, sys
from importlib import metadata
stdlib = set(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names)
tops = {name.partition(".")[0] for name in list(sys.modules)} - stdlib
try:
    owners = metadata.packages_distributions()
except Exception:
    owners = {}
found = {}
for top in sorted(tops):
    for dist in owners.get(top, ())[:1]:
        try:
            name = metadata.distribution(dist).metadata["Name"] or dist
            found[top] = [name, metadata.version(dist)]
        except Exception:
            pass
result = json.dumps({"python": sys.version.split()[0], "modules": found})
'''
KERNEL_EXPRESSION = f"(lambda ns: (exec({KERNEL_SNIPPET!r}, ns), ns['result'])[1])({{}})"


def code_cells(nb: dict[str, Any]) -> Iterator[str]:
    """The source of every code cell, as one string each."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            yield "".join(source) if isinstance(source, list) else str(source)


def _python_only(source: str) -> str:
    """The cell without IPython magics and shell escapes, which `ast` cannot parse."""
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")) or stripped.endswith("?"):
            lines.append("")
        else:
            lines.append(line)
    return "\n".join(lines)


def _parse(source: str) -> ast.AST | None:
    try:
        return ast.parse(_python_only(source))
    except (SyntaxError, ValueError):
        return None


def imports(nb: dict[str, Any]) -> list[str]:
    """Top-level module names the notebook's code imports, in order of first appearance."""
    names: list[str] = []
    for source in code_cells(nb):
        tree = _parse(source)
        found: list[str] = []
        if tree is None:
            for match in map(_IMPORT_LINE.match, source.splitlines()):
                if match and match.group(1):
                    found.append(match.group(1))
                elif match:
                    found += [p.strip().split()[0].split(".")[0]
                              for p in match.group(2).split(",") if p.strip()]
        else:
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found += [alias.name.split(".")[0] for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.append(node.module.split(".")[0])
        for name in found:
            if name and name not in names and name != "__future__":
                names.append(name)
    return names


def string_literals(nb: dict[str, Any]) -> list[str]:
    """Every string constant in the code (f-string parts excluded), in order."""
    out: list[str] = []
    for source in code_cells(nb):
        tree = _parse(source)
        if tree is None:
            out += re.findall(r"""["']([^"'\n]{1,500})["']""", source)
            continue
        fstring_parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)
                         for v in n.values}
        found = [n for n in ast.walk(tree) if isinstance(n, ast.Constant)
                 and isinstance(n.value, str) and id(n) not in fstring_parts]
        found.sort(key=lambda n: (n.lineno, n.col_offset))  # in reading order
        out += [n.value for n in found]
    return out


def _link_name(target: str) -> str:
    if target.startswith("doi:"):
        stem = target[4:].split("/", 1)[-1]  # the registrant's own id, not the prefix
    else:
        path = target.split("://", 1)[-1].split("?", 1)[0].split("#", 1)[0].rstrip("/")
        stem = PurePosixPath(path).name or path
        stem = stem.split(".", 1)[0] if "." in stem[1:] else stem
    return _NAME.sub("-", stem.lower()).strip("-")[:60] or "data"


def _is_data_path(value: str) -> bool:
    if not value.startswith("/") or len(value) > 1000 or any(c.isspace() for c in value):
        return False
    if value.startswith(SYSTEM_PREFIXES) or value.rstrip("/") in ("", "/tmp", "/dev/null"):
        return False
    parts = [p for p in PurePosixPath(value).parts[1:] if p]
    return len(parts) >= 2 and ".." not in parts


def data_links(nb: dict[str, Any]) -> list[dict[str, str]]:
    """Absolute paths and URLs in the code, offered as data links (name, target)."""
    targets: list[str] = []
    for value in string_literals(nb):
        value = value.strip()
        if _is_data_path(value):
            targets.append(value)
        elif _URL.fullmatch(value):
            targets.append(value.rstrip(".,;"))
    for source in code_cells(nb):  # URLs in comments and shell escapes count too
        targets += [m.rstrip(".,;") for m in _URL.findall(source)]
    links: list[dict[str, str]] = []
    seen_targets: set[str] = set()
    names: set[str] = set()
    for target in targets:
        if target in seen_targets:
            continue
        seen_targets.add(target)
        base = name = _link_name(target)
        n = 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.add(name)
        links.append({"name": name, "target": target})
        if len(links) == MAX_DATA_LINKS:
            break
    return links


def referenced_files(nb: dict[str, Any], candidates: Iterable[str]) -> set[str]:
    """Which of the sibling files (relative paths) the code names in a string."""
    literals = {s.strip().removeprefix("./") for s in string_literals(nb)}
    return {path for path in candidates if path in literals}


def parse_kernel_report(text_plain: str) -> dict[str, Any]:
    """The kernel's answer to KERNEL_EXPRESSION (a repr of a JSON string) as a dict."""
    try:
        report = json.loads(ast.literal_eval(text_plain))
    except (ValueError, SyntaxError, TypeError):
        return {}
    return report if isinstance(report, dict) else {}


def _distribution_guess(module: str) -> str:
    """The distribution that provides `module` here, else the module's own name."""
    try:
        owners = metadata.packages_distributions().get(module) or []
    except Exception:  # a broken installed package must not break the dialog
        owners = []
    return owners[0] if owners else module


def draft_requirements(
    nb: dict[str, Any], kernel_report: dict[str, Any] | None, local_modules: Iterable[str] = ()
) -> str:
    """A requirements.txt draft: the packages the code imports, pinned to the versions the
    running kernel has loaded when it reports them."""
    local = set(local_modules)
    stdlib = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    loaded = (kernel_report or {}).get("modules") or {}
    lines: list[str] = []
    unpinned: list[str] = []
    seen: set[str] = set()
    for module in imports(nb):
        if module in stdlib or module in local:
            continue
        entry = loaded.get(module)
        if isinstance(entry, list) and len(entry) == 2:
            dist, version = str(entry[0]), str(entry[1])
            if dist.lower() not in seen:
                seen.add(dist.lower())
                lines.append(f"{dist}=={version}")
        else:
            dist = _distribution_guess(module)
            if dist.lower() not in seen:
                seen.add(dist.lower())
                unpinned.append(dist)
    header = ["# Draft made from the packages this notebook imports."]
    if kernel_report and kernel_report.get("python"):
        header.append("# Versions as loaded by the running kernel "
                      f"(Python {kernel_report['python']}).")
    else:
        header.append("# The kernel is not running, so versions are not pinned; run the notebook "
                      "and reopen this dialog to pin them.")
    if unpinned and kernel_report:
        header.append("# Not imported by the kernel yet, so not pinned: "
                      + ", ".join(unpinned) + ".")
    return "\n".join(header + lines + unpinned) + "\n"

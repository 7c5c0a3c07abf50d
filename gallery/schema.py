"""One schema for an example's metadata (title, summary, tags, licence, authors, data links,
resources, kernel): the rules every entry shares, the API, the stage form, the lab
extension through the API, bulk import and the starter examples.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from django.utils.text import slugify

from .errors import GalleryError

log = logging.getLogger(__name__)


@dataclass
class ExampleMeta:
    title: str
    summary: str = ""
    tags: list[str] = field(default_factory=list)
    licence: str = ""
    slug: str = ""
    data_links: list[dict[str, Any]] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)
    authors: list[str] = field(default_factory=list)
    kernel: str = ""


# The range of a database's 64-bit integer column (and of a TOML integer): data-link sizes
# and whole numbers in resources must fit it.
LARGEST_WHOLE_NUMBER = 2**63 - 1


# Metadata is a few levels deep at most; deeper is a mistake or an attack on the parsers.
DEEPEST_NESTING = 20


def unstorable(text: str) -> str:
    """Why no database takes `text`, or "" when every one does.

    PostgreSQL refuses NUL in text and in JSON; a lone surrogate (which a JSON escape such as
    "\\ud800" makes) cannot be encoded as UTF-8 by any driver.
    """
    if "\x00" in text:
        return "contains a NUL character (\\x00)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (\\ud800-\\udfff), which is not Unicode text"
    return ""


def require_storable(value: Any, where: str, depth: int = 0) -> None:
    """Refuse, naming the field, a value the database or example.toml cannot hold.

    Checked before anything is written, so the refusal is a 400 and not a failed INSERT: text
    `unstorable` finds, NaN and infinities (not JSON, refused by PostgreSQL's jsonb and by
    SQLite's JSON check), whole numbers outside 64 bits, and nesting past DEEPEST_NESTING.
    """
    problem = ""
    if isinstance(value, str):
        problem = unstorable(value)
    elif value is None or isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not -LARGEST_WHOLE_NUMBER - 1 <= value <= LARGEST_WHOLE_NUMBER:
            problem = (f"is a whole number outside the range a database holds "
                       f"({-LARGEST_WHOLE_NUMBER - 1} to {LARGEST_WHOLE_NUMBER})")
    elif isinstance(value, float):
        if not math.isfinite(value):
            problem = "is NaN or infinite; give a finite number"
    elif isinstance(value, dict | list):
        if depth >= DEEPEST_NESTING:
            problem = f"is nested more than {DEEPEST_NESTING} levels deep"
        else:
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and (why := unstorable(key)):
                    raise GalleryError(f"A key of the field {where} {why}.")
                require_storable(item, f"{where}[{key!r}]", depth + 1)
    else:
        problem = f"holds a {type(value).__name__}, which is not text or a number"
    if problem:
        raise GalleryError(f"The field {where} {problem}.")


def clean_meta(meta: ExampleMeta) -> ExampleMeta:
    """The metadata as it is stored, or GalleryError saying which field to fix.

    Every entry (the JSON and multipart API, the stage form, the lab extension through the
    API, an import) stages through here, so this is the one place that refuses what the
    database cannot store.
    """
    for item in fields(meta):
        require_storable(getattr(meta, item.name), item.name)
    title = meta.title.strip()
    if not title:
        raise GalleryError("A title is required.")
    if len(title) > 200:
        raise GalleryError("The title is longer than 200 characters.")
    if len(meta.summary) > 5000:
        raise GalleryError("The summary is longer than 5000 characters.")
    tags = []
    for tag in meta.tags:
        clean = slugify(str(tag))[:50]
        if not clean:
            raise GalleryError(f"The tag {tag!r} has no letters or digits.")
        if clean not in tags:
            tags.append(clean)
    if len(tags) > 20:
        raise GalleryError("At most 20 tags.")
    links = []
    names = set()
    for link in meta.data_links:
        if not isinstance(link, dict):
            raise GalleryError("Every data link must be an object with a name and a target.")
        name = slugify(str(link.get("name", "")))[:100]
        target = str(link.get("target", "")).strip()
        if not name:
            raise GalleryError("Every data link needs a name with letters or digits.")
        if name in names:
            raise GalleryError(f"Two data links are named {name!r}.")
        names.add(name)
        if "\x00" in target or not target or len(target) > 2000:
            raise GalleryError(f"The data link {name!r} needs a target path or URL.")
        if not (target.startswith(("/", "https://", "http://", "doi:", "s3://"))):
            raise GalleryError(
                f"The data link {name!r} must point at an absolute path, an http(s) URL or a DOI."
            )
        if target.startswith("/") and ".." in Path(target).parts:
            raise GalleryError(f"The data link {name!r} path must not contain '..'.")
        size = link.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise GalleryError(f"The data link {name!r} size must be a whole number of bytes.")
        links.append({
            "name": name, "target": target, "size": size,
            "description": str(link.get("description") or "")[:2000],
            "checksum": str(link.get("checksum") or "")[:200],
            "licence": str(link.get("licence") or "")[:100],
        })
    slug = slugify(meta.slug or "")[:80]
    return ExampleMeta(
        title=title, summary=meta.summary.strip(), tags=tags, licence=meta.licence.strip()[:100],
        slug=slug, data_links=links, resources=dict(meta.resources or {}),
        authors=[str(a)[:200] for a in meta.authors][:20], kernel=str(meta.kernel or "")[:100],
    )


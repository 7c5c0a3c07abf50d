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
from ninja import Schema
from pydantic import Field

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
    groups: list[str] = field(default_factory=list)  # hub groups; empty: public

    @classmethod
    def from_toml(cls, toml: dict[str, Any], **fallbacks: Any) -> ExampleMeta:
        """The metadata an `example.toml` holds (its keys as the layout names them: `data` for
        the data links), with `fallbacks` for the fields it leaves out; `clean_meta` then
        checks it like any other entry."""
        def get(key: str, field_name: str, default: Any) -> Any:
            value = toml.get(key)
            return value if value not in (None, "", [], {}) else fallbacks.get(field_name, default)

        return cls(
            title=get("title", "title", ""), summary=get("summary", "summary", ""),
            tags=get("tags", "tags", []), licence=get("licence", "licence", ""),
            slug=fallbacks.get("slug", ""), data_links=get("data", "data_links", []),
            resources=get("resources", "resources", {}), authors=get("authors", "authors", []),
            kernel=get("kernel", "kernel", ""), groups=get("groups", "groups", []),
        )

    def to_toml(self, *, notebook: str, environment: str = "") -> dict[str, Any]:
        """The `example.toml` of a cleaned metadata, for a folder with `notebook`; `groups`
        only for a group's example, so a public one's file is as it always was."""
        return {
            "title": self.title, "summary": self.summary, "tags": self.tags,
            "licence": self.licence, "authors": self.authors, "notebook": notebook,
            "kernel": self.kernel, "environment": environment, "resources": self.resources,
            "data": [{k: v for k, v in link.items() if v not in (None, "")}
                     for link in self.data_links],
            **({"groups": self.groups} if self.groups else {}),
        }


# The range of a database's 64-bit integer column (and of a TOML integer): data-link sizes
# and whole numbers in resources must fit it.
LARGEST_WHOLE_NUMBER = 2**63 - 1


# How long each field may be, and how many of a kind: one table for the API's schema, the
# stage form and the cleaning below.
TITLE_MAX, SUMMARY_MAX, LICENCE_MAX, SLUG_MAX, KERNEL_MAX = 200, 5000, 100, 80, 100
TAGS_MAX, TAG_MAX, AUTHORS_MAX, AUTHOR_MAX, RESOURCES_MAX = 20, 50, 20, 200, 10
GROUPS_MAX, GROUP_MAX = 20, 255
DATA_LINKS_MAX, LINK_NAME_MAX, CHECKSUM_MAX = 50, 100, 200
LINK_TARGET_MAX = LINK_TEXT_MAX = 2000

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
    if len(title) > TITLE_MAX:
        raise GalleryError(f"The title is longer than {TITLE_MAX} characters.")
    if len(meta.summary) > SUMMARY_MAX:
        raise GalleryError(f"The summary is longer than {SUMMARY_MAX} characters.")
    tags = []
    for tag in meta.tags:
        clean = slugify(str(tag))[:TAG_MAX]
        if not clean:
            raise GalleryError(f"The tag {tag!r} has no letters or digits.")
        if clean not in tags:
            tags.append(clean)
    if len(tags) > TAGS_MAX:
        raise GalleryError(f"At most {TAGS_MAX} tags.")
    links = []
    names = set()
    for link in meta.data_links:
        if not isinstance(link, dict):
            raise GalleryError("Every data link must be an object with a name and a target.")
        name = slugify(str(link.get("name", "")))[:LINK_NAME_MAX]
        target = str(link.get("target", "")).strip()
        if not name:
            raise GalleryError("Every data link needs a name with letters or digits.")
        if name in names:
            raise GalleryError(f"Two data links are named {name!r}.")
        names.add(name)
        if "\x00" in target or not target or len(target) > LINK_TARGET_MAX:
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
            "description": str(link.get("description") or "")[:LINK_TEXT_MAX],
            "checksum": str(link.get("checksum") or "")[:CHECKSUM_MAX],
            "licence": str(link.get("licence") or "")[:LICENCE_MAX],
        })
    slug = slugify(meta.slug or "")[:SLUG_MAX]
    return ExampleMeta(groups=clean_groups(meta.groups),
        title=title, summary=meta.summary.strip(), tags=tags,
        licence=meta.licence.strip()[:LICENCE_MAX],
        slug=slug, data_links=links, resources=dict(meta.resources or {}),
        authors=[str(a)[:AUTHOR_MAX] for a in meta.authors][:AUTHORS_MAX],
        kernel=str(meta.kernel or "")[:KERNEL_MAX],
    )


def clean_groups(groups: Any) -> list[str]:
    """The hub groups an example is for, sorted, once each; GalleryError for a name no hub
    group has."""
    if not isinstance(groups, list):
        raise GalleryError("groups must be a list of hub group names.")
    clean = sorted({str(g).strip() for g in groups if str(g).strip()})
    if len(clean) > GROUPS_MAX:
        raise GalleryError(f"At most {GROUPS_MAX} groups.")
    for name in clean:
        if len(name) > GROUP_MAX or any(c.isspace() or c == "/" for c in name):
            raise GalleryError(f"{name[:40]!r} is not the name of a hub group.")
    return clean


# --- the shape of metadata as the API and the stage form take it ---------------------------


class DataLinkIn(Schema):
    name: str = Field(min_length=1, max_length=LINK_NAME_MAX)
    target: str = Field(min_length=1, max_length=LINK_TARGET_MAX,
                        description="An absolute path on a shared filesystem, a URL or a DOI")
    description: str = Field("", max_length=LINK_TEXT_MAX)
    size: int | None = Field(None, ge=0, description="bytes")
    checksum: str = Field("", max_length=CHECKSUM_MAX)
    licence: str = Field("", max_length=LICENCE_MAX)


class SubmissionMetaIn(Schema):
    title: str = Field(min_length=1, max_length=TITLE_MAX)
    summary: str = Field("", max_length=SUMMARY_MAX)
    tags: list[str] = Field(default_factory=list, max_length=TAGS_MAX)
    licence: str = Field("", max_length=LICENCE_MAX)
    slug: str = Field("", max_length=SLUG_MAX, description="Wanted slug for a new example")
    example: str = Field("", max_length=SLUG_MAX, pattern=r"^[-a-zA-Z0-9_]*$",
                         description="Slug of an existing example this is a new revision of")
    data_links: list[DataLinkIn] = Field(default_factory=list, max_length=DATA_LINKS_MAX)
    resources: dict[str, str | int | float] = Field(default_factory=dict, max_length=RESOURCES_MAX)
    authors: list[str] = Field(default_factory=list, max_length=AUTHORS_MAX)
    kernel: str = Field("", max_length=KERNEL_MAX)
    groups: list[str] = Field(
        default_factory=list, max_length=GROUPS_MAX,
        description="The hub groups this example is for, among the caller's own; empty: "
                    "public. Set when the example is first staged; a revision keeps them.")


def meta_from_input(meta: SubmissionMetaIn) -> ExampleMeta:
    """Metadata as sent to the API or the stage form, before `clean_meta`."""
    return ExampleMeta(
        title=meta.title, summary=meta.summary, tags=meta.tags, licence=meta.licence,
        slug=meta.slug, data_links=[link.model_dump() for link in meta.data_links],
        resources=meta.resources, authors=meta.authors, kernel=meta.kernel,
        groups=meta.groups,
    )

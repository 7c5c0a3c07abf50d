"""Every state change of the gallery, one function each.

Views, the API, admin actions, management commands and Celery tasks all call these; there is
one way to stage, approve, retire or use an example. Each function runs in one transaction
and queues its slow work only after that transaction commits.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Case, Count, F, Max, Q, TextField, Value, When
from django.utils import timezone
from django.utils.text import slugify

from . import caching, homes, notebooks, previews, repo
from .models import (
    DataLink,
    Example,
    IllegalTransition,
    Job,
    Notification,
    Preview,
    Review,
    Revision,
    StateChange,
    Submission,
    Tag,
    is_reviewer,
)

log = logging.getLogger(__name__)


class GalleryError(Exception):
    """A request the gallery refuses; `status` is the HTTP status that fits."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class NotAllowed(GalleryError):
    status = 403


class NotFound(GalleryError):
    status = 404


class Conflict(GalleryError):
    status = 409


@dataclass
class StagedFiles:
    """What a contributor sends: the notebook and everything that travels with it."""

    notebook_name: str
    notebook: bytes
    environment: tuple[str, bytes] | None = None
    files: dict[str, bytes] = field(default_factory=dict)


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


def _record(
    *,
    example: Example,
    subject: str,
    from_state: str,
    to_state: str,
    actor: AbstractBaseUser | None,
    reason: str = "",
    submission: Submission | None = None,
) -> StateChange:
    return StateChange.objects.create(
        example=example, submission=submission, subject=subject, from_state=from_state,
        to_state=to_state, actor=actor, reason=reason,
    )


def _move_submission(
    submission: Submission, to: str, *, actor: AbstractBaseUser | None, reason: str
) -> None:
    if not submission.can_become(to):
        raise IllegalTransition(
            f"Submission {submission.pk} is {submission.get_state_display()}; "
            f"it cannot become {Submission.State(to).label}."
        )
    _record(example=submission.example, submission=submission, subject="submission",
            from_state=submission.state, to_state=to, actor=actor, reason=reason)
    submission.state = to
    submission.updated = timezone.now()
    submission.save(update_fields=["state", "updated"])


def _move_example(example: Example, to: str, *, actor: AbstractBaseUser | None, reason: str,
                  allowed_from: set[str]) -> None:
    if example.state not in allowed_from:
        raise IllegalTransition(
            f"Example {example.slug} is {example.get_state_display()}; it cannot become {to}."
        )
    _record(example=example, subject="example", from_state=example.state, to_state=to,
            actor=actor, reason=reason)
    example.state = to
    example.updated = timezone.now()
    example.save(update_fields=["state", "updated"])


# --- staging --------------------------------------------------------------------------------


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


def _require_storable(value: Any, where: str, depth: int = 0) -> None:
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
                _require_storable(item, f"{where}[{key!r}]", depth + 1)
    else:
        problem = f"holds a {type(value).__name__}, which is not text or a number"
    if problem:
        raise GalleryError(f"The field {where} {problem}.")


def _clean_meta(meta: ExampleMeta) -> ExampleMeta:
    """The metadata as it is stored, or GalleryError saying which field to fix.

    Every entry (the JSON and multipart API, the stage form, the lab extension through the
    API, an import) stages through here, so this is the one place that refuses what the
    database cannot store.
    """
    for item in fields(meta):
        _require_storable(getattr(meta, item.name), item.name)
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


def _folder_files(staged: StagedFiles, meta: ExampleMeta) -> dict[str, bytes]:
    name = notebooks.clean_relpath(staged.notebook_name)
    if not name.endswith(".ipynb"):
        raise GalleryError("The notebook's file name must end in .ipynb.")
    files: dict[str, bytes] = {name: staged.notebook}
    env_name = None
    if staged.environment:
        env_name = notebooks.clean_relpath(staged.environment[0])
        if env_name not in notebooks.ENV_FILES:
            raise GalleryError(
                "The environment file must be environment.yml or requirements.txt, "
                f"not {env_name!r}."
            )
        files[env_name] = staged.environment[1]
    if len(staged.files) > settings.GALLERY_MAX_FILES:
        raise GalleryError(f"At most {settings.GALLERY_MAX_FILES} files per example.")
    for raw_name, data in staged.files.items():
        clean = notebooks.clean_relpath(raw_name)
        if clean in files:
            raise GalleryError(f"The file {clean!r} is given twice.")
        if env_name is None and clean in notebooks.ENV_FILES:
            env_name = clean
        files[clean] = data
    total = sum(len(d) for d in files.values())
    if total > settings.GALLERY_MAX_UPLOAD_BYTES:
        raise GalleryError(
            f"The example is {total:,} bytes; the limit is {settings.GALLERY_MAX_UPLOAD_BYTES:,}.",
            status=413,
        )
    toml_meta = {
        "title": meta.title, "summary": meta.summary, "tags": meta.tags, "licence": meta.licence,
        "authors": meta.authors, "notebook": name, "kernel": meta.kernel,
        "environment": env_name or "", "resources": meta.resources,
        "data": [{k: v for k, v in link.items() if v not in (None, "")}
                 for link in meta.data_links],
    }
    files[notebooks.EXAMPLE_FILE] = notebooks.example_toml(toml_meta)
    notebooks.check_folder_tree(files)
    return files


# How long a staged folder that no Revision names is kept after it was last stored. Far
# longer than any request takes, and than the clocks of the machines sharing it disagree.
STAGING_GRACE = timedelta(days=1)
_TMP_PREFIX = ".tmp-"  # a folder being written, renamed into place when complete
_TRASH_PREFIX = ".trash-"  # a folder the sweep took out of reach before deciding on it


def store_folder(files: dict[str, bytes]) -> tuple[str, Path]:
    """Write a folder under the staging dir, named by its content hash (atomic, write-once).

    The folder is shared by every request that stores the same content, and a request's
    Revision naming it is invisible to the others until it commits, so no request ever
    removes one. A folder already there is touched instead: `sweep_staging` leaves recently
    stored folders alone.
    """
    digest = notebooks.folder_hash(files)
    final = Path(settings.GALLERY_STAGING_DIR) / digest
    for _ in range(3):
        try:
            os.utime(final)
            return digest, final
        except FileNotFoundError:
            _write_folder(final, files)
    raise OSError(f"the staged folder {final} keeps disappearing")


def _write_folder(final: Path, files: dict[str, bytes]) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=final.parent))
    try:
        for name, data in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # else another request stored the same content first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sweep_staging(*, grace: timedelta = STAGING_GRACE) -> int:
    """Remove staged folders that no Revision names and nobody stored for `grace`, and
    half-written ones; returns how many. Celery beat runs it every hour.

    This is how the folders of submissions refused after storing them, of deleted examples
    and of interrupted writes go away, without ever taking one from a request that shares it.
    """
    base = Path(settings.GALLERY_STAGING_DIR)
    cutoff = time.time() - grace.total_seconds()
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return 0
    removed, unused = 0, []
    for entry in entries:
        try:
            old = entry.stat(follow_symlinks=False).st_mtime < cutoff
        except FileNotFoundError:
            continue
        if entry.name.startswith(_TRASH_PREFIX):
            removed += _remove_unless_needed(base, Path(entry.path), cutoff)
        elif old and entry.name.startswith(_TMP_PREFIX):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
        elif old and _is_digest(entry.name):
            unused.append(entry.name)
    for start in range(0, len(unused), 500):
        chunk = unused[start:start + 500]
        used = set(Revision.objects.filter(content_hash__in=chunk).values_list(
            "content_hash", flat=True))
        for digest in chunk:
            if digest not in used:
                removed += _remove_unless_needed(base, base / digest, cutoff)
    return removed


def _is_digest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _remove_unless_needed(base: Path, path: Path, cutoff: float) -> bool:
    """Take a staged folder (or one an interrupted sweep took) out of reach by renaming it,
    then decide: a request that stored it before the rename made it recent, a Revision
    committed meanwhile names it; either way it goes back, else it is removed.

    After the rename, a request storing the same content writes it anew; the rename is the
    one step that only one process can win, so two sweeps never remove what the other keeps.
    """
    digest = path.name.removeprefix(_TRASH_PREFIX).split("-")[0]
    if not _is_digest(digest):
        return False
    mine = base / f"{_TRASH_PREFIX}{digest}-{os.urandom(6).hex()}"
    try:
        os.rename(path, mine)
    except FileNotFoundError:  # removed or taken by another sweep
        return False
    try:
        recent = mine.stat().st_mtime >= cutoff
    except FileNotFoundError:  # another sweep took it from us: it decides
        return False
    if recent or Revision.objects.filter(content_hash=digest).exists():
        try:
            os.rename(mine, base / digest)
        except OSError:
            if not (base / digest).is_dir():
                raise
            shutil.rmtree(mine, ignore_errors=True)  # stored anew meanwhile: the same content
        return False
    shutil.rmtree(mine, ignore_errors=True)
    return True


def staged_folder(revision: Revision) -> Path:
    return Path(settings.GALLERY_STAGING_DIR) / revision.content_hash


def _unique_slug(base: str) -> str:
    base = base or "example"
    slug, n = base, 1
    while Example.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base[:75]}-{n}"
    return slug


def _create_example(meta: ExampleMeta, contributor: AbstractBaseUser) -> Example:
    """A new example under the first free slug. Another staging may take the same slug
    between the look and the insert; its row commits first and the next try skips it."""
    for _ in range(5):
        try:
            with transaction.atomic():
                return Example.objects.create(
                    slug=_unique_slug(meta.slug or slugify(meta.title)[:80]), title=meta.title,
                    summary=meta.summary, contributor=contributor)
        except IntegrityError:
            continue
    raise Conflict("Other examples with this name are being staged right now; try again.")


def _example_to_revise(slug: str, contributor: AbstractBaseUser, *, lock: bool) -> Example:
    examples = Example.objects.visible_to(contributor)
    example = (examples.select_for_update() if lock else examples).filter(slug=slug).first()
    if example is None:
        raise NotFound(f"There is no example {slug!r} to revise.")
    if not example.revisable_by(contributor):
        raise NotAllowed(f"Only {example.contributor} or a reviewer may revise it.")
    if example.state == Example.State.RETIRED:
        raise Conflict(f"{example.slug} is retired; ask a reviewer to restore it first.")
    return example


def stage_submission(
    *, contributor: AbstractBaseUser, staged: StagedFiles, meta: ExampleMeta,
    example_slug: str = "",
) -> Submission:
    """Validate and store a notebook with its files; queue checks and the preview.

    With `example_slug`, the submission is a new revision of that example. A refused
    submission writes nothing, with one exception: refused only under the lock (the example
    changed meanwhile), it leaves its staged folder, which may be shared, to `sweep_staging`.
    """
    if not contributor.is_authenticated:
        raise NotAllowed("Log in to stage an example.")
    meta = _clean_meta(meta)
    try:
        nb = notebooks.read_notebook(staged.notebook)
        files = _folder_files(staged, meta)
    except notebooks.NotebookError as exc:
        raise GalleryError(str(exc)) from None
    if example_slug:
        _example_to_revise(example_slug, contributor, lock=False)
    nb_name = next(iter(files))
    digest, _ = store_folder(files)

    with transaction.atomic():
        if example_slug:
            example = _example_to_revise(example_slug, contributor, lock=True)
        else:
            example = _create_example(meta, contributor)
            _record(example=example, subject="example", from_state="", to_state=example.state,
                    actor=contributor, reason="staged")
        if example.state != Example.State.APPROVED:
            example.title, example.summary = meta.title, meta.summary
            example.search_text = " ".join([*meta.tags, notebooks.notebook_text(nb)])
            example.updated = timezone.now()
            example.save(update_fields=["title", "summary", "search_text", "updated"])
            example.tags.set([Tag.objects.get_or_create(name=t)[0] for t in meta.tags])
        number = (example.revisions.aggregate(n=Max("number"))["n"] or 0) + 1
        revision = Revision.objects.create(
            example=example, number=number, content_hash=digest,
            notebook_sha256=notebooks.sha256(staged.notebook), notebook_name=nb_name,
            metadata=notebooks.read_example_toml(files[notebooks.EXAMPLE_FILE]),
            files=[{"path": p, "size": len(d)} for p, d in sorted(files.items())],
        )
        DataLink.objects.bulk_create(
            DataLink(revision=revision, name=link["name"], target=link["target"],
                     description=link["description"], size=link["size"],
                     checksum=link["checksum"], licence=link["licence"])
            for link in meta.data_links
        )
        for older in example.submissions.filter(state__in=[
            Submission.State.STAGED, Submission.State.IN_REVIEW,
            Submission.State.CHANGES_REQUESTED,
        ]):
            _move_submission(older, Submission.State.WITHDRAWN, actor=contributor,
                             reason=f"superseded by revision {number}")
        submission = Submission.objects.create(
            example=example, revision=revision, contributor=contributor
        )
        _record(example=example, submission=submission, subject="submission", from_state="",
                to_state=submission.state, actor=contributor, reason=f"revision {number}")
        _queue(Job.Kind.CHECKS, submission=submission, revision=revision)
        _queue_preview(revision)
    return submission


# --- review ---------------------------------------------------------------------------------


def _require_reviewer(reviewer: AbstractBaseUser, submission: Submission) -> None:
    if not is_reviewer(reviewer):
        raise NotAllowed("Only reviewers may decide on submissions.")
    if submission.contributor_id == reviewer.pk:
        raise NotAllowed("A reviewer cannot decide on their own submission.")


def start_review(*, submission: Submission, reviewer: AbstractBaseUser) -> Submission:
    """Mark a staged submission as being reviewed."""
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission.pk)
        _require_reviewer(reviewer, submission)
        _move_submission(submission, Submission.State.IN_REVIEW, actor=reviewer,
                         reason="review started")
        notify(user=submission.contributor, kind=Notification.Kind.REVIEW,
               submission=submission, example=submission.example,
               message=f"{reviewer.get_username()} started reviewing revision "
                       f"{submission.revision.number} of \u201c{submission.example.title}\u201d.")
    return submission


def _decide(submission: Submission, reviewer: AbstractBaseUser, decision: str, to: str,
            comment: str) -> Review:
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission.pk)
        _require_reviewer(reviewer, submission)
        _move_submission(submission, to, actor=reviewer, reason=comment)
        review = Review.objects.create(submission=submission, reviewer=reviewer,
                                       decision=decision, comment=comment)
        _notify_decision(submission, review)
        if decision == Review.Decision.APPROVE:
            _queue(Job.Kind.COMMIT, submission=submission, revision=submission.revision,
                   user=reviewer, params={"review": review.pk})
            _queue_preview(submission.revision)
        elif (decision == Review.Decision.REJECT
              and submission.example.state == Example.State.STAGED):
            _move_example(submission.example, Example.State.REJECTED, actor=reviewer,
                          reason=comment, allowed_from={Example.State.STAGED})
    return review


def approve_submission(*, submission: Submission, reviewer: AbstractBaseUser,
                       comment: str = "") -> Review:
    """Approve: the revision is committed into the examples repository by a worker."""
    return _decide(submission, reviewer, Review.Decision.APPROVE, Submission.State.APPROVED,
                   comment)


def request_changes(*, submission: Submission, reviewer: AbstractBaseUser,
                    comment: str) -> Review:
    if not comment.strip():
        raise GalleryError("Say which changes you request.")
    return _decide(submission, reviewer, Review.Decision.REQUEST_CHANGES,
                   Submission.State.CHANGES_REQUESTED, comment)


def reject_submission(*, submission: Submission, reviewer: AbstractBaseUser,
                      comment: str) -> Review:
    if not comment.strip():
        raise GalleryError("Say why the submission is rejected.")
    return _decide(submission, reviewer, Review.Decision.REJECT, Submission.State.REJECTED,
                   comment)


def retire_example(*, example: Example, actor: AbstractBaseUser, reason: str) -> Example:
    """Hide an example from new users; existing copies keep working."""
    if not is_reviewer(actor):
        raise NotAllowed("Only reviewers may retire examples.")
    if not reason.strip():
        raise GalleryError("Say why the example is retired.")
    with transaction.atomic():
        example = Example.objects.select_for_update().get(pk=example.pk)
        _move_example(example, Example.State.RETIRED, actor=actor, reason=reason,
                      allowed_from={Example.State.APPROVED})
        notify(user=example.contributor, kind=Notification.Kind.RETIRED, example=example,
               message=f"\u201c{example.title}\u201d was retired by {actor.get_username()}: "
                       f"{reason}")
        _notify_users_of(example, kind=Notification.Kind.RETIRED,
                         message=f"\u201c{example.title}\u201d, which you used, was retired: "
                                 f"{reason} Your copy keeps working.")
    return example


def restore_example(*, example: Example, actor: AbstractBaseUser, reason: str = "") -> Example:
    if not is_reviewer(actor):
        raise NotAllowed("Only reviewers may restore examples.")
    with transaction.atomic():
        example = Example.objects.select_for_update().get(pk=example.pk)
        _move_example(example, Example.State.APPROVED, actor=actor, reason=reason or "restored",
                      allowed_from={Example.State.RETIRED})
        notify(user=example.contributor, kind=Notification.Kind.RESTORED, example=example,
               message=f"\u201c{example.title}\u201d is back in the gallery"
                       f"{': ' + reason if reason else '.'}")
    return example


def publish_revision(*, revision: Revision, commit: str, actor: AbstractBaseUser | None) -> Example:
    """Record that a revision is in the repository: it becomes the example's current one."""
    with transaction.atomic():
        example = Example.objects.select_for_update().get(pk=revision.example_id)
        revision.git_commit = commit
        revision.save(update_fields=["git_commit"])
        current = example.current_revision
        if current is None or current.number <= revision.number:
            meta = revision.metadata
            example.current_revision = revision
            example.title = meta.get("title", example.title)
            example.summary = meta.get("summary", "")
            nb_path = staged_folder(revision) / revision.notebook_name
            if nb_path.exists():
                nb = notebooks.read_notebook(nb_path.read_bytes())
                example.search_text = " ".join([*meta.get("tags", []), notebooks.notebook_text(nb)])
            example.updated = timezone.now()
            example.save(update_fields=["current_revision", "title", "summary", "search_text",
                                        "updated"])
            example.tags.set([Tag.objects.get_or_create(name=t)[0] for t in meta.get("tags", [])])
            submission = Submission.objects.filter(revision=revision).first()
            notify(user=example.contributor, kind=Notification.Kind.PUBLISHED, example=example,
                   submission=submission,
                   message=f"\u201c{example.title}\u201d version {revision.number} is published "
                           f"in the gallery.")
            _notify_users_of(example, kind=Notification.Kind.UPDATED, exclude_revision=revision,
                             message=f"A newer version ({revision.number}) of \u201c"
                                     f"{example.title}\u201d is approved; your copy is older.")
        if example.state in (Example.State.STAGED, Example.State.REJECTED):
            _move_example(example, Example.State.APPROVED, actor=actor,
                          reason=f"revision {revision.number} committed as {commit[:10]}",
                          allowed_from={Example.State.STAGED, Example.State.REJECTED})
    return example


# --- notifications --------------------------------------------------------------------------


def notify(*, user: AbstractBaseUser, kind: str, message: str, example: Example | None = None,
           submission: Submission | None = None, email: bool = True) -> Notification:
    """Tell a person something in the gallery; by email too when a mail server is configured.

    The email is queued after the surrounding transaction commits, so a decision that is
    rolled back never mails anyone.
    """
    note = Notification.objects.create(user=user, kind=kind, message=message, example=example,
                                       submission=submission)
    if email and settings.EMAIL_HOST and email_address(user):
        from . import tasks

        tasks.email_notification.delay_on_commit(note.pk)
    return note


def _notify_decision(submission: Submission, review: Review) -> None:
    verb = {Review.Decision.APPROVE: "approved", Review.Decision.REJECT: "rejected",
            Review.Decision.REQUEST_CHANGES: "asked for changes to"}[
        Review.Decision(review.decision)]
    text = (f"{review.reviewer.get_username()} {verb} revision {submission.revision.number} "
            f"of \u201c{submission.example.title}\u201d.")
    if review.comment:
        text += f" Comment: {review.comment}"
    notify(user=submission.contributor, kind=Notification.Kind.REVIEW, message=text,
           example=submission.example, submission=submission)


def _notify_users_of(example: Example, *, kind: str, message: str,
                     exclude_revision: Revision | None = None) -> int:
    """Tell everyone holding a copy of the example (in the gallery only: there may be many)."""
    used = Job.objects.filter(kind=Job.Kind.USE, state=Job.State.DONE, revision__example=example,
                              user__isnull=False)
    if exclude_revision is not None:
        used = used.exclude(user__in=Job.objects.filter(
            kind=Job.Kind.USE, state=Job.State.DONE, revision=exclude_revision).values("user"))
    users = set(used.values_list("user", flat=True)) - {example.contributor_id}
    Notification.objects.bulk_create(
        Notification(user_id=pk, kind=kind, message=message, example=example) for pk in users)
    caching.forget_unread(users)  # bulk_create sends no signal
    return len(users)


def mark_notifications_read(*, user: AbstractBaseUser, ids: list[int] | None = None) -> int:
    """Mark a person's notifications (all, or those given) as read; returns how many."""
    unread = Notification.objects.filter(user=user).unread()  # type: ignore[misc]
    if ids is not None:
        unread = unread.filter(pk__in=ids)
    marked = unread.update(read_at=timezone.now())
    caching.forget_unread([user.pk])  # update sends no signal
    return marked


def email_address(user: AbstractBaseUser) -> str:
    """The user's address, or username@GALLERY_EMAIL_DOMAIN when only the centre knows it."""
    address = getattr(user, "email", "") or ""
    if not address and settings.GALLERY_EMAIL_DOMAIN:
        address = f"{user.get_username()}@{settings.GALLERY_EMAIL_DOMAIN}"
    return address


def email_notification(*, notification_id: int) -> bool:
    """Send one notification by email, at most once; False when there is nothing to send."""
    from django.core.mail import send_mail

    now = timezone.now()
    if not Notification.objects.filter(pk=notification_id, emailed_at__isnull=True).update(
            emailed_at=now):
        return False
    note = Notification.objects.select_related("user", "example", "submission").get(
        pk=notification_id)
    address = email_address(note.user)
    if not address:
        return False
    link = ""
    if settings.GALLERY_PUBLIC_URL:
        from django.urls import reverse

        path = (reverse("submission", args=[note.submission_id]) if note.submission_id
                else reverse("example", args=[note.example.slug]) if note.example else
                reverse("notifications"))
        link = f"\n\n{settings.GALLERY_PUBLIC_URL.rstrip('/')}{path}"
    subject = f"[Examples gallery] {note.message[:70]}"
    try:
        send_mail(subject, f"{note.message}{link}\n", None, [address])
    except Exception:
        # Let the task retry: the mail was not sent.
        Notification.objects.filter(pk=notification_id, emailed_at=now).update(emailed_at=None)
        raise
    return True


# --- Use ------------------------------------------------------------------------------------


def queue_use(*, example: Example, user: AbstractBaseUser, folder_name: str = "") -> Job:
    """Record a user's Use and queue the copy; the job runs even if the broker is down now."""
    if not user.is_authenticated:
        raise NotAllowed("Log in to use an example.")
    if example.state != Example.State.APPROVED or example.current_revision is None:
        raise Conflict(f"{example.slug} has no approved version to use.")
    folder = _use_folder_name(example, folder_name)
    with transaction.atomic():
        job = _queue(Job.Kind.USE, user=user, revision=example.current_revision,
                     params={"username": user.get_username(), "folder": folder,
                             "backend": settings.GALLERY_USE_BACKEND},
                     message="Waiting for a free worker; this page updates by itself.")
    return job


def count_uses(*, since: timedelta = timedelta(hours=1)) -> int:
    """Bring `use_count` (copies made) up to date for the examples used lately; returns how
    many changed. The sweep calls it.

    Counting from the jobs instead of adding one at each click keeps a hot row out of every
    Use request: at a workshop, hundreds of clicks on one example would queue on its lock.
    """
    recent = Job.objects.filter(kind=Job.Kind.USE, state=Job.State.DONE,
                                queued_at__gte=timezone.now() - since).values(
        "revision__example_id")
    counts = Job.objects.filter(
        kind=Job.Kind.USE, state=Job.State.DONE, revision__example_id__in=recent,
    ).values("revision__example_id").annotate(n=Count("pk"))
    changed = 0
    for row in counts:
        changed += Example.objects.filter(pk=row["revision__example_id"]).exclude(
            use_count=row["n"]).update(use_count=row["n"])
    return changed


def _use_folder_name(example: Example, wanted: str) -> str:
    """The folder name a user asked for (the slug by default), or GalleryError."""
    folder = wanted.strip() or example.slug
    try:
        folder = notebooks.clean_relpath(folder)
    except notebooks.NotebookError as exc:
        raise GalleryError(str(exc).replace("file name", "folder name")) from None
    if "/" in folder:
        raise GalleryError("The folder name must be a single name, not a path.")
    if len(folder) > 100:
        raise GalleryError("The folder name is longer than 100 characters.")
    return folder


def use_plan(*, example: Example, user: AbstractBaseUser, folder_name: str = "") -> dict[str, Any]:
    """What a Use would do, shown before the user confirms: nothing is written."""
    revision = example.current_revision
    if example.state != Example.State.APPROVED or revision is None:
        raise Conflict(f"{example.slug} has no approved version to use.")
    folder = _use_folder_name(example, folder_name)
    parent = f"~/{settings.GALLERY_USE_DIR}"
    env_file = revision.metadata.get("environment", "")
    return {
        "folder": folder,
        "target": f"{parent}/{folder}",
        "version": revision.number,
        "commit": revision.git_commit,
        "files": revision.files,
        "environment": env_file,
        "environment_commands": environment_instructions(env_file, example.slug),
        "data_links": [{"name": d.name, "target": d.target, "description": d.description,
                        "size": d.size, "checksum": d.checksum, "licence": d.licence,
                        "kind": "symlink" if d.is_path else "manifest",
                        "where": f"data/{d.name}" if d.is_path else homes.DATA_MANIFEST}
                       for d in revision.data_links.all()],
        "provenance_file": homes.PROVENANCE_FILE,
        "note": f"An existing folder is never overwritten: if {parent}/{folder} exists, the "
                f"copy goes to {folder}-2 (or -3, …). Data is linked, never copied.",
    }


def environment_instructions(env_file: str, name: str, folder: str = "") -> dict[str, str]:
    """The exact commands that turn the copied spec into a kernel; with the copy's `folder`
    (relative to the home), they start by going there, so they run from anywhere."""
    env = f"~/envs/{name}"
    kernel = f'python -m ipykernel install --user --name {name} --display-name "{name}"'
    go = f"cd ~/{shlex.quote(folder)} && " if folder else ""
    if env_file.startswith("environment"):
        return {"conda": f"{go}conda env create -p {env} -f {env_file} && "
                         f"conda run -p {env} {kernel}",
                "pip": ""}
    if env_file:
        return {"conda": "",
                "pip": f"{go}python3 -m venv {env} && {env}/bin/pip install -r {env_file} "
                       f"ipykernel && {env}/bin/{kernel}"}
    return {"conda": "", "pip": ""}


def _do_use(job: Job) -> dict[str, Any]:
    revision = job.revision
    assert revision is not None
    example = revision.example
    username = job.params["username"]
    export = repo.export_example(
        Path(settings.GALLERY_REPO_PATH), revision.git_commit, example.slug,
        Path(settings.GALLERY_DATA_DIR) / "exports" / revision.git_commit / example.slug,
    )
    provenance = {
        "slug": example.slug, "version": revision.number, "commit": revision.git_commit,
        "title": revision.metadata.get("title", example.title),
        "copied_at": timezone.now().isoformat(), "user": username,
    }
    links = [{"name": d.name, "target": d.target, "description": d.description, "size": d.size,
              "checksum": d.checksum, "licence": d.licence} for d in revision.data_links.all()]
    if job.params.get("backend", "filesystem") == "contents":
        from . import hub

        folder = hub.copy_through_contents(job=job, source=export, provenance=provenance,
                                           data_links=links)
    else:
        # The name is settled inside the copy (the first of folder, folder-2, … that is free);
        # a retry finds the folder an earlier attempt finished by the job id in it.
        folder = homes.copy_into_home(
            _copy_plan(job, source=export, provenance=provenance, data_links=links),
            as_user=settings.GALLERY_USE_AS_USER, timeout=settings.GALLERY_COPY_TIMEOUT,
            heartbeat=lambda: renew_lease(job),
            heartbeat_every=max(settings.GALLERY_JOB_LEASE / 3, 0.5),
        ).name
    rel = f"{settings.GALLERY_USE_DIR}/{folder}"
    env_file = revision.metadata.get("environment", "")
    return {
        "folder": folder,
        "path": f"~/{rel}",
        "lab_url": settings.GALLERY_LAB_URL_TEMPLATE.format(
            username=quote(username), path=quote(f"{rel}/{revision.notebook_name}")),
        "environment": {"file": env_file,
                        **environment_instructions(env_file, example.slug, rel)},
        "data_links": [d["name"] for d in links],
        "version": revision.number,
    }


def _copy_plan(job: Job, *, source: Path = Path(), provenance: dict[str, Any] | None = None,
               data_links: list[dict[str, Any]] | None = None) -> homes.CopyPlan:
    """The `filesystem` backend's plan for a Use job (source and provenance matter to a copy
    only: clearing a job's leftovers needs the rest)."""
    username = job.params["username"]
    return homes.CopyPlan(
        username=username, source=source, parent=homes.use_parent(username),
        home=homes.home_of(username), folder_name=job.params["folder"], job_id=str(job.pk),
        provenance=provenance or {}, data_links=data_links or [],
        delay=settings.GALLERY_COPY_DELAY, shown_parent=f"~/{settings.GALLERY_USE_DIR}",
    )


def _clear_use(job: Job) -> None:
    """Remove what the attempts of a Use may have left half-written (a temporary folder beside
    the target, a work folder in the user's server); a finished copy stays."""
    if job.params.get("backend", "filesystem") == "contents":
        from . import hub

        hub.clear_through_contents(job=job)
    else:
        homes.clear_leftovers(_copy_plan(job), as_user=settings.GALLERY_USE_AS_USER)


# --- jobs -----------------------------------------------------------------------------------


def _queue(kind: str, **fields: Any) -> Job:
    from . import tasks

    job = Job.objects.create(kind=kind, **fields)
    tasks.task_for(kind).delay_on_commit(str(job.pk))
    return job


def _queue_preview(revision: Revision) -> None:
    preview, _ = Preview.objects.get_or_create(sha256=revision.notebook_sha256)
    if preview.state == Preview.State.READY and preview_path(preview.sha256).exists():
        return
    if Job.objects.filter(kind=Job.Kind.PREVIEW, params__sha256=preview.sha256,
                          state__in=[Job.State.QUEUED, Job.State.RUNNING]).exists():
        return
    _queue(Job.Kind.PREVIEW, revision=revision, params={"sha256": preview.sha256})


def enqueue(job: Job) -> bool:
    """Ring the broker for a job; a broker that is down only delays it (the sweep rings again)."""
    from . import tasks

    return tasks.task_for(job.kind).delay(str(job.pk)) is not None


class LeaseLost(Exception):
    """Another worker took over a job whose lease this one failed to renew in time."""


# What the job page says while a job runs (set by the claim itself: no extra write).
RUNNING_MESSAGES = {Job.Kind.USE: "Copying the example into your home."}


def claim_job(job_id: str, worker: str) -> Job | None:
    """Take a job for this worker, or None when it is finished or held by a live lease.

    `worker` should be unique per attempt: finishing and renewing check it.
    """
    now = timezone.now()
    lease = now + timedelta(seconds=settings.GALLERY_JOB_LEASE)
    claimed = Job.objects.filter(pk=job_id).filter(
        Q(state=Job.State.QUEUED) | Q(state=Job.State.RUNNING, lease_until__lt=now)
    ).update(state=Job.State.RUNNING, worker=worker, lease_until=lease,
             attempts=F("attempts") + 1, started_at=now,
             message=Case(*(When(kind=k, then=Value(m)) for k, m in RUNNING_MESSAGES.items()),
                          default=F("message"), output_field=TextField()))
    if not claimed:
        return None
    return Job.objects.select_related("revision__example", "submission", "user").get(pk=job_id)


def renew_lease(job: Job) -> None:
    """Extend a running job's lease; raises LeaseLost when this attempt no longer holds it."""
    lease = timezone.now() + timedelta(seconds=settings.GALLERY_JOB_LEASE)
    if not Job.objects.filter(pk=job.pk, state=Job.State.RUNNING, worker=job.worker).update(
            lease_until=lease):
        raise LeaseLost(f"job {job.pk} is no longer held by {job.worker}")


MAX_ATTEMPTS = 3
GIVE_UP_AFTER = MAX_ATTEMPTS + 2  # attempts cut short (worker killed, lease lost) at most
GAVE_UP = "The job was interrupted too many times; try again."


def perform_job(job_id: str, *, worker: str = "") -> Job | None:
    """Run one job to its end. Safe to call any number of times for the same id."""
    # Node names repeat (both pool processes of a worker, a restarted worker): make each
    # attempt's name unique so that only the attempt holding the job can finish it.
    worker = f"{worker or socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
    job = claim_job(job_id, worker)
    if job is None:
        return None
    if job.attempts > GIVE_UP_AFTER:
        return _give_up(job)
    handler = {
        Job.Kind.CHECKS: _do_checks,
        Job.Kind.PREVIEW: _do_preview,
        Job.Kind.COMMIT: _do_commit,
        Job.Kind.USE: _do_use,
    }[Job.Kind(job.kind)]
    started = time.monotonic()
    try:
        result = handler(job)
    except LeaseLost as exc:
        log.warning("%s; leaving it to the worker that holds it", exc)
        return None
    except (homes.CopyError, notebooks.NotebookError, GalleryError) as exc:
        return _finish(job, Job.State.FAILED, message=str(exc))
    except Exception as exc:
        log.exception("job %s (%s) failed", job.pk, job.kind)
        if job.attempts < MAX_ATTEMPTS and job.kind != Job.Kind.USE:
            Job.objects.filter(pk=job.pk, worker=job.worker).update(
                state=Job.State.QUEUED, worker="", message=f"retrying after {type(exc).__name__}")
            return job
        return _finish(job, Job.State.FAILED, message=_internal_message(job, exc))
    log.info("job %s (%s) done in %.0f ms", job.pk, job.kind, (time.monotonic() - started) * 1e3)
    return _finish(job, Job.State.DONE, result=result)


def _give_up(job: Job) -> Job | None:
    """End a job whose attempts kept being cut short, after clearing what they left.

    The sweep rings such a Use once more rather than failing it itself: clearing needs a
    worker that reaches the user's home, which is a worker of the Use queue.
    """
    if job.kind == Job.Kind.USE:
        try:
            _clear_use(job)
        except LeaseLost as exc:
            log.warning("%s; leaving it to the worker that holds it", exc)
            return None
        except Exception:  # the job ends all the same; what is left is logged
            log.exception("could not clear what job %s left behind", job.pk)
    return _finish(job, Job.State.FAILED, message=GAVE_UP)


def _internal_message(job: Job, exc: Exception) -> str:
    if job.kind == Job.Kind.USE:  # the person sees this; the log has the details and paths
        return (f"The copy could not be made (an error in the gallery: {type(exc).__name__}). "
                "Try again; if it keeps failing, tell the centre's support.")
    return f"{type(exc).__name__}: {exc}"


def _finish(job: Job, state: str, *, result: dict[str, Any] | None = None,
            message: str = "") -> Job:
    fields = {"state": state, "result": result if result is not None else job.result,
              "message": message, "finished_at": timezone.now(), "lease_until": None}
    if Job.objects.filter(pk=job.pk, worker=job.worker).update(**fields):
        for name, value in fields.items():
            setattr(job, name, value)
    else:  # another attempt holds the job now: report what it did
        job.refresh_from_db()
    return job


def sweep_jobs() -> int:
    """Ring the broker again for jobs it may have lost; returns how many."""
    count = 0
    for job in Job.objects.stale().order_by("queued_at")[:500]:
        # A Use out of attempts is rung once more, for a worker to clear what it left and fail
        # it (`_give_up`); if even that is cut short, or for other kinds, the sweep fails it.
        last_ring = job.kind == Job.Kind.USE and job.attempts == GIVE_UP_AFTER
        if job.attempts >= GIVE_UP_AFTER and not last_ring:
            Job.objects.filter(pk=job.pk, state=job.state).update(
                state=Job.State.FAILED, finished_at=timezone.now(), lease_until=None,
                message=GAVE_UP)
            continue
        if not enqueue(job):
            break  # the broker is down: the next sweep tries again
        count += 1
        Job.objects.filter(pk=job.pk).update(rung_at=timezone.now())
    count_uses()
    return count


# --- worker-side work -------------------------------------------------------------------


def _do_checks(job: Job) -> dict[str, Any]:
    submission = job.submission
    assert submission is not None
    revision = submission.revision
    results = notebooks.run_checks(staged_folder(revision), revision.metadata)
    Submission.objects.filter(pk=submission.pk).update(
        checks=results, checks_state=Submission.ChecksState.DONE, updated=timezone.now())
    return {"checks": len(results), "failed": sum(r["status"] == "fail" for r in results)}


def preview_path(sha256: str) -> Path:
    return Path(settings.GALLERY_PREVIEW_DIR) / f"{sha256}.html"


def _do_preview(job: Job) -> dict[str, Any]:
    sha = job.params["sha256"]
    path = preview_path(sha)
    if not path.exists():
        revision = job.revision
        assert revision is not None
        data = (staged_folder(revision) / revision.notebook_name).read_bytes()
        started = time.monotonic()
        try:
            # In a forked child with time and memory limits; any failure is a plain reason.
            html = previews.render_isolated(data, limits=previews.PreviewLimits.from_settings())
        except previews.PreviewError as exc:
            Preview.objects.filter(sha256=sha).update(state=Preview.State.FAILED, error=str(exc))
            raise
        elapsed = int((time.monotonic() - started) * 1000)
        previews.write_preview_file(path, html.encode("utf-8"))
        Preview.objects.filter(sha256=sha).update(render_ms=elapsed)
    previews.write_preview_css(path.parent)
    Preview.objects.filter(sha256=sha).update(
        state=Preview.State.READY, size=path.stat().st_size, rendered_at=timezone.now(), error="")
    return {"sha256": sha}


def _person(user: AbstractBaseUser | None, fallback: str) -> repo.Person:
    if user is None:
        return repo.Person(fallback, f"{fallback}@localhost")
    name = user.get_full_name() or user.get_username()  # type: ignore[attr-defined]
    return repo.Person(name, user.email or f"{user.get_username()}@localhost")  # type: ignore


def _do_commit(job: Job) -> dict[str, Any]:
    submission = job.submission
    assert submission is not None
    revision = submission.revision
    example = submission.example
    sha = repo.commit_example(
        Path(settings.GALLERY_REPO_PATH), slug=example.slug, source=staged_folder(revision),
        author=_person(submission.contributor, "contributor"),
        committer=_person(job.user, "reviewer"),
        message=f"Publish {example.slug} revision {revision.number}: "
                f"{revision.metadata.get('title', example.title)}",
        submission_id=submission.pk, review_id=job.params.get("review", 0),
    )
    publish_revision(revision=revision, commit=sha, actor=job.user)
    return {"commit": sha}


# --- the index and the repository -----------------------------------------------------------


REVIEW_PERMISSIONS = ["review_submission", "view_submission", "change_submission",
                      "view_example", "change_example", "view_review", "view_job",
                      "view_statechange"]


def grant_review(user: AbstractBaseUser) -> None:
    """Make a user a reviewer: staff, with the permissions of the reviewer's desk."""
    from django.contrib.auth.models import Permission

    user.is_staff = True  # type: ignore[attr-defined]
    user.save()
    user.user_permissions.add(*Permission.objects.filter(  # type: ignore[attr-defined]
        content_type__app_label="gallery", codename__in=REVIEW_PERMISSIONS))


def revoke_review(user: AbstractBaseUser) -> None:
    """Take the reviewer's desk away again (the hub no longer says they review)."""
    from django.contrib.auth.models import Permission

    user.is_staff = False  # type: ignore[attr-defined]
    user.save()
    user.user_permissions.remove(*Permission.objects.filter(  # type: ignore[attr-defined]
        content_type__app_label="gallery", codename__in=REVIEW_PERMISSIONS))


def _user_for(person: repo.Person) -> AbstractBaseUser:
    from django.contrib.auth import get_user_model

    username = person.email.split("@")[0] if person.email.endswith("@localhost") else person.email
    user, created = get_user_model().objects.get_or_create(
        username=username[:150] or person.name[:150],
        defaults={"email": "" if person.email.endswith("@localhost") else person.email})
    if created:
        user.set_unusable_password()
        user.save()
    return user


def rebuild_index(*, repo_path: Path | None = None) -> list[str]:
    """Recreate examples, versions and approvals in the database from the repository.

    Existing rows are kept; what the repository has and the database lacks is added, and a
    preview is queued for every notebook whose preview file is missing. Returns the slugs seen.
    """
    repo_path = Path(repo_path or settings.GALLERY_REPO_PATH)
    seen: list[str] = []
    for published in repo.iter_published(repo_path):
        if published.slug not in seen:
            seen.append(published.slug)
        meta = notebooks.read_example_toml(published.files.get(notebooks.EXAMPLE_FILE, b""))
        nb_name = meta.get("notebook", "")
        if nb_name not in published.files:
            log.warning("skipping %s at %s: no notebook", published.slug, published.commit[:10])
            continue
        digest, _ = store_folder(published.files)
        author, committer = _user_for(published.author), _user_for(published.committer)
        with transaction.atomic():
            example, created = Example.objects.get_or_create(
                slug=published.slug,
                defaults={"title": meta.get("title", published.slug), "contributor": author})
            if created:
                _record(example=example, subject="example", from_state="",
                        to_state=example.state, actor=author, reason="restored from repository")
            revision = example.revisions.filter(git_commit=published.commit).first()
            if revision is None:
                revision = example.revisions.filter(content_hash=digest, git_commit="").first()
            if revision is None:
                number = (example.revisions.aggregate(n=Max("number"))["n"] or 0) + 1
                revision = Revision.objects.create(
                    example=example, number=number, content_hash=digest,
                    notebook_sha256=notebooks.sha256(published.files[nb_name]),
                    notebook_name=nb_name, metadata=meta,
                    files=[{"path": p, "size": len(d)} for p, d in sorted(published.files.items())],
                )
                DataLink.objects.bulk_create(
                    DataLink(revision=revision, name=d.get("name", ""), target=d.get("target", ""),
                             description=d.get("description", ""), size=d.get("size"),
                             checksum=d.get("checksum", ""), licence=d.get("licence", ""))
                    for d in meta.get("data", []))
                submission = Submission.objects.create(
                    example=example, revision=revision, contributor=author,
                    state=Submission.State.APPROVED, checks_state=Submission.ChecksState.PENDING)
                Review.objects.create(submission=submission, reviewer=committer,
                                      decision=Review.Decision.APPROVE,
                                      comment="restored from repository")
                _record(example=example, submission=submission, subject="submission",
                        from_state="", to_state=submission.state, actor=committer,
                        reason=f"restored from commit {published.commit[:10]}")
                _queue(Job.Kind.CHECKS, submission=submission, revision=revision)
            _queue_preview(revision)
        if not revision.git_commit:
            publish_revision(revision=revision, commit=published.commit, actor=committer)
    return seen


# --- bulk import ----------------------------------------------------------------------------

IMPORT_MAX_NOTEBOOKS = 500
_SKIP_DIRS = {".git", ".ipynb_checkpoints", "node_modules", "__pycache__", ".venv"}


@dataclass
class ImportReport:
    """What a bulk import did: the submissions it staged and, per notebook, why one was not."""

    source: str
    staged: list[Submission] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def import_notebooks(*, source: str, actor: AbstractBaseUser | None, ref: str = "",
                     anywhere: bool = False) -> ImportReport:
    """Stage every notebook of a folder or a git repository as a submission for review.

    Metadata comes from an `example.toml` beside the notebook, else from the notebook (its
    `title`/`summary`/`tags` metadata, its first heading and paragraph). A folder holding a
    single notebook travels with its files; an environment file is taken from the
    notebook's folder or the nearest one above it. A notebook whose content is already in
    the gallery is skipped, so an import can be repeated. `actor` None means the operator at
    the command line; from the web, local folders must lie under GALLERY_IMPORT_ROOTS unless
    `anywhere`.
    """
    if actor is not None and not is_reviewer(actor):
        raise NotAllowed("Only reviewers may import notebooks.")
    source = source.strip()
    if not source:
        raise GalleryError("Give a folder or a git repository URL.")
    local = Path(source).expanduser()
    with tempfile.TemporaryDirectory(prefix="gallery-import-") as tmp:
        if local.is_absolute() and local.is_dir() and not _is_bare_repo(local):
            if not (anywhere or actor is None):
                _require_import_root(local)
            root, authors = local.resolve(), None
        else:
            root = _clone(source, ref, Path(tmp) / "repo", anywhere=anywhere or actor is None)
            authors = _git_authors
        report = ImportReport(source=source)
        contributor = _import_user()
        found = sorted(_find_notebooks(root))
        if len(found) > IMPORT_MAX_NOTEBOOKS:
            raise GalleryError(f"{source} has {len(found)} notebooks; at most "
                               f"{IMPORT_MAX_NOTEBOOKS} can be imported at once.")
        for nb_path in found:
            rel = nb_path.relative_to(root).as_posix()
            try:
                submission = _import_one(root, nb_path, contributor,
                                         authors(root, nb_path) if authors else [])
            except (GalleryError, notebooks.NotebookError, OSError) as exc:
                report.skipped.append(f"{rel}: {exc}")
                continue
            if submission is None:
                report.skipped.append(f"{rel}: already in the gallery")
            else:
                report.staged.append(submission)
    if actor is not None:
        notify(user=actor, kind=Notification.Kind.IMPORTED, email=False,
               message=f"Import of {source}: {len(report.staged)} staged for review, "
                       f"{len(report.skipped)} skipped.")
    return report


def _is_bare_repo(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def _require_import_root(path: Path) -> None:
    resolved = path.resolve()
    roots = [Path(r).resolve() for r in settings.GALLERY_IMPORT_ROOTS]
    if not any(resolved == r or r in resolved.parents for r in roots):
        raise NotAllowed("Folders can be imported from the web only under GALLERY_IMPORT_ROOTS "
                         f"({', '.join(map(str, roots)) or 'none set'}); use the "
                         "import_notebooks command for other places.")


def _clone(url: str, ref: str, dest: Path, *, anywhere: bool) -> Path:
    import git

    remote = url.startswith(("https://", "http://", "ssh://", "git@"))
    if not remote:
        local = Path(url).expanduser()
        if not local.is_absolute() or not local.exists():
            raise GalleryError(f"{url} is neither a folder nor a git repository URL "
                               "(https://, ssh:// or git@).")
        if not anywhere:
            _require_import_root(local)
    try:
        git.Repo.clone_from(url, dest, depth=1, branch=ref or None, no_tags=True,
                            env={"GIT_TERMINAL_PROMPT": "0"}, kill_after_timeout=300)
    except git.GitCommandError as exc:
        detail = (exc.stderr or "").strip().splitlines()
        raise GalleryError(f"The repository {url} could not be cloned: "
                           f"{detail[-1] if detail else exc}") from None
    return dest


def _git_authors(root: Path, path: Path) -> list[str]:
    import git

    try:
        name = git.Repo(root).git.log("-1", "--format=%an", "--", str(path.relative_to(root)))
    except git.GitCommandError:
        return []
    return [name.strip()] if name.strip() else []


def _find_notebooks(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
        for name in filenames:
            if name.endswith(".ipynb") and not name.startswith("."):
                yield Path(dirpath) / name


def _import_user() -> AbstractBaseUser:
    from django.contrib.auth import get_user_model

    user, created = get_user_model().objects.get_or_create(username=settings.GALLERY_IMPORT_USER)
    if created:
        user.set_unusable_password()
        user.save()
    return user


def _first_markdown(nb: Any) -> tuple[str, str]:
    """The first heading and the first paragraph of a notebook's markdown."""
    title = summary = ""
    for cell in nb.cells:
        if cell.get("cell_type") != "markdown":
            continue
        for block in str(cell.get("source", "")).split("\n\n"):
            block = block.strip()
            if not block:
                continue
            if block.startswith("#") and not title:
                title = block.splitlines()[0].lstrip("#").strip()
                rest = "\n".join(block.splitlines()[1:]).strip()
                if rest and not summary:
                    summary = rest
            elif not summary and not block.startswith(("#", "!", "<", "|", "```")):
                summary = block
            if title and summary:
                return title, summary
    return title, summary


def _import_one(root: Path, nb_path: Path, contributor: AbstractBaseUser,
                authors: list[str]) -> Submission | None:
    data = nb_path.read_bytes()
    if Revision.objects.filter(notebook_sha256=notebooks.sha256(data)).exists():
        return None
    folder = nb_path.parent
    rel = nb_path.relative_to(root)
    toml_path = folder / notebooks.EXAMPLE_FILE
    toml = notebooks.read_example_toml(toml_path.read_bytes()) if toml_path.is_file() else {}
    if toml and toml.get("notebook") not in (None, nb_path.name):
        toml = {}  # the folder's example.toml describes another of its notebooks
    nb = notebooks.read_notebook(data)
    nb_meta = nb.metadata
    heading, paragraph = _first_markdown(nb)
    env_file = None
    for place in [folder, *folder.parents]:
        for name in notebooks.ENV_FILES:
            if (place / name).is_file():
                env_file = place / name
                break
        if env_file or place == root:
            break
    files: dict[str, bytes] = {}
    alone = folder != root and sum(1 for p in folder.glob("*.ipynb")) == 1
    if alone:
        skip = {nb_path, env_file, toml_path}
        for path in sorted(folder.rglob("*")):
            parts = path.relative_to(folder).parts
            if (path.is_file() and path not in skip and not path.name.endswith(".ipynb")
                    and not any(p.startswith(".") or p in _SKIP_DIRS for p in parts)):
                files[path.relative_to(folder).as_posix()] = path.read_bytes()
    tags = toml.get("tags") or nb_meta.get("tags") or (
        [rel.parent.parts[-1]] if rel.parent.parts else [])
    meta = ExampleMeta(
        title=str(toml.get("title") or nb_meta.get("title") or heading
                  or nb_path.stem.replace("_", " ").replace("-", " ").capitalize())[:200],
        summary=str(toml.get("summary") or nb_meta.get("summary") or paragraph)[:2000],
        tags=[str(t) for t in tags if isinstance(t, str)][:20],
        licence=str(toml.get("licence", "")),
        slug=slugify(rel.with_suffix("").as_posix().replace("/", "-"))[:80],
        data_links=toml.get("data", []), resources=toml.get("resources", {}),
        authors=toml.get("authors") or authors, kernel=str(toml.get("kernel", "")),
    )
    staged = StagedFiles(notebook_name=nb_path.name, notebook=data,
                         environment=(env_file.name, env_file.read_bytes()) if env_file else None,
                         files=files)
    return stage_submission(contributor=contributor, staged=staged, meta=meta)

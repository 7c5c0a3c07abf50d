"""Staging: a contributor's notebook and files become a revision in a content-addressed
folder, with its checks and preview queued; the sweep that removes folders nothing names.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, models, transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.text import slugify

from .. import notebooks, previews
from ..errors import Conflict, GalleryError, NotAllowed, NotFound
from ..models import (
    DataLink,
    Example,
    HubGroup,
    Job,
    Preview,
    Revision,
    Run,
    Submission,
    Tag,
    is_reviewer,
)
from ..schema import ExampleMeta, clean_meta
from .history import move_submission, record_change
from .queue import queue_job
from .runs import executed_notebook, queue_run_at_staging

log = logging.getLogger(__name__)


@dataclass
class StagedFiles:
    """What a contributor sends: the notebook and everything that travels with it."""

    notebook_name: str
    notebook: bytes
    environment: tuple[str, bytes] | None = None
    files: dict[str, bytes] = field(default_factory=dict)


def _folder_files(staged: StagedFiles, meta: ExampleMeta) -> dict[str, bytes]:
    files, env_name = checked_files(staged)
    files[notebooks.EXAMPLE_FILE] = notebooks.example_toml(
        meta.to_toml(notebook=next(iter(files)), environment=env_name or ""))
    notebooks.check_folder_tree(files)
    return files


def checked_files(staged: StagedFiles, *, what: str = "example"
                  ) -> tuple[dict[str, bytes], str | None]:
    """The files of an upload under the rules of staging: safe relative names, none twice,
    at most GALLERY_MAX_FILES of them and GALLERY_MAX_UPLOAD_BYTES in all, none both a file
    and a folder; the notebook first. Returns them and the environment file's name, if any.
    Raises NotebookError or GalleryError (413 for too large). Staging and a copy sent to
    someone (services/copies.py) take files alike; `what` names the thing in messages."""
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
        raise GalleryError(f"At most {settings.GALLERY_MAX_FILES} files per {what}.")
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
            f"The {what} is {total:,} bytes; the limit is {settings.GALLERY_MAX_UPLOAD_BYTES:,}.",
            status=413,
        )
    notebooks.check_folder_tree(files)
    return files, env_name


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


def _audience(groups: list[str], contributor: AbstractBaseUser) -> list[HubGroup]:
    """The hub groups a new example is for: only groups the contributor is a member or a
    reviewer of (the centre's reviewers may name any)."""
    if not groups:
        return []
    found = HubGroup.objects.filter(name__in=groups)
    if not is_reviewer(contributor):
        found = found.filter(models.Q(members=contributor) | models.Q(reviewers=contributor))
    found_list = list(found.distinct())
    missing = sorted(set(groups) - {g.name for g in found_list})
    if missing and not is_reviewer(contributor):
        raise NotAllowed(f"You can only share an example with groups you belong to; not with "
                         f"{', '.join(missing)[:200]}.")
    return found_list + [HubGroup.objects.get_or_create(name=n)[0] for n in missing]


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
    meta = clean_meta(meta)
    if example_slug:  # a revision is for the example's groups, whatever the form said
        meta.groups = _example_to_revise(example_slug, contributor, lock=False).group_names()
        audience: list[HubGroup] = []
    else:
        audience = _audience(meta.groups, contributor)
    try:
        nb = notebooks.read_notebook(staged.notebook)
        files = _folder_files(staged, meta)
    except notebooks.NotebookError as exc:
        raise GalleryError(str(exc)) from None
    nb_name = next(iter(files))
    digest, _ = store_folder(files)

    with transaction.atomic():
        if example_slug:
            example = _example_to_revise(example_slug, contributor, lock=True)
        else:
            example = _create_example(meta, contributor)
            example.groups.set(audience)
            record_change(example=example, subject="example", from_state="", to_state=example.state,
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
            files=[{"path": p, "size": len(d), "sha256": notebooks.sha256(d)}
                   for p, d in sorted(files.items())],
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
            move_submission(older, Submission.State.WITHDRAWN, actor=contributor,
                             reason=f"superseded by revision {number}")
        submission = Submission.objects.create(
            example=example, revision=revision, contributor=contributor
        )
        record_change(example=example, submission=submission, subject="submission", from_state="",
                to_state=submission.state, actor=contributor, reason=f"revision {number}")
        queue_job(Job.Kind.CHECKS, submission=submission, revision=revision)
        queue_preview(revision)
        queue_run_at_staging(revision)
    return submission


MAX_NOTEBOOK_PREVIEWS = 20  # notebooks of one revision that get a preview of their own


def queue_preview(revision: Revision) -> None:
    """Render the previews of a revision's notebooks that are not there yet: the main one, and
    the others its links may lead to (each keyed by `previews.revision_preview_key`: its
    bytes beside the revision's files); a group's example's apart from the public ones
    (`preview_path`)."""
    private = revision.example.groups.exists()
    _queue_preview(revision, previews.revision_preview_key(revision), "", private)
    others = [f for f in revision.files
              if f["path"].endswith(".ipynb") and f["path"] != revision.notebook_name]
    for entry in others[:MAX_NOTEBOOK_PREVIEWS - 1]:
        sha = entry.get("sha256")
        if sha is None:  # a revision staged before its files were hashed
            try:
                sha = notebooks.sha256((staged_folder(revision) / entry["path"]).read_bytes())
            except OSError:
                continue
        key = previews.revision_preview_key(revision, notebook_sha256=sha,
                                            notebook=entry["path"])
        _queue_preview(revision, key, entry["path"], private)


def _queue_preview(revision: Revision, key: str, path: str, private: bool) -> None:
    preview, _ = Preview.objects.get_or_create(sha256=key)
    if preview.state == Preview.State.READY and preview_path(preview.sha256,
                                                             private=private).exists():
        return
    if Job.objects.filter(kind=Job.Kind.PREVIEW, params__sha256=preview.sha256,
                          params__private=private,
                          state__in=[Job.State.QUEUED, Job.State.RUNNING]).exists():
        return
    params = {"sha256": preview.sha256, "private": private, **({"path": path} if path else {})}
    queue_job(Job.Kind.PREVIEW, revision=revision, params=params)


def do_checks(job: Job) -> dict[str, Any]:
    submission = job.submission
    assert submission is not None
    revision = submission.revision
    results = notebooks.run_checks(staged_folder(revision), revision.metadata)
    resolve = any(r["name"] == "environment" and r["status"] == "pass" for r in results)
    if resolve:  # unknown packages and conflicting pins show only when uv resolves the spec
        results.append({"name": RESOLVE_CHECK, "status": "pending",
                        "message": "Being resolved on the environments queue."})
    with transaction.atomic():
        Submission.objects.filter(pk=submission.pk).update(
            checks=results, checks_state=Submission.ChecksState.DONE, updated=timezone.now())
        if resolve:
            queue_job(Job.Kind.ENVIRONMENT, submission=submission, revision=revision,
                      params={"resolve": True},
                      message="Waiting for a free worker to resolve the environment.")
    return {"checks": len(results), "failed": sum(r["status"] == "fail" for r in results)}


RESOLVE_CHECK = "environment resolves"


def record_check(submission_id: int, check: dict[str, str]) -> None:
    """Put one check's result in a submission's checks, in place of its earlier one."""
    with transaction.atomic():
        submission = Submission.objects.select_for_update().filter(pk=submission_id).first()
        if submission is None:
            return
        submission.checks = [c for c in submission.checks if c.get("name") != check["name"]] \
            + [check]
        submission.updated = timezone.now()
        submission.save(update_fields=["checks", "updated"])


def revision_preview_keys(revision: Revision) -> set[str]:
    """The keys of every preview a revision shows: its notebooks, and the executed copies of
    its runs (`previews.revision_preview_key`)."""
    keys = {previews.revision_preview_key(revision)}
    for entry in revision.files:
        if entry["path"].endswith(".ipynb") and "sha256" in entry:
            keys.add(previews.revision_preview_key(revision, notebook_sha256=entry["sha256"],
                                                   notebook=entry["path"]))
    keys.update(previews.revision_preview_key(revision, notebook_sha256=run.outputs_sha256)
                for run in revision.runs.all() if run.outputs_sha256)
    return keys


def example_preview_keys(example: Example) -> set[str]:
    """The keys of every preview an example shows, of all its revisions."""
    keys: set[str] = set()
    for revision in example.revisions.prefetch_related("runs"):
        revision.example = example
        keys |= revision_preview_keys(revision)
    return keys


def preview_path(sha256: str, *, private: bool = False) -> Path:
    """Where a preview file is, by its key (`previews.revision_preview_key`): a public one in
    GALLERY_PREVIEW_DIR, served to anyone who knows its key; one of a group's example
    (`private`) in GALLERY_GROUP_PREVIEW_DIR, served only through the example, to those who
    see it."""
    folder = settings.GALLERY_GROUP_PREVIEW_DIR if private else settings.GALLERY_PREVIEW_DIR
    return Path(folder) / f"{sha256}.html"


def _notebook_to_preview(job: Job, revision: Revision) -> bytes:
    """The revision's notebook, or the executed copy of a run (a notebook saved without
    outputs, previewed with those of its verified run)."""
    if job.params.get("run"):
        run = Run.objects.get(pk=job.params["run"])
        data = executed_notebook(run, revision.notebook_name)
        if data is None:
            raise GalleryError("The executed notebook of the run is gone.")
        return data
    return (staged_folder(revision) / revision.notebook_name).read_bytes()


def _example_url(revision: Revision) -> str:
    """The example's page as a preview links to it: under GALLERY_PUBLIC_URL when set; else
    on the gallery's own origin, which is the preview's too unless GALLERY_PREVIEW_BASE_URL
    moves previews elsewhere (then nothing to link to)."""
    from django.urls import reverse

    page = reverse("example", args=[revision.example.slug])
    if settings.GALLERY_PUBLIC_URL:
        return settings.GALLERY_PUBLIC_URL.rstrip("/") + page
    return "" if settings.GALLERY_PREVIEW_BASE_URL else page


def do_preview(job: Job) -> dict[str, Any]:
    sha = job.params["sha256"]  # the preview's key
    path = preview_path(sha, private=bool(job.params.get("private")))
    if not path.exists():
        revision = job.revision
        assert revision is not None
        folder = staged_folder(revision)
        if job.params.get("run"):  # a run's executed notebook, with the revision's files
            name, data = revision.notebook_name, _notebook_to_preview(job, revision)
        else:
            name = job.params.get("path") or revision.notebook_name
            if name not in {f["path"] for f in revision.files}:
                raise GalleryError(f"{name} is not a file of revision {revision.pk}.")
            data = (folder / name).read_bytes()
        # The key of the same notebook beside the same files: how links to the example's
        # other notebooks find theirs.
        source = previews.ExampleSource(folder=str(folder), notebook=name,
                                        example_url=_example_url(revision),
                                        files=previews.revision_files_digest(revision),
                                        example=revision.example.slug,
                                        private=bool(job.params.get("private")))
        started = time.monotonic()
        try:
            # In a forked child with time and memory limits; any failure is a plain reason.
            html = previews.render_isolated(data, limits=previews.PreviewLimits.from_settings(),
                                            source=source)
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


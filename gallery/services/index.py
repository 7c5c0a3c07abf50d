"""The index and the repository: rebuild the database from the examples repository, and bulk
import a folder or a git repository of notebooks into the review queue.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Max
from django.utils.text import slugify

from .. import notebooks, repo
from ..errors import GalleryError, NotAllowed
from ..models import (
    DataLink,
    Example,
    HubGroup,
    Job,
    Notification,
    Review,
    Revision,
    Submission,
    is_reviewer,
)
from ..schema import SLUG_MAX, TAGS_MAX, TITLE_MAX, ExampleMeta, clean_groups
from .history import record_change
from .notifications import notify
from .queue import queue_job
from .review import publish_revision
from .staging import StagedFiles, queue_preview, stage_submission, store_folder
from .users import import_user, user_for_person

log = logging.getLogger(__name__)


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
        try:
            groups = clean_groups(meta.get("groups", []))
        except GalleryError as exc:  # never published to all for want of a readable audience
            log.warning("skipping %s at %s: %s", published.slug, published.commit[:10], exc)
            continue
        if published.audience_only:  # only who sees it changed: its groups, as the file says
            example = Example.objects.filter(slug=published.slug).first()
            if example is not None and groups != example.group_names():
                example.groups.set([HubGroup.objects.get_or_create(name=n)[0] for n in groups])
            continue
        digest, _ = store_folder(published.files)
        author, committer = user_for_person(published.author), user_for_person(published.committer)
        with transaction.atomic():
            example, created = Example.objects.get_or_create(
                slug=published.slug,
                defaults={"title": meta.get("title", published.slug), "contributor": author})
            if created:
                record_change(example=example, subject="example", from_state="",
                        to_state=example.state, actor=author, reason="restored from repository")
            # Its groups as its example.toml says (the newest commit, read last, decides).
            if groups != example.group_names():
                example.groups.set([HubGroup.objects.get_or_create(name=n)[0] for n in groups])
            revision = example.revisions.filter(git_commit=published.commit).first()
            if revision is None:
                revision = example.revisions.filter(content_hash=digest, git_commit="").first()
            if revision is None:
                number = (example.revisions.aggregate(n=Max("number"))["n"] or 0) + 1
                revision = Revision.objects.create(
                    example=example, number=number, content_hash=digest,
                    notebook_sha256=notebooks.sha256(published.files[nb_name]),
                    notebook_name=nb_name, metadata=meta,
                    files=[{"path": p, "size": len(d), "sha256": notebooks.sha256(d)}
                           for p, d in sorted(published.files.items())],
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
                record_change(example=example, submission=submission, subject="submission",
                        from_state="", to_state=submission.state, actor=committer,
                        reason=f"restored from commit {published.commit[:10]}")
                queue_job(Job.Kind.CHECKS, submission=submission, revision=revision)
            elif revision.content_hash == digest and not all(
                    "sha256" in f for f in revision.files):
                # Staged before its files were hashed: hashed now, its previews are keyed by
                # the files they show (and rendered again under that key, below).
                revision.files = [{"path": p, "size": len(d), "sha256": notebooks.sha256(d)}
                                  for p, d in sorted(published.files.items())]
                revision.save(update_fields=["files"])
            queue_preview(revision)
        if not revision.git_commit:
            publish_revision(revision=revision, commit=published.commit, actor=committer)
    return seen


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
        contributor = import_user()
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
    meta = ExampleMeta.from_toml(
        toml, title=nb_meta.get("title") or heading
        or nb_path.stem.replace("_", " ").replace("-", " ").capitalize(),
        summary=nb_meta.get("summary") or paragraph, authors=authors,
        slug=slugify(rel.with_suffix("").as_posix().replace("/", "-"))[:SLUG_MAX],
    )
    # What a notebook's own metadata or headings say is cut to fit, not refused.
    meta.title, meta.summary = str(meta.title)[:TITLE_MAX], str(meta.summary)[:2000]
    meta.tags = [str(t) for t in tags if isinstance(t, str)][:TAGS_MAX]
    meta.licence, meta.kernel = str(meta.licence), str(meta.kernel)
    staged = StagedFiles(notebook_name=nb_path.name, notebook=data,
                         environment=(env_file.name, env_file.read_bytes()) if env_file else None,
                         files=files)
    return stage_submission(contributor=contributor, staged=staged, meta=meta)


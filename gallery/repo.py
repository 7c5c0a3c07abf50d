"""The examples git repository: the canonical store of approved examples.

One folder per example, one commit per approval. Commits are serialised with an exclusive
lock on a file inside `.git`, so approvals racing in several workers never lose a commit or
break the repository. Nothing here knows about Django requests.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import git

TRAILER_SUBMISSION = "Gallery-Submission"
TRAILER_REVIEW = "Gallery-Review"
TRAILER_AUDIENCE = "Gallery-Audience"  # a change of who sees an example (its groups)


@dataclass(frozen=True)
class Person:
    name: str
    email: str

    def actor(self) -> git.Actor:
        return git.Actor(self.name, self.email)


def open_repo(path: Path) -> git.Repo:
    """The repository at `path`, created (with an initial commit) if it does not exist."""
    path = Path(path)
    if (path / ".git").is_dir():
        return git.Repo(path)
    path.mkdir(parents=True, exist_ok=True)
    with _lock(path, create=True):
        if (path / ".git").is_dir():
            return git.Repo(path)
        repo = git.Repo.init(path, initial_branch="main")
        readme = path / "README.md"
        readme.write_text("# Examples\n\nApproved examples of the gallery, one folder each.\n")
        repo.index.add(["README.md"])
        gallery = git.Actor("Gallery", "gallery@localhost")
        repo.index.commit("Start the examples repository", author=gallery, committer=gallery)
        return repo


@contextmanager
def _lock(path: Path, create: bool = False) -> Iterator[None]:
    # Creating the repository is locked from beside it: there is no .git to hold a lock yet.
    lock_path = (path.parent / f".{path.name}.init-lock" if create
                 else path / ".git" / "gallery.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def find_commit(repo: git.Repo, submission_id: int | str, trailer: str = TRAILER_SUBMISSION
                ) -> str | None:
    """The commit that already published this submission (or made this change), if any:
    makes commits idempotent."""
    needle = f"{trailer}: {submission_id}"
    out = repo.git.log("--format=%H", f"--grep=^{needle}$", "-n", "1", "HEAD")
    return out.strip() or None


def commit_example(
    repo_path: Path,
    *,
    slug: str,
    source: Path,
    author: Person,
    committer: Person,
    message: str,
    submission_id: int,
    review_id: int,
) -> str:
    """Replace `<slug>/` with the contents of `source` and commit it; returns the commit sha.

    Calling it again for the same submission returns the existing commit.
    """
    repo = open_repo(repo_path)
    with _lock(Path(repo_path)):
        existing = find_commit(repo, submission_id)
        if existing:
            return existing
        # Reset anything a killed earlier attempt may have left in the work tree.
        repo.git.reset("--hard", "HEAD")
        repo.git.clean("-fdq", "--", slug) if (Path(repo_path) / slug).exists() else None
        target = Path(repo_path) / slug
        if target.exists():
            repo.git.rm("-r", "-q", "--cached", "--ignore-unmatch", "--", slug)
            shutil.rmtree(target)
        shutil.copytree(source, target, symlinks=False)
        repo.git.add("-A", "--", slug)
        full = (
            f"{message}\n\n{TRAILER_SUBMISSION}: {submission_id}\n{TRAILER_REVIEW}: {review_id}\n"
        )
        commit = repo.index.commit(
            full, author=author.actor(), committer=committer.actor(), skip_hooks=True
        )
        return commit.hexsha


def commit_file(repo_path: Path, *, slug: str, name: str, rewrite: Callable[[bytes], bytes],
                committer: Person, message: str, change_id: str) -> str | None:
    """Rewrite one file of `<slug>/` as it is at HEAD and commit it with the change's trailer;
    returns the commit sha, or None when the repository has no such file (the example was
    never published). Calling it again for the same change returns the existing commit."""
    repo = open_repo(repo_path)
    with _lock(Path(repo_path)):
        existing = find_commit(repo, change_id, TRAILER_AUDIENCE)
        if existing:
            return existing
        repo.git.reset("--hard", "HEAD")
        path = Path(repo_path) / slug / name
        if path.is_symlink() or not path.is_file():
            return None
        path.write_bytes(rewrite(path.read_bytes()))
        repo.git.add("--", f"{slug}/{name}")
        if not repo.index.diff("HEAD"):
            return repo.head.commit.hexsha  # already as wanted
        commit = repo.index.commit(f"{message}\n\n{TRAILER_AUDIENCE}: {change_id}\n",
                                   author=committer.actor(), committer=committer.actor(),
                                   skip_hooks=True)
        return commit.hexsha


def export_example(repo_path: Path, commit: str, slug: str, dest: Path) -> Path:
    """Write the example folder as of `commit` to `dest` (created atomically); returns dest."""
    if dest.is_dir():
        return dest
    repo = git.Repo(repo_path)
    tree = repo.commit(commit).tree / slug
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{slug}.", dir=dest.parent))
    try:
        for item in tree.traverse():
            rel = Path(item.path).relative_to(slug)
            if item.type == "tree":
                (tmp / rel).mkdir(parents=True, exist_ok=True)
            elif item.type == "blob" and item.mode & 0o170000 == 0o100000:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                with open(tmp / rel, "wb") as fh:
                    item.stream_data(fh)
        for root, _dirs, files in os.walk(tmp):
            os.chmod(root, 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


@dataclass
class Published:
    slug: str
    commit: str
    files: dict[str, bytes]
    author: Person
    committer: Person
    submission_id: int | None
    review_id: int | None
    audience_only: bool = False  # a change of its groups, not a version


def iter_published(repo_path: Path) -> Iterator[Published]:
    """Every approval in the repository, oldest first, with the example as it was then; and
    every change of an example's groups (`audience_only`)."""
    repo = git.Repo(repo_path)
    for commit in repo.iter_commits("HEAD", reverse=True):
        trailers = _trailers(str(commit.message))
        if TRAILER_SUBMISSION not in trailers and TRAILER_AUDIENCE not in trailers:
            continue
        changed = {Path(p).parts[0] for p in commit.stats.files if "/" in p}
        for slug in sorted(changed):
            try:
                tree = commit.tree / slug
            except KeyError:
                continue
            files = {
                str(Path(b.path).relative_to(slug)): b.data_stream.read()
                for b in tree.traverse()
                if b.type == "blob"
            }
            yield Published(
                slug=slug,
                commit=commit.hexsha,
                files=files,
                author=Person(commit.author.name or "", commit.author.email or ""),
                committer=Person(commit.committer.name or "", commit.committer.email or ""),
                submission_id=_int(trailers.get(TRAILER_SUBMISSION)),
                review_id=_int(trailers.get(TRAILER_REVIEW)),
                audience_only=TRAILER_SUBMISSION not in trailers,
            )


def _trailers(message: str) -> dict[str, str]:
    out = {}
    for line in message.strip().splitlines()[-5:]:
        key, sep, value = line.partition(": ")
        if sep and key.startswith("Gallery-"):
            out[key] = value.strip()
    return out


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None

"""The examples repository, against real temporary git repositories."""

import multiprocessing
from pathlib import Path

import git
import pytest

from gallery import repo

AUTHOR = repo.Person("Connor Contributor", "connor@example.org")
REVIEWER = repo.Person("Rita Reviewer", "rita@example.org")


def make_folder(base: Path, name: str, text: str = "hello") -> Path:
    folder = base / name
    folder.mkdir(parents=True)
    (folder / "example.toml").write_text(f'title = "{name}"\nnotebook = "nb.ipynb"\n')
    (folder / "nb.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, '
                                     f'"nbformat_minor": 5, "x": "{text}"}}')
    return folder


def commit(path: Path, source: Path, slug: str, submission: int) -> str:
    return repo.commit_example(path, slug=slug, source=source, author=AUTHOR, committer=REVIEWER,
                               message=f"Publish {slug}", submission_id=submission, review_id=7)


def test_it_commits_with_author_committer_and_trailers(tmp_path):
    sha = commit(tmp_path / "r", make_folder(tmp_path / "src", "demo"), "demo", 1)
    c = git.Repo(tmp_path / "r").commit(sha)
    assert (c.author.name, c.author.email) == ("Connor Contributor", "connor@example.org")
    assert (c.committer.name, c.committer.email) == ("Rita Reviewer", "rita@example.org")
    assert "Gallery-Submission: 1\nGallery-Review: 7" in c.message
    assert sorted(b.path for b in (c.tree / "demo").traverse()) == ["demo/example.toml",
                                                                     "demo/nb.ipynb"]


def test_it_returns_the_same_commit_when_asked_twice(tmp_path):
    src = make_folder(tmp_path / "src", "demo")
    first = commit(tmp_path / "r", src, "demo", 1)
    again = commit(tmp_path / "r", src, "demo", 1)
    assert first == again
    assert len(list(git.Repo(tmp_path / "r").iter_commits())) == 2  # the initial one + ours


def test_it_replaces_removed_files_in_a_new_revision(tmp_path):
    src = make_folder(tmp_path / "src", "demo")
    (src / "old.txt").write_text("gone soon")
    commit(tmp_path / "r", src, "demo", 1)
    (src / "old.txt").unlink()
    sha = commit(tmp_path / "r", src, "demo", 2)
    names = {b.name for b in (git.Repo(tmp_path / "r").commit(sha).tree / "demo").blobs}
    assert "old.txt" not in names


def test_it_exports_an_example_as_of_a_commit(tmp_path):
    src = make_folder(tmp_path / "src", "demo", text="v1")
    first = commit(tmp_path / "r", src, "demo", 1)
    (src / "nb.ipynb").write_text("changed")
    commit(tmp_path / "r", src, "demo", 2)
    out = repo.export_example(tmp_path / "r", first, "demo", tmp_path / "export" / "demo")
    assert "v1" in (out / "nb.ipynb").read_text()


def _approve_in_process(args):  # type: ignore[no-untyped-def]
    path, source, slug, submission = args
    return commit(Path(path), Path(source), slug, submission)


@pytest.mark.parametrize("n", [8])
def test_it_serialises_racing_approvals_without_losing_a_commit(tmp_path, n):
    repo.open_repo(tmp_path / "r")
    jobs = []
    for i in range(n):
        src = make_folder(tmp_path / f"src{i}", f"ex{i}", text=str(i))
        jobs.append((str(tmp_path / "r"), str(src), f"ex{i}", 100 + i))
    with multiprocessing.get_context("fork").Pool(4) as pool:
        shas = pool.map(_approve_in_process, jobs)
    r = git.Repo(tmp_path / "r")
    assert len(set(shas)) == n
    published = {t.name for t in r.head.commit.tree.trees}
    assert published == {f"ex{i}" for i in range(n)}
    assert len(list(r.iter_commits())) == n + 1
    r.git.fsck("--strict")  # raises when the repository is broken
    assert not r.is_dirty(untracked_files=True)


def test_it_lists_published_examples_for_a_rebuild(tmp_path):
    commit(tmp_path / "r", make_folder(tmp_path / "a", "one"), "one", 1)
    commit(tmp_path / "r", make_folder(tmp_path / "b", "two"), "two", 2)
    found = list(repo.iter_published(tmp_path / "r"))
    assert [(p.slug, p.submission_id, p.review_id) for p in found] == [("one", 1, 7),
                                                                       ("two", 2, 7)]
    assert found[0].author == AUTHOR and found[0].committer == REVIEWER
    assert set(found[1].files) == {"example.toml", "nb.ipynb"}

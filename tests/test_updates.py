"""Update my copy: the three-way merge on real notebooks, the update written as the user into
their copy (real unix users, planted links), and the API."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from django.test import override_settings
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from gallery import homes, merge, services
from gallery.models import Example, Job

from . import test_homes
from .base import GalleryTestCase, make_user, stage
from .test_homes import Stage, changes, needs_root, snapshot

# The real unix users and homes of tests/test_homes.py.
stage_root = test_homes.stage_root
st = test_homes.st

CELLS = ["# Sums\n\nAdds two numbers.", "a = 1", "b = 2", "print(a + b)"]


def notebook(sources: list[str] = CELLS) -> nbformat.NotebookNode:
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}})
    for i, src in enumerate(sources):
        if src.startswith("#"):
            nb.cells.append(new_markdown_cell(src, id=f"cell-{i}"))
        else:
            nb.cells.append(new_code_cell(src, id=f"cell-{i}", execution_count=i, outputs=[
                new_output("stream", name="stdout", text=f"{i}\n")]))
    return nb


def edited(nb: nbformat.NotebookNode, **cells: str) -> bytes:
    out = copy.deepcopy(nb)
    for key, src in cells.items():
        out.cells[int(key[1:])].source = src
    return nbformat.writes(out).encode()


BASE = nbformat.writes(notebook()).encode()


def cells_of(data: bytes) -> list[str]:
    return [c.source for c in nbformat.reads(data.decode(), as_version=4).cells]


# --- the merge, on bytes ---------------------------------------------------------------------


def test_it_keeps_the_users_edit_and_takes_the_new_versions_change() -> None:
    nb = notebook()
    [out] = merge.merge_example({"n.ipynb": BASE}, {"n.ipynb": edited(nb, c1="a = 10")},
                                {"n.ipynb": edited(nb, c2="b = 3")}, version=2)
    assert out.status == "merged"
    assert cells_of(out.data)[1:3] == ["a = 10", "b = 3"]
    assert {(c["cell"], c["side"]) for c in out.cells} == {(2, "yours"), (3, "new version")}


def test_it_marks_a_cell_changed_on_both_sides_as_nbdime_does() -> None:
    nb = notebook()
    [out] = merge.merge_example({"n.ipynb": BASE}, {"n.ipynb": edited(nb, c2="b = 20")},
                                {"n.ipynb": edited(nb, c2="b = 3")}, version=2)
    assert out.status == "conflict"
    assert cells_of(out.data)[2] == "<<<<<<< local\nb = 20\n=======\nb = 3\n>>>>>>> remote"
    assert out.conflicts and all(c["cell"] == 3 for c in out.conflicts)


def test_it_keeps_a_changed_helper_and_puts_the_new_one_beside_it() -> None:
    outs = {o.path: o for o in merge.merge_example(
        {"h.py": b"X = 1\n", "u.py": b"U = 1\n", "same.txt": b"s"},
        {"h.py": b"X = 100\n", "u.py": b"U = 1\n", "same.txt": b"s"},
        {"h.py": b"X = 2\n", "u.py": b"U = 2\n", "same.txt": b"s", "new.txt": b"n"},
        version=2)}
    assert (outs["h.py"].status, outs["h.py"].beside, outs["h.py"].data) == (
        "kept", "h.v2.py", b"X = 2\n")
    assert (outs["u.py"].status, outs["u.py"].data) == ("updated", b"U = 2\n")
    assert (outs["same.txt"].status, outs["same.txt"].writes) == ("unchanged", False)
    assert outs["new.txt"].status == "added"


# --- through the service, as real users --------------------------------------------------------


def _approve(contributor, reviewer, capture, *, notebook_bytes: bytes, helper: bytes,  # type: ignore[no-untyped-def]
             slug: str = "") -> Example:
    with capture(execute=True):
        submission = stage(contributor, notebook=notebook_bytes, example_slug=slug,
                           files={"helper.py": helper}, environment=None, data_links=[])
    with capture(execute=True):
        services.approve_submission(submission=submission, reviewer=reviewer)
    return Example.objects.get(pk=submission.example_id)


@pytest.fixture
def versions(st: Stage, django_capture_on_commit_callbacks):  # type: ignore[no-untyped-def]
    """Version 1 used by alice (and bob) into ~/examples/demo; returns a maker of version 2."""
    capture = django_capture_on_commit_callbacks
    contributor, reviewer = make_user("connor"), make_user("rita", reviewer=True)
    example = _approve(contributor, reviewer, capture, notebook_bytes=BASE, helper=b"X = 1\n")
    users = {}
    for account in (st.alice, st.bob):
        users[account.name] = make_user(account.name)
        with capture(execute=True):
            job = services.queue_use(example=example, user=users[account.name],
                                     folder_name="demo")
        job.refresh_from_db()
        assert job.state == Job.State.DONE, job.message

    def publish(**cells: str) -> Example:
        return _approve(contributor, reviewer, capture, slug=example.slug,
                        notebook_bytes=edited(notebook(), **cells), helper=b"X = 2\n")

    def update(account, apply: bool = True) -> Job:  # type: ignore[no-untyped-def]
        with capture(execute=True):
            job = services.queue_update(example=Example.objects.get(pk=example.pk),
                                        user=users[account.name], folder="demo", apply=apply)
        job.refresh_from_db()
        return job

    return publish, update


def _edit_as(account, path: Path, data: bytes) -> None:  # type: ignore[no-untyped-def]
    path.write_bytes(data)
    os.chown(path, account.uid, account.gid)


@needs_root
@pytest.mark.django_db
def test_it_updates_a_copy_keeping_the_users_edits_as_the_user(st: Stage, versions) -> None:  # type: ignore[no-untyped-def]
    publish, update = versions
    copy_dir = st.alice.examples / "demo"
    mine = json.loads((copy_dir / "hello.ipynb").read_text())
    mine["cells"][1]["source"] = "a = 10"
    _edit_as(st.alice, copy_dir / "hello.ipynb", json.dumps(mine).encode())
    _edit_as(st.alice, copy_dir / "helper.py", b"X = 100  # mine\n")
    publish(c2="b = 3")

    before = snapshot(st.root)
    plan = update(st.alice, apply=False)
    assert plan.state == Job.State.DONE, plan.message
    files = {f["path"]: f for f in plan.result["files"]}
    assert files["hello.ipynb"]["status"] == "merged"
    assert (files["helper.py"]["status"], files["helper.py"]["beside"]) == ("kept", "helper.v2.py")
    assert (plan.result["from_version"], plan.result["to_version"]) == (1, 2)
    assert changes(before, snapshot(st.root)) == set()  # the plan writes nothing

    job = update(st.alice)
    assert job.state == Job.State.DONE, job.message
    assert cells_of((copy_dir / "hello.ipynb").read_bytes())[1:3] == ["a = 10", "b = 3"]
    assert (copy_dir / "helper.py").read_bytes() == b"X = 100  # mine\n"
    assert (copy_dir / "helper.v2.py").read_bytes() == b"X = 2\n"
    backup = copy_dir / homes.BACKUP_DIR / job.result["backup"].rsplit("/", 1)[1]
    assert cells_of((backup / "hello.ipynb").read_bytes())[1] == "a = 10"
    assert (backup / "helper.py").read_bytes() == b"X = 100  # mine\n"
    provenance = json.loads((copy_dir / homes.PROVENANCE_FILE).read_text())
    assert (provenance["version"], provenance["updated_from"], provenance["job"]) == (
        2, 1, str(job.pk))
    outside = {p for p in changes(before, snapshot(st.root))
               if not p.startswith(str(st.alice.home) + "/")}
    assert outside == set()
    for path in [copy_dir, *copy_dir.rglob("*")]:
        assert os.lstat(path).st_uid == st.alice.uid, path
    assert not list(copy_dir.rglob("*.gallery-tmp-*"))
    # Done once: the same job run again changes nothing; the page no longer calls it older.
    services.perform_job(str(job.pk))
    assert services.find_copies(example=Example.objects.get(slug=provenance["slug"]),
                                user=job.user)[0]["outdated"] is False


@needs_root
@pytest.mark.django_db
def test_it_marks_a_conflict_and_keeps_a_backup(st: Stage, versions) -> None:  # type: ignore[no-untyped-def]
    publish, update = versions
    copy_dir = st.alice.examples / "demo"
    mine = json.loads((copy_dir / "hello.ipynb").read_text())
    mine["cells"][2]["source"] = "b = 20"
    _edit_as(st.alice, copy_dir / "hello.ipynb", json.dumps(mine).encode())
    publish(c2="b = 3")
    job = update(st.alice)
    assert job.state == Job.State.DONE, job.message
    assert job.result["conflicts"] >= 1
    [notebook_result] = [f for f in job.result["files"] if f["path"] == "hello.ipynb"]
    assert notebook_result["status"] == "conflict"
    assert {c["cell"] for c in notebook_result["conflicts"]} == {3}
    assert cells_of((copy_dir / "hello.ipynb").read_bytes())[2] == (
        "<<<<<<< local\nb = 20\n=======\nb = 3\n>>>>>>> remote")
    [backup] = (copy_dir / homes.BACKUP_DIR).iterdir()
    assert cells_of((backup / "hello.ipynb").read_bytes())[2] == "b = 20"


def _plant_file_link(st: Stage) -> None:
    target = st.alice.examples / "demo" / "hello.ipynb"
    target.unlink()
    target.symlink_to(st.rootonly / "passwd")
    os.lchown(target, st.alice.uid, st.alice.gid)


def _plant_backup_link(st: Stage) -> None:
    target = st.alice.examples / "demo" / homes.BACKUP_DIR
    target.symlink_to(st.rootonly)
    os.lchown(target, st.alice.uid, st.alice.gid)


def _plant_copy_link(st: Stage) -> None:
    folder = st.alice.examples / "demo"
    os.rename(folder, st.alice.examples / "moved")
    folder.symlink_to(st.bob.examples / "demo")
    os.lchown(folder, st.alice.uid, st.alice.gid)


@needs_root
@pytest.mark.django_db
@pytest.mark.parametrize("plant", [_plant_file_link, _plant_backup_link, _plant_copy_link],
                         ids=["file", "backup", "copy"])
def test_it_fails_only_that_users_update_on_a_planted_link(
        st: Stage, versions, plant: Callable[[Stage], None]) -> None:  # type: ignore[no-untyped-def]
    publish, update = versions
    publish(c2="b = 3")
    plant(st)
    before = snapshot(st.root)
    job = update(st.alice)
    assert job.state == Job.State.FAILED
    assert "symbolic link" in job.message, job.message
    assert "Traceback" not in job.message and "/proc" not in job.message
    outside = {p for p in changes(before, snapshot(st.root))
               if not p.startswith(str(st.alice.home) + "/")}
    assert outside == set()
    # Bob's copy, which alice's link pointed at in one case, updates as his own.
    theirs = update(st.bob)
    assert theirs.state == Job.State.DONE, theirs.message
    assert json.loads((st.bob.examples / "demo" / homes.PROVENANCE_FILE).read_text())[
        "version"] == 2


# --- the API ---------------------------------------------------------------------------------


class UpdateApiTests(GalleryTestCase):
    def setUp(self) -> None:
        backend = override_settings(GALLERY_USE_BACKEND="filesystem")
        backend.enable()
        self.addCleanup(backend.disable)
        sub = self.stage_and_approve(notebook=BASE, environment=None, data_links=[])
        self.example = Example.objects.get(pk=sub.example_id)
        self.client.force_login(self.user)
        with self.captureOnCommitCallbacks(execute=True):
            services.queue_use(example=self.example, user=self.user, folder_name="demo")
        self.stage_and_approve(notebook=edited(notebook(), c2="b = 3"), environment=None,
                               data_links=[], example_slug=self.example.slug)

    def test_it_shows_the_plan_then_updates_through_the_api(self) -> None:
        url = f"/api/v1/examples/{self.example.slug}"
        with self.captureOnCommitCallbacks(execute=True):
            r = self.client.get(f"{url}/update-plan", {"folder": "demo"})
        self.assertEqual(r.status_code, 202, r.content)
        r = self.client.get(f"{url}/update-plan", {"folder": "demo"})
        self.assertEqual(r.status_code, 200, r.content)
        plan = self.json(r)
        self.assertEqual((plan["from_version"], plan["to_version"]), (1, 2))
        self.assertEqual({f["path"]: f["status"] for f in plan["files"]}["hello.ipynb"],
                         "updated")
        with self.captureOnCommitCallbacks(execute=True):
            r = self.client.post(f"{url}/update", {"folder": "demo"},
                                 content_type="application/json")
        self.assertEqual(r.status_code, 202, r.content)
        job = self.json(r)
        r = self.client.get(f"/api/v1/jobs/{job['id']}")
        self.assertEqual(self.json(r)["state"], "done", r.content)
        # Only the copy's owner sees the job; another user's "demo" is their own, not there.
        self.client.force_login(self.contributor)
        self.assertEqual(self.client.get(f"/api/v1/jobs/{job['id']}").status_code, 404)
        with self.captureOnCommitCallbacks(execute=True):
            r = self.client.post(f"{url}/update", {"folder": "demo"},
                                 content_type="application/json")
        job = Job.objects.get(pk=self.json(r)["id"])
        self.assertEqual(job.state, Job.State.FAILED)
        homes.use_parent("connor").mkdir(parents=True)
        with self.captureOnCommitCallbacks(execute=True):
            r = self.client.post(f"{url}/update", {"folder": "demo"},
                                 content_type="application/json")
        job = Job.objects.get(pk=self.json(r)["id"])
        self.assertEqual(job.state, Job.State.FAILED)
        self.assertIn("There is no folder ~/examples/demo", job.message)

    def test_it_refuses_a_path_and_plans_under_either_backend(self) -> None:
        url = f"/api/v1/examples/{self.example.slug}"
        r = self.client.post(f"{url}/update", {"folder": "../x"}, content_type="application/json")
        self.assertEqual(r.status_code, 400, r.content)
        with self.settings(GALLERY_USE_BACKEND="contents"):
            r = self.client.get(f"{url}/update-plan", {"folder": "demo"})
            page = self.client.get(f"/examples/{self.example.slug}/")
        self.assertEqual(r.status_code, 202, r.content)
        job = Job.objects.get(pk=self.json(r)["id"])
        self.assertEqual(job.params["backend"], "contents")
        self.assertContains(page, 'id="h-update"')

    def test_it_describes_the_update_endpoints_in_the_schema(self) -> None:
        schema = self.json(self.client.get("/api/v1/schema"))
        paths = schema["paths"]
        self.assertIn("post", paths["/api/v1/examples/{slug}/update"])
        self.assertIn("get", paths["/api/v1/examples/{slug}/update-plan"])
        self.assertIn("get", paths["/api/v1/examples/{slug}/copies"])

    def test_it_offers_the_update_on_the_example_page_and_shows_the_plan_first(self) -> None:
        page = self.client.get(f"/examples/{self.example.slug}/")
        self.assertContains(page, 'id="h-update"')
        self.assertContains(page, "See what will change")
        with self.captureOnCommitCallbacks(execute=True):
            r = self.client.post(f"/examples/{self.example.slug}/update",
                                 {"folder": "demo", "apply": "0"})
        plan = self.client.get(r["Location"])
        self.assertContains(plan, "From version 1 to version 2")
        self.assertContains(plan, 'id="update-button"')
        with self.captureOnCommitCallbacks(execute=True):
            r = self.client.post(f"/examples/{self.example.slug}/update",
                                 {"folder": "demo", "apply": "1"})
        done = self.client.get(r["Location"])
        self.assertContains(done, "Your copy is now of version 2")
        self.assertNotContains(self.client.get(f"/examples/{self.example.slug}/"),
                               'id="h-update"')


# --- the reviewer's diff ---------------------------------------------------------------------


def test_it_shows_the_reviewer_a_metadata_change_but_not_a_new_execution_count() -> None:
    from gallery.diff import diff_notebooks

    nb = notebook()
    tagged = copy.deepcopy(nb)
    tagged.cells[2].metadata["tags"] = ["parameters"]
    tagged.metadata["kernelspec"]["name"] = "other"
    found = diff_notebooks(BASE, nbformat.writes(tagged).encode())
    assert found.metadata_changed and not found.unchanged
    assert [c.new_number for c in found.cells if c.metadata_changed] == [3]
    rerun = copy.deepcopy(nb)
    rerun.cells[1].execution_count = 99
    rerun.cells[1].metadata["execution"] = {"iopub.status.busy": "2026-01-01"}
    assert diff_notebooks(BASE, nbformat.writes(rerun).encode()).unchanged

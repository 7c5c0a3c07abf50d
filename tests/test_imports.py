"""Bulk import: a folder or a git repository of notebooks becomes submissions in the queue."""

import json
from pathlib import Path

import git
from django.core.management import call_command
from django.test import override_settings

from gallery import services
from gallery.models import Notification, Submission

from .base import GalleryTestCase, notebook_bytes


def notebook_with(title: str = "", heading: str = "", paragraph: str = "") -> bytes:
    nb = json.loads(notebook_bytes(1))
    if title:
        nb["metadata"]["title"] = title
        nb["metadata"]["summary"] = f"{title}, summarised."
        nb["metadata"]["tags"] = ["from-metadata"]
    nb["cells"][0]["source"] = f"# {heading}\n\n{paragraph}" if heading else "Some words."
    return json.dumps(nb).encode()


def make_tree(root: Path) -> Path:
    """A centre's old examples folder: loose notebooks, a folder per example, clutter."""
    (root / "mpi").mkdir(parents=True)
    (root / "mpi" / "pi.ipynb").write_bytes(
        notebook_with(heading="Computing pi with MPI", paragraph="Monte Carlo on many ranks."))
    (root / "mpi" / "helper.py").write_text("def f(): pass\n")
    (root / "mpi" / "requirements.txt").write_text("mpi4py>=3\n")
    (root / "loose-a.ipynb").write_bytes(notebook_with(title="Loose A"))
    (root / "loose_b.ipynb").write_bytes(notebook_with())
    (root / ".ipynb_checkpoints").mkdir()
    (root / ".ipynb_checkpoints" / "loose-a-checkpoint.ipynb").write_bytes(notebook_with())
    (root / "broken.ipynb").write_text("{not json")
    return root


class ImportTests(GalleryTestCase):
    def test_it_stages_each_notebook_of_a_folder_with_inferred_metadata(self):
        root = make_tree(Path(self.id_dir()) / "old-examples")
        report = services.import_notebooks(source=str(root), actor=self.reviewer, anywhere=True)
        by_slug = {s.example.slug: s for s in report.staged}
        self.assertEqual(sorted(by_slug), ["loose-a", "loose_b", "mpi-pi"])
        mpi = by_slug["mpi-pi"]
        self.assertEqual(mpi.example.title, "Computing pi with MPI")
        self.assertEqual(mpi.example.summary, "Monte Carlo on many ranks.")
        self.assertEqual(mpi.state, Submission.State.STAGED)
        paths = {f["path"] for f in mpi.revision.files}
        self.assertEqual(paths, {"pi.ipynb", "helper.py", "requirements.txt", "example.toml"})
        self.assertEqual(list(mpi.example.tags.values_list("name", flat=True)), ["mpi"])
        loose = by_slug["loose-a"]
        self.assertEqual(loose.example.title, "Loose A")
        self.assertEqual(list(loose.example.tags.values_list("name", flat=True)),
                         ["from-metadata"])
        self.assertEqual({f["path"] for f in loose.revision.files},
                         {"loose-a.ipynb", "example.toml"})
        self.assertEqual(by_slug["loose_b"].example.title, "Loose b")
        self.assertEqual(len(report.skipped), 1)
        self.assertTrue(report.skipped[0].startswith("broken.ipynb: "))
        self.assertEqual(mpi.contributor.get_username(), "gallery-import")
        note = Notification.objects.get(user=self.reviewer, kind="imported")
        self.assertIn("3 staged for review, 1 skipped", note.message)

    def test_it_skips_notebooks_already_in_the_gallery(self):
        root = make_tree(Path(self.id_dir()) / "old")
        services.import_notebooks(source=str(root), actor=self.reviewer, anywhere=True)
        again = services.import_notebooks(source=str(root), actor=self.reviewer, anywhere=True)
        self.assertEqual(again.staged, [])
        self.assertIn("mpi/pi.ipynb: already in the gallery", again.skipped)
        self.assertEqual(Submission.objects.count(), 3)

    def test_it_imports_a_git_repository_with_its_authors(self):
        work = make_tree(Path(self.id_dir()) / "work")
        repo = git.Repo.init(work, initial_branch="main")
        repo.index.add(["mpi/pi.ipynb", "mpi/helper.py", "mpi/requirements.txt", "loose-a.ipynb"])
        author = git.Actor("Grace Hopper", "grace@example.org")
        repo.index.commit("examples", author=author, committer=author)
        bare = Path(self.id_dir()) / "examples.git"
        repo.clone(bare, bare=True)
        report = services.import_notebooks(source=str(bare), actor=None)
        self.assertEqual(sorted(s.example.slug for s in report.staged), ["loose-a", "mpi-pi"])
        mpi = next(s for s in report.staged if s.example.slug == "mpi-pi")
        self.assertEqual(mpi.revision.metadata["authors"], ["Grace Hopper"])

    def test_it_refuses_folders_outside_the_import_roots_from_the_web(self):
        root = make_tree(Path(self.id_dir()) / "elsewhere")
        with self.assertRaises(services.NotAllowed):
            services.import_notebooks(source=str(root), actor=self.reviewer)
        with override_settings(GALLERY_IMPORT_ROOTS=[str(root.parent)]):
            report = services.import_notebooks(source=str(root), actor=self.reviewer)
        self.assertEqual(len(report.staged), 3)

    def test_it_lets_only_reviewers_import(self):
        with self.assertRaises(services.NotAllowed):
            services.import_notebooks(source="/tmp", actor=self.user)

    def test_it_explains_a_repository_that_cannot_be_cloned(self):
        missing = Path(self.id_dir()) / "nothing-here.git"
        missing.mkdir()
        (missing / "HEAD").write_text("ref: refs/heads/main\n")
        (missing / "objects").mkdir()
        with self.assertRaises(services.GalleryError) as ctx:
            services.import_notebooks(source=str(missing), actor=None)
        self.assertIn("could not be cloned", str(ctx.exception))
        with self.assertRaises(services.GalleryError) as ctx:
            services.import_notebooks(source="relative/path", actor=None)
        self.assertIn("neither a folder nor a git repository", str(ctx.exception))

    def test_it_imports_from_the_command_line(self):
        root = make_tree(Path(self.id_dir()) / "cli")
        from io import StringIO

        out = StringIO()
        call_command("import_notebooks", str(root), stdout=out)
        self.assertIn("3 staged, 1 skipped", out.getvalue())
        self.assertIn("staged mpi-pi", out.getvalue())

    def id_dir(self) -> str:
        from django.conf import settings

        path = Path(settings.GALLERY_DATA_DIR).parent / "import-src"
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

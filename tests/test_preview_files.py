"""The example's own files in a preview (gallery/previews/files.py): figures inlined from its
folder and nothing from outside it, links to its other files and to the notebook's headings,
outward links in a new tab; and image headers read however far the pixel data starts."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path

import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from gallery import previews, services
from gallery.models import Job, Preview, Revision
from gallery.previews import ExampleSource, files, revision_preview_key

from . import corpus
from .base import GalleryTestCase, stage
from .corpus import latent


def png_bytes(width: int = 4, height: int = 3, *, metadata_first: bool = False) -> bytes:
    """A PNG; with `metadata_first`, several kilobytes of iCCP and iTXt chunks come before
    its IDAT, as in figures saved by many tools."""
    from PIL import Image, PngImagePlugin

    options = {}
    if metadata_first:
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>" + "metadata " * 800 + "</x:xmpmeta>")
        options = {"icc_profile": os.urandom(3000), "pnginfo": info}
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 200)).save(buf, "PNG", **options)
    return buf.getvalue()


def notebook(*cells: dict) -> bytes:
    return json.dumps(new_notebook(cells=list(cells))).encode()


def example(tmp_path: Path, data: bytes, name: str = "analysis.ipynb",
            extra: dict[str, bytes] | None = None, url: str = "/examples/fit/") -> ExampleSource:
    for path, content in {name: data, **(extra or {})}.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(content)
    return ExampleSource(folder=str(tmp_path), notebook=name, example_url=url)


def figures(page: str) -> list[str]:
    return re.findall(r'<img src="data:([a-z/+]+);base64,', page)


def notices(page: str) -> list[str]:
    return re.findall(r'<span class="gallery-notice">\[Figure ([^\]]*)\]', page)


def test_it_shows_figures_from_the_example_folder(tmp_path):
    data = notebook(
        new_markdown_cell("A fit: ![fit](figures/fit.png) and <img src=\"images/x.png\">"),
        new_code_cell("show()", execution_count=1, outputs=[new_output(
            "display_data", data={"text/html": '<img src="./images/x.png" width="20">'})]))
    source = example(tmp_path, data, extra={"figures/fit.png": png_bytes(),
                                            "images/x.png": png_bytes(8, 8)})
    page = previews.render_preview(data, source=source)
    assert figures(page) == ["image/png"] * 3
    assert base64.b64encode(png_bytes(8, 8)).decode() in page
    assert notices(page) == []
    assert latent(page)[0] == []


def test_it_resolves_figures_from_a_notebook_in_a_subfolder(tmp_path):
    data = notebook(new_markdown_cell("![up](../figures/fit.png) ![here](local.png)"))
    source = example(tmp_path, data, "notebooks/analysis.ipynb",
                     extra={"figures/fit.png": png_bytes(), "notebooks/local.png": png_bytes()})
    page = previews.render_preview(data, source=source)
    assert len(figures(page)) == 2 and notices(page) == []


def test_it_shows_a_notice_instead_of_any_path_that_leaves_the_folder(tmp_path):
    (tmp_path / "outside.png").write_bytes(png_bytes())
    folder = tmp_path / "example"
    data = notebook(new_markdown_cell(
        "![a](../outside.png) ![b](/etc/passwd) ![c](file:///etc/passwd) ![d](missing.png) "
        '<img src="figures/../../outside.png"> ![e](link.png) ![f](inside.png) '
        '<img src="#top"> <img src="?x=1">'))
    source = example(folder, data, extra={"real.png": png_bytes()})
    os.symlink(tmp_path / "outside.png", folder / "link.png")
    os.symlink("real.png", folder / "inside.png")  # a link that stays inside is followed
    page = previews.render_preview(data, source=source)
    assert notices(page) == [
        "../outside.png: leaves the example&#x27;s folder",
        "/etc/passwd: not a path inside the example",
        "file:///etc/passwd: a file: URL is not shown",
        "missing.png: not found in the example",
        "figures/../../outside.png: leaves the example&#x27;s folder",
        "link.png: leaves the example&#x27;s folder",
    ]
    assert len(figures(page)) == 1
    assert 'src="#' not in page and 'src="?' not in page  # nothing that loads this page
    assert latent(page)[0] == []


def test_it_reads_no_file_through_a_symlink_out_of_the_folder(tmp_path):
    (tmp_path / "secret").write_text("secret")
    folder = tmp_path / "example"
    (folder / "sub").mkdir(parents=True)
    os.symlink(tmp_path, folder / "sub" / "up")
    os.symlink(tmp_path / "secret", folder / "leak")
    for path in ("sub/up/secret", "leak", "../secret", "sub/../../secret"):
        with pytest.raises(files.ExampleFileError, match="leaves the example's folder"):
            files.read_example_file(str(folder), path, 100)
    os.mkfifo(folder / "fifo")
    with pytest.raises(files.ExampleFileError, match="not a file"):
        files.read_example_file(str(folder), "fifo", 100)
    (folder / "sub" / "ok.txt").write_text("fine")
    assert files.read_example_file(str(folder), "sub/ok.txt", 100) == b"fine"


def test_it_checks_and_bounds_figures_like_output_images(tmp_path):
    data = notebook(new_markdown_cell("![a](fake.png) ![b](bomb.png) ![c](big.png) ![d](v.svg)"))
    source = example(tmp_path, data, extra={
        "fake.png": b"\x89PNG\r\n\x1a\nnot really", "bomb.png": base64.b64decode(corpus.png_bomb()),
        "big.png": png_bytes(200, 200), "v.svg": corpus.SVG_SCRIPT.encode()})
    limits = previews.PreviewLimits(max_image_pixels=10_000)
    page = previews.render_preview(data, source=source, limits=limits)
    assert notices(page) == [
        "fake.png: image that is not a valid PNG",
        "bomb.png: image with too many pixels (a decompression bomb)",
        "big.png: image of 200x200 pixels (the limit is 10,000)",
    ]
    assert figures(page) == ["image/svg+xml"]  # only ever inside <img>, where it is inert


def test_it_links_other_files_of_the_example_and_headings_of_the_notebook(tmp_path):
    other = notebook(new_markdown_cell("# Part two"))
    data = notebook(
        new_markdown_cell("# Fitting the data\n\nSee [below](#Fitting-the-data), "
                          "[part two](part2.ipynb#Part-two), [the data](data/points.csv), "
                          "[this one](analysis.ipynb#Fitting-the-data), [gone](gone.ipynb) and "
                          "[the web](https://example.org/a) or [mail](mailto:a@example.org)."))
    source = example(tmp_path, data, extra={"part2.ipynb": other, "data/points.csv": b"1,2\n"})
    page = previews.render_preview(data, source=source)
    sha = previews.render.hashlib.sha256(other).hexdigest()
    assert '<h1 id="nb-Fitting-the-data">' in page
    links = dict((text, tag) for tag, text in re.findall(r"(<a [^>]*>)([^<]*)</a>", page))
    assert 'href="#nb-Fitting-the-data"' in links["below"]
    assert f'href="/previews/{sha}.html#nb-Part-two"' in links["part two"]
    assert 'href="/examples/fit/#file-data/points.csv"' in links["the data"]
    assert 'href="#nb-Fitting-the-data"' in links["this one"]
    assert "href" not in links["gone"] and "not found in the example" in links["gone"]
    for inside in ("below", "part two", "this one"):
        assert "target" not in links[inside], inside
    for outward in ("the data", "the web", "mail"):
        assert 'target="_blank"' in links[outward], outward
        assert 'rel="noopener noreferrer"' in links[outward], outward
    assert latent(page)[0] == []


def test_it_shows_markdown_attachments_and_drops_missing_ones():
    page = previews.render_preview(notebook(new_markdown_cell(
        "![a](attachment:a.png) and ![m](attachment:missing.png)",
        attachments={"a.png": {"image/png": corpus.png()}})))
    assert figures(page) == ["image/png"]
    assert latent(page)[0] == []


def test_it_shows_pngs_whose_pixel_data_starts_late():
    late = png_bytes(metadata_first=True)
    assert late.index(b"IDAT") > 6000
    page = previews.render_preview(notebook(new_code_cell("plot()", execution_count=1, outputs=[
        new_output("display_data", data={"image/png": base64.b64encode(late).decode()})])))
    assert base64.b64encode(late).decode() in page
    assert "not a valid PNG" not in page
    assert previews.sanitise._image_problem(
        "image/png", base64.b64encode(late).decode(), previews.PreviewLimits()) is None


class ExampleFilesServiceTests(GalleryTestCase):
    def test_it_renders_a_multi_file_example_with_its_figures_and_other_notebooks(self):
        part2 = notebook(new_markdown_cell("# Part two"))
        main = notebook(new_markdown_cell(
            "# Fit\n\n![fit](figures/fit.png) and [part two](part2.ipynb) and "
            "[points](points.csv)"))
        with self.captureOnCommitCallbacks(execute=True):
            submission = stage(self.contributor, notebook=main, files={
                "figures/fit.png": png_bytes(metadata_first=True), "part2.ipynb": part2,
                "points.csv": b"1,2\n"})
        revision = submission.revision
        page = services.preview_path(revision_preview_key(revision)).read_text()
        assert figures(page) == ["image/png"] and notices(page) == []
        sha2 = revision_preview_key(revision, notebook_sha256=previews.render.hashlib.sha256(
            part2).hexdigest(), notebook="part2.ipynb")
        assert f'href="/previews/{sha2}.html"' in page
        assert f'href="/examples/{submission.example.slug}/#file-points.csv"' in page
        assert Preview.objects.get(sha256=sha2).state == Preview.State.READY
        assert "Part two" in services.preview_path(sha2).read_text()
        self.client.force_login(self.user)
        response = self.client.get(f"/examples/{submission.example.slug}/")
        self.assertContains(response, 'id="file-points.csv"')

    def test_it_keys_a_preview_by_the_files_it_shows_and_shares_an_identical_one(self):
        main = notebook(new_markdown_cell("# Fit\n\n![fit](figures/fit.png)"))
        old_png, new_png = png_bytes(4, 3), png_bytes(7, 5)
        with self.captureOnCommitCallbacks(execute=True):
            first = stage(self.contributor, notebook=main, files={"figures/fit.png": old_png})
        slug = first.example.slug
        with self.captureOnCommitCallbacks(execute=True):  # only the figure changed
            changed = stage(self.contributor, notebook=main, example_slug=slug,
                            files={"figures/fit.png": new_png})
        with self.captureOnCommitCallbacks(execute=True):  # only the example's title changed
            same = stage(self.contributor, notebook=main, example_slug=slug, title="Renamed",
                         files={"figures/fit.png": new_png})
        revisions = [s.revision for s in (first, changed, same)]
        assert len({r.notebook_sha256 for r in revisions}) == 1
        keys = [revision_preview_key(r) for r in revisions]
        assert keys[0] != keys[1] == keys[2]
        assert Preview.objects.filter(sha256__in=keys).count() == 2
        assert Job.objects.filter(kind=Job.Kind.PREVIEW, revision__example=first.example
                                  ).count() == 2  # the third revision's preview was shared
        for key, png in ((keys[0], old_png), (keys[1], new_png)):
            page = services.preview_path(key).read_text()
            assert base64.b64encode(png).decode() in page
        self.client.force_login(self.user)
        page = self.client.get(f"/examples/{slug}/")  # the page frames its own revision's
        self.assertContains(page, f"/previews/{keys[2]}.html")

    def test_it_keys_links_to_other_notebooks_by_the_files_beside_them(self):
        part2 = notebook(new_markdown_cell("![fig](fig.png)"))
        main = notebook(new_markdown_cell("[part two](part2.ipynb)"))
        pages = []
        for png in (png_bytes(4, 3), png_bytes(5, 5)):  # only part two's figure changes
            with self.captureOnCommitCallbacks(execute=True):
                submission = stage(self.contributor, notebook=main, example_slug=pages[0][0]
                                   if pages else "", files={"part2.ipynb": part2, "fig.png": png})
            revision = submission.revision
            key2 = revision_preview_key(revision, notebook_sha256=previews.render.hashlib.sha256(
                part2).hexdigest(), notebook="part2.ipynb")
            page = services.preview_path(revision_preview_key(revision)).read_text()
            assert f'href="/previews/{key2}.html"' in page
            assert base64.b64encode(png).decode() in services.preview_path(key2).read_text()
            pages.append((submission.example.slug, key2))
        assert pages[0][1] != pages[1][1]


def test_it_keys_a_preview_by_its_notebook_folder_files_and_example():
    key = files.preview_key
    digest = files.files_digest
    base = {"nb.ipynb": "a" * 64, "fit.png": "b" * 64, files.EXAMPLE_FILE: "c" * 64}
    one = key("n" * 64, notebook="nb.ipynb", files=digest(base), example="fit")
    assert one == key("n" * 64, notebook="nb.ipynb", files=digest(dict(base)), example="fit")
    assert one != key("m" * 64, notebook="nb.ipynb", files=digest(base), example="fit")
    assert one != key("n" * 64, notebook="sub/nb.ipynb", files=digest(base), example="fit")
    assert one != key("n" * 64, notebook="nb.ipynb", files=digest(base), example="fit-2")
    assert one != key("n" * 64, notebook="nb.ipynb", example="fit",
                      files=digest({**base, "fit.png": "d" * 64}))
    assert one != key("n" * 64, notebook="nb.ipynb", example="fit",
                      files=digest({**base, "new.csv": "e" * 64}))
    # example.toml by its name only: a render never reads it.
    assert one == key("n" * 64, notebook="nb.ipynb", example="fit",
                      files=digest({**base, files.EXAMPLE_FILE: "f" * 64}))
    # An example staged before its files were hashed keeps its notebook's hash.
    assert key("n" * 64, notebook="nb.ipynb", example="fit") == "n" * 64


def test_it_never_reads_example_toml_as_a_figure(tmp_path):
    nb = notebook(new_markdown_cell("![meta](example.toml) ![ok](fit.png)"))
    page = previews.render_preview(nb, source=example(tmp_path, nb, extra={
        files.EXAMPLE_FILE: b"GIF87a = 1\n", "fit.png": png_bytes()}))
    assert figures(page) == ["image/png"]
    assert notices(page) == ["example.toml: not a PNG, JPEG, GIF or SVG image"]


class LegacyKeyTests(GalleryTestCase):
    def test_it_hashes_the_files_of_an_older_revision_when_the_index_is_rebuilt(self):
        main = notebook(new_markdown_cell("![fit](fit.png)"))
        submission = self.stage_and_approve(notebook=main, files={"fit.png": png_bytes()})
        revision = submission.revision
        # As staged before file hashes were kept: its previews are under the notebook's hash.
        Revision.objects.filter(pk=revision.pk).update(
            files=[{"path": f["path"], "size": f["size"]} for f in revision.files])
        revision.refresh_from_db()
        assert revision_preview_key(revision) == revision.notebook_sha256
        with self.captureOnCommitCallbacks(execute=True):
            services.rebuild_index()
        revision.refresh_from_db()
        assert all(len(f["sha256"]) == 64 for f in revision.files)
        key = revision_preview_key(revision)
        assert key != revision.notebook_sha256
        assert Preview.objects.get(sha256=key).state == Preview.State.READY
        assert figures(services.preview_path(key).read_text()) == ["image/png"]

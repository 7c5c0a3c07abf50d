"""Upload limits while the body streams in: refused at the limit, with nothing left behind."""

import gc
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from .base import make_user, notebook_bytes


@pytest.mark.django_db
def test_it_leaves_no_temporary_file_of_an_upload_it_stops(settings, tmp_path: Path) -> None:
    # Past FILE_UPLOAD_MAX_MEMORY_SIZE a file streams into a temporary file; an upload stopped
    # at the limit must take its half-written file with it, not leave it to the collector.
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(uploads)
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 4096
    settings.GALLERY_MAX_UPLOAD_BYTES = 100_000
    client = Client()
    client.force_login(make_user("ursula"))
    gc.disable()
    try:
        response = client.post("/api/v1/submissions", {
            "title": "Too big", "notebook": SimpleUploadedFile("big.ipynb", b"x" * 150_000)})
        assert response.status_code == 413
        assert list(uploads.iterdir()) == []
        assert "100,000 bytes" in response.json()["error"]  # not "0 MB"
    finally:
        gc.enable()


@pytest.mark.django_db
def test_it_still_takes_an_upload_under_the_limit(settings, tmp_path: Path) -> None:
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 4096
    client = Client()
    client.force_login(make_user("ursula"))
    response = client.post("/api/v1/submissions", {
        "title": "Fits", "notebook": SimpleUploadedFile("fits.ipynb", notebook_bytes(50))})
    assert response.status_code == 201, response.content

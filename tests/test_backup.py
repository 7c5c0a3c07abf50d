"""Backup and restore: with only the examples repository left, the gallery comes back as it was."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client

from gallery import services
from gallery.models import Example, Preview, Revision

from .base import make_user, notebook_bytes, stage


def snapshot() -> dict[str, Any]:
    """Examples, versions and approvals as a person (and the index) sees them."""
    out: dict[str, Any] = {}
    for example in Example.objects.order_by("slug"):
        approved = Revision.objects.filter(example=example).exclude(git_commit="")
        out[example.slug] = {
            "title": example.title, "summary": example.summary, "state": example.state,
            "contributor": example.contributor.get_username(),
            "tags": sorted(t.name for t in example.tags.all()),
            "current": (example.current_revision.number, example.current_revision.git_commit),
            "versions": [
                {"number": r.number, "commit": r.git_commit, "content": r.content_hash,
                 "notebook": r.notebook_sha256, "files": r.files,
                 "data_links": sorted(r.data_links.values_list("name", "target")),
                 "approved_by": [(rv.reviewer.get_username(), rv.decision)
                                 for rv in r.submission.reviews.all()],
                 "submitted_by": r.submission.contributor.get_username()}
                for r in approved.order_by("number")],
        }
    return out


@pytest.mark.django_db(transaction=True)
def test_it_restores_the_gallery_from_the_repository_alone() -> None:
    contributor = make_user("connor")
    reviewer = make_user("rita", reviewer=True)
    first = stage(contributor, title="Hello example")
    services.approve_submission(submission=first, reviewer=reviewer, comment="fine")
    second = stage(contributor, title="Hello again", notebook=notebook_bytes(5),
                   example_slug=first.example.slug)
    services.approve_submission(submission=second, reviewer=reviewer, comment="better")
    other = stage(contributor, title="Another one", notebook=notebook_bytes(text="print(2)"),
                  data_links=[{"name": "input", "target": "/data/shared/input.csv"}])
    services.approve_submission(submission=other, reviewer=reviewer, comment="ok")
    before = snapshot()
    assert len(before) == 2
    assert [v["number"] for v in before[first.example.slug]["versions"]] == [1, 2]
    previews = sorted(p.name for p in Path(settings.GALLERY_PREVIEW_DIR).glob("*.html"))
    assert len(previews) == 3

    # The disaster: the database, the staging area and the previews are gone.
    call_command("flush", interactive=False, verbosity=0)
    shutil.rmtree(settings.GALLERY_STAGING_DIR)
    shutil.rmtree(settings.GALLERY_PREVIEW_DIR)
    assert Example.objects.count() == 0

    call_command("rebuild_index", verbosity=0)  # queues the previews; jobs run inline here

    assert snapshot() == before
    assert sorted(p.name for p in Path(settings.GALLERY_PREVIEW_DIR).glob("*.html")) == previews
    assert set(Preview.objects.values_list("state", flat=True)) == {"ready"}
    # And people find it through the API, with its versions.
    client = Client()
    client.force_login(Example.objects.get(slug=first.example.slug).contributor)
    listed = client.get("/api/v1/examples?state=approved").json()
    assert sorted(e["slug"] for e in listed["results"]) == sorted(before)
    detail = client.get(f"/api/v1/examples/{first.example.slug}").json()
    assert sorted(v["number"] for v in detail["versions"]) == [1, 2]
    assert detail["commit"] == before[first.example.slug]["current"][1]

    # Running it again changes nothing.
    call_command("rebuild_index", verbosity=0)
    assert snapshot() == before

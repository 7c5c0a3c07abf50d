"""The cast and the props every test uses: a user, a contributor, a reviewer, notebooks."""

from __future__ import annotations

import json
from typing import Any

import nbformat
from django.contrib.auth import get_user_model
from django.test import TestCase
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from gallery import services


def notebook_bytes(cells: int = 3, *, text: str = "print('hello')", outputs: bool = True) -> bytes:
    nb = new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}})
    nb.cells.append(new_markdown_cell("# A small example\n\nIt says hello."))
    for i in range(cells):
        cell = new_code_cell(text, execution_count=i + 1)
        if outputs:
            cell.outputs.append(new_output("stream", name="stdout", text="hello\n"))
        nb.cells.append(cell)
    return nbformat.writes(nb).encode()


def make_user(name: str, *, reviewer: bool = False, password: str = "pw-" + "x" * 10):  # type: ignore[no-untyped-def]
    user = get_user_model().objects.create_user(username=name, password=password)
    if reviewer:
        services.grant_review(user)
        user = get_user_model().objects.get(pk=user.pk)
    return user


def stage(contributor, *, title: str = "Hello example", notebook: bytes | None = None,  # type: ignore[no-untyped-def]
          data_links: list[dict[str, Any]] | None = None, example_slug: str = "",
          files: dict[str, bytes] | None = None,
          environment: tuple[str, bytes] | None = ("requirements.txt", b"numpy>=1.24\n")):
    return services.stage_submission(
        contributor=contributor,
        staged=services.StagedFiles(
            notebook_name="hello.ipynb", notebook=notebook or notebook_bytes(),
            environment=environment, files=files or {}),
        meta=services.ExampleMeta(title=title, summary="Says hello.", tags=["demo", "python"],
                                  licence="CC-BY-4.0",
                                  data_links=data_links if data_links is not None else [
                                      {"name": "docs", "target": "https://example.org/data"}]),
        example_slug=example_slug,
    )


class GalleryTestCase(TestCase):
    """One base class with a small named cast."""

    @classmethod
    def setUpTestData(cls) -> None:
        cls.user = make_user("ursula")
        cls.contributor = make_user("connor")
        cls.reviewer = make_user("rita", reviewer=True)

    def stage_and_approve(self, **kwargs: Any):  # type: ignore[no-untyped-def]
        with self.captureOnCommitCallbacks(execute=True):
            submission = stage(self.contributor, **kwargs)
        with self.captureOnCommitCallbacks(execute=True):
            services.approve_submission(submission=submission, reviewer=self.reviewer)
        submission.refresh_from_db()
        return submission

    def json(self, response):  # type: ignore[no-untyped-def]
        return json.loads(response.content)

"""Review: start, approve, request changes, reject; retire and restore; publishing an approved
revision into the examples repository (the commit job) and the index.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from .. import notebooks, repo
from ..errors import GalleryError, NotAllowed
from ..models import (
    Example,
    Job,
    Notification,
    Review,
    Revision,
    Run,
    Submission,
    Tag,
    is_reviewer,
    may_review,
)
from .environments import queue_environment
from .history import move_example, move_submission
from .notifications import notify, notify_decision, notify_users_of
from .queue import queue_job
from .runs import queue_run
from .staging import queue_preview, staged_folder
from .users import person_of

log = logging.getLogger(__name__)


def _require_reviewer(reviewer: AbstractBaseUser, submission: Submission) -> None:
    if not may_review(reviewer, submission.example):
        raise NotAllowed("Only reviewers may decide on submissions (a project's reviewers on "
                         "their group's).")
    if submission.contributor_id == reviewer.pk:
        raise NotAllowed("A reviewer cannot decide on their own submission.")


def start_review(*, submission: Submission, reviewer: AbstractBaseUser) -> Submission:
    """Mark a staged submission as being reviewed."""
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission.pk)
        _require_reviewer(reviewer, submission)
        move_submission(submission, Submission.State.IN_REVIEW, actor=reviewer,
                         reason="review started")
        notify(user=submission.contributor, kind=Notification.Kind.REVIEW,
               submission=submission, example=submission.example,
               message=f"{reviewer.get_username()} started reviewing revision "
                       f"{submission.revision.number} of \u201c{submission.example.title}\u201d.")
    return submission


def _decide(submission: Submission, reviewer: AbstractBaseUser, decision: str, to: str,
            comment: str) -> Review:
    with transaction.atomic():
        submission = Submission.objects.select_for_update().get(pk=submission.pk)
        _require_reviewer(reviewer, submission)
        move_submission(submission, to, actor=reviewer, reason=comment)
        review = Review.objects.create(submission=submission, reviewer=reviewer,
                                       decision=decision, comment=comment)
        notify_decision(submission, review)
        if decision == Review.Decision.APPROVE:
            queue_job(Job.Kind.COMMIT, submission=submission, revision=submission.revision,
                   user=reviewer, params={"review": review.pk})
            queue_preview(submission.revision)
        elif (decision == Review.Decision.REJECT
              and submission.example.state == Example.State.STAGED):
            move_example(submission.example, Example.State.REJECTED, actor=reviewer,
                          reason=comment, allowed_from={Example.State.STAGED})
    return review


def approve_submission(*, submission: Submission, reviewer: AbstractBaseUser,
                       comment: str = "") -> Review:
    """Approve: the revision is committed into the examples repository by a worker."""
    return _decide(submission, reviewer, Review.Decision.APPROVE, Submission.State.APPROVED,
                   comment)


def request_changes(*, submission: Submission, reviewer: AbstractBaseUser,
                    comment: str) -> Review:
    if not comment.strip():
        raise GalleryError("Say which changes you request.")
    return _decide(submission, reviewer, Review.Decision.REQUEST_CHANGES,
                   Submission.State.CHANGES_REQUESTED, comment)


def reject_submission(*, submission: Submission, reviewer: AbstractBaseUser,
                      comment: str) -> Review:
    if not comment.strip():
        raise GalleryError("Say why the submission is rejected.")
    return _decide(submission, reviewer, Review.Decision.REJECT, Submission.State.REJECTED,
                   comment)


def retire_example(*, example: Example, actor: AbstractBaseUser, reason: str) -> Example:
    """Hide an example from new users; existing copies keep working."""
    if not is_reviewer(actor):
        raise NotAllowed("Only reviewers may retire examples.")
    if not reason.strip():
        raise GalleryError("Say why the example is retired.")
    with transaction.atomic():
        example = Example.objects.select_for_update().get(pk=example.pk)
        move_example(example, Example.State.RETIRED, actor=actor, reason=reason,
                      allowed_from={Example.State.APPROVED})
        notify(user=example.contributor, kind=Notification.Kind.RETIRED, example=example,
               message=f"\u201c{example.title}\u201d was retired by {actor.get_username()}: "
                       f"{reason}")
        notify_users_of(example, kind=Notification.Kind.RETIRED,
                         message=f"\u201c{example.title}\u201d, which you used, was retired: "
                                 f"{reason} Your copy keeps working.")
    return example


def restore_example(*, example: Example, actor: AbstractBaseUser, reason: str = "") -> Example:
    if not is_reviewer(actor):
        raise NotAllowed("Only reviewers may restore examples.")
    with transaction.atomic():
        example = Example.objects.select_for_update().get(pk=example.pk)
        move_example(example, Example.State.APPROVED, actor=actor, reason=reason or "restored",
                      allowed_from={Example.State.RETIRED})
        notify(user=example.contributor, kind=Notification.Kind.RESTORED, example=example,
               message=f"\u201c{example.title}\u201d is back in the gallery"
                       f"{': ' + reason if reason else '.'}")
    return example


def publish_revision(*, revision: Revision, commit: str, actor: AbstractBaseUser | None) -> Example:
    """Record that a revision is in the repository: it becomes the example's current one."""
    with transaction.atomic():
        example = Example.objects.select_for_update().get(pk=revision.example_id)
        revision.git_commit = commit
        revision.save(update_fields=["git_commit"])
        current = example.current_revision
        if current is None or current.number <= revision.number:
            meta = revision.metadata
            example.current_revision = revision
            example.title = meta.get("title", example.title)
            example.summary = meta.get("summary", "")
            nb_path = staged_folder(revision) / revision.notebook_name
            if nb_path.exists():
                nb = notebooks.read_notebook(nb_path.read_bytes())
                example.search_text = " ".join([*meta.get("tags", []), notebooks.notebook_text(nb)])
            example.updated = timezone.now()
            example.save(update_fields=["current_revision", "title", "summary", "search_text",
                                        "updated"])
            example.tags.set([Tag.objects.get_or_create(name=t)[0] for t in meta.get("tags", [])])
            if queue_environment(revision) is None:  # else run once it is built
                queue_run(revision, kind=Run.Kind.SCHEDULED)
            submission = Submission.objects.filter(revision=revision).first()
            notify(user=example.contributor, kind=Notification.Kind.PUBLISHED, example=example,
                   submission=submission,
                   message=f"\u201c{example.title}\u201d version {revision.number} is published "
                           f"in the gallery.")
            notify_users_of(example, kind=Notification.Kind.UPDATED, exclude_revision=revision,
                             message=f"A newer version ({revision.number}) of \u201c"
                                     f"{example.title}\u201d is approved; your copy is older.")
        if example.state in (Example.State.STAGED, Example.State.REJECTED):
            move_example(example, Example.State.APPROVED, actor=actor,
                          reason=f"revision {revision.number} committed as {commit[:10]}",
                          allowed_from={Example.State.STAGED, Example.State.REJECTED})
    return example


def do_commit(job: Job) -> dict[str, Any]:
    if job.params.get("audience"):  # a change of the example's groups
        from .audience import do_audience_commit

        return do_audience_commit(job)
    submission = job.submission
    assert submission is not None
    revision = submission.revision
    example = submission.example
    sha = repo.commit_example(
        Path(settings.GALLERY_REPO_PATH), slug=example.slug, source=staged_folder(revision),
        author=person_of(submission.contributor, "contributor"),
        committer=person_of(job.user, "reviewer"),
        message=f"Publish {example.slug} revision {revision.number}: "
                f"{revision.metadata.get('title', example.title)}",
        submission_id=submission.pk, review_id=job.params.get("review", 0),
    )
    publish_revision(revision=revision, commit=sha, actor=job.user)
    if sorted(revision.metadata.get("groups", [])) != example.group_names():
        # Its groups changed while this version waited for review: the repository says so.
        from .audience import commit_audience

        commit_audience(example, actor=job.user, change_id=f"submission-{submission.pk}")
    return {"commit": sha}


"""Notifications in the gallery and, when a mail server is configured, by email.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from .. import caching
from ..models import (
    Delivery,
    Example,
    HubGroup,
    Job,
    Notification,
    Review,
    Revision,
    Submission,
)
from .queue import task

log = logging.getLogger(__name__)


def notify(*, user: AbstractBaseUser, kind: str, message: str, example: Example | None = None,
           submission: Submission | None = None, delivery: Delivery | None = None,
           email: bool = True) -> Notification | None:
    """Tell a person something in the gallery; by email too when a mail server is configured.

    The email is queued after the surrounding transaction commits, so a decision that is
    rolled back never mails anyone. Nobody hears of an example they do not see (a group's
    example, to one no longer in the group): None then.
    """
    if example is not None and not example.is_visible_to(user):
        return None
    note = Notification.objects.create(user=user, kind=kind, message=message, example=example,
                                       submission=submission, delivery=delivery)
    if email and settings.EMAIL_HOST and email_address(user):
        task("gallery.tasks.email_notification").delay_on_commit(note.pk)
    return note


def notify_decision(submission: Submission, review: Review) -> None:
    verb = {Review.Decision.APPROVE: "approved", Review.Decision.REJECT: "rejected",
            Review.Decision.REQUEST_CHANGES: "asked for changes to"}[
        Review.Decision(review.decision)]
    text = (f"{review.reviewer.get_username()} {verb} revision {submission.revision.number} "
            f"of \u201c{submission.example.title}\u201d.")
    if review.comment:
        text += f" Comment: {review.comment}"
    notify(user=submission.contributor, kind=Notification.Kind.REVIEW, message=text,
           example=submission.example, submission=submission)


def notify_users_of(example: Example, *, kind: str, message: str,
                     exclude_revision: Revision | None = None) -> int:
    """Tell everyone holding a copy of the example (in the gallery only: there may be many)."""
    used = Job.objects.filter(kind=Job.Kind.USE, state=Job.State.DONE, revision__example=example,
                              user__isnull=False)
    if exclude_revision is not None:
        used = used.exclude(user__in=Job.objects.filter(
            kind=Job.Kind.USE, state=Job.State.DONE, revision=exclude_revision).values("user"))
    users = set(used.values_list("user", flat=True)) - {example.contributor_id}
    if example.groups.exists():  # a group's example: its members and reviewers only
        groups = HubGroup.objects.filter(examples=example)
        users &= {*groups.values_list("members", flat=True),
                  *groups.values_list("reviewers", flat=True)}
    Notification.objects.bulk_create(
        Notification(user_id=pk, kind=kind, message=message, example=example) for pk in users)
    caching.forget_unread(users)  # bulk_create sends no signal
    return len(users)


def mark_notifications_read(*, user: AbstractBaseUser, ids: list[int] | None = None) -> int:
    """Mark a person's notifications (all, or those given) as read; returns how many."""
    unread = Notification.objects.filter(user=user).unread()  # type: ignore[misc]
    if ids is not None:
        unread = unread.filter(pk__in=ids)
    marked = unread.update(read_at=timezone.now())
    caching.forget_unread([user.pk])  # update sends no signal
    return marked


def email_address(user: AbstractBaseUser) -> str:
    """The user's address, or username@GALLERY_EMAIL_DOMAIN when only the centre knows it."""
    address = getattr(user, "email", "") or ""
    if not address and settings.GALLERY_EMAIL_DOMAIN:
        address = f"{user.get_username()}@{settings.GALLERY_EMAIL_DOMAIN}"
    return address


def email_notification(*, notification_id: int) -> bool:
    """Send one notification by email, at most once; False when there is nothing to send."""
    from django.core.mail import send_mail

    now = timezone.now()
    if not Notification.objects.filter(pk=notification_id, emailed_at__isnull=True).update(
            emailed_at=now):
        return False
    note = Notification.objects.select_related("user", "example", "submission").get(
        pk=notification_id)
    address = email_address(note.user)
    if not address:
        return False
    link = ""
    if settings.GALLERY_PUBLIC_URL:
        from django.urls import reverse

        path = (reverse("submission", args=[note.submission_id]) if note.submission_id
                else reverse("example", args=[note.example.slug]) if note.example
                else reverse("copy", args=[note.delivery_id]) if note.delivery_id
                else reverse("notifications"))
        link = f"\n\n{settings.GALLERY_PUBLIC_URL.rstrip('/')}{path}"
    subject = f"[Examples gallery] {note.message[:70]}"
    try:
        send_mail(subject, f"{note.message}{link}\n", None, [address])
    except Exception:
        # Let the task retry: the mail was not sent.
        Notification.objects.filter(pk=notification_id, emailed_at=now).update(emailed_at=None)
        raise
    return True


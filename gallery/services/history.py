"""The record of every state change of an example or a submission: who, when, from what
to what, and why; and the two moves that write it.
"""

from __future__ import annotations

import logging

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from ..models import Example, IllegalTransition, StateChange, Submission

log = logging.getLogger(__name__)


def record_change(
    *,
    example: Example,
    subject: str,
    from_state: str,
    to_state: str,
    actor: AbstractBaseUser | None,
    reason: str = "",
    submission: Submission | None = None,
) -> StateChange:
    return StateChange.objects.create(
        example=example, submission=submission, subject=subject, from_state=from_state,
        to_state=to_state, actor=actor, reason=reason,
    )


def move_submission(
    submission: Submission, to: str, *, actor: AbstractBaseUser | None, reason: str
) -> None:
    if not submission.can_become(to):
        raise IllegalTransition(
            f"Submission {submission.pk} is {submission.get_state_display()}; "
            f"it cannot become {Submission.State(to).label}."
        )
    record_change(example=submission.example, submission=submission, subject="submission",
            from_state=submission.state, to_state=to, actor=actor, reason=reason)
    submission.state = to
    submission.updated = timezone.now()
    submission.save(update_fields=["state", "updated"])


def move_example(example: Example, to: str, *, actor: AbstractBaseUser | None, reason: str,
                  allowed_from: set[str]) -> None:
    if example.state not in allowed_from:
        raise IllegalTransition(
            f"Example {example.slug} is {example.get_state_display()}; it cannot become {to}."
        )
    record_change(example=example, subject="example", from_state=example.state, to_state=to,
            actor=actor, reason=reason)
    example.state = to
    example.updated = timezone.now()
    example.save(update_fields=["state", "updated"])


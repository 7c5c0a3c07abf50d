"""People: the one get-or-create of a user (from the hub, from git, for imports), and the
reviewer's rights.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from .. import hub, repo
from ..errors import NotAllowed
from ..models import is_reviewer

log = logging.getLogger(__name__)


REVIEW_PERMISSIONS = ["review_submission", "view_submission", "change_submission",
                      "view_example", "change_example", "view_review", "view_job",
                      "view_statechange", "view_run"]


def grant_review(user: AbstractBaseUser) -> None:
    """Make a user a reviewer: staff, with the permissions of the reviewer's desk."""
    from django.contrib.auth.models import Permission

    user.is_staff = True  # type: ignore[attr-defined]
    user.save()
    user.user_permissions.add(*Permission.objects.filter(  # type: ignore[attr-defined]
        content_type__app_label="gallery", codename__in=REVIEW_PERMISSIONS))


def revoke_review(user: AbstractBaseUser) -> None:
    """Take the reviewer's desk away again (the hub no longer says they review)."""
    from django.contrib.auth.models import Permission

    user.is_staff = False  # type: ignore[attr-defined]
    user.save()
    user.user_permissions.remove(*Permission.objects.filter(  # type: ignore[attr-defined]
        content_type__app_label="gallery", codename__in=REVIEW_PERMISSIONS))


def ensure_user(username: str, *, email: str = "") -> AbstractBaseUser:
    """The user named `username`, made if new: the one get-or-create of a user (hub users, git
    authors, the importer, the commands' users). A new user has no usable password: people log
    in through the hub, or an operator gives them one.

    A name longer than the user table keeps is refused (NotAllowed), never cut short: cut, two
    people could become one user; stored, PostgreSQL would refuse it with an error.
    """
    from django.contrib.auth import get_user_model

    users = get_user_model()
    limit = users._meta.get_field(users.USERNAME_FIELD).max_length or 0
    if len(username) > limit:
        raise NotAllowed(f"The user name {username[:20]}… is longer than the {limit} "
                         "characters the gallery can keep; ask the centre's support.")
    user, created = users.objects.get_or_create(username=username, defaults={"email": email})
    if created:
        user.set_unusable_password()
        user.save()
    return user


def sync_hub_user(model: dict[str, Any]) -> AbstractBaseUser:
    """The user of a hub user (the hub's model of `GET /user`), with review rights as the hub
    says today."""
    from django.contrib.auth import get_user_model

    user = ensure_user(model["name"])
    reviewer = hub.is_reviewer_model(model)
    if reviewer != is_reviewer(user) or reviewer != user.is_staff:
        if reviewer:
            grant_review(user)
        elif not user.is_superuser:  # local superusers keep what the operator gave them
            revoke_review(user)
        user = get_user_model().objects.get(pk=user.pk)  # drop the permission cache
    return user


def user_for_person(person: repo.Person) -> AbstractBaseUser:
    """The user of a git author or committer: the name of a local address, else the address."""
    username = person.email.split("@")[0] if person.email.endswith("@localhost") else person.email
    return ensure_user(username[:150] or person.name[:150],
                       email="" if person.email.endswith("@localhost") else person.email)


def import_user() -> AbstractBaseUser:
    """The contributor of notebooks imported in bulk."""
    return ensure_user(settings.GALLERY_IMPORT_USER)

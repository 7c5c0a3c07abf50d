"""People: the one get-or-create of a user (from the hub, from git, for imports), and the
reviewer's rights.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from .. import repo

log = logging.getLogger(__name__)


REVIEW_PERMISSIONS = ["review_submission", "view_submission", "change_submission",
                      "view_example", "change_example", "view_review", "view_job",
                      "view_statechange"]


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


def user_for_person(person: repo.Person) -> AbstractBaseUser:
    from django.contrib.auth import get_user_model

    username = person.email.split("@")[0] if person.email.endswith("@localhost") else person.email
    user, created = get_user_model().objects.get_or_create(
        username=username[:150] or person.name[:150],
        defaults={"email": "" if person.email.endswith("@localhost") else person.email})
    if created:
        user.set_unusable_password()
        user.save()
    return user


def import_user() -> AbstractBaseUser:
    from django.contrib.auth import get_user_model

    user, created = get_user_model().objects.get_or_create(username=settings.GALLERY_IMPORT_USER)
    if created:
        user.set_unusable_password()
        user.save()
    return user


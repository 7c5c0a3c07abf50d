"""People: the one get-or-create of a user (from the hub, from git, for imports), and the
reviewer's rights.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from .. import caching, hub, repo
from ..errors import NotAllowed
from ..models import HubGroup, is_reviewer

log = logging.getLogger(__name__)


REVIEW_PERMISSIONS = ["review_submission", "view_submission", "change_submission",
                      "view_example", "change_example", "view_review", "view_job",
                      "view_statechange", "view_run"]


# What a project's reviewers see of the desk: their groups' submissions and examples
# (gallery/admin.py narrows the lists to them), and no decision on others'.
GROUP_REVIEW_PERMISSIONS = ["view_submission", "view_example", "view_review"]
GROUP_NAME_MAX = HubGroup._meta.get_field("name").max_length or 255


def grant_group_review(user: AbstractBaseUser) -> None:
    """Open the desk to a project's reviewer: staff, seeing their groups' submissions."""
    from django.contrib.auth.models import Permission

    user.is_staff = True  # type: ignore[attr-defined]
    user.save()
    user.user_permissions.set(Permission.objects.filter(  # type: ignore[attr-defined]
        content_type__app_label="gallery", codename__in=GROUP_REVIEW_PERMISSIONS))


def set_hub_groups(user: AbstractBaseUser, *, member_of: set[str], reviews: set[str]) -> bool:
    """Keep what the hub says of a person's groups: those they are a member of, and those
    they review. Returns whether anything changed."""
    member_of = {n for n in member_of if len(n) <= GROUP_NAME_MAX}
    reviews = {n for n in reviews if len(n) <= GROUP_NAME_MAX}
    if (set(user.hub_groups.values_list("name", flat=True)) == member_of  # type: ignore[attr-defined]
            and set(user.reviewed_groups.values_list(  # type: ignore[attr-defined]
                "name", flat=True)) == reviews):
        return False
    groups = {g.name: g for g in HubGroup.objects.filter(name__in=member_of | reviews)}
    for name in (member_of | reviews) - groups.keys():
        groups[name] = HubGroup.objects.get_or_create(name=name)[0]
    user.hub_groups.set([groups[n] for n in member_of])  # type: ignore[attr-defined]
    user.reviewed_groups.set([groups[n] for n in reviews])  # type: ignore[attr-defined]
    caching.forget_unread([user.pk])  # news of a group they left no longer counts
    return True


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
    """The user of a hub user (the hub's model of `GET /user`), with their hub groups and
    review rights as the hub says today: the centre's reviewers from the review scope or
    group, a project's reviewers from the groups GALLERY_GROUP_REVIEWERS names."""
    from django.contrib.auth import get_user_model

    user = ensure_user(model["name"])
    reviews = hub.reviewed_groups(model)
    set_hub_groups(user, member_of=set(model.get("groups", [])), reviews=reviews)
    reviewer = hub.is_reviewer_model(model)
    centre = is_reviewer(user)
    changed = False
    if reviewer:
        if not centre or not user.is_staff:
            grant_review(user)
            changed = True
    elif user.is_superuser:
        pass  # local superusers keep what the operator gave them
    elif reviews:
        if centre or not user.is_staff or not user.has_perm("gallery.view_submission"):
            grant_group_review(user)
            changed = True
    elif centre or user.is_staff:
        revoke_review(user)
        changed = True
    if changed:
        user = get_user_model().objects.get(pk=user.pk)  # drop the permission cache
    return user


def person_of(user: AbstractBaseUser | None, fallback: str) -> repo.Person:
    """A person as the repository names them: an author or committer of a commit."""
    if user is None:
        return repo.Person(fallback, f"{fallback}@localhost")
    name = user.get_full_name() or user.get_username()  # type: ignore[attr-defined]
    return repo.Person(name, user.email or f"{user.get_username()}@localhost")  # type: ignore


def user_for_person(person: repo.Person) -> AbstractBaseUser:
    """The user of a git author or committer: the name of a local address, else the address.
    An address longer than the user table keeps (254 characters) is not kept as the e-mail."""
    username = person.email.split("@")[0] if person.email.endswith("@localhost") else person.email
    email = "" if person.email.endswith("@localhost") or len(person.email) > 254 else person.email
    return ensure_user(username[:150] or person.name[:150], email=email)


def import_user() -> AbstractBaseUser:
    """The contributor of notebooks imported in bulk."""
    return ensure_user(settings.GALLERY_IMPORT_USER)

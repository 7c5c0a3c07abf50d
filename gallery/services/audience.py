"""Who sees an example: changing its hub groups after staging.

An example is public or for the members of its groups (`ExampleQuerySet.visible_to`). Who may
change that, so that no change lets an example reach people no reviewer of theirs approved
it for:
- the centre's reviewers: any groups, or public;
- a project's reviewer: among the groups they review, leaving the other groups as they are,
  and never public (their review speaks for their groups only);
- its contributor: only narrower (fewer of its groups, or from public to groups they belong
  to), never wider.
Anyone else who sees the example gets a 403; who does not see it, a 404.

The new groups travel in the repository (a commit rewriting `example.toml`, so that
`rebuild_index` keeps them), and the example's previews move with it: the public files of a
now private example are removed (unless another public example shows the same notebook) and
its previews are rendered where its new audience reads them.
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
from ..errors import NotAllowed, NotFound
from ..models import Example, HubGroup, Job, Revision, StateChange, is_reviewer
from ..schema import clean_groups
from .history import record_change
from .queue import queue_job
from .staging import preview_path, queue_preview, revision_preview_keys
from .users import person_of

log = logging.getLogger(__name__)


def set_audience(*, example_slug: str, groups: Any, actor: AbstractBaseUser) -> Example:
    """Make an example public (no groups) or for the members of `groups`, as `actor` may."""
    wanted = clean_groups(groups)
    with transaction.atomic():
        example = (Example.objects.visible_to(actor).select_for_update(of=("self",))
                   .filter(slug=example_slug).first())
        if example is None:
            raise NotFound("There is no such example.")
        current = example.group_names()
        if wanted == current:
            return example
        _check_allowed(actor, example, current, wanted)
        example.groups.set([HubGroup.objects.get_or_create(name=n)[0] for n in wanted])
        # A change of the gallery's stamp: no page cached before shows it to the old audience.
        example.updated = timezone.now()
        example.save(update_fields=["updated"])
        change = record_change(
            example=example, subject="audience", from_state=_state(current),
            to_state=_state(wanted), actor=actor,
            reason=f"for {_describe(wanted)} (was {_describe(current)})")
        revisions = list(example.revisions.all())
        for revision in revisions:
            queue_preview(revision)  # where the new audience reads it
        if wanted and not current:  # public before: its public files go (the private
            # ones of an example made public are simply no longer read)
            transaction.on_commit(lambda: forget_public_previews(revisions))
        if example.current_revision_id is not None:
            queue_job(Job.Kind.COMMIT, user=actor, revision=example.current_revision,
                      params={"audience": change.pk})
    return example


def audience_choices(example: Example, user: Any) -> list[str] | None:
    """The groups a person may tick on the example's page (what `set_audience` lets them
    choose among), or None when they cannot change who sees it."""
    if not user.is_authenticated:
        return None
    current = set(example.group_names())
    if is_reviewer(user):
        return sorted(current | set(HubGroup.objects.values_list("name", flat=True)))
    if example.groups.filter(reviewers=user).exists():
        return sorted(current | set(user.reviewed_groups.values_list("name", flat=True)))
    if example.contributor_id == user.pk:
        if current:
            return sorted(current) if len(current) > 1 else None  # nothing narrower to pick
        return sorted(user.hub_groups.values_list("name", flat=True)) or None
    return None


def _check_allowed(actor: Any, example: Example, current: list[str], wanted: list[str]) -> None:
    if is_reviewer(actor):
        return
    reviews = set(example.groups.filter(reviewers=actor).values_list("name", flat=True))
    if reviews:
        if not wanted:
            raise NotAllowed("Only the centre's reviewers make a group's example public.")
        own = set(actor.reviewed_groups.values_list("name", flat=True))  # type: ignore[attr-defined]
        others_before = set(current) - own
        others_after = set(wanted) - own
        if others_before != others_after:
            raise NotAllowed("A project's reviewer changes only the groups they review: "
                             f"{_describe(sorted(own))}.")
        return
    if example.contributor_id == actor.pk:
        if current and set(wanted) <= set(current) and wanted:
            return
        if not current and wanted:
            mine = set(actor.hub_groups.values_list("name", flat=True))  # type: ignore[attr-defined]
            if set(wanted) <= mine:
                return
            raise NotAllowed("You can only share an example with groups you belong to.")
        raise NotAllowed("A contributor can only narrow who sees an example (fewer of its "
                         "groups); ask a reviewer to widen it.")
    raise NotAllowed("Only the example's contributor and its reviewers change who sees it.")


def _state(groups: list[str]) -> str:
    return "groups" if groups else "public"


def _describe(groups: list[str]) -> str:
    return "everyone" if not groups else "the groups " + ", ".join(groups)


def forget_public_previews(revisions: list[Revision]) -> list[str]:
    """Remove the public preview files of these revisions (a preview's key names its
    example: no other example shows them); returns the keys removed."""
    removed = []
    for revision in revisions:
        for key in revision_preview_keys(revision):
            try:
                preview_path(key).unlink()
                removed.append(key)
            except FileNotFoundError:
                pass
    return removed


def do_audience_commit(job: Job) -> dict[str, Any]:
    """Write the example's groups into its `example.toml` in the repository."""
    change = StateChange.objects.select_related("example", "actor").get(pk=job.params["audience"])
    return {"commit": commit_audience(change.example, actor=change.actor,
                                      change_id=str(change.pk))}


def commit_audience(example: Example, *, actor: AbstractBaseUser | None, change_id: str
                    ) -> str | None:
    """Commit the example's groups as they are now into its `example.toml`, once per
    `change_id`; None when the repository has no version of it yet."""
    groups = example.group_names()

    def rewrite(data: bytes) -> bytes:
        meta = notebooks.read_example_toml(data)
        meta["groups"] = groups
        return notebooks.example_toml(meta)

    return repo.commit_file(
        Path(settings.GALLERY_REPO_PATH), slug=example.slug, name=notebooks.EXAMPLE_FILE,
        rewrite=rewrite, committer=person_of(actor, "reviewer"),
        message=f"Show {example.slug} to {_describe(groups)}", change_id=change_id)

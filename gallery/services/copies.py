"""Copies sent between people: a person sends a notebook of theirs (or a folder) to other hub
users, or to a hub group they belong to, with a message; each recipient accepts it (a job
writes it into their home, as them, like a Use) or declines it; the sender may withdraw it
while it waits. Nothing is published and nothing is reviewed: only the sender and the
recipients know of it.

What was sent is kept as it was when sent, in GALLERY_SEND_DIR/<id>/, checked as staging
checks an upload, so every recipient gets exactly that. It is removed once no recipient can
still accept it (and GALLERY_SEND_KEEP_DAYS after sending at the latest, when offers still
waiting expire).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import models, transaction
from django.utils import timezone

from .. import hub, notebooks
from ..errors import Conflict, GalleryError, NotAllowed, NotFound, TooManyRequests
from ..models import CopySettings, Delivery, HubGroup, Job, Notification, SentCopy, is_reviewer
from .notifications import notify
from .queue import queue_job
from .staging import StagedFiles, checked_files
from .use import copy_folder_name, lab_url, planned_target, write_copy
from .users import ensure_user

log = logging.getLogger(__name__)

MESSAGE_MAX = 2000  # characters of the sender's message
NAME_MAX = 150  # characters of a user or group name asked for (Django's username limit)
NOTE_MAX = 300  # characters of the message quoted in the recipient's notification
ORPHAN_GRACE = timedelta(days=1)  # a folder no sent copy names is removed after this
_TMP_PREFIX = ".tmp-"
GONE = "There is no such copy."


# --- sending ----------------------------------------------------------------------------------


def send_copy(*, sender: AbstractBaseUser, staged: StagedFiles, to: list[str] | None = None,
              groups: list[str] | None = None, message: str = "", name: str = "") -> SentCopy:
    """Send a notebook (with the files beside it) to people named in `to` and to the members
    of `groups` (groups of the sender's), with a message; each gets a notification.

    Refused, with nothing stored: a notebook or files staging would refuse, a name that
    cannot be sent to (one nobody has, and one of a person who takes no copies, get the same
    words), a group the sender is not a member of, too many recipients, and more sends than
    GALLERY_SEND_PER_HOUR (429, with the seconds to wait). Members of a group who take no
    copies are left out, and counted in `not_delivered`.
    """
    if not sender.is_authenticated:
        raise NotAllowed("Log in to send a copy.")
    message = _clean_text(message, "The message", MESSAGE_MAX, lines=True)
    _check_rate(sender)
    try:
        notebooks.read_notebook(staged.notebook)
        files, _ = checked_files(staged, what="copy")
    except notebooks.NotebookError as exc:
        raise GalleryError(str(exc)) from None
    main = next(iter(files))
    folder = copy_folder_name(_clean_text(name, "The folder name", 100),
                              default=_default_name(main))
    recipients, not_delivered = _recipients(sender, to or [], groups or [])
    sent_id = uuid.uuid4()
    stored = _store(sent_id, files)
    try:
        with transaction.atomic():
            # One send at a time per sender, so the rate holds for sends at the same moment.
            # NO KEY: the offers of a send to this sender take KEY SHARE locks on their row.
            get_user_model().objects.select_for_update(no_key=True).filter(
                pk=sender.pk).first()
            _check_rate(sender)
            now = timezone.now()
            sent = SentCopy.objects.create(
                id=sent_id, sender=sender, name=folder, notebook=main, message=message,
                files=[{"path": p, "size": len(d)} for p, d in sorted(files.items())],
                size=sum(len(d) for d in files.values()),
                content_hash=notebooks.folder_hash(files),
                groups=sorted({g.name for _, g in recipients if g is not None}),
                not_delivered=not_delivered, created=now,
                expires=now + timedelta(days=settings.GALLERY_SEND_KEEP_DAYS))
            text = _offer_text(sender, folder, message)
            for user, group in recipients:
                delivery = Delivery.objects.create(sent=sent, recipient=user, group=group)
                notify(user=user, kind=Notification.Kind.COPY, message=text, delivery=delivery)
    except BaseException:
        shutil.rmtree(stored, ignore_errors=True)
        raise
    return sent


def _offer_text(sender: AbstractBaseUser, name: str, message: str) -> str:
    text = f"{sender.get_username()} sent you a copy of \u201c{name}\u201d."
    if message:
        quoted = message if len(message) <= NOTE_MAX else message[:NOTE_MAX - 1] + "\u2026"
        text += f" Message: {quoted}"
    return text


def _clean_text(value: str, what: str, limit: int, *, lines: bool = False) -> str:
    """A short text a person typed, stripped; GalleryError when it is too long or holds what
    the gallery cannot keep (NUL and other control characters, half a character)."""
    value = (value or "").strip()
    if len(value) > limit:
        raise GalleryError(f"{what} is longer than {limit} characters.")
    allowed = "\n\t\r" if lines else ""
    if any(ord(c) < 32 and c not in allowed or c == "\x7f" for c in value):
        raise GalleryError(f"{what} contains control characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise GalleryError(f"{what} is not valid Unicode text.") from None
    return value


def _default_name(notebook: str) -> str:
    """The folder a recipient gets unless they choose one: the notebook's name without .ipynb."""
    stem = PurePosixPath(notebook).name.removesuffix(".ipynb")[:100].rstrip(" .")
    return stem or "copy"


def _unique(names: list[str], what: str) -> list[str]:
    found: list[str] = []
    for raw in names:
        item = _clean_text(raw if isinstance(raw, str) else "", what, NAME_MAX)
        if item and item not in found:
            found.append(item)
    return found


def takes_no_copies() -> models.QuerySet[CopySettings]:
    """The ids of the people who refuse every copy (as a subquery)."""
    return CopySettings.objects.filter(refuse_all=True).values("user")


def _recipients(sender: AbstractBaseUser, to: list[str], groups: list[str]
                ) -> tuple[list[tuple[Any, HubGroup | None]], int]:
    """Who gets the copy (each with the group it came through, None when named), and how many
    members of the groups were left out because they take no copies."""
    names, group_names = _unique(to, "A user name"), _unique(groups, "A group name")
    if not names and not group_names:
        raise GalleryError("Say whom to send it to: hub user names, or a group of yours.")
    if sender.get_username() in names:
        raise GalleryError("You cannot send a copy to yourself.")
    limit = settings.GALLERY_SEND_MAX_RECIPIENTS
    if len(names) > limit:
        raise GalleryError(f"A copy goes to at most {limit} people at once.")
    found = {u.get_username(): u for u in get_user_model().objects.filter(
        username__in=names, is_active=True).exclude(pk__in=takes_no_copies())}
    for wanted in names:
        if wanted not in found and _hub_user(wanted):
            found[wanted] = ensure_user(wanted)  # a hub user who has not opened the gallery
        if wanted not in found:
            # The same words whether nobody has the name or its owner takes no copies: the
            # answer tells nothing of who exists or of anyone's settings.
            raise GalleryError(f"The gallery cannot deliver a copy to {wanted!r}: nobody by "
                               "that name takes copies through it.")
    mine = {g.name: g for g in HubGroup.objects.filter(name__in=group_names, members=sender)}
    for wanted in group_names:
        if wanted not in mine:  # whether it exists or not
            raise NotAllowed(f"You can send a copy only to groups you are a member of; "
                             f"{wanted!r} is not one of them.")
    chosen: dict[int, tuple[Any, HubGroup | None]] = {u.pk: (u, None) for u in found.values()}
    left_out: set[int] = set()
    for group_name in sorted(mine):
        members = mine[group_name].members.filter(is_active=True).exclude(pk=sender.pk)
        for user in members.exclude(pk__in=takes_no_copies()):
            chosen.setdefault(user.pk, (user, mine[group_name]))
        left_out |= set(members.filter(pk__in=takes_no_copies()).values_list("pk", flat=True))
    if not chosen:
        raise GalleryError(f"No other member of {', '.join(sorted(mine))} takes copies through "
                           "the gallery; nothing was sent.")
    if len(chosen) > limit:
        raise GalleryError(f"A copy goes to at most {limit} people at once; this one would go "
                           f"to {len(chosen)}.")
    return list(chosen.values()), len(left_out - chosen.keys())


def _hub_user(name: str) -> bool:
    """Whether the hub has a user of this name the gallery does not know yet (someone who
    never opened it): they get the copy when they first do."""
    if get_user_model().objects.filter(username=name).exists():
        return False  # known here: inactive, or taking no copies
    try:
        return hub.user_exists(name)
    except hub.HubUnavailable:
        raise GalleryError("The hub does not answer just now, so the gallery cannot tell "
                           f"whether {name!r} is one of its users; try again in a minute.",
                           status=503) from None


def _check_rate(sender: AbstractBaseUser) -> None:
    """TooManyRequests when the sender sent GALLERY_SEND_PER_HOUR copies within the last hour,
    saying how long until they can send again."""
    limit = settings.GALLERY_SEND_PER_HOUR
    if limit <= 0:
        raise NotAllowed("Sending copies is turned off in this gallery.")
    now = timezone.now()
    recent = list(SentCopy.objects.filter(sender=sender, created__gt=now - timedelta(hours=1))
                  .order_by("created").values_list("created", flat=True))
    if len(recent) < limit:
        return
    # A slot frees when enough of the recent sends are older than an hour.
    frees = recent[len(recent) - limit] + timedelta(hours=1)
    wait = max(math.ceil((frees - now).total_seconds()), 1)
    raise TooManyRequests(f"You have sent {len(recent)} copies within the last hour, the most "
                          f"the gallery allows; try again in {math.ceil(wait / 60)} min.",
                          retry_after=wait)


def sent_folder(sent: SentCopy) -> Path:
    """Where the files of a sent copy are kept while they can be accepted."""
    return Path(settings.GALLERY_SEND_DIR) / str(sent.pk)


def _store(sent_id: uuid.UUID, files: dict[str, bytes]) -> Path:
    """Write the files under GALLERY_SEND_DIR/<id>/: into a hidden folder first, renamed into
    place when whole. Readable by everyone (the folder's parents need not be): a recipient's
    copy is read as the recipient, from a descriptor of this folder the worker opens."""
    base = Path(settings.GALLERY_SEND_DIR)
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=base))
    try:
        for name, data in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        final = base / str(sent_id)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# --- what the recipient does --------------------------------------------------------------


def delivery_for(user: AbstractBaseUser, delivery_id: Any) -> Delivery:
    """A copy offered to this person, or NotFound: an offer to someone else is as absent as
    one that never was (for its sender too: they see it among what they sent)."""
    found = Delivery.objects.filter(pk=delivery_id, recipient_id=user.pk).select_related(
        "sent__sender", "job").first() if user.is_authenticated else None
    if found is None:
        raise NotFound(GONE)
    return found


def accept_plan(*, delivery: Delivery, folder_name: str = "") -> dict[str, Any]:
    """What accepting would write, and where; nothing is written."""
    sent = delivery.sent
    folder = copy_folder_name(folder_name, default=sent.name)
    return {**planned_target(folder), "files": sent.files, "notebook": sent.notebook,
            "sent_by": sent.sender.get_username(), "message": sent.message}


def accept_delivery(*, delivery: Delivery, user: AbstractBaseUser, folder_name: str = "") -> Job:
    """Accept a copy offered to `user`: queue the job that writes it into a new folder of
    their Use directory, as them. One that was withdrawn, declined or expired cannot be; an
    accepted one only again when its copy failed. Of an acceptance and a withdrawal at the
    same moment, exactly one happens."""
    if delivery.recipient_id != user.pk:
        raise NotFound(GONE)
    folder = copy_folder_name(folder_name, default=delivery.sent.name)
    expire_offers(delivery_id=delivery.pk)
    with transaction.atomic():
        # The sent copy first (its files may be being removed), then the offer.
        sent = SentCopy.objects.select_for_update(of=("self",)).select_related("sender").get(
            pk=delivery.sent_id)
        current = Delivery.objects.select_for_update(of=("self",)).select_related("job").get(
            pk=delivery.pk)
        current.sent = sent
        if current.state != Delivery.State.PENDING and not current.can_accept_again:
            raise Conflict(why_not(current))
        if sent.removed is not None:
            raise Conflict(f"The files of this copy are no longer kept; ask "
                           f"{sent.sender.get_username()} to send it again.")
        job = queue_job(Job.Kind.ACCEPT, user=user,
                        params={"username": user.get_username(), "folder": folder,
                                "backend": settings.GALLERY_USE_BACKEND,
                                "delivery": str(current.pk)},
                        message="Waiting for a free worker; this page updates by itself.")
        # Conditional on the state read: a withdrawal that committed first makes it change
        # nothing, and the job goes with the rolled-back transaction.
        won = Delivery.objects.filter(pk=current.pk, state=current.state,
                                      job_id=current.job_id).update(
            state=Delivery.State.ACCEPTED, job=job, decided=timezone.now())
        if not won:
            raise Conflict("This copy changed meanwhile; reload the page.")
    return job


def why_not(delivery: Delivery) -> str:
    """Why an offer cannot be accepted (or declined) now, for its recipient."""
    sender = delivery.sent.sender.get_username()
    state = delivery.current_state
    if state == Delivery.State.WITHDRAWN:
        return f"{sender} withdrew this copy."
    if state == Delivery.State.DECLINED:
        return "You declined this copy."
    if state == Delivery.State.EXPIRED:
        return (f"This copy waited more than {settings.GALLERY_SEND_KEEP_DAYS} days and "
                f"expired; ask {sender} to send it again.")
    return "You accepted this copy already" + (
        f"; it is in {delivery.job.result['path']}." if delivery.job is not None
        and delivery.job.result.get("path") else ".")


def decline_delivery(*, delivery: Delivery, user: AbstractBaseUser) -> Delivery:
    """Decline a copy offered to `user` (declining it again changes nothing)."""
    if delivery.recipient_id != user.pk:
        raise NotFound(GONE)
    expire_offers(delivery_id=delivery.pk)
    with transaction.atomic():
        current = Delivery.objects.select_for_update(of=("self",)).select_related(
            "sent__sender", "job").get(pk=delivery.pk)
        if current.state == Delivery.State.DECLINED:
            return current
        if current.state != Delivery.State.PENDING or not Delivery.objects.filter(
                pk=current.pk, state=Delivery.State.PENDING).update(
                state=Delivery.State.DECLINED, decided=timezone.now()):
            raise Conflict(why_not(current))
    current.refresh_from_db()
    remove_files_if_done(current.sent)
    return current


def set_refuse_all(*, user: AbstractBaseUser, refuse: bool) -> CopySettings:
    """Refuse every copy others would send (copies already waiting stay, to accept or decline),
    or take them again."""
    if not user.is_authenticated:
        raise NotAllowed("Log in first.")
    found, _ = CopySettings.objects.update_or_create(
        user=user, defaults={"refuse_all": refuse, "updated": timezone.now()})
    return found


def refuses_all(user: AbstractBaseUser) -> bool:
    return CopySettings.objects.filter(user_id=user.pk, refuse_all=True).exists()


# --- what the sender does -----------------------------------------------------------------


def sent_by(user: AbstractBaseUser, sent_id: Any) -> SentCopy:
    """A copy this person sent, or NotFound (a recipient sees their offer, not the send)."""
    found = SentCopy.objects.filter(pk=sent_id, sender_id=user.pk).first() \
        if user.is_authenticated else None
    if found is None:
        raise NotFound(GONE)
    return found


def withdraw_copy(*, sent: SentCopy, user: AbstractBaseUser, recipient: str = "") -> int:
    """Withdraw a sent copy from everyone who has not answered yet, or from one `recipient`;
    returns from how many. An offer accepted or declined already stays as it is."""
    if sent.sender_id != user.pk:
        raise NotFound(GONE)
    recipient = _clean_text(recipient, "A user name", NAME_MAX)
    expire_offers(sent_id=sent.pk)
    with transaction.atomic():
        # Locks in the order an acceptance takes them, the sent copy first: never a deadlock.
        SentCopy.objects.select_for_update(of=("self",)).filter(pk=sent.pk).first()
        offers = Delivery.objects.filter(sent=sent).order_by()
        if recipient:
            offers = offers.filter(recipient__username=recipient)
            if not offers.exists():
                raise GalleryError(f"This copy was not sent to {recipient!r}.")
        # Locked, then changed only where still pending: of a withdrawal and an acceptance
        # at the same moment, exactly one happens.
        waiting = list(offers.select_for_update(of=("self",)).filter(
            state=Delivery.State.PENDING).values_list("pk", flat=True))
        withdrawn = Delivery.objects.filter(pk__in=waiting, state=Delivery.State.PENDING).update(
            state=Delivery.State.WITHDRAWN, decided=timezone.now())
        if not withdrawn and recipient:
            raise Conflict(f"{recipient} has answered already (the copy is "
                           f"{offers.get().get_state_display()}); it can no longer be "
                           "withdrawn.")
        if not withdrawn:
            raise Conflict("Nobody is waiting for this copy any more: every recipient has "
                           "answered, or it expired.")
    remove_files_if_done(sent)
    return withdrawn


# --- the job, and the sweep ---------------------------------------------------------------


def sees_job(user: AbstractBaseUser, job: Job) -> bool:
    """Whether a person sees another's job: the centre's reviewers see every job but the
    acceptance of a copy someone sent, which is its recipient's alone."""
    return is_reviewer(user) and job.kind != Job.Kind.ACCEPT


def do_accept(job: Job) -> dict[str, Any]:
    """Write an accepted copy into its recipient's home, as them (the Use backends)."""
    delivery = Delivery.objects.select_related("sent__sender").filter(
        pk=job.params.get("delivery")).first()
    if delivery is None or delivery.recipient_id != job.user_id:
        raise GalleryError("This copy is no longer offered to you.")
    sent = delivery.sent
    sender = sent.sender.get_username()
    source = sent_folder(sent)
    if sent.removed is not None or not source.is_dir():
        raise GalleryError(f"The files of this copy are no longer kept; ask {sender} to send "
                           "it again.")
    username = job.params["username"]
    provenance = {"sent_by": sender, "sent_at": sent.created.isoformat(), "name": sent.name,
                  "message": sent.message, "content_hash": sent.content_hash,
                  "copied_at": timezone.now().isoformat(), "user": username,
                  "delivery": str(delivery.pk)}
    folder = write_copy(job, source=source, provenance=provenance)
    rel = f"{settings.GALLERY_USE_DIR}/{folder}"
    return {"folder": folder, "path": f"~/{rel}",
            "lab_url": lab_url(username, f"{rel}/{sent.notebook}"),
            "sent_by": sender, "name": sent.name}


def expire_offers(*, delivery_id: Any = None, sent_id: Any = None) -> int:
    """Mark offers still pending past their copy's expiry as expired (those given, or all);
    returns how many."""
    due = Delivery.objects.filter(state=Delivery.State.PENDING, sent__expires__lte=timezone.now())
    if delivery_id is not None:
        due = due.filter(pk=delivery_id)
    if sent_id is not None:
        due = due.filter(sent_id=sent_id)
    return due.update(state=Delivery.State.EXPIRED, decided=timezone.now())


def _still_wanted(sent: SentCopy) -> bool:
    """Whether a recipient may still write the files: an offer waits, or an acceptance's job
    has not finished (or failed, and may be tried again until the copy expires)."""
    offers = Delivery.objects.filter(sent=sent)
    busy = Job.objects.filter(delivery__sent=sent, state__in=[Job.State.QUEUED,
                                                               Job.State.RUNNING])
    if busy.exists():
        return True
    if sent.expires <= timezone.now():
        return False
    return offers.filter(models.Q(state=Delivery.State.PENDING) | models.Q(
        state=Delivery.State.ACCEPTED, job__state=Job.State.FAILED)).exists()


def remove_files_if_done(sent: SentCopy) -> bool:
    """Remove a sent copy's files once no recipient can still accept them; returns whether."""
    with transaction.atomic():
        locked = SentCopy.objects.select_for_update().filter(pk=sent.pk,
                                                             removed__isnull=True).first()
        if locked is None or _still_wanted(locked):
            return False
        locked.removed = timezone.now()
        locked.save(update_fields=["removed"])
        # Only once that is for good: a rolled-back removal leaves the files in place.
        folder = sent_folder(locked)
        transaction.on_commit(lambda: shutil.rmtree(folder, ignore_errors=True))
    return True


def sweep_copies() -> dict[str, int]:
    """Expire offers waiting past GALLERY_SEND_KEEP_DAYS, remove the files nobody can accept
    any more, and folders no sent copy names (a send cut short before it committed). Celery
    beat runs it every hour."""
    expired = expire_offers()
    removed = 0
    waiting = Delivery.objects.filter(sent=models.OuterRef("pk"), state=Delivery.State.PENDING)
    candidates = SentCopy.objects.filter(removed__isnull=True).filter(
        models.Q(expires__lte=timezone.now()) | ~models.Exists(waiting)).order_by("created")
    for sent in candidates[:1000]:
        removed += remove_files_if_done(sent)
    return {"expired": expired, "removed": removed, "orphans": _remove_orphans()}


def _remove_orphans() -> int:
    base = Path(settings.GALLERY_SEND_DIR)
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return 0
    cutoff = time.time() - ORPHAN_GRACE.total_seconds()
    old: dict[str, str] = {}
    for entry in entries:
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                old[entry.name] = entry.path
        except FileNotFoundError:
            continue
    ids = []
    for name in old:
        try:
            ids.append(uuid.UUID(name))
        except ValueError:
            continue
    kept = {str(pk) for pk in SentCopy.objects.filter(pk__in=ids, removed__isnull=True)
            .values_list("pk", flat=True)}
    removed = 0
    for name, path in old.items():
        if name in kept or not (name.startswith(_TMP_PREFIX) or _is_uuid(name)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def _is_uuid(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False

"""Send a copy: a person sends a notebook (or a folder) to people or to a group of theirs;
each recipient accepts it into their home (a job writing as them) or declines it; the sender
withdraws it while it waits. Every state change, every actor on every endpoint and page, the
limits, the race of an acceptance with a withdrawal, expiry and what is kept on disk."""

from __future__ import annotations

import base64
import json
import os
import threading
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from gallery import homes, services
from gallery.api import api as ninja_api
from gallery.models import CopySettings, Delivery, HubGroup, Job, Notification, SentCopy

from .base import GalleryTestCase, make_user, notebook_bytes

pytestmark = pytest.mark.postgres  # run again on PostgreSQL by `make test`

NOTEBOOK = notebook_bytes(2, text="print('parcel')")
FILES = {"data/table.csv": b"a,b\n1,2\n", "helper.py": b"ANSWER = 42\n"}


def staged(notebook: bytes = NOTEBOOK, name: str = "parcel.ipynb",
           files: dict[str, bytes] | None = None) -> services.StagedFiles:
    return services.StagedFiles(notebook_name=name, notebook=notebook,
                                files=dict(FILES if files is None else files))


def sent_files() -> list[str]:
    """What the send folder holds (each sent copy's folder, and anything else)."""
    base = Path(settings.GALLERY_SEND_DIR)
    return sorted(os.listdir(base)) if base.is_dir() else []


class SendCase(GalleryTestCase):
    """Sam sends; Rosa receives; Otto is anyone else; Rita reviews. Sam, Rosa, Paula and Ray
    are in the group physics; Ray refuses every copy; Carl is in chemistry only."""

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.sender, cls.recipient = make_user("sam"), make_user("rosa")
        cls.other, cls.paula, cls.ray = make_user("otto"), make_user("paula"), make_user("ray")
        cls.carl = make_user("carl")
        physics = HubGroup.objects.create(name="physics")
        physics.members.set([cls.sender, cls.recipient, cls.paula, cls.ray])
        HubGroup.objects.create(name="chemistry").members.set([cls.carl])
        CopySettings.objects.create(user=cls.ray, refuse_all=True)

    def send(self, to: tuple[str, ...] = ("rosa",), groups: tuple[str, ...] = (), *,
             message: str = "Here is the parcel notebook.", **kwargs: Any) -> SentCopy:
        with self.captureOnCommitCallbacks(execute=True):
            return services.send_copy(sender=self.sender, staged=staged(**kwargs), to=list(to),
                                      groups=list(groups), message=message)

    def offer(self, sent: SentCopy, user: Any = None) -> Delivery:
        return Delivery.objects.select_related("sent__sender", "job").get(
            sent=sent, recipient=user or self.recipient)

    def accept(self, delivery: Delivery, folder: str = "", user: Any = None) -> Job:
        with self.captureOnCommitCallbacks(execute=True):
            job = services.accept_delivery(delivery=delivery, user=user or self.recipient,
                                           folder_name=folder)
        job.refresh_from_db()
        return job

    def decline(self, delivery: Delivery, user: Any = None) -> Delivery:
        with self.captureOnCommitCallbacks(execute=True):
            return services.decline_delivery(delivery=delivery, user=user or self.recipient)

    def withdraw(self, sent: SentCopy, user: Any = None, recipient: str = "") -> int:
        with self.captureOnCommitCallbacks(execute=True):
            return services.withdraw_copy(sent=sent, user=user or self.sender,
                                          recipient=recipient)

    def sweep(self) -> dict[str, int]:
        with self.captureOnCommitCallbacks(execute=True):
            return services.sweep_copies()

    def assert_nothing_stored(self, before: dict[str, int]) -> None:
        self.assertEqual(self.counts(), before)
        self.assertEqual([n for n in sent_files()], [])

    def counts(self) -> dict[str, int]:
        return {m.__name__: m.objects.count() for m in (SentCopy, Delivery, Notification, Job)}


# --- sending ------------------------------------------------------------------------------


class SendTests(SendCase):
    def test_it_keeps_exactly_what_was_sent_and_tells_the_recipient(self) -> None:
        sent = self.send()
        folder = services.sent_folder(sent)
        self.assertEqual((folder / "parcel.ipynb").read_bytes(), NOTEBOOK)
        for name, data in FILES.items():
            self.assertEqual((folder / name).read_bytes(), data)
        self.assertEqual(sorted(f["path"] for f in sent.files),
                         sorted(["parcel.ipynb", *FILES]))
        self.assertEqual((sent.name, sent.notebook), ("parcel", "parcel.ipynb"))
        # Readable by the recipient's own account, which reads it at the copy.
        self.assertEqual(os.stat(folder / "data").st_mode & 0o777, 0o755)
        self.assertEqual(os.stat(folder / "helper.py").st_mode & 0o777, 0o644)
        offer = self.offer(sent)
        self.assertEqual(offer.state, Delivery.State.PENDING)
        note = Notification.objects.get(user=self.recipient)
        self.assertEqual((note.kind, note.delivery), (Notification.Kind.COPY, offer))
        self.assertIn("sam sent you a copy of \u201cparcel\u201d", note.message)
        self.assertIn("Here is the parcel notebook.", note.message)
        self.assertEqual(sent.expires - sent.created,
                         timedelta(days=settings.GALLERY_SEND_KEEP_DAYS))

    def test_it_sends_to_the_other_members_of_a_group_who_take_copies(self) -> None:
        sent = self.send(to=(), groups=("physics",))
        got = {d.recipient.username: d.group.name for d in sent.deliveries.all()}
        self.assertEqual(got, {"rosa": "physics", "paula": "physics"})  # not sam, not ray
        self.assertEqual((sent.groups, sent.not_delivered), (["physics"], 1))
        self.assertFalse(Notification.objects.filter(user__in=[self.ray, self.sender,
                                                               self.carl]).exists())

    def test_it_sends_once_to_someone_named_and_in_the_group(self) -> None:
        sent = self.send(to=("rosa", "carl"), groups=("physics",))
        got = {d.recipient.username: d.group.name if d.group else "" for d in
               sent.deliveries.all()}
        self.assertEqual(got, {"rosa": "", "carl": "", "paula": "physics"})
        self.assertEqual(Notification.objects.filter(user=self.recipient).count(), 1)

    def test_it_says_the_same_of_a_name_nobody_has_and_of_one_who_takes_no_copies(self) -> None:
        before = self.counts()
        said = []
        for name in ("nobody-here", "ray"):
            with self.assertRaises(services.GalleryError) as raised:
                self.send(to=("rosa", name))
            self.assertEqual(raised.exception.status, 400)
            said.append(str(raised.exception).replace(repr(name), "NAME"))
        self.assertEqual(said[0], said[1])
        self.assert_nothing_stored(before)

    def test_it_asks_the_hub_of_a_name_it_has_not_met_and_delivers_to_its_user(self) -> None:
        from .test_hub import FakeHub

        asked = []

        def answer(method: str, path: str, token: str) -> tuple[int, str, bytes]:
            asked.append((path, token))
            if path == "/hub/api/users/newcomer" and token == "service-token":
                return 200, "application/json", b'{"name": "newcomer", "kind": "user"}'
            if path.startswith("/hub/api/users/hub-away"):
                return 502, "text/html", b"<h1>Bad gateway</h1>"
            return 404, "application/json", b'{"status": 404}'

        with FakeHub(answer) as fake, override_settings(JUPYTERHUB_API_URL=fake.api_url,
                                                        JUPYTERHUB_API_TOKEN="service-token"):
            sent = self.send(to=("rosa", "newcomer"))
            newcomer = Delivery.objects.get(sent=sent, recipient__username="newcomer")
            self.assertFalse(newcomer.recipient.has_usable_password())
            before = self.counts()
            with self.assertRaises(services.GalleryError) as raised:
                self.send(to=("ghost",))
            self.assertEqual(raised.exception.status, 400)
            self.assertIn("nobody by that name takes copies", str(raised.exception))
            with self.assertRaises(services.GalleryError) as raised:
                self.send(to=("hub-away",))
            self.assertEqual(raised.exception.status, 503)
            self.assertEqual(self.counts(), before)
            self.assertEqual(len(sent_files()), 1)  # the first send's alone
        self.assertNotIn("/hub/api/users/rosa", [p for p, _ in asked])  # known: not asked
        self.assertFalse(get_user_model().objects.filter(username="ghost").exists())

    def test_it_refuses_a_group_of_others_as_it_refuses_one_that_does_not_exist(self) -> None:
        before = self.counts()
        said = []
        for name in ("chemistry", "no-such-group"):
            with self.assertRaises(services.NotAllowed) as raised:
                self.send(to=(), groups=(name,))
            said.append(str(raised.exception).replace(repr(name), "NAME"))
        self.assertEqual(said[0], said[1])
        self.assert_nothing_stored(before)

    def test_it_refuses_sending_to_nobody_to_oneself_and_to_too_many(self) -> None:
        before = self.counts()
        for to, groups, words in [((), (), "Say whom"), (("sam",), (), "yourself"),
                                  (("", " "), (), "Say whom")]:
            with self.subTest(to=to), self.assertRaises(services.GalleryError) as raised:
                self.send(to=to, groups=groups)
            self.assertIn(words, str(raised.exception))
        with override_settings(GALLERY_SEND_MAX_RECIPIENTS=1):
            with self.assertRaisesMessage(services.GalleryError, "at most 1 people"):
                self.send(to=("rosa", "otto"))
            with self.assertRaisesMessage(services.GalleryError, "would go to 2"):
                self.send(to=(), groups=("physics",))
        self.assert_nothing_stored(before)

    def test_it_refuses_what_staging_refuses_and_stores_nothing(self) -> None:
        before = self.counts()
        cases = [
            ({"notebook": b"{not json"}, "not valid JSON", 400),
            ({"name": "parcel.txt"}, ".ipynb", 400),
            ({"files": {"../escape.py": b"x"}}, "leaves the example folder", 400),
            ({"files": {".hidden": b"x"}}, "starts with a dot", 400),
            ({"files": {"a": b"x", "a/b": b"y"}}, "both a file and a folder", 400),
        ]
        for kwargs, words, status in cases:
            with self.subTest(kwargs=kwargs), self.assertRaises(services.GalleryError) as raised:
                self.send(**kwargs)
            self.assertIn(words, str(raised.exception))
            self.assertEqual(raised.exception.status, status)
        with override_settings(GALLERY_MAX_FILES=2):
            with self.assertRaisesMessage(services.GalleryError, "At most 2 files per copy"):
                self.send(files={f"f{i}.txt": b"x" for i in range(3)})
        with override_settings(GALLERY_MAX_UPLOAD_BYTES=len(NOTEBOOK) + 10):
            with self.assertRaises(services.GalleryError) as raised:
                self.send()
            self.assertEqual(raised.exception.status, 413)
        for message in ("x" * 2001, "bad \x00 byte", "half \ud800 a character"):
            with self.subTest(message=message[:10]), self.assertRaises(services.GalleryError):
                self.send(message=message)
        self.assert_nothing_stored(before)

    def test_it_limits_the_sends_of_each_sender_per_hour(self) -> None:
        with override_settings(GALLERY_SEND_PER_HOUR=2):
            first = self.send()
            self.send(to=("otto",))
            before = self.counts()
            with self.assertRaises(services.TooManyRequests) as raised:
                self.send()
            self.assertEqual(raised.exception.status, 429)
            self.assertTrue(1 <= raised.exception.retry_after <= 3600)
            self.assertIn("try again in", str(raised.exception))
            self.assert_nothing_stored_beyond(before)
            # Others are not held up by sam's sends.
            services.send_copy(sender=self.recipient, staged=staged(), to=["otto"])
            # Once the first send is more than an hour old, one more may go.
            SentCopy.objects.filter(pk=first.pk).update(
                created=timezone.now() - timedelta(hours=1, seconds=1))
            self.send()
        with override_settings(GALLERY_SEND_PER_HOUR=0):
            with self.assertRaisesMessage(services.NotAllowed, "turned off"):
                self.send()

    def assert_nothing_stored_beyond(self, before: dict[str, int]) -> None:
        self.assertEqual(self.counts(), before)
        self.assertEqual(len(sent_files()), SentCopy.objects.count())

    def test_it_waits_for_the_oldest_send_to_leave_the_hour(self) -> None:
        with override_settings(GALLERY_SEND_PER_HOUR=1):
            sent = self.send()
            SentCopy.objects.filter(pk=sent.pk).update(
                created=timezone.now() - timedelta(minutes=50))
            with self.assertRaises(services.TooManyRequests) as raised:
                self.send()
            self.assertTrue(590 <= raised.exception.retry_after <= 601,
                            raised.exception.retry_after)

    def test_it_removes_the_files_when_the_send_is_refused_in_its_transaction(self) -> None:
        before = self.counts()
        with mock.patch("gallery.services.copies.notify", side_effect=RuntimeError("boom")):
            with self.assertRaises(RuntimeError):
                self.send()
        self.assert_nothing_stored(before)


# --- accepting, declining, withdrawing ------------------------------------------------------


class AcceptTests(SendCase):
    def test_it_writes_the_copy_into_the_recipients_home_with_who_sent_it(self) -> None:
        sent = self.send()
        job = self.accept(self.offer(sent), folder="from-sam")
        self.assertEqual(job.state, Job.State.DONE, job.message)
        self.assertEqual((job.kind, job.user), (Job.Kind.ACCEPT, self.recipient))
        copy = homes.use_parent("rosa") / "from-sam"
        self.assertEqual((copy / "parcel.ipynb").read_bytes(), NOTEBOOK)
        for name, data in FILES.items():
            self.assertEqual((copy / name).read_bytes(), data)
        provenance = json.loads((copy / homes.PROVENANCE_FILE).read_text())
        self.assertEqual((provenance["sent_by"], provenance["job"], provenance["message"]),
                         ("sam", str(job.pk), "Here is the parcel notebook."))
        self.assertEqual(job.result["path"], "~/examples/from-sam")
        self.assertEqual(job.result["lab_url"],
                         "/user/rosa/lab/tree/examples/from-sam/parcel.ipynb")
        offer = self.offer(sent)
        self.assertEqual((offer.state, offer.job), (Delivery.State.ACCEPTED, job))
        self.assertIsNotNone(offer.decided)

    def test_it_names_the_folder_after_the_notebook_and_never_overwrites(self) -> None:
        first, second = self.send(), self.send()
        folders = [self.accept(self.offer(s)).result["folder"] for s in (first, second)]
        self.assertEqual(folders, ["parcel", "parcel-2"])

    def test_it_refuses_a_folder_name_that_is_a_path(self) -> None:
        offer = self.offer(self.send())
        for bad in ("../x", "a/b", ".hidden", "x" * 101):
            with self.subTest(folder=bad), self.assertRaises(services.GalleryError):
                self.accept(offer, folder=bad)
        self.assertEqual(self.offer(offer.sent).state, Delivery.State.PENDING)
        self.assertFalse(Job.objects.exists())

    def test_it_accepts_once_and_after_no_other_answer(self) -> None:
        offer = self.offer(self.send())
        job = self.accept(offer)
        for answer in (lambda: self.accept(offer),
                       lambda: self.decline(offer)):
            with self.assertRaisesMessage(services.Conflict, "You accepted this copy already; "
                                                             "it is in ~/examples/parcel."):
                answer()
        with self.assertRaisesMessage(services.Conflict, "rosa has answered already"):
            self.withdraw(offer.sent, recipient="rosa")
        self.assertEqual(list(Job.objects.all()), [job])

    def test_it_lets_a_failed_copy_be_accepted_again(self) -> None:
        offer = self.offer(self.send())
        parent = homes.use_parent("rosa")
        parent.parent.mkdir(parents=True)
        parent.write_text("not a folder")
        failed = self.accept(offer)
        self.assertEqual(failed.state, Job.State.FAILED)
        self.assertIn("~/examples is not a folder", failed.message)
        offer = self.offer(offer.sent)
        self.assertTrue(offer.can_accept_again)
        # The sender cannot take it back once accepted, failed or not.
        with self.assertRaises(services.Conflict):
            self.withdraw(offer.sent)
        parent.unlink()
        again = self.accept(offer)
        self.assertEqual(again.state, Job.State.DONE, again.message)
        self.assertEqual(self.offer(offer.sent).job, again)
        self.assertTrue((parent / "parcel" / "parcel.ipynb").is_file())

    def test_it_lets_only_the_recipient_accept_and_decline(self) -> None:
        offer = self.offer(self.send())
        for who in (self.sender, self.other, self.reviewer, self.paula):
            with self.subTest(who=who.username):
                with self.assertRaises(services.NotFound):
                    services.accept_delivery(delivery=offer, user=who)
                with self.assertRaises(services.NotFound):
                    services.decline_delivery(delivery=offer, user=who)
                with self.assertRaises(services.NotFound):
                    services.delivery_for(who, offer.pk)
                if who != self.sender:
                    with self.assertRaises(services.NotFound):
                        services.withdraw_copy(sent=offer.sent, user=who)
                    with self.assertRaises(services.NotFound):
                        services.sent_by(who, offer.sent.pk)
        with self.assertRaises(services.NotFound):
            services.sent_by(self.recipient, offer.sent.pk)
        self.assertEqual(self.offer(offer.sent).state, Delivery.State.PENDING)

    def test_it_declines_once_and_removes_the_files_nobody_needs(self) -> None:
        sent = self.send()
        offer = self.offer(sent)
        declined = self.decline(offer)
        self.assertEqual(declined.state, Delivery.State.DECLINED)
        self.assertEqual(self.decline(offer).state,
                         Delivery.State.DECLINED)  # again: nothing changes
        with self.assertRaisesMessage(services.Conflict, "You declined this copy."):
            self.accept(offer)
        sent.refresh_from_db()
        self.assertIsNotNone(sent.removed)
        self.assertFalse(services.sent_folder(sent).exists())
        with self.assertRaisesMessage(services.Conflict, "Nobody is waiting"):
            self.withdraw(sent)

    def test_it_withdraws_from_one_or_from_everyone_still_waiting(self) -> None:
        sent = self.send(to=("rosa", "otto", "paula"))
        self.accept(self.offer(sent, self.paula), user=self.paula)
        self.assertEqual(self.withdraw(sent, recipient="otto"), 1)
        with self.assertRaisesMessage(services.Conflict, "withdrawn"):
            self.withdraw(sent, recipient="otto")
        with self.assertRaisesMessage(services.GalleryError, "not sent to 'carl'"):
            self.withdraw(sent, recipient="carl")
        self.assertEqual(self.withdraw(sent), 1)
        states = {d.recipient.username: d.state for d in sent.deliveries.all()}
        self.assertEqual(states, {"rosa": "withdrawn", "otto": "withdrawn", "paula": "accepted"})
        with self.assertRaisesMessage(services.Conflict, "sam withdrew this copy."):
            self.accept(self.offer(sent))
        with self.assertRaises(services.Conflict):
            self.decline(self.offer(sent))
        # Paula's copy is done and nobody else may accept: the files are no longer kept.
        sent.refresh_from_db()
        self.assertIsNotNone(sent.removed)
        self.assertTrue((homes.use_parent("paula") / "parcel" / "helper.py").is_file())

    def test_it_fails_an_accepted_copy_whose_files_went_with_a_plain_message(self) -> None:
        offer = self.offer(self.send())
        with mock.patch("gallery.services.copies.queue_job", wraps=services.queue_job):
            job = services.accept_delivery(delivery=offer, user=self.recipient)  # not run yet
        import shutil

        shutil.rmtree(services.sent_folder(offer.sent))
        done = services.perform_job(str(job.pk))
        self.assertEqual(done.state, Job.State.FAILED)
        self.assertEqual(done.message, "The files of this copy are no longer kept; ask sam to "
                                       "send it again.")

    def test_it_finds_the_copy_an_interrupted_acceptance_finished(self) -> None:
        job = self.accept(self.offer(self.send()))
        Job.objects.filter(pk=job.pk).update(state=Job.State.RUNNING,
                                             lease_until=timezone.now() - timedelta(seconds=1))
        done = services.perform_job(str(job.pk))
        self.assertEqual((done.state, done.attempts, done.result["folder"]),
                         (Job.State.DONE, 2, "parcel"))
        self.assertEqual(os.listdir(homes.use_parent("rosa")), ["parcel"])

    def test_it_clears_what_an_acceptance_it_gives_up_on_left(self) -> None:
        offer = self.offer(self.send())
        job = services.accept_delivery(delivery=offer, user=self.recipient)  # never rung
        parent = homes.use_parent("rosa")
        plan = homes.CopyPlan(username="rosa", source=Path(), parent=parent,
                              folder_name=job.params["folder"], job_id=str(job.pk),
                              provenance={})
        leftover = parent / (plan.temp_prefix + "dead")
        (leftover / "data").mkdir(parents=True)
        Job.objects.filter(pk=job.pk).update(
            state=Job.State.RUNNING, attempts=services.MAX_ATTEMPTS + 2,
            lease_until=timezone.now() - timedelta(seconds=1))
        services.sweep_jobs()
        job.refresh_from_db()
        self.assertEqual(job.state, Job.State.FAILED)
        self.assertEqual(list(parent.iterdir()), [])


class ExpiryTests(SendCase):
    def age(self, sent: SentCopy, days: float) -> None:
        SentCopy.objects.filter(pk=sent.pk).update(
            created=sent.created - timedelta(days=days), expires=sent.expires - timedelta(
                days=days))

    def test_it_expires_offers_waiting_too_long(self) -> None:
        sent = self.send(to=("rosa", "otto"))
        self.accept(self.offer(sent, self.other), user=self.other)
        self.age(sent, settings.GALLERY_SEND_KEEP_DAYS)
        # Expired as of now, even before the sweep marks it so.
        offer = self.offer(sent)
        self.assertEqual(offer.current_state, Delivery.State.EXPIRED)
        with self.assertRaisesMessage(services.Conflict, "expired; ask sam"):
            self.accept(offer)
        self.assertEqual(self.offer(sent).state, Delivery.State.EXPIRED)
        self.assertEqual(self.sweep()["removed"], 1)
        self.assertEqual({d.recipient.username: d.state for d in sent.deliveries.all()},
                         {"rosa": "expired", "otto": "accepted"})
        self.assertFalse(services.sent_folder(sent).exists())
        with self.assertRaises(services.Conflict):
            self.withdraw(sent)

    def test_it_keeps_the_files_while_a_failed_copy_may_be_tried_again(self) -> None:
        sent = self.send()
        parent = homes.use_parent("rosa")
        parent.parent.mkdir(parents=True)
        parent.write_text("not a folder")
        self.assertEqual(self.accept(self.offer(sent)).state, Job.State.FAILED)
        self.assertEqual(self.sweep()["removed"], 0)
        self.assertTrue(services.sent_folder(sent).is_dir())
        self.age(sent, settings.GALLERY_SEND_KEEP_DAYS)
        self.assertEqual(self.sweep()["removed"], 1)
        parent.unlink()
        with self.assertRaisesMessage(services.Conflict, "no longer kept"):
            self.accept(self.offer(sent))

    def test_it_never_removes_the_files_under_a_copy_being_written(self) -> None:
        sent = self.send()
        job = services.accept_delivery(delivery=self.offer(sent), user=self.recipient)
        self.age(sent, settings.GALLERY_SEND_KEEP_DAYS + 1)
        self.assertEqual(self.sweep()["removed"], 0)
        self.assertEqual(services.perform_job(str(job.pk)).state, Job.State.DONE)
        self.assertEqual(self.sweep()["removed"], 1)

    def test_it_removes_folders_no_sent_copy_names(self) -> None:
        sent = self.send()
        base = Path(settings.GALLERY_SEND_DIR)
        orphan, tmp = base / "0b6cd4a8-5e0c-4c1e-9d3c-0c8f1c6f9a11", base / ".tmp-abc"
        for folder in (orphan, tmp):
            folder.mkdir()
            (folder / "x.ipynb").write_text("{}")
        self.assertEqual(self.sweep()["orphans"], 0)  # new: a send may be writing
        old = (timezone.now() - timedelta(days=2)).timestamp()
        for folder in (orphan, tmp, services.sent_folder(sent)):
            os.utime(folder, (old, old))
        self.assertEqual(self.sweep()["orphans"], 2)
        self.assertEqual(sent_files(), [str(sent.pk)])


class RefuseAllTests(SendCase):
    def test_it_refuses_new_copies_but_keeps_those_waiting(self) -> None:
        waiting = self.offer(self.send())
        services.set_refuse_all(user=self.recipient, refuse=True)
        self.assertTrue(services.refuses_all(self.recipient))
        with self.assertRaisesMessage(services.GalleryError, "cannot deliver a copy to 'rosa'"):
            self.send()
        self.assertEqual(self.send(to=(), groups=("physics",)).not_delivered, 2)  # rosa, ray
        self.assertEqual(self.accept(waiting).state, Job.State.DONE)
        services.set_refuse_all(user=self.recipient, refuse=False)
        self.assertFalse(services.refuses_all(self.recipient))
        self.send()


class RaceTests(SendCase):
    def test_it_lets_an_acceptance_lose_to_a_withdrawal_that_came_first(self) -> None:
        offer = self.offer(self.send())

        # The withdrawal commits between the acceptance's first look and its change.
        real = services.copies.expire_offers
        withdrawn: list[int] = []

        def withdraw_meanwhile(**kwargs: Any) -> int:
            if not withdrawn:  # the withdrawal itself looks for expired offers too
                withdrawn.append(1)
                services.withdraw_copy(sent=offer.sent, user=self.sender)
            return real(**kwargs)

        with mock.patch("gallery.services.copies.expire_offers", withdraw_meanwhile):
            with self.assertRaisesMessage(services.Conflict, "sam withdrew this copy."):
                self.accept(offer)
        self.assertEqual(self.offer(offer.sent).state, Delivery.State.WITHDRAWN)
        self.assertFalse(Job.objects.exists())

    def test_it_changes_nothing_when_the_offer_changed_after_it_was_read(self) -> None:
        offer = self.offer(self.send())
        real_update = Delivery.objects.filter

        calls = []

        def late_withdrawal(*args: Any, **kwargs: Any) -> Any:
            # The conditional change of the acceptance: another answer got there first.
            if "job_id" in kwargs and not calls:
                calls.append(1)
                Delivery.objects.filter(pk=offer.pk).update(state=Delivery.State.WITHDRAWN)
            return real_update(*args, **kwargs)

        with mock.patch.object(Delivery.objects, "filter", side_effect=late_withdrawal):
            with self.assertRaisesMessage(services.Conflict, "changed meanwhile"):
                services.accept_delivery(delivery=offer, user=self.recipient)
        self.assertEqual(calls, [1])
        self.assertFalse(Job.objects.exists())  # the job went with the transaction


@pytest.mark.django_db(transaction=True)
def test_it_lets_exactly_one_of_an_acceptance_and_a_withdrawal_happen(settings) -> None:  # type: ignore[no-untyped-def]
    """Both at the same moment, from two threads with their own connections, many times."""
    sender, recipient = make_user("sam"), make_user("rosa")
    outcomes = []
    for _ in range(12):
        sent = services.send_copy(sender=sender, staged=staged(), to=["rosa"])
        offer = Delivery.objects.get(sent=sent)
        start = threading.Barrier(2)
        won: dict[str, bool] = {}

        def answer(what: str, act: Any, start: threading.Barrier = start,
                   won: dict[str, bool] = won) -> None:
            try:
                start.wait()
                act()
                won[what] = True
            except services.Conflict:
                won[what] = False
            finally:
                connection.close()

        threads = [
            threading.Thread(target=answer, args=("accept", partial(
                services.accept_delivery, delivery=offer, user=recipient))),
            threading.Thread(target=answer, args=("withdraw", partial(
                services.withdraw_copy, sent=sent, user=sender)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        offer.refresh_from_db()
        assert sorted(won.values()) == [False, True], won
        jobs = Job.objects.filter(kind=Job.Kind.ACCEPT, params__delivery=str(offer.pk))
        if won["accept"]:
            assert offer.state == Delivery.State.ACCEPTED and jobs.count() == 1
        else:
            assert offer.state == Delivery.State.WITHDRAWN and not jobs.exists()
        outcomes.append("accept" if won["accept"] else "withdraw")
    assert len(outcomes) == 12


@pytest.mark.django_db(transaction=True)
def test_it_sends_copies_both_ways_at_the_same_moment(settings) -> None:  # type: ignore[no-untyped-def]
    """Two people sending each other a copy at once: each send holds its sender's row while
    its offers point at the other's."""
    sam, rosa = make_user("sam"), make_user("rosa")
    for _ in range(8):
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def send(sender: Any, to: str, start: threading.Barrier = start,
                 errors: list[BaseException] = errors) -> None:
            try:
                start.wait()
                services.send_copy(sender=sender, staged=staged(), to=[to])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=send, args=(sam, "rosa")),
                   threading.Thread(target=send, args=(rosa, "sam"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
    assert SentCopy.objects.filter(sender=sam).count() == SentCopy.objects.filter(
        sender=rosa).count() == 8


# --- notifications --------------------------------------------------------------------------


class NotificationTests(SendCase):
    @override_settings(EMAIL_HOST="127.0.0.1", GALLERY_EMAIL_DOMAIN="hpc.example.org",
                       GALLERY_PUBLIC_URL="https://hub.example.org/services/gallery")
    def test_it_mails_the_recipient_a_link_to_the_offer(self) -> None:
        offer = self.offer(self.send())
        self.assertEqual([m.to for m in mail.outbox], [["rosa@hpc.example.org"]])
        self.assertIn(f"https://hub.example.org/services/gallery/copies/{offer.pk}/",
                      mail.outbox[0].body)

    def test_it_links_the_notification_to_the_offer_for_the_recipient_only(self) -> None:
        offer = self.offer(self.send())
        self.client.force_login(self.recipient)
        page = self.client.get(reverse("notifications"))
        self.assertContains(page, reverse("copy", args=[offer.pk]))
        self.client.force_login(self.other)
        self.assertNotContains(self.client.get(reverse("notifications")), "parcel")


# --- the JSON API ----------------------------------------------------------------------------


class ApiTests(SendCase):
    def client_of(self, user: Any) -> Client:
        client = Client()
        if user is not None:
            client.force_login(user)
        return client

    def post(self, client: Client, path: str, body: Any = None) -> Any:
        return client.post(path, json.dumps(body or {}), content_type="application/json")

    def test_it_sends_multipart_and_json_alike(self) -> None:
        client = self.client_of(self.sender)
        r = client.post("/api/v1/copies", {
            "notebook": SimpleUploadedFile("parcel.ipynb", NOTEBOOK),
            "files": [SimpleUploadedFile("helper.py", FILES["helper.py"])],
            "to": "rosa, otto", "message": "Two of you", "name": "for-you"})
        self.assertEqual(r.status_code, 201, r.content)
        body = r.json()
        self.assertEqual(sorted(x["recipient"] for x in body["recipients"]), ["otto", "rosa"])
        self.assertEqual((body["name"], body["message"]), ("for-you", "Two of you"))
        self.assertEqual({x["state"] for x in body["recipients"]}, {"pending"})
        r = self.post(client, "/api/v1/copies", {
            "notebook": json.loads(NOTEBOOK), "notebook_name": "parcel.ipynb",
            "files": [{"path": "data/table.csv", "content": "a,b\n1,2\n"}],
            "groups": ["physics"]})
        self.assertEqual(r.status_code, 201, r.content)
        body = r.json()
        self.assertEqual((body["groups"], body["not_delivered"]), (["physics"], 1))
        folder = services.sent_folder(SentCopy.objects.get(pk=body["id"]))
        self.assertEqual((folder / "data" / "table.csv").read_bytes(), b"a,b\n1,2\n")

    def test_it_answers_each_refusal_with_its_status_and_a_message(self) -> None:
        client = self.client_of(self.sender)
        before = self.counts()
        nb = json.loads(NOTEBOOK)
        for body, status in [
            ({"notebook": nb, "to": ["nobody-here"]}, 400),
            ({"notebook": nb, "groups": ["chemistry"]}, 403),
            ({"notebook": "{}", "to": ["rosa"]}, 400),
            ({"notebook": nb, "to": "rosa"}, 400),
            ({"notebook": nb, "to": [1, 2]}, 400),
            ({"notebook": nb, "to": ["rosa"], "message": 7}, 400),
            ([], 400),
        ]:
            with self.subTest(body=body):
                r = self.post(client, "/api/v1/copies", body)
                self.assertEqual(r.status_code, status, r.content)
                self.assertTrue(r.json()["error"])
        r = client.post("/api/v1/copies", "x", content_type="text/plain")
        self.assertEqual(r.status_code, 415)
        r = client.post("/api/v1/copies", {"to": "rosa"})
        self.assertEqual(r.status_code, 400)
        self.assertIn("notebook", r.json()["error"])
        self.assert_nothing_stored(before)

    def test_it_answers_429_with_retry_after_past_the_rate(self) -> None:
        client = self.client_of(self.sender)
        with override_settings(GALLERY_SEND_PER_HOUR=1):
            body = {"notebook": json.loads(NOTEBOOK), "to": ["rosa"]}
            self.assertEqual(self.post(client, "/api/v1/copies", body).status_code, 201)
            r = self.post(client, "/api/v1/copies", body)
            self.assertEqual(r.status_code, 429)
            self.assertTrue(1 <= int(r["Retry-After"]) <= 3600)
            self.assertIn("try again in", r.json()["error"])

    def test_it_needs_the_csrf_token_for_browser_writes(self) -> None:
        offer = self.offer(self.send())
        client = Client(enforce_csrf_checks=True)
        client.force_login(self.recipient)
        r = self.post(client, f"/api/v1/copies/received/{offer.pk}/accept")
        self.assertEqual(r.status_code, 403)
        self.assertEqual(self.offer(offer.sent).state, Delivery.State.PENDING)

    def test_it_walks_an_offer_through_the_api(self) -> None:
        sent = self.send(to=("rosa", "otto"))
        rosa, otto, sam = (self.client_of(u) for u in (self.recipient, self.other, self.sender))
        listed = rosa.get("/api/v1/copies/received").json()
        self.assertEqual([(o["sent_by"], o["state"]) for o in listed], [("sam", "pending")])
        offer_id = listed[0]["id"]
        plan = rosa.get(f"/api/v1/copies/received/{offer_id}/plan?folder=mine").json()
        self.assertEqual((plan["target"], plan["sent_by"]), ("~/examples/mine", "sam"))
        with self.captureOnCommitCallbacks(execute=True):
            r = self.post(rosa, f"/api/v1/copies/received/{offer_id}/accept", {"folder": "mine"})
        self.assertEqual(r.status_code, 202, r.content)
        job = rosa.get(f"/api/v1/jobs/{r.json()['id']}").json()
        self.assertEqual((job["state"], job["target"]), ("done", "~/examples/mine"))
        self.assertEqual(rosa.get(f"/api/v1/copies/received/{offer_id}").json()["state"],
                         "accepted")
        r = self.post(rosa, f"/api/v1/copies/received/{offer_id}/accept")
        self.assertEqual(r.status_code, 409)
        other_offer = str(self.offer(sent, self.other).pk)
        self.assertEqual(self.post(otto, f"/api/v1/copies/received/{other_offer}/decline")
                         .json()["state"], "declined")
        states = {x["recipient"]: x["state"] for x in
                  sam.get(f"/api/v1/copies/sent/{sent.pk}").json()["recipients"]}
        self.assertEqual(states, {"rosa": "accepted", "otto": "declined"})
        self.assertEqual([s["id"] for s in sam.get("/api/v1/copies/sent").json()], [str(sent.pk)])
        r = self.post(sam, f"/api/v1/copies/sent/{sent.pk}/withdraw")
        self.assertEqual(r.status_code, 409)

    def test_it_withdraws_through_the_api(self) -> None:
        sent = self.send(to=("rosa", "otto"))
        sam = self.client_of(self.sender)
        r = self.post(sam, f"/api/v1/copies/sent/{sent.pk}/withdraw", {"recipient": "otto"})
        self.assertEqual(r.status_code, 200, r.content)
        states = {x["recipient"]: x["state"] for x in r.json()["recipients"]}
        self.assertEqual(states, {"rosa": "pending", "otto": "withdrawn"})
        r = sam.post(f"/api/v1/copies/sent/{sent.pk}/withdraw")  # no body: everyone waiting
        self.assertEqual(r.status_code, 200, r.content)
        self.assertEqual({x["state"] for x in r.json()["recipients"]}, {"withdrawn"})

    def test_it_keeps_the_refuse_all_setting(self) -> None:
        rosa = self.client_of(self.recipient)
        self.assertEqual(rosa.get("/api/v1/copies/settings").json(), {"refuse_all": False})
        r = self.post(rosa, "/api/v1/copies/settings", {"refuse_all": True})
        self.assertEqual(r.json(), {"refuse_all": True})
        self.assertTrue(services.refuses_all(self.recipient))
        self.assertEqual(self.post(rosa, "/api/v1/copies/settings", {"refuse_all": "x"})
                         .status_code, 400)
        self.assertEqual(self.post(rosa, "/api/v1/copies/settings", {}).status_code, 400)

    def test_it_answers_only_the_sender_and_the_recipient_everyone_else_404(self) -> None:
        sent = self.send()
        offer = self.offer(sent)
        offer_paths = [("get", f"/api/v1/copies/received/{offer.pk}"),
                       ("get", f"/api/v1/copies/received/{offer.pk}/plan"),
                       ("post", f"/api/v1/copies/received/{offer.pk}/decline"),
                       ("post", f"/api/v1/copies/received/{offer.pk}/accept")]
        sent_paths = [("get", f"/api/v1/copies/sent/{sent.pk}"),
                      ("post", f"/api/v1/copies/sent/{sent.pk}/withdraw")]
        people = {"sender": self.sender, "recipient": self.recipient, "other": self.other,
                  "reviewer": self.reviewer, "group member": self.paula, "anonymous": None}
        for who, user in people.items():
            client = self.client_of(user)
            for method, path in offer_paths + sent_paths:
                if who == "recipient" and (method, path) in offer_paths[2:]:
                    continue  # would answer; the walk-through test covers it
                if who == "sender" and (method, path) == sent_paths[1]:
                    continue
                mine = (who == "recipient" and (method, path) in offer_paths) or (
                    who == "sender" and (method, path) in sent_paths)
                with self.subTest(who=who, path=path, method=method):
                    r = getattr(client, method)(path, "{}", content_type="application/json") \
                        if method == "post" else client.get(path)
                    expected = 401 if user is None else 200 if mine else 404
                    self.assertEqual(r.status_code, expected, r.content)
                    if expected == 404:
                        self.assertEqual(r.json(), {"error": "There is no such copy."})
                        self.assertNotIn("parcel", r.content.decode())
        for who, user in people.items():
            if user is None:
                continue
            listed = self.client_of(user).get("/api/v1/copies/received").json()
            self.assertEqual(bool(listed), who == "recipient", who)
            listed = self.client_of(user).get("/api/v1/copies/sent").json()
            self.assertEqual(bool(listed), who == "sender", who)
        self.assertEqual(self.offer(sent).state, Delivery.State.PENDING)

    def test_it_keeps_the_acceptance_job_to_its_recipient_reviewers_included(self) -> None:
        job = self.accept(self.offer(self.send()))
        for user, expected in ((self.recipient, 200), (self.reviewer, 404), (self.sender, 404)):
            client = self.client_of(user)
            self.assertEqual(client.get(f"/api/v1/jobs/{job.pk}").status_code, expected)
            self.assertEqual(client.get(reverse("job", args=[job.pk])).status_code, expected)

    def test_it_lists_copies_in_as_many_queries_however_many_there_are(self) -> None:
        sam, rosa = self.client_of(self.sender), self.client_of(self.recipient)
        asks = [(sam, "/api/v1/copies/sent"), (sam, reverse("sent-copies")),
                (rosa, "/api/v1/copies/received"), (rosa, reverse("copies"))]
        self.send(to=("rosa", "otto"))

        def queries() -> list[int]:
            counts = []
            for client, path in asks:
                with CaptureQueriesContext(connection) as done:
                    self.assertEqual(client.get(path).status_code, 200)
                counts.append(len(done))
            return counts

        few = queries()
        for _ in range(3):
            self.send(to=("rosa", "otto", "paula"))
        self.assertEqual(queries(), few)

    def test_it_describes_every_copy_endpoint_in_the_schema(self) -> None:
        paths = ninja_api.get_openapi_schema()["paths"]
        for path, method in [("/api/v1/copies", "post"), ("/api/v1/copies/sent", "get"),
                             ("/api/v1/copies/sent/{sent_id}", "get"),
                             ("/api/v1/copies/sent/{sent_id}/withdraw", "post"),
                             ("/api/v1/copies/received", "get"),
                             ("/api/v1/copies/received/{delivery_id}", "get"),
                             ("/api/v1/copies/received/{delivery_id}/plan", "get"),
                             ("/api/v1/copies/received/{delivery_id}/accept", "post"),
                             ("/api/v1/copies/received/{delivery_id}/decline", "post"),
                             ("/api/v1/copies/settings", "get"),
                             ("/api/v1/copies/settings", "post")]:
            self.assertIn(method, paths[path], path)
        body = paths["/api/v1/copies"]["post"]["requestBody"]["content"]
        self.assertIn("multipart/form-data", body)
        self.assertIn(429, paths["/api/v1/copies"]["post"]["responses"])
        # Bodies read by the view itself are described all the same.
        accept = paths["/api/v1/copies/received/{delivery_id}/accept"]["post"]
        self.assertIn("folder", accept["requestBody"]["content"]["application/json"]["schema"][
            "properties"])


# --- the pages --------------------------------------------------------------------------------


class PageTests(SendCase):
    def test_it_sends_from_the_send_page(self) -> None:
        self.client.force_login(self.sender)
        page = self.client.get(reverse("send-copy"))
        self.assertContains(page, '<label for="id_to">To people')
        self.assertContains(page, 'value="physics"')
        self.assertNotContains(page, 'value="chemistry"')
        r = self.client.post(reverse("send-copy"), {
            "notebook": SimpleUploadedFile("parcel.ipynb", NOTEBOOK),
            "files": [SimpleUploadedFile("helper.py", b"X = 1\n")],
            "to": "otto", "groups": ["physics"], "message": "For all", "name": ""})
        sent = SentCopy.objects.get()
        self.assertRedirects(r, reverse("sent-copies") + f"#sent-{sent.pk}",
                             fetch_redirect_response=False)
        page = self.client.get(reverse("sent-copies"))
        self.assertContains(page, "Sent to 3 people. Not delivered to 1 member(s)")
        for name in ("otto", "rosa", "paula"):
            self.assertContains(page, f'aria-label="Withdraw from {name}"')

    def test_it_shows_the_send_pages_refusal_and_stores_nothing(self) -> None:
        self.client.force_login(self.sender)
        before = self.counts()
        r = self.client.post(reverse("send-copy"), {
            "notebook": SimpleUploadedFile("parcel.ipynb", NOTEBOOK), "to": "nobody-here"})
        self.assertContains(r, "nobody by that name takes copies", status_code=400)
        r = self.client.post(reverse("send-copy"), {"to": "rosa"})
        self.assertEqual(r.status_code, 400)
        with override_settings(GALLERY_SEND_PER_HOUR=0):
            r = self.client.post(reverse("send-copy"), {
                "notebook": SimpleUploadedFile("parcel.ipynb", NOTEBOOK), "to": "rosa"})
            self.assertContains(r, "turned off", status_code=403)
        self.assert_nothing_stored(before)
        with override_settings(GALLERY_SEND_PER_HOUR=1):
            self.send()
            r = self.client.post(reverse("send-copy"), {
                "notebook": SimpleUploadedFile("parcel.ipynb", NOTEBOOK), "to": "rosa"})
            self.assertContains(r, "try again in", status_code=429)
            self.assertTrue(int(r["Retry-After"]) >= 1)

    def test_it_accepts_from_the_offer_page_and_opens_the_copy(self) -> None:
        offer = self.offer(self.send())
        self.client.force_login(self.recipient)
        inbox = self.client.get(reverse("copies"))
        self.assertContains(inbox, reverse("copy", args=[offer.pk]))
        self.assertContains(inbox, "Here is the parcel notebook.")
        page = self.client.get(reverse("copy", args=[offer.pk]))
        self.assertContains(page, '<label for="id_folder">Folder name</label>', html=True)
        self.assertContains(page, 'value="parcel"')
        self.assertContains(page, "~/examples/parcel")
        with self.captureOnCommitCallbacks(execute=True):
            r = self.client.post(reverse("accept-copy", args=[offer.pk]), {"folder": "gift"})
        job = Job.objects.get(kind=Job.Kind.ACCEPT)
        self.assertRedirects(r, reverse("job", args=[job.pk]))
        page = self.client.get(reverse("job", args=[job.pk]))
        self.assertContains(page, "Copy of \u201cparcel\u201d from sam")
        self.assertContains(page, 'id="open-link"')
        self.assertContains(page, "/user/rosa/lab/tree/examples/gift/parcel.ipynb")
        page = self.client.get(reverse("copy", args=[offer.pk]))
        self.assertContains(page, 'id="open-link"')
        self.assertNotContains(page, 'id="accept-form"')
        r = self.client.post(reverse("accept-copy", args=[offer.pk]), {"folder": ""})
        self.assertRedirects(r, reverse("copy", args=[offer.pk]), fetch_redirect_response=False)
        self.assertContains(self.client.get(reverse("copy", args=[offer.pk])),
                            "You accepted this copy already")

    def test_it_declines_and_refuses_all_from_the_inbox(self) -> None:
        offer = self.offer(self.send())
        self.client.force_login(self.recipient)
        r = self.client.post(reverse("decline-copy", args=[offer.pk]))
        self.assertRedirects(r, reverse("copies"))
        self.assertEqual(self.offer(offer.sent).state, Delivery.State.DECLINED)
        self.assertContains(self.client.get(reverse("copy", args=[offer.pk])), 'id="offer-gone"')
        r = self.client.post(reverse("copy-settings"), {"refuse_all": "1"})
        self.assertRedirects(r, reverse("copies"))
        self.assertTrue(services.refuses_all(self.recipient))
        self.assertContains(self.client.get(reverse("copies")), "Take copies again")
        self.client.post(reverse("copy-settings"), {"refuse_all": "0"})
        self.assertFalse(services.refuses_all(self.recipient))

    def test_it_withdraws_from_the_sent_page(self) -> None:
        sent = self.send(to=("rosa", "otto"))
        self.client.force_login(self.sender)
        r = self.client.post(reverse("withdraw-copy", args=[sent.pk]), {"recipient": "otto"})
        self.assertRedirects(r, reverse("sent-copies") + f"#sent-{sent.pk}")
        self.assertEqual(self.offer(sent, self.other).state, Delivery.State.WITHDRAWN)
        self.client.post(reverse("withdraw-copy", args=[sent.pk]))
        self.assertEqual(self.offer(sent).state, Delivery.State.WITHDRAWN)
        page = self.client.get(reverse("sent-copies"))
        self.assertNotContains(page, 'aria-label="Withdraw from')
        r = self.client.post(reverse("withdraw-copy", args=[sent.pk]))
        self.assertContains(self.client.get(r["Location"]), "Nobody is waiting")

    def test_it_shows_every_page_to_its_people_only(self) -> None:
        sent = self.send()
        offer = self.offer(sent)
        people = {"sender": self.sender, "recipient": self.recipient, "other": self.other,
                  "reviewer": self.reviewer, "group member": self.paula}
        own = {"recipient": [("get", reverse("copy", args=[offer.pk])),
                             ("post", reverse("decline-copy", args=[offer.pk])),
                             ("post", reverse("accept-copy", args=[offer.pk]))],
               "sender": [("post", reverse("withdraw-copy", args=[sent.pk]))]}
        every = [case for cases in own.values() for case in cases]
        for who, user in people.items():
            client = Client()
            client.force_login(user)
            for method, path in every:
                if (method, path) in own.get(who, []):
                    continue
                with self.subTest(who=who, path=path):
                    r = getattr(client, method)(path)
                    self.assertEqual(r.status_code, 404)
                    self.assertNotIn("parcel", r.content.decode())
            inbox = client.get(reverse("copies")).content.decode()
            self.assertEqual("parcel" in inbox, who == "recipient", who)
            mine = client.get(reverse("sent-copies")).content.decode()
            self.assertEqual("parcel" in mine, who == "sender", who)
            self.assertEqual(client.get(reverse("send-copy")).status_code, 200)
        anonymous = Client()
        for method, path in every + [("get", reverse(n)) for n in
                                     ("copies", "sent-copies", "send-copy")] + [
                ("post", reverse("copy-settings"))]:
            r = getattr(anonymous, method)(path)
            self.assertEqual(r.status_code, 302, path)
            self.assertTrue(r["Location"].startswith("/accounts/login/"), path)
        self.assertEqual(self.offer(sent).state, Delivery.State.PENDING)

    def test_it_links_the_inbox_from_every_page(self) -> None:
        self.client.force_login(self.recipient)
        self.assertContains(self.client.get("/"), f'href="{reverse("copies")}" id="nav-copies"')


class MetricsTests(SendCase):
    @override_settings(GALLERY_METRICS_TOKEN="metrics-secret")
    def test_it_counts_acceptances_as_a_kind_of_job(self) -> None:
        self.accept(self.offer(self.send()))
        r = self.client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-secret")
        self.assertContains(r, 'gallery_jobs{kind="accept",state="done"} 1.0')


class DeskTests(SendCase):
    def test_it_keeps_acceptances_and_offers_off_the_reviewers_desk(self) -> None:
        job = self.accept(self.offer(self.send()))
        self.client.force_login(self.reviewer)
        listed = self.client.get("/admin/gallery/job/")
        self.assertEqual(listed.status_code, 200)
        self.assertNotContains(listed, str(job.pk))
        one = self.client.get(f"/admin/gallery/job/{job.pk}/change/")
        self.assertNotEqual(one.status_code, 200)  # "does not exist": back to the desk
        operator = make_user("root", reviewer=True)
        type(operator).objects.filter(pk=operator.pk).update(is_superuser=True)
        self.client.force_login(operator)
        notes = self.client.get("/admin/gallery/notification/")
        self.assertEqual(notes.status_code, 200)
        self.assertNotContains(notes, "parcel")


# --- as the recipient, on a real filesystem with real accounts ------------------------------
# (tests/test_homes.py's stage: two throwaway users, sentinels, and snapshots of every entry)

from .test_homes import Stage, changes, needs_root, owners_are_right, snapshot  # noqa: E402
from .test_homes import st as st  # noqa: E402,F401  (fixtures, used by name)
from .test_homes import stage_root as stage_root  # noqa: E402,F401


def _plant_use_dir_to_rootonly(st: Stage) -> None:
    st.alice.examples.symlink_to(st.rootonly)
    os.lchown(st.alice.examples, st.alice.uid, st.alice.gid)


def _plant_target_to_rootonly(st: Stage) -> None:
    st.alice.examples.mkdir()
    os.chown(st.alice.examples, st.alice.uid, st.alice.gid)
    (st.alice.examples / "parcel").symlink_to(st.rootonly)
    os.lchown(st.alice.examples / "parcel", st.alice.uid, st.alice.gid)


@needs_root
@pytest.mark.django_db
def test_it_writes_an_accepted_copy_as_the_recipient_only(  # type: ignore[no-untyped-def]
        st: Stage, django_capture_on_commit_callbacks) -> None:
    alice, bob = make_user(st.alice.name), make_user(st.bob.name)
    with django_capture_on_commit_callbacks(execute=True):
        sent = services.send_copy(sender=make_user("sam"), staged=staged(),
                                  to=[alice.username, bob.username])
    # The send folder's parents are root's alone: the copy reads it through the worker.
    with django_capture_on_commit_callbacks(execute=True):
        job = services.accept_delivery(delivery=sent.deliveries.get(recipient=bob), user=bob)
    job.refresh_from_db()
    assert job.state == Job.State.DONE, job.message
    copy = st.bob.examples / "parcel"
    assert (copy / "parcel.ipynb").read_bytes() == NOTEBOOK
    for path in [copy, *copy.rglob("*")]:
        assert (os.lstat(path).st_uid, os.lstat(path).st_gid) == (st.bob.uid, st.bob.gid), path
    assert homes.copied_by(copy) == str(job.pk)


@needs_root
@pytest.mark.django_db
@pytest.mark.parametrize("plant", [_plant_use_dir_to_rootonly, _plant_target_to_rootonly],
                         ids=["use-dir", "target"])
def test_it_lets_a_planted_link_fail_only_its_planters_copy(  # type: ignore[no-untyped-def]
        st: Stage, django_capture_on_commit_callbacks, plant) -> None:
    alice, bob = make_user(st.alice.name), make_user(st.bob.name)
    with django_capture_on_commit_callbacks(execute=True):
        sent = services.send_copy(sender=make_user("sam"), staged=staged(),
                                  to=[alice.username, bob.username])
    plant(st)
    before = snapshot(st.root)
    with django_capture_on_commit_callbacks(execute=True):
        job = services.accept_delivery(delivery=sent.deliveries.get(recipient=alice),
                                       user=alice)
    job.refresh_from_db()
    written = {p for p in changes(before, snapshot(st.root))}
    if plant is _plant_use_dir_to_rootonly:
        assert job.state == Job.State.FAILED
        assert "cannot write into ~/examples (a link to" in job.message
        assert written == set()
    else:  # the link stays a link; the copy goes beside it, into her own folder
        assert job.state == Job.State.DONE, job.message
        assert job.result["folder"] == "parcel-2"
        assert all(p.startswith(str(st.alice.examples)) for p in written), written
    assert sorted(os.listdir(st.rootonly)) == ["passwd", "secret"]
    with django_capture_on_commit_callbacks(execute=True):
        other = services.accept_delivery(delivery=sent.deliveries.get(recipient=bob), user=bob)
    other.refresh_from_db()
    assert other.state == Job.State.DONE, other.message
    assert (st.bob.examples / "parcel" / "helper.py").read_bytes() == FILES["helper.py"]
    owners_are_right(st)


# --- generated input -------------------------------------------------------------------------

from hypothesis import HealthCheck, event, given  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402
from hypothesis import strategies as hst  # noqa: E402
from hypothesis.extra.django import TestCase as HypothesisTestCase  # noqa: E402

names = hst.one_of(hst.sampled_from(["rosa", "otto", "sam", "ray", "nobody", "", " rosa ",
                                     "ROSA", "rosa\x00", "r\u00f6sa", "a" * 200]),
                   hst.text(max_size=30))
paths = hst.one_of(hst.sampled_from(["helper.py", "data/x.csv", "../x", "/etc/passwd", "a\\b",
                                     ".hidden", "example.toml", "a/b/c/d/e/f", "x\x00",
                                     "parcel.ipynb", "dir/", "a b.txt", "\ud800.py"]),
                   hst.text(min_size=1, max_size=20))
messages = hst.one_of(hst.text(max_size=100), hst.sampled_from(
    ["", "x" * 2001, "\x00", "line\nline", "\ud800", "<script>alert(1)</script>"]))
notebooks_ = hst.one_of(hst.just(json.loads(NOTEBOOK)), hst.text(max_size=50),
                        hst.dictionaries(hst.text(max_size=5), hst.integers(), max_size=3))


class GeneratedSendTests(HypothesisTestCase):
    """Whatever is sent: an answer below 500 with a message; refused, nothing stored;
    accepted, exactly what was sent is kept."""

    @classmethod
    def setUpTestData(cls) -> None:
        cls.sender, cls.recipient = make_user("sam"), make_user("rosa")
        make_user("otto")
        ray = make_user("ray")
        CopySettings.objects.create(user=ray, refuse_all=True)
        group = HubGroup.objects.create(name="physics")
        group.members.set([cls.sender, cls.recipient])

    @hypothesis_settings(max_examples=120, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])
    @given(to=hst.one_of(hst.lists(hst.sampled_from(["rosa", "otto"]), min_size=1, max_size=2),
                         hst.lists(names, max_size=4)),
           groups=hst.one_of(hst.just([]), hst.lists(hst.one_of(
               hst.sampled_from(["physics", "chemistry"]), hst.text(max_size=10)), max_size=2)),
           message=hst.one_of(hst.text(hst.characters(blacklist_categories=("Cc", "Cs")),
                                       max_size=100), messages),
           name=hst.one_of(hst.just(""), hst.sampled_from(["for-you", "a b"]), names),
           files=hst.one_of(
               hst.dictionaries(hst.sampled_from(["helper.py", "data/x.csv", "a b.txt"]),
                                hst.binary(max_size=50), max_size=3).map(lambda d: [*d.items()]),
               hst.lists(hst.tuples(paths, hst.binary(max_size=50)), max_size=4)),
           notebook=hst.one_of(hst.just(json.loads(NOTEBOOK)), notebooks_))
    def test_it_answers_every_send_below_500_and_stores_nothing_it_refuses(
            self, to: list[str], groups: list[str], message: str, name: str,
            files: list[tuple[str, bytes]], notebook: Any) -> None:
        client = Client()
        client.force_login(self.sender)
        body = {"notebook": notebook, "notebook_name": "parcel.ipynb", "to": to,
                "groups": groups, "message": message, "name": name,
                "files": [{"path": p, "content_base64": base64.b64encode(d).decode()}
                          for p, d in files]}
        before = (SentCopy.objects.count(), Delivery.objects.count(),
                  Notification.objects.count(), sent_files())
        with override_settings(GALLERY_SEND_PER_HOUR=10_000):
            r = client.post("/api/v1/copies", json.dumps(body, ensure_ascii=True),
                            content_type="application/json")
        self.assertLess(r.status_code, 500, r.content)
        event(f"send answered {r.status_code}")
        if r.status_code != 201:
            self.assertTrue(r.json()["error"])
            self.assertEqual((SentCopy.objects.count(), Delivery.objects.count(),
                              Notification.objects.count(), sent_files()), before)
            return
        sent = SentCopy.objects.get(pk=r.json()["id"])
        folder = services.sent_folder(sent)
        kept = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
                if p.is_file()}
        sent_notebook = notebook if isinstance(notebook, str) else json.dumps(notebook)
        self.assertEqual(kept, {"parcel.ipynb": sent_notebook.encode(),
                                **{p: d for p, d in files}})
        self.assertGreater(sent.deliveries.count(), 0)
        self.assertNotIn(self.sender.pk, sent.deliveries.values_list("recipient", flat=True))

    @hypothesis_settings(max_examples=40, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])
    @given(folder=hst.one_of(names, hst.sampled_from(["parcel", "a.b", "x y", "-", "..",
                                                     "parcel-2", "é"])))
    def test_it_answers_every_folder_name_below_500_and_writes_whole_copies_only(
            self, folder: str) -> None:
        with override_settings(GALLERY_SEND_PER_HOUR=10_000):
            sent = services.send_copy(sender=self.sender, staged=staged(), to=["rosa"])
        offer = sent.deliveries.get()
        client = Client()
        client.force_login(self.recipient)
        with self.captureOnCommitCallbacks(execute=True):
            r = client.post(f"/api/v1/copies/received/{offer.pk}/accept",
                            json.dumps({"folder": folder}), content_type="application/json")
        self.assertIn(r.status_code, (202, 400), r.content)
        event(f"accept answered {r.status_code}")
        offer.refresh_from_db()
        parent = homes.use_parent("rosa")
        leftovers = [p for p in parent.iterdir() if p.name.startswith(".")] \
            if parent.is_dir() else []
        self.assertEqual(leftovers, [])
        if r.status_code == 400:
            self.assertEqual(offer.state, Delivery.State.PENDING)
            return
        job = Job.objects.get(pk=r.json()["id"])
        self.assertEqual(job.state, Job.State.DONE, job.message)
        copy = parent / job.result["folder"]
        self.assertEqual((copy / "parcel.ipynb").read_bytes(), NOTEBOOK)
        self.assertEqual((copy / "helper.py").read_bytes(), FILES["helper.py"])


# --- through HTTP and a real worker process ------------------------------------------------


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_it_sends_and_accepts_through_http_and_a_real_worker(live_server, celery_worker,  # type: ignore[no-untyped-def]
                                                             settings) -> None:
    from .conftest import wait_for
    from .test_lifecycle import PASSWORD, login

    for name in ("sam", "rosa"):
        make_user(name, password=PASSWORD)
    base = live_server.url
    sam, rosa = login(base, "sam"), login(base, "rosa")
    r = sam.post(f"{base}/api/v1/copies", files={
        "notebook": ("parcel.ipynb", NOTEBOOK), "files": ("helper.py", FILES["helper.py"])},
        data={"to": "rosa", "message": "Through the worker"})
    assert r.status_code == 201, r.text
    offers = rosa.get(f"{base}/api/v1/copies/received").json()
    assert [(o["sent_by"], o["message"]) for o in offers] == [("sam", "Through the worker")]
    r = rosa.post(f"{base}/api/v1/copies/received/{offers[0]['id']}/accept",
                  json={"folder": "via-worker"})
    assert r.status_code == 202, r.text
    job_url = f"{base}/api/v1/jobs/{r.json()['id']}"
    job = wait_for(lambda: (j := rosa.get(job_url).json())["state"] in ("done", "failed") and j,
                   what="the acceptance's job")
    assert job["state"] == "done", job["message"]
    copy = homes.use_parent("rosa") / "via-worker"
    assert (copy / "parcel.ipynb").read_bytes() == NOTEBOOK
    assert (copy / "helper.py").read_bytes() == FILES["helper.py"]
    assert json.loads((copy / homes.PROVENANCE_FILE).read_text())["sent_by"] == "sam"
    assert sam.get(f"{base}/api/v1/copies/sent").json()[0]["recipients"][0]["state"] == \
        "accepted"


# --- through the recipient's own Jupyter server (the contents backend) ----------------------

from .test_contents import hub_api as hub_api  # noqa: E402,F401  (fixtures, used by name)
from .test_contents import jupyter_server as jupyter_server  # noqa: E402,F401


@pytest.mark.django_db
def test_it_accepts_a_copy_through_the_recipients_jupyter_server(  # type: ignore[no-untyped-def]
        hub_api, jupyter_server, settings, django_capture_on_commit_callbacks) -> None:
    _, _, root = jupyter_server
    settings.GALLERY_USE_BACKEND = "contents"
    settings.GALLERY_USE_DIR = "examples/sent"
    rosa = make_user("rosa")
    with django_capture_on_commit_callbacks(execute=True):
        sent = services.send_copy(sender=make_user("sam"), staged=staged(), to=["rosa"],
                                  message="Through your server")
    with django_capture_on_commit_callbacks(execute=True):
        job = services.accept_delivery(delivery=sent.deliveries.get(), user=rosa)
    job.refresh_from_db()
    assert job.state == Job.State.DONE, job.message
    assert job.params["backend"] == "contents"
    copy = root / "examples" / "sent" / "parcel"
    assert (copy / "parcel.ipynb").read_bytes() == NOTEBOOK
    assert (copy / "data" / "table.csv").read_bytes() == FILES["data/table.csv"]
    # This server hides dot files: the provenance has its visible name.
    provenance = json.loads((copy / "gallery-provenance.json").read_text())
    assert (provenance["sent_by"], provenance["job"]) == ("sam", str(job.pk))
    assert job.result["lab_url"] == "/user/rosa/lab/tree/examples/sent/parcel/parcel.ipynb"

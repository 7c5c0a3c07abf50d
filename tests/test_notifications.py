"""Notifications: contributors hear about decisions, comments and publication; copies' owners
hear about newer versions and retirement; email only when a mail server is configured."""

from django.core import mail
from django.test import override_settings

from gallery import services
from gallery.models import Job, Notification

from .base import GalleryTestCase, make_user, stage


def used(user, submission) -> Job:  # type: ignore[no-untyped-def]
    """The record a finished Use leaves (the copy itself is tested with the Use code)."""
    return Job.objects.create(kind=Job.Kind.USE, state=Job.State.DONE, user=user,
                              revision=submission.revision,
                              result={"path": "~/examples/x", "version": 1})


class NotificationTests(GalleryTestCase):
    def test_it_tells_the_contributor_about_a_decision_and_its_comment(self):
        submission = stage(self.contributor)
        with self.captureOnCommitCallbacks(execute=True):
            services.request_changes(submission=submission, reviewer=self.reviewer,
                                     comment="Please add a licence for the data.")
        note = Notification.objects.get(user=self.contributor)
        self.assertEqual(note.kind, "review")
        self.assertEqual(note.submission, submission)
        self.assertIn("asked for changes", note.message)
        self.assertIn("Please add a licence for the data.", note.message)
        self.assertIsNone(note.read_at)

    def test_it_tells_the_contributor_when_the_example_is_published(self):
        submission = self.stage_and_approve()
        kinds = list(Notification.objects.filter(user=self.contributor)
                     .order_by("pk").values_list("kind", flat=True))
        self.assertEqual(kinds, ["review", "published"])
        published = Notification.objects.get(user=self.contributor, kind="published")
        self.assertIn("version 1 is published", published.message)
        self.assertEqual(published.example, submission.example)

    def test_it_tells_users_of_an_older_version_about_a_newer_one(self):
        first = self.stage_and_approve()
        used(self.user, first)
        self.stage_and_approve(example_slug=first.example.slug,
                               notebook=b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, '
                                        b'"cells": []}')
        note = Notification.objects.get(user=self.user)
        self.assertEqual(note.kind, "updated")
        self.assertIn("newer version (2)", note.message)

    def test_it_tells_holders_of_copies_when_an_example_is_retired(self):
        first = self.stage_and_approve()
        used(self.user, first)
        services.retire_example(example=first.example, actor=self.reviewer,
                                reason="Superseded by the new tutorial.")
        note = Notification.objects.get(user=self.user)
        self.assertEqual(note.kind, "retired")
        self.assertIn("Your copy keeps working", note.message)
        self.assertTrue(Notification.objects.filter(user=self.contributor, kind="retired").exists())

    def test_it_marks_notifications_read(self):
        submission = stage(self.contributor)
        services.start_review(submission=submission, reviewer=self.reviewer)
        services.reject_submission(submission=submission, reviewer=self.reviewer, comment="No.")
        self.assertEqual(Notification.objects.filter(user=self.contributor).unread().count(), 2)
        first = Notification.objects.filter(user=self.contributor).last()
        self.assertEqual(services.mark_notifications_read(user=self.contributor,
                                                          ids=[first.pk]), 1)
        self.assertEqual(services.mark_notifications_read(user=self.user), 0)
        self.assertEqual(services.mark_notifications_read(user=self.contributor), 1)
        self.assertFalse(Notification.objects.unread().exists())

    def test_it_sends_no_email_without_a_mail_server(self):
        self.stage_and_approve()
        self.assertEqual(mail.outbox, [])

    @override_settings(EMAIL_HOST="127.0.0.1", GALLERY_EMAIL_DOMAIN="hpc.example.org",
                       GALLERY_PUBLIC_URL="https://hub.example.org/services/gallery")
    def test_it_emails_the_contributor_once_when_a_mail_server_is_configured(self):
        submission = stage(self.contributor)
        with self.captureOnCommitCallbacks(execute=True):
            services.request_changes(submission=submission, reviewer=self.reviewer,
                                     comment="Cite the data set.")
        self.assertEqual(len(mail.outbox), 1)
        message = mail.outbox[0]
        self.assertEqual(message.to, ["connor@hpc.example.org"])
        self.assertIn("Cite the data set.", message.body)
        self.assertIn(f"https://hub.example.org/services/gallery/submissions/{submission.pk}/",
                      message.body)
        note = Notification.objects.get(user=self.contributor)
        self.assertIsNotNone(note.emailed_at)
        # A second delivery of the task sends nothing.
        self.assertFalse(services.email_notification(notification_id=note.pk))
        self.assertEqual(len(mail.outbox), 1)

    @override_settings(EMAIL_HOST="127.0.0.1")
    def test_it_does_not_email_users_without_an_address(self):
        nobody = make_user("no-address")
        with self.captureOnCommitCallbacks(execute=True):
            submission = stage(nobody)
            services.reject_submission(submission=submission, reviewer=self.reviewer,
                                       comment="Off topic.")
        self.assertTrue(Notification.objects.filter(user=nobody).exists())
        self.assertEqual(mail.outbox, [])

    @override_settings(EMAIL_HOST="127.0.0.1", EMAIL_PORT=1)
    def test_it_keeps_a_notification_unsent_when_the_mail_server_fails(self):
        self.contributor.email = "connor@example.org"
        self.contributor.save()
        submission = stage(self.contributor)
        services.reject_submission(submission=submission, reviewer=self.reviewer, comment="No.")
        note = Notification.objects.get(user=self.contributor)
        with override_settings(EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend"):
            with self.assertRaises(OSError):
                services.email_notification(notification_id=note.pk)
        note.refresh_from_db()
        self.assertIsNone(note.emailed_at)

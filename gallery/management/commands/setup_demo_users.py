"""Create the demo users: `demo-user` and the reviewer `demo-reviewer`."""

import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from gallery import services


class Command(BaseCommand):
    help = "Create demo-user and demo-reviewer with GALLERY_DEMO_PASSWORD (or a new one)."

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        password = os.environ.get("GALLERY_DEMO_PASSWORD") or secrets.token_urlsafe(12)
        for name in ("demo-user", "demo-reviewer"):
            user = services.ensure_user(name)
            user.set_password(password)
            user.save()
        services.grant_review(get_user_model().objects.get(username="demo-reviewer"))
        self.stdout.write(password)

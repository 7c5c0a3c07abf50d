"""Remove the environments that no approved example's current revision has used for a while."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gallery import services


class Command(BaseCommand):
    help = ("Remove environments no approved example's current revision has used for "
            "GALLERY_ENV_KEEP_DAYS days (or --days); one in use or being built is never "
            "removed. Run it daily (cron, a systemd timer or a Kubernetes CronJob).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=float, default=None,
                            help="unused for this many days (default GALLERY_ENV_KEEP_DAYS)")
        parser.add_argument("--dry-run", action="store_true",
                            help="only list what would be removed")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"] if options["days"] is not None else settings.GALLERY_ENV_KEEP_DAYS
        if days < 0:
            raise CommandError("--days cannot be negative.")
        removed = services.remove_unused_environments(unused_for=timedelta(days=days),
                                                      dry_run=options["dry_run"])
        verb = "would remove" if options["dry_run"] else "removed"
        for key in removed:
            self.stdout.write(f"{verb} {key}")
        self.stdout.write(f"{len(removed)} environment{'s' if len(removed) != 1 else ''} {verb}"
                          f" (unused for {days:g} days).")

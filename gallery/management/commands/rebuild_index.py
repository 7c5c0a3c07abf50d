"""Rebuild the gallery's index in the database from the examples repository."""

from django.core.management.base import BaseCommand

from gallery import services


class Command(BaseCommand):
    help = "Recreate examples, versions and approvals from the examples git repository."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--repo", help="repository path (default: GALLERY_REPO_PATH)")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        slugs = services.rebuild_index(repo_path=options["repo"])
        self.stdout.write(f"{len(slugs)} examples in the index: {', '.join(slugs)}")

"""Stage every notebook of a folder or a git repository into the review queue."""

from django.core.management.base import BaseCommand, CommandError

from gallery import services


class Command(BaseCommand):
    help = ("Stage each notebook of a folder or git repository as a submission for review "
            "(metadata from example.toml or the notebook; already imported ones are skipped).")

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("source", help="a folder, or a git repository URL or path")
        parser.add_argument("--ref", default="", help="branch or tag to clone")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        try:
            report = services.import_notebooks(source=options["source"], actor=None,
                                               ref=options["ref"], anywhere=True)
        except services.GalleryError as exc:
            raise CommandError(str(exc)) from None
        for submission in report.staged:
            self.stdout.write(f"staged {submission.example.slug} (submission {submission.pk})")
        for reason in report.skipped:
            self.stdout.write(f"skipped {reason}")
        self.stdout.write(f"{len(report.staged)} staged, {len(report.skipped)} skipped")

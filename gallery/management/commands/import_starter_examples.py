"""Stage and approve the starter collection through the normal review path."""

from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from gallery import notebooks, services
from gallery.models import Example, Job


class Command(BaseCommand):
    help = "Stage every example folder of a directory and approve it as the given reviewer."

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        parser.add_argument("--dir", default=str(settings.GALLERY_STARTER_DIR))
        parser.add_argument("--reviewer", default="gallery-curator")
        parser.add_argument("--contributor", default="gallery")
        parser.add_argument("--no-wait", action="store_true",
                            help="leave the jobs to the workers instead of running them here")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        try:
            contributor = services.ensure_user(options["contributor"])
            reviewer = services.ensure_user(options["reviewer"])
        except services.GalleryError as exc:  # a name the user table cannot keep
            raise CommandError(str(exc)) from None
        services.grant_review(reviewer)
        reviewer = get_user_model().objects.get(pk=reviewer.pk)  # reload: permissions are cached
        jobs = []
        for folder in sorted(Path(options["dir"]).iterdir()):
            if not (folder / notebooks.EXAMPLE_FILE).is_file():
                continue
            if Example.objects.filter(slug=folder.name).exists():
                self.stdout.write(f"{folder.name}: already in the gallery")
                continue
            submission = self._stage(folder, contributor)
            services.approve_submission(submission=submission, reviewer=reviewer,
                                        comment="starter collection")
            jobs += list(Job.objects.filter(submission=submission).values_list("pk", flat=True))
            jobs += list(Job.objects.filter(revision=submission.revision, kind="preview")
                         .values_list("pk", flat=True))
            self.stdout.write(f"{folder.name}: staged and approved")
        if not options["no_wait"]:
            for job_id in jobs:  # the same code a worker runs; a worker that got it first wins
                services.perform_job(str(job_id), worker="import_starter_examples")
            failed = Job.objects.filter(pk__in=jobs, state="failed")
            if failed.exists():
                raise CommandError("; ".join(f"{j.kind}: {j.message}" for j in failed))

    def _stage(self, folder: Path, contributor):  # type: ignore[no-untyped-def]
        meta = notebooks.read_example_toml((folder / notebooks.EXAMPLE_FILE).read_bytes())
        nb_name = meta["notebook"]
        env_name = meta.get("environment") or None
        skip = {notebooks.EXAMPLE_FILE, nb_name, env_name}
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
                 if p.is_file() and str(p.relative_to(folder)) not in skip}
        staged = services.StagedFiles(
            notebook_name=nb_name, notebook=(folder / nb_name).read_bytes(),
            environment=(env_name, (folder / env_name).read_bytes()) if env_name else None,
            files=files)
        example_meta = services.ExampleMeta.from_toml(meta, slug=folder.name)
        return services.stage_submission(contributor=contributor, staged=staged,
                                         meta=example_meta)

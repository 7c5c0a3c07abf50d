"""Run the catalogue against a candidate software stack before an upgrade, changing no badge."""

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gallery import services


class Command(BaseCommand):
    help = ("Run every approved example (or those given with --only) against a candidate "
            "kernel or Python, as the runner account, without changing any badge; write a "
            "JSON report and show it on the reviewer's desk: which examples pass today and "
            "fail in the candidate, with the first error of each.")

    def add_arguments(self, parser):  # type: ignore[no-untyped-def]
        stack = parser.add_mutually_exclusive_group(required=True)
        stack.add_argument("--kernel", default="", help="an installed kernelspec's name")
        stack.add_argument("--python", default="",
                           help="a Python interpreter (with ipykernel) by its path")
        parser.add_argument("--only", nargs="+", default=[], metavar="SLUG",
                            help="only these examples")
        parser.add_argument("--report", default="",
                            help="where to write the JSON report (default: under "
                                 "GALLERY_DATA_DIR/reports/)")

    def handle(self, *args, **options):  # type: ignore[no-untyped-def]
        def progress(example, run):  # type: ignore[no-untyped-def]
            self.stdout.write(f"{example.slug}: {run.state}"
                              + (f" ({run.reason})" if run.state != "passed" else ""))

        try:
            report = services.check_candidate(kernel=options["kernel"], python=options["python"],
                                              only=options["only"], progress=progress)
        except services.GalleryError as exc:
            raise CommandError(str(exc)) from None
        path = Path(options["report"] or Path(settings.GALLERY_DATA_DIR) / "reports"
                    / f"verify-{report['batch']}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")
        self.stdout.write(f"{report['passing']} of {report['examples']} pass in "
                          f"{report['candidate']}; {len(report['regressions'])} pass today "
                          f"and fail in it.")
        for entry in report["regressions"]:
            self.stdout.write(f"  {entry['slug']}: {entry['where']}")
        self.stdout.write(f"report: {path}")

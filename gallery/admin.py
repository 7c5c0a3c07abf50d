"""The reviewer's desk in the Django admin; every decision calls a function of `services`.

The queue lists open submissions, longest waiting first. A submission's page shows its
checks, its sandboxed preview and a cell-by-cell diff against the approved revision, with a
form to approve, request changes or reject with a comment. Examples can be retired (with a
reason) or restored; folders and git repositories of notebooks can be imported in bulk.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Case, IntegerField, QuerySet, When
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.timesince import timesince

from . import diff, forms, services
from .models import (
    Example,
    HubGroup,
    IllegalTransition,
    Job,
    Notification,
    Review,
    Run,
    StateChange,
    Submission,
)
from .previews import example_preview_url, revision_preview_key

OPEN = [Submission.State.STAGED, Submission.State.IN_REVIEW]


def _decide(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet,
            action: Any, comment: str) -> None:
    for submission in queryset:
        try:
            action(submission=submission, reviewer=request.user, comment=comment)
            modeladmin.message_user(request, f"{submission}: done.")
        except (services.GalleryError, IllegalTransition) as exc:
            modeladmin.message_user(request, f"{submission}: {exc}", messages.ERROR)


@admin.action(description="Approve the selected submissions", permissions=["review"])
def approve(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    _decide(modeladmin, request, queryset, services.approve_submission, "")


@admin.action(description="Run the selected examples again", permissions=["view"])
def run_again(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    for example in queryset:
        revision = example.current_revision or example.latest_revision
        if revision is None:
            continue
        try:
            services.rerun(revision=revision, user=request.user)
            modeladmin.message_user(request, f"{example}: will run again.")
        except services.GalleryError as exc:
            modeladmin.message_user(request, f"{example}: {exc}", messages.ERROR)


class ReviewInline(admin.TabularInline):
    model = Review
    extra = 0
    readonly_fields = ["reviewer", "decision", "comment", "created"]
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class OpenFilter(admin.SimpleListFilter):
    """The queue shows open submissions unless asked for others."""

    title = "queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("all", "all submissions")]

    def choices(self, changelist: Any) -> Any:
        yield {"selected": self.value() is None, "display": "waiting for review",
               "query_string": changelist.get_query_string(remove=[self.parameter_name])}
        yield {"selected": self.value() == "all", "display": "all submissions",
               "query_string": changelist.get_query_string({self.parameter_name: "all"})}

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset if self.value() == "all" else queryset.filter(state__in=OPEN)


admin.site.site_header = "Reviewer's desk · Examples gallery"
admin.site.site_title = "Reviewer's desk"
admin.site.index_title = "The queue, examples and jobs"


class DeskAdmin(admin.ModelAdmin):
    """The desk's lists: an action runs only on a selection of real row ids."""

    def response_action(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        # A tampered selection ("x", a number past 64 bits) would reach the database when the
        # action reads its rows and fail there: refuse it here, with a message, instead.
        selected = request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME)
        if not all(_is_row_id(self.model._meta.pk, value) for value in selected):
            self.message_user(request, "The selection is not a list of rows of this table; "
                                       "select the rows again.", messages.ERROR)
            return None
        return super().response_action(request, queryset)


def _is_row_id(field: Any, value: str) -> bool:
    try:
        found = field.to_python(value)
    except ValidationError:
        return False
    return not isinstance(found, int) or -(2**63) <= found < 2**63


@admin.register(Submission)
class SubmissionAdmin(DeskAdmin):
    list_display = ["id", "example_title", "revision_number", "contributor", "state",
                    "checks_summary", "waiting"]
    list_display_links = ["id", "example_title"]
    list_filter = [OpenFilter, "state", "checks_state"]
    list_select_related = ["example", "revision", "contributor"]
    search_fields = ["example__slug", "example__title", "contributor__username"]
    ordering = ["created"]  # the queue: who has waited longest comes first
    readonly_fields = ["example", "revision", "contributor", "state", "checks_state", "created",
                       "updated"]
    exclude = ["checks"]
    inlines = [ReviewInline]
    actions = [approve]
    change_form_template = "admin/gallery/submission/change_form.html"
    change_list_template = "admin/gallery/submission/change_list.html"

    @admin.display(description="example", ordering="example__title")
    def example_title(self, obj: Submission) -> str:
        return obj.example.title

    @admin.display(description="revision")
    def revision_number(self, obj: Submission) -> int:
        return obj.revision.number

    @admin.display(description="checks")
    def checks_summary(self, obj: Submission) -> str:
        if obj.checks_state == Submission.ChecksState.PENDING:
            return "running"
        failed = len(obj.failed_checks)
        return f"{failed} failed" if failed else "passed"

    @admin.display(description="waiting", ordering="created")
    def waiting(self, obj: Submission) -> str:
        if obj.state not in OPEN:
            return "—"
        return timesince(obj.created, timezone.now())

    def has_review_permission(self, request: HttpRequest) -> bool:
        return services.is_reviewer(request.user) or services.reviews_a_group(request.user)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # A project's reviewers see their groups' submissions, nothing of the others.
        return super().get_queryset(request).filter(
            example__in=Example.objects.reviewable_by(request.user))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/decide/", wrap(self.decide_view), name="gallery_submission_decide"),
            path("import/", wrap(self.import_view), name="gallery_submission_import"),
            *super().get_urls(),
        ]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        submission = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if submission is not None:
            extra.update(review_context(submission, request))
        return super().change_view(request, object_id, form_url, extra)

    def decide_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Approve, request changes, reject (with a comment) or start the review."""
        if request.method != "POST":
            raise PermissionDenied
        submission = get_object_or_404(self.get_queryset(request), pk=pk)
        if not services.may_review(request.user, submission.example):
            raise PermissionDenied
        form = forms.DecisionForm(request.POST)
        here = HttpResponseRedirect(reverse("admin:gallery_submission_change", args=[pk]))
        if not form.is_valid():
            self.message_user(request, "Choose a decision.", messages.ERROR)
            return here
        decision, comment = form.cleaned_data["decision"], form.cleaned_data["comment"]
        try:
            if decision == "start":
                services.start_review(submission=submission, reviewer=request.user)
            else:
                {"approve": services.approve_submission,
                 "request_changes": services.request_changes,
                 "reject": services.reject_submission}[decision](
                    submission=submission, reviewer=request.user, comment=comment)
        except (services.GalleryError, IllegalTransition) as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return here
        self.message_user(request, f"Submission {pk}: {form.done_message()}.")
        if decision == "start":
            return here
        return HttpResponseRedirect(reverse("admin:gallery_submission_changelist"))

    def import_view(self, request: HttpRequest) -> HttpResponse:
        """Bulk import: every notebook of a folder or git repository becomes a submission."""
        if not services.is_reviewer(request.user):
            raise PermissionDenied
        form = forms.ImportForm(request.POST or None)
        report = None
        if request.method == "POST" and form.is_valid():
            try:
                report = services.import_notebooks(source=form.cleaned_data["source"],
                                                   ref=form.cleaned_data["ref"],
                                                   actor=request.user)
                self.message_user(request, f"{len(report.staged)} notebooks staged for review, "
                                           f"{len(report.skipped)} skipped.")
            except services.GalleryError as exc:
                form.add_error("source", str(exc))
        return TemplateResponse(request, "admin/gallery/submission/import.html", {
            **self.admin_site.each_context(request), "opts": self.model._meta, "form": form,
            "report": report, "title": "Import notebooks into the queue",
        })


def review_context(submission: Submission, request: HttpRequest) -> dict[str, Any]:
    """What a reviewer needs on one page: checks, preview, and the diff to the approved one."""
    revision = submission.revision
    example = submission.example
    base = example.current_revision
    if base is not None and (base.pk == revision.pk or base.number > revision.number):
        base = example.revisions.filter(number__lt=revision.number).exclude(
            git_commit="").order_by("-number").first()
    new_nb = services.staged_folder(revision) / revision.notebook_name
    old_nb = services.staged_folder(base) / base.notebook_name if base else None
    notebook_diff, diff_error = None, ""
    try:
        notebook_diff = diff.diff_notebooks(
            old_nb.read_bytes() if old_nb is not None and old_nb.is_file() else None,
            new_nb.read_bytes())
    except (OSError, ValueError) as exc:
        diff_error = f"The diff could not be made: {exc}"
    return {
        "submission": submission, "base": base, "notebook_diff": notebook_diff,
        "diff_error": diff_error, "files_changes": revision.changes_from(base),
        "preview_url": example_preview_url(example, revision_preview_key(revision)),
        "decision_form": forms.DecisionForm(),
        "can_decide": submission.state in OPEN and services.may_review(request.user, example)
        and submission.contributor_id != request.user.pk,
    }


@admin.action(description="Restore the selected retired examples", permissions=["change"])
def restore(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    for example in queryset:
        try:
            services.restore_example(example=example, actor=request.user)
            modeladmin.message_user(request, f"{example.slug}: restored.")
        except (services.GalleryError, IllegalTransition) as exc:
            modeladmin.message_user(request, f"{example.slug}: {exc}", messages.ERROR)


@admin.action(description="Retire the selected examples (asks for a reason)",
              permissions=["change"])
def retire(modeladmin: admin.ModelAdmin, request: HttpRequest,
           queryset: QuerySet) -> HttpResponse | None:
    form = forms.RetireForm(request.POST if "reason" in request.POST else None)
    if form.is_valid():
        for example in queryset:
            try:
                services.retire_example(example=example, actor=request.user,
                                        reason=form.cleaned_data["reason"])
                modeladmin.message_user(request, f"{example.slug}: retired.")
            except (services.GalleryError, IllegalTransition) as exc:
                modeladmin.message_user(request, f"{example.slug}: {exc}", messages.ERROR)
        return None
    return TemplateResponse(request, "admin/gallery/example/retire.html", {
        **modeladmin.admin_site.each_context(request), "opts": modeladmin.model._meta,
        "examples": queryset, "form": form, "title": "Retire examples",
        "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
    })


class RunFilter(admin.SimpleListFilter):
    """Examples by the verdict of their last run."""

    title = "last run"
    parameter_name = "run"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("broken", "broken"), ("verified", "verified"), ("none", "not run yet")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "broken":
            return queryset.broken()
        if self.value() == "verified":
            return queryset.verified()
        if self.value() == "none":
            return queryset.filter(last_run__isnull=True)
        return queryset


@admin.register(Example)
class ExampleAdmin(DeskAdmin):
    list_display = ["slug", "title", "state", "verdict", "contributor", "use_count", "updated"]
    list_filter = [RunFilter, "state"]
    list_select_related = ["contributor", "last_run", "current_revision"]
    search_fields = ["slug", "title"]
    readonly_fields = ["slug", "state", "contributor", "current_revision", "use_count",
                       "last_run", "verdict_since", "created", "updated"]
    exclude = ["search_text"]
    actions = [retire, restore, run_again]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The notebook's text for search, up to 100 kB an example: never shown here. Broken
        # examples come first: they are the ones that need a person. A project's reviewers
        # see their groups' examples alone.
        return Example.objects.defer("search_text").filter(
            pk__in=Example.objects.reviewable_by(request.user).values("pk")).annotate(
            broken=Case(When(last_run__state=Run.State.FAILED, then=0), default=1,
                        output_field=IntegerField())).order_by(*self.get_ordering(request))

    def get_ordering(self, request: HttpRequest) -> list[str]:
        return ["broken", "-updated"]

    @admin.display(description="last run")
    def verdict(self, obj: Example) -> str:
        return obj.run_badge() or "not run yet"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(DeskAdmin):
    """Every run, and the reports of candidate software stacks (`verify_examples`)."""

    change_list_template = "admin/gallery/run/change_list.html"
    list_display = ["id", "revision", "kind", "state", "account", "kernel", "sandboxed",
                    "seconds", "finished"]
    list_filter = ["kind", "state", "sandboxed"]
    list_select_related = ["revision__example"]
    search_fields = ["revision__example__slug", "batch"]
    readonly_fields = [f.name for f in Run._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("candidates/", wrap(self.candidates_view), name="gallery_run_candidates"),
            *super().get_urls(),
        ]

    def candidates_view(self, request: HttpRequest) -> HttpResponse:
        """The checks of candidate stacks, and one's report: what passes today and fails."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        batch = request.GET.get("batch", "")[:40]
        report = services.candidate_report(batch) if batch else None
        return TemplateResponse(request, "admin/gallery/run/candidates.html", {
            **self.admin_site.each_context(request), "title": "Candidate software stacks",
            "batches": services.candidate_batches(), "report": report, "opts": self.model._meta,
        })


@admin.register(Job)
class JobAdmin(DeskAdmin):
    list_display = ["id", "kind", "state", "user", "attempts", "queued_at", "finished_at"]
    list_filter = ["kind", "state"]
    readonly_fields = [f.name for f in Job._meta.fields]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # A copy one person sent another is theirs alone, its acceptance too.
        return super().get_queryset(request).exclude(kind=Job.Kind.ACCEPT)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(StateChange)
class StateChangeAdmin(DeskAdmin):
    list_display = ["at", "example", "subject", "from_state", "to_state", "actor", "reason"]
    list_select_related = ["example", "actor"]
    readonly_fields = [f.name for f in StateChange._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Notification)
class NotificationAdmin(DeskAdmin):
    list_display = ["created", "user", "kind", "message", "read_at", "emailed_at"]
    list_filter = ["kind"]
    list_select_related = ["user"]
    readonly_fields = [f.name for f in Notification._meta.fields]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The offer of a copy quotes its sender's message: for the recipient alone.
        return super().get_queryset(request).exclude(kind=Notification.Kind.COPY)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(HubGroup)
class HubGroupAdmin(DeskAdmin):
    """Hub groups as the hub last said (for operators; without a hub, set them here)."""

    list_display = ["name"]
    search_fields = ["name"]
    filter_horizontal = ["members", "reviewers"]

"""The reviewer's desk in the Django admin; every action calls a function of `services`."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from . import services
from .models import Example, IllegalTransition, Job, Review, StateChange, Submission


def _decide(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet,
            action, comment: str) -> None:  # type: ignore[no-untyped-def]
    for submission in queryset:
        try:
            action(submission=submission, reviewer=request.user, comment=comment)
            modeladmin.message_user(request, f"{submission}: done.")
        except (services.GalleryError, IllegalTransition) as exc:
            modeladmin.message_user(request, f"{submission}: {exc}", messages.ERROR)


@admin.action(description="Approve the selected submissions", permissions=["review"])
def approve(modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet) -> None:
    _decide(modeladmin, request, queryset, services.approve_submission, "")


class ReviewInline(admin.TabularInline):
    model = Review
    extra = 0
    readonly_fields = ["reviewer", "decision", "comment", "created"]
    can_delete = False


@admin.register(Submission)
class SubmissionAdmin(admin.ModelAdmin):
    list_display = ["id", "example", "contributor", "state", "checks_state", "created"]
    list_filter = ["state", "checks_state"]
    ordering = ["created"]  # the queue: who has waited longest comes first
    readonly_fields = ["example", "revision", "contributor", "state", "checks_state", "checks",
                       "created", "updated"]
    inlines = [ReviewInline]
    actions = [approve]

    def has_review_permission(self, request: HttpRequest) -> bool:
        return services.is_reviewer(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Example)
class ExampleAdmin(admin.ModelAdmin):
    list_display = ["slug", "title", "state", "contributor", "use_count", "updated"]
    list_filter = ["state"]
    search_fields = ["slug", "title"]
    readonly_fields = ["slug", "state", "contributor", "current_revision", "use_count",
                       "created", "updated"]
    exclude = ["search_text"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "state", "user", "attempts", "queued_at", "finished_at"]
    list_filter = ["kind", "state"]
    readonly_fields = [f.name for f in Job._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(StateChange)
class StateChangeAdmin(admin.ModelAdmin):
    list_display = ["at", "example", "subject", "from_state", "to_state", "actor", "reason"]
    readonly_fields = [f.name for f in StateChange._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

"""The JSON API (`/api/v1/…`), described by an OpenAPI schema that django-ninja builds
from these signatures and serves at `/api/v1/schema`.

Every error is JSON `{"error": "<what to do>"}` with a 4xx status; no input makes a 5xx.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFilesSent
from django.core.paginator import Paginator
from django.db.models import Prefetch
from django.http import Http404, HttpRequest, HttpResponse, RawPostDataException
from django.urls import reverse
from ninja import NinjaAPI, Query, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import SessionAuth
from pydantic import Field
from pydantic import ValidationError as PydanticValidationError

from . import caching, hub, services
from .models import (
    Delivery,
    Example,
    IllegalTransition,
    Job,
    Preview,
    SentCopy,
    Submission,
    audience_choices,
    snapshot,
)
from .previews import example_preview_url, revision_preview_key
from .previews.links import signed_preview_url
from .schema import SubmissionMetaIn, meta_from_input
from .uploads import UploadTooLarge

log = logging.getLogger(__name__)
HUB_RETRY_SECONDS = 60  # what a 503 asks an API client to wait while the hub is away


def _auth() -> list[Any]:
    from .login import HubTokenAuth

    return [HubTokenAuth(), SessionAuth(csrf=True)]


api = NinjaAPI(
    title="Gallery API",
    version="1",
    description="Browse, stage and use examples of the JupyterHub examples gallery.",
    urls_namespace="api",
    auth=_auth(),
    openapi_url="/schema",
    docs_url="/docs",
)


# --- errors ---------------------------------------------------------------------------------


def _error(request: HttpRequest, message: str, status: int, **extra: Any) -> HttpResponse:
    return api.create_response(request, {"error": message, **extra}, status=status)


@api.exception_handler(services.GalleryError)
def _gallery_error(request: HttpRequest, exc: services.GalleryError) -> HttpResponse:
    response = _error(request, str(exc), exc.status)
    if isinstance(exc, services.TooManyRequests):
        response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(IllegalTransition)
def _illegal(request: HttpRequest, exc: IllegalTransition) -> HttpResponse:
    return _error(request, str(exc), 409)


@api.exception_handler(ValidationError)
def _invalid(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    parts = []
    for err in exc.errors[:10]:
        loc = ".".join(str(p) for p in err.get("loc", []) if p not in ("body", "payload"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return _error(request, "The request is not valid: " + "; ".join(parts), 400,
                  details=[{"loc": e.get("loc"), "msg": e.get("msg")} for e in exc.errors[:50]])


@api.exception_handler(PydanticValidationError)
def _invalid_model(request: HttpRequest, exc: PydanticValidationError) -> HttpResponse:
    return _invalid(request, ValidationError([dict(e) for e in exc.errors(include_url=False,
                                                                             include_input=False)]))


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return _error(request, str(exc) or "There is nothing at this address.", 404)


@api.exception_handler(hub.HubUnavailable)
def _hub_unavailable(request: HttpRequest, exc: hub.HubUnavailable) -> HttpResponse:
    log.warning("hub unreachable while checking an API token: %s", exc)
    response = _error(request, "The hub is not answering, so your token cannot be checked. "
                               "Try again in a minute.", 503)
    response["Retry-After"] = str(HUB_RETRY_SECONDS)
    return response


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return _error(request, "Log in first, or send 'Authorization: token <hub token>' "
                           "(browser requests also need the CSRF token).", 401)


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return _error(request, str(exc), exc.status_code)


@api.exception_handler(UploadTooLarge)
def _too_large(request: HttpRequest, exc: UploadTooLarge) -> HttpResponse:
    return _error(request, str(exc), 413)


@api.exception_handler(RequestDataTooBig)
def _data_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return _error(request, "The request is too large.", 413)


@api.exception_handler(TooManyFilesSent)
def _too_many_files(request: HttpRequest, exc: TooManyFilesSent) -> HttpResponse:
    return _error(request, f"At most {settings.GALLERY_MAX_FILES} files per example.", 400)


@api.exception_handler(RawPostDataException)
def _form_body(request: HttpRequest, exc: RawPostDataException) -> HttpResponse:
    # A form or multipart body, already read as a form, where the call takes JSON.
    return _error(request, "This call takes a JSON body (Content-Type: application/json).",
                  415)


@api.exception_handler(SuspiciousOperation)
def _suspicious(request: HttpRequest, exc: SuspiciousOperation) -> HttpResponse:
    return _error(request, "The request is malformed.", 400)


# --- schemas --------------------------------------------------------------------------------


class ErrorOut(Schema):
    error: str


class FileIn(Schema):
    path: str = Field(min_length=1, max_length=250)
    content: str | None = Field(None, description="UTF-8 text")
    content_base64: str | None = Field(None, description="Binary content, base64")


class SubmissionJsonIn(SubmissionMetaIn):
    notebook: dict[str, Any] | str = Field(description="The notebook, as JSON or as a string")
    notebook_name: str = Field("notebook.ipynb", max_length=250)
    environment: FileIn | None = None
    files: list[FileIn] = Field(default_factory=list)


class CheckOut(Schema):
    name: str
    status: str
    message: str


class ReviewOut(Schema):
    decision: str
    comment: str
    reviewer: str
    created: str


class PreviewOut(Schema):
    state: str = Field(description="pending, ready or failed")
    error: str = Field(description="Why the preview could not be made, in plain words")


class SubmissionOut(Schema):
    id: int
    example: str
    groups: list[str] = Field(description="The hub groups its example is shown to; empty: "
                              "everyone")
    revision: int
    state: str
    checks_state: str
    checks: list[CheckOut]
    reviews: list[ReviewOut]
    preview_url: str | None
    preview: PreviewOut
    url: str


class DataLinkOut(Schema):
    name: str
    target: str
    description: str
    size: int | None
    checksum: str
    licence: str


class ExampleOut(Schema):
    slug: str
    title: str
    summary: str
    state: str
    tags: list[str]
    author: str
    updated: str
    use_count: int
    version: int | None
    url: str
    preview_url: str | None


class ExampleDetailOut(ExampleOut):
    notebook: str = Field(description="The main notebook's path among the files")
    files: list[dict[str, Any]]
    environment: str
    environment_state: str = Field(description="queued, building, ready, failed or "
                                   "cannot_build; empty before its environment is queued")
    data_links: list[DataLinkOut]
    resources: dict[str, Any]
    licence: str
    commit: str
    versions: list[dict[str, Any]]
    groups: list[str] = Field(default_factory=list, description="The hub groups whose "
                              "members see it; empty: everyone")
    run_state: str = Field("", description="passed or failed: the verdict of the last run of "
                           "its current content; empty before one")
    run: str = Field("", description='"Verified <date> in <environment>" or "Broken since '
                     '<date>: cell N, Error …"')


class ExamplePage(Schema):
    count: int
    page: int
    pages: int
    results: list[ExampleOut]


class UseIn(Schema):
    folder: str = Field("", max_length=128, description="Folder name in the Use directory")


class PlanDataLinkOut(DataLinkOut):
    kind: str = Field(description="'symlink' (a path) or 'manifest' (a URL or DOI)")
    where: str = Field(description="Where it appears in the copy")


class UsePlanOut(Schema):
    folder: str
    target: str
    version: int
    commit: str
    files: list[dict[str, Any]]
    environment: str
    environment_state: str = Field(description="none (no environment file), ready, waiting "
                                   "(it is built before the copy), failed or cannot_build")
    environment_text: str = Field(description="The same in plain words, with the reason")
    kernel: str = Field(description="The kernel the copy comes with, when the environment "
                        "is ready; empty otherwise")
    environment_commands: dict[str, str]
    data_links: list[PlanDataLinkOut]
    provenance_file: str
    note: str


class AudienceIn(Schema):
    groups: list[str] = Field(description="The hub groups whose members see the example; "
                              "empty: everyone. The centre's reviewers set any; a project's "
                              "reviewer changes only the groups they review and never makes "
                              "an example public; its contributor only narrows it.")


class UpdateIn(Schema):
    folder: str = Field("", max_length=128, description="The copy's folder name in the Use "
                        "directory (the example's slug when empty)")


class CopyOut(Schema):
    folder: str
    path: str
    version: int = Field(description="The version the gallery last wrote into it")
    outdated: bool = Field(description="A newer version is approved: it can be updated")
    at: str


class UpdateFileOut(Schema):
    path: str
    status: str = Field(description="updated, added, removed, merged, conflict, kept "
                        "(yours stays; the new version goes beside it) or unchanged")
    beside: str = Field(description="Where the new version goes when yours is kept")
    cells: list[dict[str, Any]] = Field(description="For a notebook: per cell (numbered "
                                        "as in your version), what changed and on which side")
    conflicts: list[dict[str, Any]] = Field(description="The cells changed on both sides, "
                                            "marked in the notebook as nbdime marks them")


class UpdatePlanOut(Schema):
    folder: str
    path: str
    from_version: int
    to_version: int
    commit: str
    up_to_date: bool
    files: list[UpdateFileOut]
    changes: int = Field(description="How many files the update writes")
    conflicts: int
    backup: str = Field(description="Where the files it replaces are kept, in the copy")
    kernel_name: str


class MeOut(Schema):
    username: str
    groups: list[str] = Field(description="The hub groups the caller may show a new example "
                              "to (`groups` of a submission): those they are a member or a "
                              "project reviewer of, as the hub last said; sorted")
    reviewer: bool = Field(description="A reviewer of the centre: reviews every example")


class JobOut(Schema):
    id: UUID
    kind: str
    state: str
    message: str
    target: str | None
    open_url: str | None
    result: dict[str, Any]
    queued_at: str
    finished_at: str | None


# --- serialisers ----------------------------------------------------------------------------


def example_out(example: Example) -> dict[str, Any]:
    revision = example.current_revision or example.latest_revision
    return {
        "slug": example.slug, "title": example.title, "summary": example.summary,
        "state": example.state, "tags": [t.name for t in example.tags.all()],
        "author": example.contributor.get_username(), "updated": example.updated.isoformat(),
        "use_count": example.use_count, "version": revision.number if revision else None,
        "url": reverse("example", args=[example.slug]),
        "preview_url": example_preview_url(example, revision_preview_key(revision)
                                           if revision else None),
    }


def submission_out(submission: Submission) -> dict[str, Any]:
    return {
        "id": submission.pk, "example": submission.example.slug,
        "groups": submission.example.group_names(),
        "revision": submission.revision.number, "state": submission.state,
        "checks_state": submission.checks_state, "checks": submission.checks,
        "reviews": [{"decision": r.decision, "comment": r.comment,
                     "reviewer": r.reviewer.get_username(), "created": r.created.isoformat()}
                    for r in submission.reviews.all()],
        "preview_url": example_preview_url(submission.example,
                                           revision_preview_key(submission.revision)),
        "preview": preview_out(revision_preview_key(submission.revision)),
        "url": reverse("submission", args=[submission.pk]),
    }


def preview_out(sha256: str) -> dict[str, str]:
    found = Preview.objects.filter(sha256=sha256).values("state", "error").first()
    return found or {"state": Preview.State.PENDING, "error": ""}


# --- the caller -----------------------------------------------------------------------------


@api.get("/me", response=MeOut, summary="Who the caller is, and the hub groups they can "
                                        "stage examples for")
def me(request: HttpRequest) -> dict[str, Any]:
    return {"username": request.auth.get_username(),
            "groups": audience_choices(request.auth),
            "reviewer": services.is_reviewer(request.auth)}


# --- examples -------------------------------------------------------------------------------


@api.get("/examples", response=ExamplePage, summary="List and search examples")
def list_examples(request: HttpRequest, q: str = Query("", max_length=200),
                  tag: str = Query("", max_length=50), state: str = Query(""),
                  page: int = Query(1, ge=1, le=100000)) -> HttpResponse:
    if state not in ("", "approved", "staged"):
        raise services.GalleryError("state must be 'approved' or 'staged'.")

    audience = caching.audience(request.auth)  # the groups it shows: part of the key

    def build() -> str:
        found = Example.objects.find(q=q, tag=tag, state=state, audience=audience)
        paginator = Paginator(found.select_related(None).prefetch_related(None).values_list(
            "pk", flat=True), 24)
        current = paginator.get_page(page)
        # An example's item is the same for everyone who sees it: made once, whatever the groups.
        return ExamplePage.model_validate({
            "count": paginator.count, "page": current.number, "pages": paginator.num_pages,
            "results": caching.cached_parts("item", list(current.object_list), _items),
        }).model_dump_json()

    # The same for every caller who sees the same groups until an example changes (use
    # counts may lag five minutes): checked against the schema and written as JSON once.
    key = _list_key(q, tag, state, page) + caching.audience_key(audience)
    return HttpResponse(caching.cached_page(key, build)[0], content_type="application/json")


def _items(ids: list[int]) -> dict[int, dict[str, Any]]:
    """The list API's item of each of these examples."""
    found = Example.objects.filter(pk__in=ids).select_related(
        "contributor", "current_revision").prefetch_related("tags", "groups").with_latest(
        ).defer("search_text", "current_revision__metadata", "current_revision__files")
    return {e.pk: example_out(e) for e in found}


def _list_key(q: str, tag: str, state: str, page: int) -> str:
    return "gallery:list-json:" + hashlib.sha256(repr((q, tag, state, page)).encode()).hexdigest()


def _list_key_of_request(request: HttpRequest) -> str:
    """The key `list_examples` will ask for, or "" for a page number it will refuse."""
    get = request.GET
    try:
        page = int(get.get("page", "1"))
    except ValueError:
        return ""
    return _list_key(get.get("q", ""), get.get("tag", ""), get.get("state", ""), page)


caching.PAGE_KEYS["api:list_examples"] = _list_key_of_request


@api.get("/examples/{slug}", response=ExampleDetailOut, summary="One example",
         description="A group's example's `preview_url` is an address signed for the "
                     "caller that works for GALLERY_PREVIEW_LINK_SECONDS (600 s), without "
                     "the gallery's session, while the caller sees the example.")
def get_example(request: HttpRequest, slug: str) -> dict[str, Any]:
    with snapshot():
        return _example_detail(_visible_example(request, slug), request.auth)


def _visible_example(request: HttpRequest, slug: str) -> Example:
    """The example of a URL, if the caller may see it (`ExampleQuerySet.visible_to`)."""
    example = Example.objects.visible_to(request.auth).filter(slug=slug).first()
    if example is None:
        raise HttpError(404, "There is no such example.")
    return example


def _example_detail(example: Example, caller: Any) -> dict[str, Any]:
    revision = example.current_revision or example.latest_revision
    meta = revision.metadata if revision else {}
    return {
        **example_out(example),
        # For the caller alone (the list's preview_url is the same for everyone, and cached).
        "preview_url": signed_preview_url(example, revision_preview_key(revision) if revision
                                          else None, caller),
        "notebook": revision.notebook_name if revision else "",
        "files": revision.files if revision else [],
        "environment": meta.get("environment", ""),
        "environment_state": revision.environment.state
        if revision and revision.environment_id else "",
        "data_links": list(revision.data_links.values(
            "name", "target", "description", "size", "checksum", "licence")) if revision else [],
        "resources": meta.get("resources", {}),
        "licence": meta.get("licence", ""),
        "commit": revision.git_commit if revision else "",
        "versions": [{"number": r.number, "commit": r.git_commit, "created": r.created.isoformat()}
                     for r in example.revisions.exclude(git_commit="")],
        "groups": example.group_names(),
        "run_state": example.last_run.state if example.last_run_id else "",
        "run": example.run_badge(),
    }


@api.put("/examples/{slug}/groups", response={200: ExampleDetailOut, 400: ErrorOut,
                                              403: ErrorOut, 404: ErrorOut},
         summary="Change who sees the example: its hub groups, or everyone")
def set_groups(request: HttpRequest, slug: str, payload: AudienceIn) -> dict[str, Any]:
    example = services.set_audience(example_slug=slug, groups=payload.groups,
                                    actor=request.auth)
    return _example_detail(Example.objects.get(pk=example.pk), request.auth)


@api.post("/examples/{slug}/use", response={202: JobOut, 400: ErrorOut, 404: ErrorOut,
                                             409: ErrorOut},
          summary="Queue a copy of the example into the caller's home")
def use_example(request: HttpRequest, slug: str, payload: UseIn | None = None) -> Any:
    example = _visible_example(request, slug)
    job = services.queue_use(example=example, user=request.auth,
                             folder_name=payload.folder if payload else "")
    return Status(202, job.report())


@api.get("/examples/{slug}/use-plan", response={200: UsePlanOut, 400: ErrorOut, 404: ErrorOut,
                                                 409: ErrorOut},
         summary="What a Use would copy into the caller's home, and where; writes nothing")
def use_plan(request: HttpRequest, slug: str, folder: str = "") -> dict[str, Any]:
    example = _visible_example(request, slug)
    return services.use_plan(example=example, user=request.auth, folder_name=folder)


@api.get("/examples/{slug}/copies", response={200: list[CopyOut], 404: ErrorOut},
         summary="The caller's copies of the example, and whether each can be updated")
def my_copies(request: HttpRequest, slug: str) -> list[dict[str, Any]]:
    return services.find_copies(example=_visible_example(request, slug), user=request.auth)


@api.get("/examples/{slug}/update-plan",
         response={200: UpdatePlanOut, 202: JobOut, 400: ErrorOut, 404: ErrorOut,
                   409: ErrorOut},
         summary="What updating the caller's copy would change; writes nothing to it",
         description="The copy is read by a worker, as its owner: the first call answers "
                     "202 with the job that reads it; call again until the answer is 200 "
                     "(the plan, kept five minutes) or 409 (why it cannot be updated). "
                     "`refresh=true` reads the copy again.")
def update_plan(request: HttpRequest, slug: str, folder: str = Query("", max_length=128),
                refresh: bool = False) -> Any:
    job = services.plan_job(example=_visible_example(request, slug), user=request.auth,
                            folder=folder, refresh=refresh)
    if job.state == Job.State.DONE:
        return job.result
    if job.state == Job.State.FAILED:
        raise services.Conflict(job.message)
    return Status(202, job.report())


@api.post("/examples/{slug}/update", response={202: JobOut, 400: ErrorOut, 404: ErrorOut,
                                                409: ErrorOut},
          summary="Update the caller's copy to the approved version, keeping their edits")
def update_copy(request: HttpRequest, slug: str, payload: UpdateIn) -> Any:
    job = services.queue_update(example=_visible_example(request, slug), user=request.auth,
                                folder=payload.folder)
    return Status(202, job.report())


@api.get("/jobs/{job_id}", response=JobOut, summary="State and result of a job")
def get_job(request: HttpRequest, job_id: UUID) -> dict[str, Any]:
    job = Job.objects.filter(pk=job_id).first()  # another's is as absent as a missing one
    if job is None or job.user_id != request.auth.pk and not services.sees_job(request.auth, job):
        raise HttpError(404, "There is no such job.")
    return job.report()


# --- submissions ----------------------------------------------------------------------------

_SUBMISSION_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": SubmissionJsonIn.model_json_schema(
                ref_template="#/components/schemas/{model}")},
            "multipart/form-data": {"schema": {
                "type": "object",
                "required": ["notebook", "title"],
                "properties": {
                    "notebook": {"type": "string", "format": "binary"},
                    "environment": {"type": "string", "format": "binary"},
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "metadata": {"type": "string",
                                 "description": "All metadata fields as one JSON object"},
                    **{k: {"type": "string"} for k in ("title", "summary", "licence", "slug",
                                                       "example", "kernel")},
                    "tags": {"type": "string", "description": "comma-separated"},
                    "groups": {"type": "string", "description": "comma-separated hub groups "
                               "of the caller to show it to (empty: everyone)"},
                    "data_links": {"type": "string", "description": "a JSON list"},
                },
            }},
        },
    }
}


def _decode_file(item: FileIn) -> bytes:
    if (item.content is None) == (item.content_base64 is None):
        raise services.GalleryError(f"{item.path}: give exactly one of content, content_base64.")
    if item.content is not None:
        return item.content.encode("utf-8", "surrogatepass")
    try:
        return base64.b64decode(item.content_base64 or "", validate=True)
    except (binascii.Error, ValueError):
        raise services.GalleryError(f"{item.path}: content_base64 is not valid base64.") from None


def _parse_json(text: str | bytes, what: str) -> Any:
    """`text` as JSON, or a 400 naming `what`. The JSON body and the JSON-valued multipart
    fields are read here alone, so both refuse the same things."""
    try:
        return json.loads(text)
    except RecursionError:
        raise services.GalleryError(f"{what} is nested too deeply to read.") from None
    except ValueError:
        raise services.GalleryError(f"{what} is not valid JSON (UTF-8).") from None


def _from_json(request: HttpRequest) -> tuple[services.StagedFiles, SubmissionMetaIn]:
    raw = _parse_json(request.body, "The body")
    payload = SubmissionJsonIn.model_validate(raw) if isinstance(raw, dict) else None
    if payload is None:
        raise services.GalleryError("The body must be a JSON object.")
    notebook = payload.notebook
    try:
        nb_bytes = (notebook if isinstance(notebook, str) else json.dumps(notebook)).encode(
            "utf-8")
    except UnicodeEncodeError:
        raise services.GalleryError("The notebook is not valid UTF-8 text.") from None
    env = (payload.environment.path, _decode_file(payload.environment)) \
        if payload.environment else None
    files: dict[str, bytes] = {}
    for item in payload.files:
        if item.path in files:
            raise services.GalleryError(f"The file {item.path!r} is given twice.")
        files[item.path] = _decode_file(item)
    return services.StagedFiles(notebook_name=payload.notebook_name, notebook=nb_bytes,
                                environment=env, files=files), payload


def _from_multipart(request: HttpRequest) -> tuple[services.StagedFiles, SubmissionMetaIn]:
    post, uploads = request.POST, request.FILES
    if "notebook" not in uploads:
        raise services.GalleryError("Attach the notebook as the 'notebook' file field.")
    if "metadata" in post:
        fields = _parse_json(post["metadata"], "The 'metadata' field")
        if not isinstance(fields, dict):
            raise services.GalleryError("The 'metadata' field must be a JSON object.")
    else:
        fields = {k: post[k] for k in ("title", "summary", "licence", "slug", "example", "kernel")
                  if k in post}
        tags = post.getlist("tags")
        fields["tags"] = [t.strip() for v in tags for t in v.split(",") if t.strip()]
        fields["groups"] = [g.strip() for v in post.getlist("groups") for g in v.split(",")
                            if g.strip()]
        for key in ("data_links", "resources", "authors"):
            if key in post:
                fields[key] = _parse_json(post[key], f"The {key!r} field")
    meta = SubmissionMetaIn.model_validate(fields)
    nb = uploads["notebook"]
    env = uploads.get("environment")
    files: dict[str, bytes] = {}
    for upload in uploads.getlist("files"):
        name = upload.name or ""
        if name in files:
            raise services.GalleryError(f"The file {name!r} is given twice.")
        files[name] = upload.read()
    return services.StagedFiles(
        notebook_name=nb.name or "notebook.ipynb", notebook=nb.read(),
        environment=(env.name or "", env.read()) if env else None, files=files,
    ), meta


@api.post("/submissions", response={201: SubmissionOut, 400: ErrorOut, 403: ErrorOut,
                                    404: ErrorOut, 409: ErrorOut, 413: ErrorOut},
          openapi_extra=_SUBMISSION_BODY, summary="Stage a notebook (multipart or JSON)")
def create_submission(request: HttpRequest) -> Any:
    content_type = request.content_type or ""
    if content_type == "application/json":
        staged, meta = _from_json(request)
    elif content_type == "multipart/form-data":
        staged, meta = _from_multipart(request)
    else:
        raise services.GalleryError("Send multipart/form-data or application/json.", status=415)
    submission = services.stage_submission(contributor=request.auth, staged=staged,
                                           meta=meta_from_input(meta), example_slug=meta.example)
    return Status(201, submission_out(submission))


@api.get("/submissions", response=list[SubmissionOut], summary="The caller's submissions")
def my_submissions(request: HttpRequest) -> list[dict[str, Any]]:
    mine = Submission.objects.filter(contributor=request.auth).seen_by(
        request.auth).select_related("example", "revision")[:200]
    return [submission_out(s) for s in mine]


@api.get("/submissions/{submission_id}", response=SubmissionOut, summary="One submission")
def get_submission(request: HttpRequest, submission_id: int) -> dict[str, Any]:
    submission = Submission.objects.filter(pk=submission_id).seen_by(request.auth).first()
    if submission is None:
        raise HttpError(404, "There is no such submission.")
    return submission_out(submission)


# --- copies sent between people -------------------------------------------------------------
#
# Only a copy's sender and its recipients know of it: a sent copy is found for its sender
# alone (`/copies/sent/…`), an offer for its recipient alone (`/copies/received/…`); anyone
# else gets the 404 of an address that names nothing.


class SendJsonIn(Schema):
    notebook: dict[str, Any] | str = Field(description="The notebook, as JSON or as a string")
    notebook_name: str = Field("notebook.ipynb", max_length=250)
    files: list[FileIn] = Field(default_factory=list, max_length=1000,
                                description="Files that go with it, by relative path")
    to: list[str] = Field(default_factory=list, max_length=1000, description="Hub user names")
    groups: list[str] = Field(default_factory=list, max_length=100,
                              description="Hub groups of the caller: all their members")
    message: str = Field("", description="Shown to the recipients (at most 2,000 characters)")
    name: str = Field("", description="The folder recipients get (the notebook's name by "
                                      "default; each may choose another)")


class OfferStateOut(Schema):
    id: UUID
    recipient: str
    group: str = Field(description="The group it went to them through; empty when named")
    state: str = Field(description="pending, accepted, declined, withdrawn or expired")
    decided: str | None


class SentCopyOut(Schema):
    id: UUID
    name: str
    notebook: str
    message: str
    files: list[dict[str, Any]]
    size: int
    groups: list[str]
    not_delivered: int = Field(description="Members of those groups left out: they take no "
                                           "copies")
    created: str
    expires: str = Field(description="When offers still waiting expire")
    recipients: list[OfferStateOut]
    url: str


class OfferOut(Schema):
    id: UUID
    sent_by: str
    name: str
    notebook: str
    message: str
    files: list[dict[str, Any]]
    size: int
    state: str = Field(description="pending, accepted, declined, withdrawn or expired")
    created: str
    expires: str
    decided: str | None
    job: JobOut | None = Field(description="The job that writes it into your home, once "
                                           "accepted")
    url: str


class AcceptPlanOut(Schema):
    folder: str
    target: str
    files: list[dict[str, Any]]
    notebook: str
    sent_by: str
    message: str
    provenance_file: str
    note: str


class WithdrawIn(Schema):
    recipient: str = Field("", max_length=150, description="Withdraw it from this recipient "
                           "only; empty: from everyone who has not answered yet")


class CopySettingsIn(Schema):
    refuse_all: bool


class CopySettingsOut(Schema):
    refuse_all: bool = Field(description="Nobody can send you a copy while it is on")


_SEND_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": SendJsonIn.model_json_schema(
                ref_template="#/components/schemas/{model}")},
            "multipart/form-data": {"schema": {
                "type": "object",
                "required": ["notebook"],
                "properties": {
                    "notebook": {"type": "string", "format": "binary"},
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "to": {"type": "string", "description": "comma-separated hub user names"},
                    "groups": {"type": "string", "description": "comma-separated hub groups "
                               "of the caller"},
                    "message": {"type": "string"},
                    "name": {"type": "string"},
                },
            }},
        },
    }
}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def sent_copy_out(sent: SentCopy) -> dict[str, Any]:
    return {
        "id": sent.pk, "name": sent.name, "notebook": sent.notebook, "message": sent.message,
        "files": sent.files, "size": sent.size, "groups": sent.groups,
        "not_delivered": sent.not_delivered, "created": sent.created.isoformat(),
        "expires": sent.expires.isoformat(),
        "recipients": [{"id": d.pk, "recipient": d.recipient.get_username(),
                        "group": d.group.name if d.group else "", "state": d.current_state,
                        "decided": _iso(d.decided)}
                       for d in sent.deliveries.all()],
        "url": reverse("sent-copies") + f"#sent-{sent.pk}",
    }


def offer_out(delivery: Delivery) -> dict[str, Any]:
    sent = delivery.sent
    return {
        "id": delivery.pk, "sent_by": sent.sender.get_username(), "name": sent.name,
        "notebook": sent.notebook, "message": sent.message, "files": sent.files,
        "size": sent.size, "state": delivery.current_state, "created": sent.created.isoformat(),
        "expires": sent.expires.isoformat(), "decided": _iso(delivery.decided),
        "job": delivery.job.report() if delivery.job else None,
        "url": reverse("copy", args=[delivery.pk]),
    }


def _send_from_json(request: HttpRequest) -> dict[str, Any]:
    raw = _parse_json(request.body, "The body")
    if not isinstance(raw, dict):
        raise services.GalleryError("The body must be a JSON object.")
    payload = SendJsonIn.model_validate(raw)
    notebook = payload.notebook
    try:
        nb_bytes = (notebook if isinstance(notebook, str) else json.dumps(notebook)).encode(
            "utf-8")
    except UnicodeEncodeError:
        raise services.GalleryError("The notebook is not valid UTF-8 text.") from None
    files: dict[str, bytes] = {}
    for item in payload.files:
        if item.path in files:
            raise services.GalleryError(f"The file {item.path!r} is given twice.")
        files[item.path] = _decode_file(item)
    return {"staged": services.StagedFiles(notebook_name=payload.notebook_name,
                                           notebook=nb_bytes, files=files),
            "to": payload.to, "groups": payload.groups, "message": payload.message,
            "name": payload.name}


def _small_body(request: HttpRequest, model: type[Schema]) -> Any:
    """A small request body as `model`: a JSON object, or form fields; none is `{}`.

    Read here rather than by django-ninja: after a form body was parsed (the CSRF check of a
    session reads it), the raw body can no longer be read, and a declared payload would fail
    there as an error of the gallery instead of an answer.
    """
    content_type = request.content_type or ""
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raw: Any = {k: request.POST[k] for k in model.model_fields if k in request.POST}
    elif not request.body:
        raw = {}
    elif content_type == "application/json":
        raw = _parse_json(request.body, "The body")
        if not isinstance(raw, dict):
            raise services.GalleryError("The body must be a JSON object.")
    else:
        raise services.GalleryError("Send application/json.", status=415)
    return model.model_validate(raw)


def _body_of(model: type[Schema], required: bool = False) -> dict[str, Any]:
    """The OpenAPI description of a body `_small_body` reads."""
    return {"requestBody": {"required": required, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}


def _names(values: list[str]) -> list[str]:
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def send_from_multipart(request: HttpRequest) -> dict[str, Any]:
    """The arguments of `services.send_copy` from a multipart request (the API's and the
    send page's)."""
    post, uploads = request.POST, request.FILES
    if "notebook" not in uploads:
        raise services.GalleryError("Attach the notebook as the 'notebook' file field.")
    nb = uploads["notebook"]
    files: dict[str, bytes] = {}
    for upload in uploads.getlist("files"):
        name = upload.name or ""
        if name in files:
            raise services.GalleryError(f"The file {name!r} is given twice.")
        files[name] = upload.read()
    return {"staged": services.StagedFiles(notebook_name=nb.name or "notebook.ipynb",
                                           notebook=nb.read(), files=files),
            "to": _names(post.getlist("to")), "groups": _names(post.getlist("groups")),
            "message": post.get("message", ""), "name": post.get("name", "")}


@api.post("/copies", response={201: SentCopyOut, 400: ErrorOut, 403: ErrorOut, 413: ErrorOut,
                               429: ErrorOut},
          openapi_extra=_SEND_BODY, summary="Send a copy of a notebook (or a folder) to people "
                                            "or to a group of yours",
          description="Multipart (`notebook` file, `files`, `to`, `groups`, `message`, `name`) "
                      "or JSON. Each recipient is notified and accepts it into their home, or "
                      "declines it. 429 with Retry-After past GALLERY_SEND_PER_HOUR sends.")
def send_copy(request: HttpRequest) -> Any:
    content_type = request.content_type or ""
    if content_type == "application/json":
        arguments = _send_from_json(request)
    elif content_type == "multipart/form-data":
        arguments = send_from_multipart(request)
    else:
        raise services.GalleryError("Send multipart/form-data or application/json.", status=415)
    sent = services.send_copy(sender=request.auth, **arguments)
    return Status(201, sent_copy_out(_with_offers(SentCopy.objects).get(pk=sent.pk)))


@api.get("/copies/sent", response=list[SentCopyOut], summary="The copies the caller sent, "
                                                              "newest first (the last 200)")
def my_sent_copies(request: HttpRequest) -> list[dict[str, Any]]:
    return [sent_copy_out(s) for s in _with_offers(SentCopy.objects.filter(
        sender=request.auth))[:200]]


def _with_offers(sent: Any) -> Any:
    """Sent copies with their offers, by recipient, fetched at once."""
    return sent.prefetch_related(Prefetch("deliveries", queryset=Delivery.objects.select_related(
        "recipient", "group", "sent").order_by("recipient__username")))


@api.get("/copies/sent/{sent_id}", response={200: SentCopyOut, 404: ErrorOut},
         summary="A copy the caller sent, with the state of each recipient's offer")
def get_sent_copy(request: HttpRequest, sent_id: UUID) -> dict[str, Any]:
    return sent_copy_out(_with_offers(SentCopy.objects).get(
        pk=services.sent_by(request.auth, sent_id).pk))


@api.post("/copies/sent/{sent_id}/withdraw", response={200: SentCopyOut, 400: ErrorOut,
                                                        404: ErrorOut, 409: ErrorOut},
          openapi_extra=_body_of(WithdrawIn),
          summary="Withdraw a sent copy from those who have not answered yet")
def withdraw_copy(request: HttpRequest, sent_id: UUID) -> dict[str, Any]:
    sent = services.sent_by(request.auth, sent_id)
    services.withdraw_copy(sent=sent, user=request.auth,
                           recipient=_small_body(request, WithdrawIn).recipient)
    return sent_copy_out(_with_offers(SentCopy.objects).get(pk=sent.pk))


@api.get("/copies/received", response=list[OfferOut],
         summary="Copies sent to the caller, newest first (the last 200)")
def copies_to_me(request: HttpRequest) -> list[dict[str, Any]]:
    offers = Delivery.objects.filter(recipient=request.auth).select_related(
        "sent__sender", "job")[:200]
    return [offer_out(d) for d in offers]


@api.get("/copies/received/{delivery_id}", response={200: OfferOut, 404: ErrorOut},
         summary="A copy sent to the caller")
def get_offer(request: HttpRequest, delivery_id: UUID) -> dict[str, Any]:
    return offer_out(services.delivery_for(request.auth, delivery_id))


@api.get("/copies/received/{delivery_id}/plan", response={200: AcceptPlanOut, 400: ErrorOut,
                                                           404: ErrorOut},
         summary="What accepting a copy would write into the caller's home, and where; "
                 "writes nothing")
def accept_plan(request: HttpRequest, delivery_id: UUID,
                folder: str = Query("", max_length=128)) -> dict[str, Any]:
    return services.accept_plan(delivery=services.delivery_for(request.auth, delivery_id),
                                folder_name=folder)


@api.post("/copies/received/{delivery_id}/accept", response={202: JobOut, 400: ErrorOut,
                                                              404: ErrorOut, 409: ErrorOut},
          summary="Accept a copy: queue the job that writes it into the caller's home",
          description="The copy goes into a new folder of the Use directory (`folder`, the "
                      "sent name by default; an existing folder is never overwritten), "
                      "written as the caller. 409 when it was withdrawn, declined, expired or "
                      "accepted already (an acceptance whose copy failed may be tried again).",
          openapi_extra=_body_of(UseIn))
def accept_copy(request: HttpRequest, delivery_id: UUID) -> Any:
    delivery = services.delivery_for(request.auth, delivery_id)
    job = services.accept_delivery(delivery=delivery, user=request.auth,
                                   folder_name=_small_body(request, UseIn).folder)
    return Status(202, job.report())


@api.post("/copies/received/{delivery_id}/decline", response={200: OfferOut, 404: ErrorOut,
                                                               409: ErrorOut},
          summary="Decline a copy sent to the caller")
def decline_copy(request: HttpRequest, delivery_id: UUID) -> dict[str, Any]:
    delivery = services.delivery_for(request.auth, delivery_id)
    return offer_out(services.decline_delivery(delivery=delivery, user=request.auth))


@api.get("/copies/settings", response=CopySettingsOut,
         summary="Whether the caller refuses every copy others would send")
def copy_settings(request: HttpRequest) -> dict[str, Any]:
    return {"refuse_all": services.refuses_all(request.auth)}


@api.post("/copies/settings", response={200: CopySettingsOut, 400: ErrorOut},
          openapi_extra=_body_of(CopySettingsIn, required=True),
          summary="Refuse every copy others would send, or take them again")
def set_copy_settings(request: HttpRequest) -> dict[str, Any]:
    payload = _small_body(request, CopySettingsIn)
    found = services.set_refuse_all(user=request.auth, refuse=payload.refuse_all)
    return {"refuse_all": found.refuse_all}

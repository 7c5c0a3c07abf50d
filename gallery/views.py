"""The gallery's pages: small function views that hand off to `services`."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Prefetch
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import get_template, render_to_string
from django.templatetags.static import static
from django.urls import get_script_prefix, reverse
from django.utils.functional import SimpleLazyObject
from django.utils.html import escape
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from . import caching, environments, forms, previews, services
from .models import (
    Delivery,
    Example,
    IllegalTransition,
    Job,
    Notification,
    Revision,
    Run,
    SentCopy,
    Submission,
    Tag,
    snapshot,
)
from .previews import example_preview_url, revision_preview_key
from .schema import meta_from_input

PAGE_SIZE = 24  # cards per section and page

# No script, nothing from elsewhere, and `sandbox` (an opaque origin, no scripts, forms or
# top navigation; only a link's new tab, previews.FRAME_SANDBOX) even when a preview is
# opened directly rather than in the page's <iframe sandbox>. 'self' is the preview's own
# origin: the shared stylesheet.
PREVIEW_CSP = (
    "default-src 'none'; img-src data:; style-src 'self'; font-src data:; "
    "form-action 'none'; base-uri 'none'; frame-ancestors {ancestors}; "
    f"sandbox {previews.FRAME_SANDBOX}"
)


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """The gallery: curated and staged sections, search, tag filters, a page of cards each."""
    q, tag, pages, verified = query = _gallery_query(request)
    audience = caching.audience(request.user)  # the groups it shows: part of the page's key
    html, request.unread_notifications = caching.cached_page(  # type: ignore[attr-defined]
        _page_key(*query, audience=audience),
        lambda: _gallery_html(q, tag, pages, verified, audience),
        user=request.user)
    return render(request, "gallery/index.html", {"q": q, "gallery_html": html})


def _gallery_query(request: HttpRequest) -> tuple[str, str, dict[str, str], bool]:
    """The search, the tag, the page of each section and whether only verified examples
    (their last run passed) are shown."""
    return (request.GET.get("q", "")[:200], request.GET.get("tag", "")[:50],
            {state: request.GET.get(f"{state}_page", "")[:10] for state in SECTIONS},
            request.GET.get("verified", "") == "1")


def _page_key(q: str, tag: str, pages: dict[str, str], verified: bool = False, *,
              audience: Any = ()) -> str:
    return "gallery:page:" + hashlib.sha256(repr((q, tag, sorted(pages.items()), verified))
                                            .encode()).hexdigest() + caching.audience_key(audience)


def _cards(ids: list[int]) -> dict[int, str]:
    """The gallery page's card of each of these examples."""
    found = Example.objects.filter(pk__in=ids).select_related(
        "contributor", "current_revision", "last_run").prefetch_related("tags").defer(
        "search_text", "current_revision__metadata", "current_revision__files",
        "last_run__cells", "last_run__error_text", "last_run__differences")
    template = get_template("gallery/card.html")
    return {ex.pk: mark_safe(template.render({"ex": ex})) for ex in found}  # noqa: S308


SECTIONS = {"approved": "Curated, reviewed examples",
            "staged": "Staged examples still under review"}
caching.PAGE_KEYS["index"] = lambda request: _page_key(*_gallery_query(request))


def _gallery_html(q: str, tag: str, pages: dict[str, str], verified: bool = False,
                  audience: Any = ()) -> str:
    """Search, tag filters and the cards of both sections: the same for everyone who sees
    the same groups (`audience`)."""
    sections = []
    for state, title in SECTIONS.items():
        found = Example.objects.find(q=q, tag=tag, state=state, verified=verified,
                                     audience=audience)
        page = Paginator(found.select_related(None).prefetch_related(None).values_list(
            "pk", flat=True), PAGE_SIZE).get_page(pages[state])
        # The cards are the same for everyone who sees them: made once, whatever the groups.
        cards = caching.cached_parts("card", list(page.object_list), _cards)
        sections.append({"state": state, "title": title, "page": page, "cards": cards})
    # Slow to count over thousands of examples, and the same for everyone of an audience.
    tags = cache.get_or_set("gallery:popular-tags" + caching.audience_key(audience),
                            lambda: list(Tag.objects.popular(audience)[:30]),
                            caching.PAGE_SECONDS)
    return render_to_string("gallery/gallery.html", {"sections": sections, "q": q, "tag": tag,
                                                     "tags": tags, "verified": verified})


@login_required
@require_GET
@snapshot()
def example(request: HttpRequest, slug: str) -> HttpResponse:
    """An example: preview, manifest, checks, versions, and Use with its plan."""
    item = get_object_or_404(Example.objects.visible_to(request.user).select_related(
        "current_revision__environment", "contributor"), slug=slug)
    revision = item.current_revision or item.latest_revision
    if revision is None:
        raise Http404("This example has no content.")
    versions = list(item.revisions.exclude(git_commit="").select_related("submission")
                    .prefetch_related("submission__reviews__reviewer").order_by("number"))
    pending = item.submissions.filter(state__in=[
        Submission.State.STAGED, Submission.State.IN_REVIEW]).select_related("revision").first()
    last_use = Job.objects.filter(user=request.user, kind=Job.Kind.USE, state=Job.State.DONE,
                                  revision__example=item).select_related("revision").order_by(
        "-finished_at").first()
    usable = item.state == Example.State.APPROVED and item.current_revision is not None
    return render(request, "gallery/example.html", {
        "example": item, "revision": revision, "submission": getattr(revision, "submission", None),
        "pending": pending if pending and pending.revision_id != revision.pk else None,
        "data_links": revision.data_links.all(),
        "environment": _environment_text(revision),
        "built_environment": revision.environment,
        "pins": _pins(revision),
        "preview_url": example_preview_url(item, revision_preview_key(revision)),
        "versions": [{"revision": v, "changes": v.changes_from(versions[i - 1] if i else None),
                      "review": next(iter(v.submission.reviews.all()), None)
                      if hasattr(v, "submission") else None}
                     for i, v in enumerate(versions)][::-1],
        "history": item.history.select_related("actor")[:50],
        "sees_reviews": item.revisable_by(request.user),
        "audience_choices": services.audience_choices(item, request.user),
        "last_run": revision.runs.exclude(kind=Run.Kind.CANDIDATE).first(),
        # A notebook saved without outputs is previewed with those of its verified run.
        "outputs_run": (verified := services.verified_preview(revision)),
        "outputs_preview_url": example_preview_url(item, revision_preview_key(
            revision, notebook_sha256=verified.outputs_sha256)) if verified else "",
        "plan": services.use_plan(example=item, user=request.user) if usable else None,
        "outdated_copy": last_use if usable and last_use
        and last_use.revision.number < item.current_revision.number else None,
        "update_copies": [c for c in services.find_copies(example=item, user=request.user)
                          if c["outdated"]] if usable else [],
        "use_form": forms.UseForm(initial={"folder": item.slug}),
        "use_dir": f"~/{settings.GALLERY_USE_DIR}",
    })


def _pins(revision: Revision) -> list[str]:
    """The packages a revision's environment resolved to, `name==version` each."""
    try:
        return environments.pins(revision.environment_lock)
    except environments.BuildError:  # never stored so; nothing to show rather than a 500
        return []


def _environment_text(revision: Revision, limit: int = 20_000) -> str:
    """The environment spec of a revision, as text for the page (the first 20 kB)."""
    name = revision.metadata.get("environment", "")
    path = services.staged_folder(revision) / name if name else None
    if path is None or not path.is_file():
        return ""
    with path.open("rb") as fh:
        return fh.read(limit).decode("utf-8", "replace")


@login_required
@require_POST
def use(request: HttpRequest, slug: str) -> HttpResponse:
    item = get_object_or_404(Example.objects.visible_to(request.user), slug=slug)
    form = forms.UseForm(request.POST)
    if not form.is_valid():
        messages.error(request, "; ".join(e for errs in form.errors.values() for e in errs))
        return redirect("example", slug=slug)
    try:
        job = services.queue_use(example=item, user=request.user,
                                 folder_name=form.cleaned_data["folder"])
    except services.GalleryError as exc:
        messages.error(request, str(exc))
        return redirect("example", slug=slug)
    return redirect("job", job_id=job.pk)


@login_required
@require_POST
def update(request: HttpRequest, slug: str) -> HttpResponse:
    """See what updating a copy changes (apply=0), or update it (apply=1); a job either way."""
    item = get_object_or_404(Example.objects.visible_to(request.user), slug=slug)
    form = forms.UseForm(request.POST)
    try:
        if not form.is_valid() or not form.cleaned_data["folder"]:
            raise services.GalleryError("Say which copy to update.")
        folder = form.cleaned_data["folder"]
        if request.POST.get("apply") == "1":
            job = services.queue_update(example=item, user=request.user, folder=folder)
        else:
            job = services.plan_job(example=item, user=request.user, folder=folder)
    except services.GalleryError as exc:
        messages.error(request, str(exc))
        return redirect("example", slug=slug)
    return redirect("job", job_id=job.pk)


@login_required
@require_GET
def job(request: HttpRequest, job_id: str) -> HttpResponse:
    item = get_object_or_404(Job.objects.select_related("revision__example"), pk=job_id)
    if item.user_id != request.user.pk and not services.sees_job(request.user, item):
        raise Http404("There is no such job.")
    if request.headers.get("Accept", "").startswith("application/json"):
        return JsonResponse(item.report(), json_dumps_params={"default": str})
    if item.kind == Job.Kind.UPDATE:
        return render(request, "gallery/update_job.html", {"job": item})
    if item.kind == Job.Kind.ACCEPT:
        return render(request, "gallery/copy_job.html", {
            "job": item, "delivery": Delivery.objects.filter(job=item).select_related(
                "sent__sender").first()})
    return render(request, "gallery/job.html", {"job": item})


@login_required
def stage(request: HttpRequest) -> HttpResponse:
    """Stage a notebook; with ?example=<slug>, a new revision of that example."""
    revising = _revised_example(request)
    form = forms.StageForm(initial=forms.StageForm.initial_for(revising) if revising else None,
                           user=request.user, revising=revising is not None)
    context = {"form": form, "revising": revising}
    if request.method == "POST":
        # An upload over the limit never gets here: inputs.RequestInputMiddleware answers 413.
        form = forms.StageForm(request.POST, request.FILES, user=request.user,
                               revising=revising is not None)
        context["form"] = form
        if form.is_valid():
            try:
                submission = services.stage_submission(
                    contributor=request.user, staged=form.staged_files(),
                    meta=meta_from_input(form.meta()), example_slug=form.cleaned_data["example"])
            except services.GalleryError as exc:
                form.add_error(None, str(exc))
                return render(request, "gallery/stage.html", context, status=exc.status)
            messages.success(request, "Staged. The checks and the preview are being prepared.")
            return redirect("submission", pk=submission.pk)
        return render(request, "gallery/stage.html", context, status=400)
    return render(request, "gallery/stage.html", context)


def _revised_example(request: HttpRequest) -> Example | None:
    """The example a new revision is for: one the person sees and may revise (the form is
    filled from its latest revision, which may be one still in review or refused)."""
    slug = request.GET.get("example") or request.POST.get("example") or ""
    if not slug:
        return None
    item = Example.objects.visible_to(request.user).filter(slug=slug[:80]).select_related(
        "current_revision").first()
    if item is None:
        raise Http404("There is no such example to revise.")
    if not item.revisable_by(request.user):
        raise PermissionDenied("Only its contributor or a reviewer may revise this example.")
    return item


@login_required
@require_GET
def my_submissions(request: HttpRequest) -> HttpResponse:
    """A contributor's submissions: state, checks, reviewers' comments, what to do next."""
    mine = Submission.objects.filter(contributor=request.user).seen_by(
        request.user).select_related("example", "revision").prefetch_related("reviews__reviewer")
    page = Paginator(mine, 50).get_page(request.GET.get("page"))
    return render(request, "gallery/my_submissions.html", {"page": page})


@login_required
def notifications(request: HttpRequest) -> HttpResponse:
    """What happened to a person's submissions and to the examples they use; POST marks read."""
    if request.method == "POST":
        count = services.mark_notifications_read(user=request.user)
        messages.success(request, f"{count} notification{'s' if count != 1 else ''} marked read.")
        return redirect("notifications")
    mine = Notification.objects.filter(user=request.user).seen_by(request.user).select_related(
        "example", "submission")
    page = Paginator(mine, 50).get_page(request.GET.get("page"))
    return render(request, "gallery/notifications.html", {"page": page})


def nav(request: HttpRequest) -> dict[str, Any]:
    """Template context of every page: the links of the header, and the unread count (read
    with the page where the view did, else asked only when a page shows it)."""
    context: dict[str, Any] = {"nav": nav_links(get_script_prefix())}
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return context
    unread = getattr(request, "unread_notifications", None)
    context["unread_notifications"] = SimpleLazyObject(
        lambda: caching.unread_count(user)) if unread is None else unread
    return context


@functools.cache
def nav_links(prefix: str) -> dict[str, str]:
    """The header's links under a script prefix: the same on every page, so reversed once."""
    return {"index": reverse("index"), "stage": reverse("stage"),
            "my_submissions": reverse("my-submissions"), "notifications": reverse("notifications"),
            "copies": reverse("copies"),
            "desk": reverse("admin:gallery_submission_changelist"),
            "css": static("gallery/gallery.css")}


@login_required
@require_GET
def submission(request: HttpRequest, pk: int) -> HttpResponse:
    item = get_object_or_404(Submission.objects.seen_by(request.user).select_related(
        "example", "revision"), pk=pk)
    return render(request, "gallery/submission.html", {
        "submission": item,
        "preview_url": example_preview_url(item.example, revision_preview_key(item.revision)),
        "reviews": item.reviews.select_related("reviewer"),
        "last_run": item.revision.runs.exclude(kind=Run.Kind.CANDIDATE).first(),
    })


@login_required
@require_POST
def rerun(request: HttpRequest, slug: str) -> HttpResponse:
    """Run an example's revision again (its contributor and the reviewers)."""
    item = get_object_or_404(Example.objects.visible_to(request.user), slug=slug)
    revision = get_object_or_404(item.revisions, number=request.POST.get("revision") or (
        item.latest_revision.number if item.latest_revision else 0))
    try:
        services.rerun(revision=revision, user=request.user)
    except services.NotAllowed as exc:
        raise PermissionDenied(str(exc)) from None
    messages.info(request, f"Version {revision.number} will run again in a moment.")
    submission = getattr(revision, "submission", None)
    if submission is not None and not revision.approved:
        return redirect("submission", pk=submission.pk)
    return redirect(reverse("example", args=[slug]) + "#h-run")


@login_required
@require_POST
def audience(request: HttpRequest, slug: str) -> HttpResponse:
    """Change who sees an example (`services.set_audience` says who may, and how)."""
    get_object_or_404(Example.objects.visible_to(request.user), slug=slug)
    try:
        item = services.set_audience(example_slug=slug, groups=request.POST.getlist("groups"),
                                     actor=request.user)
    except services.NotAllowed as exc:
        raise PermissionDenied(str(exc)) from None
    except services.GalleryError as exc:
        messages.error(request, str(exc))
        return redirect(reverse("example", args=[slug]) + "#h-audience")
    if not item.is_visible_to(request.user):  # they narrowed it past themselves
        messages.info(request, f"\u201c{item.title}\u201d is now for "
                               f"{', '.join(item.group_names())} only.")
        return redirect("index")
    names = item.group_names()
    messages.info(request, "Everyone sees it now." if not names
                  else f"Only members of {', '.join(names)} see it now.")
    return redirect(reverse("example", args=[slug]) + "#h-audience")


@login_required
@require_POST
def review(request: HttpRequest, pk: int) -> HttpResponse:
    """A reviewer's decision from the submission page (the admin offers the same)."""
    if not (services.is_reviewer(request.user) or services.reviews_a_group(request.user)):
        raise PermissionDenied("Only reviewers decide on submissions.")
    item = get_object_or_404(Submission.objects.seen_by(request.user), pk=pk)
    if not services.may_review(request.user, item.example):  # a project reviewer's own
        raise PermissionDenied("Only reviewers decide on submissions.")
    form = forms.ReviewForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a decision.")
        return redirect("submission", pk=pk)
    action = {"approve": services.approve_submission,
              "request_changes": services.request_changes,
              "reject": services.reject_submission}[form.cleaned_data["decision"]]
    try:
        action(submission=item, reviewer=request.user, comment=form.cleaned_data["comment"])
    except (services.GalleryError, IllegalTransition) as exc:
        messages.error(request, str(exc))
    return redirect("submission", pk=pk)


@require_GET
def preview(request: HttpRequest, sha256: str) -> HttpResponse:
    """A rendered preview: an immutable file, inert, sandboxed by its own headers.

    Nothing is rendered here: a preview that is not ready yet answers with a small page
    saying why (still being prepared, or the reason it could not be made).
    """
    try:
        response: HttpResponse = FileResponse(services.preview_path(sha256).open("rb"),
                                              content_type="text/html; charset=utf-8")
        response["Cache-Control"] = "public, max-age=31536000, immutable"
    except FileNotFoundError:
        from .models import Preview

        state = Preview.objects.filter(sha256=sha256).values_list("state", "error").first()
        message = ("There is no preview with this hash." if state is None
                   else state[1] or "The preview could not be made."
                   if state[0] == Preview.State.FAILED else "The preview is being prepared.")
        response = HttpResponse(PREVIEW_STATUS_PAGE.format(message=escape(message)), status=404,
                                content_type="text/html; charset=utf-8")
        response["Cache-Control"] = "no-store"
    return _preview_headers(response)


@require_GET
def group_preview(request: HttpRequest, slug: str, sha256: str) -> HttpResponse:
    """The preview of a group's example, only to those who see the example: by their
    session, or through an address signed for one of them (`previews.links`, for a page that
    frames it without the gallery's session) while that person still sees it. Anyone else,
    and any changed, expired or misdirected signature, gets the same 404 as an address that
    names nothing."""
    token = request.GET.get(previews.links.PARAMETER, "")
    item = Example.objects.visible_to(request.user).filter(slug=slug).first()
    if item is None and token:
        item = previews.links.example_of_link(token, slug=slug, sha256=sha256)
    if item is None and not token and not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if item is None or sha256 not in services.example_preview_keys(item):
        raise Http404("There is no such preview.")
    for private in (True, False):
        path = services.preview_path(sha256, private=private)
        if path.is_file():
            response: HttpResponse = FileResponse(path.open("rb"),
                                                  content_type="text/html; charset=utf-8")
            # A signed address is for one person, for minutes: nothing keeps its answer.
            response["Cache-Control"] = "private, no-store" if token else "private, max-age=3600"
            return _preview_headers(response)
    response = HttpResponse(PREVIEW_STATUS_PAGE.format(message="The preview is being prepared."),
                            status=404, content_type="text/html; charset=utf-8")
    response["Cache-Control"] = "no-store"
    return _preview_headers(response)


PREVIEW_STATUS_PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>Preview</title></head><body><p role="status">{message}</p></body></html>
"""


@require_GET
def preview_css(request: HttpRequest, name: str) -> HttpResponse:
    """The stylesheet every preview shares: one file, named by its hash, cached for good."""
    path = Path(settings.GALLERY_PREVIEW_DIR) / name
    if not path.is_file():
        if name != previews.preview_css_name():
            raise Http404("No such stylesheet.")
        path = previews.write_preview_css(Path(settings.GALLERY_PREVIEW_DIR))
    response = FileResponse(path.open("rb"))
    # Loaded by sandboxed (opaque-origin) documents, which count as cross-origin.
    for name, value in CSS_HEADERS:
        response[name] = value
    return response


def preview_headers() -> dict[str, str]:
    """The headers of every preview response: no script, nothing remote, a sandbox."""
    return dict(_preview_header_items(settings.GALLERY_PREVIEW_FRAME_ANCESTORS))


@functools.lru_cache(maxsize=8)
def _preview_header_items(ancestors: str) -> tuple[tuple[str, str], ...]:
    headers = {
        "Content-Security-Policy": PREVIEW_CSP.format(ancestors=ancestors),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), usb=(), payment=(), "
                              "clipboard-write=(), fullscreen=()",
    }
    if ancestors.strip() == "'self'":
        headers["X-Frame-Options"] = "SAMEORIGIN"
        headers["Cross-Origin-Resource-Policy"] = "same-site"
    else:  # framed by the gallery's own origin: CSP frame-ancestors says which one
        headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return tuple(headers.items())


def _preview_headers(response: HttpResponse) -> HttpResponse:
    for name, value in preview_headers().items():
        response[name] = value
    if "X-Frame-Options" not in response:
        response.xframe_options_exempt = True  # type: ignore[attr-defined]
    return response


CSS_HEADERS = [("Content-Type", "text/css; charset=utf-8"),
               ("Cache-Control", "public, max-age=31536000, immutable"),
               ("X-Content-Type-Options", "nosniff"),
               ("Cross-Origin-Resource-Policy", "cross-origin")]
_PREVIEW_FILE = re.compile(r"/previews/(?:[0-9a-f]{64}\.html|preview-[0-9a-f]{12}\.css)")


class PreviewFiles:
    """WSGI: rendered previews and their stylesheet straight from disk, ahead of Django.

    They are immutable files that every viewer of an example fetches; this answers them in a
    fraction of a Django request, with the same headers as `preview` and `preview_css`, the
    gzip twin to clients that accept it, and small files from memory once read.
    Anything else, and a preview that is not there yet (the view then says why), goes on to
    the gallery. gallery/wsgi.py puts it in front of the application.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD")
        if not (path.startswith("/previews/") and method in ("GET", "HEAD")
                and _PREVIEW_FILE.fullmatch(path)):
            return self.app(environ, start_response)
        found = _preview_file(os.path.join(settings.GALLERY_PREVIEW_DIR, path[len("/previews/"):]),
                              gzip=accepts_gzip(environ.get("HTTP_ACCEPT_ENCODING", "")))
        if found is None:
            return self.app(environ, start_response)
        body, encoding = found
        if path.endswith(".css"):
            headers = list(CSS_HEADERS)
        else:
            headers = [("Content-Type", "text/html; charset=utf-8"),
                       ("Cache-Control", "public, max-age=31536000, immutable"),
                       *_preview_header_items(settings.GALLERY_PREVIEW_FRAME_ANCESTORS)]
        size = len(body) if isinstance(body, bytes) else os.fstat(body.fileno()).st_size
        start_response("200 OK", [*headers, *encoding, ("Vary", "Accept-Encoding"),
                                  ("Content-Length", str(size))])
        if isinstance(body, bytes):
            return [] if method == "HEAD" else [body]
        if method == "HEAD":
            body.close()
            return []
        wrapper = environ.get("wsgi.file_wrapper")
        return wrapper(body, 1 << 16) if wrapper else _chunks(body)


SMALL_PREVIEW_FILE = 64 * 1024  # most previews gzip to a few kB; larger ones are sent from disk


@functools.lru_cache(maxsize=512)
def _small_file(path: str) -> bytes | None:
    """A small preview file's bytes, read once per process: previews are named by their
    content and never change. None for a larger one. Raises OSError when there is none."""
    with open(path, "rb") as fh:
        return fh.read() if os.fstat(fh.fileno()).st_size <= SMALL_PREVIEW_FILE else None


def _preview_file(path: str, *, gzip: bool) -> tuple[Any, list[tuple[str, str]]] | None:
    """The gzip twin (when taken) or the file itself, as bytes or an open file, with its
    Content-Encoding header; None when neither is there."""
    twins = [(path + ".gz", [("Content-Encoding", "gzip")])] if gzip else []
    for name, encoding in [*twins, (path, [])]:
        with contextlib.suppress(OSError):
            return _small_file(name) or open(name, "rb"), encoding
    return None


@functools.lru_cache(maxsize=64)  # browsers send a handful of different headers
def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header takes gzip: named, or `*`, with a weight above 0."""
    weights = {}
    for item in header.lower().split(","):
        name, _, params = item.partition(";")
        params = params.strip()
        try:
            weights[name.strip()] = float(params[2:]) if params.startswith("q=") else 1.0
        except ValueError:
            weights[name.strip()] = 0.0
    return weights.get("gzip", weights.get("*", 0.0)) > 0


def _chunks(fh: Any) -> Any:
    with fh:
        while chunk := fh.read(1 << 16):
            yield chunk


@never_cache
@require_GET
def health(request: HttpRequest) -> HttpResponse:
    """Cheap liveness for the hub's poll: no database, no broker, never a 5xx."""
    return JsonResponse({"status": "ok"})


# --- operations -----------------------------------------------------------------------------


def _is_staff(request: HttpRequest) -> bool:
    from django.db import DatabaseError

    try:
        return bool(request.user.is_active and request.user.is_staff)
    except DatabaseError:  # the login cannot be checked; the token still works
        return False


@never_cache
@require_GET
def health_detail(request: HttpRequest) -> HttpResponse:
    """Database, broker, workers, repository, jobs and disk, each with a plain status.

    For staff and for operators with the metrics token; always 200 (or 403), even when a part
    is down: the body says what is wrong.
    """
    from . import metrics

    if not (metrics.operator_allowed(request) or _is_staff(request)):
        return JsonResponse({"error": "Staff only: log in as staff, or send "
                                      "'Authorization: Bearer <GALLERY_METRICS_TOKEN>'."},
                            status=403)
    return JsonResponse(metrics.health_report(), json_dumps_params={"default": str})


@never_cache
@require_GET
def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics, for a caller with the metrics token or from an allowed network."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from . import metrics

    if not metrics.operator_allowed(request):
        return JsonResponse({"error": "Send 'Authorization: Bearer <GALLERY_METRICS_TOKEN>', or "
                                      "scrape from GALLERY_METRICS_ALLOWED_NETWORKS."},
                            status=403)
    return HttpResponse(metrics.exposition(), content_type=CONTENT_TYPE_LATEST)


# --- copies sent between people (services/copies.py) ----------------------------------------
# Only its sender sees a sent copy, only its recipient an offer; to anyone else their
# addresses are the 404 of an address that names nothing.


@login_required
def send_copy(request: HttpRequest) -> HttpResponse:
    """Send a copy of a notebook (or of a folder: the notebook and its files) to people or to
    groups of the sender's."""
    form = forms.SendForm(user=request.user)
    status = 200
    if request.method == "POST":
        form = forms.SendForm(request.POST, request.FILES, user=request.user)
        status = 400
        if form.is_valid():
            try:
                sent = services.send_copy(sender=request.user, **form.arguments())
            except services.GalleryError as exc:
                form.add_error(None, str(exc))
                response = render(request, "gallery/send.html", {"form": form},
                                  status=exc.status)
                if isinstance(exc, services.TooManyRequests):
                    response["Retry-After"] = str(exc.retry_after)
                return response
            count = sent.deliveries.count()
            text = f"Sent to {count} {'person' if count == 1 else 'people'}."
            if sent.not_delivered:
                text += (f" Not delivered to {sent.not_delivered} member(s) of the group: "
                         "they take no copies.")
            messages.success(request, text)
            return redirect(reverse("sent-copies") + f"#sent-{sent.pk}")
    return render(request, "gallery/send.html", {"form": form}, status=status)


@login_required
@require_GET
def copies(request: HttpRequest) -> HttpResponse:
    """Copies sent to me: accept or decline each; and whether I take copies at all."""
    offers = Delivery.objects.filter(recipient=request.user).select_related(
        "sent__sender", "job")
    page = Paginator(offers, 50).get_page(request.GET.get("page"))
    return render(request, "gallery/copies.html", {
        "page": page, "refuse_all": services.refuses_all(request.user),
        "use_dir": f"~/{settings.GALLERY_USE_DIR}"})


@login_required
@require_GET
def copy_offer(request: HttpRequest, delivery_id: str) -> HttpResponse:
    """A copy sent to me: what it holds, from whom, and accept (into which folder) or decline."""
    offer = _offer(request, delivery_id)
    return render(request, "gallery/copy.html", {
        "offer": offer, "plan": services.accept_plan(delivery=offer),
        "use_form": forms.UseForm(initial={"folder": offer.sent.name})})


def _offer(request: HttpRequest, delivery_id: str) -> Delivery:
    try:
        return services.delivery_for(request.user, delivery_id)
    except services.NotFound:
        raise Http404("There is no such copy.") from None


@login_required
@require_POST
def accept_copy(request: HttpRequest, delivery_id: str) -> HttpResponse:
    offer = _offer(request, delivery_id)
    form = forms.UseForm(request.POST)
    try:
        if not form.is_valid():
            raise services.GalleryError("; ".join(e for errs in form.errors.values()
                                                  for e in errs))
        job = services.accept_delivery(delivery=offer, user=request.user,
                                       folder_name=form.cleaned_data["folder"])
    except services.GalleryError as exc:
        messages.error(request, str(exc))
        return redirect("copy", delivery_id=offer.pk)
    return redirect("job", job_id=job.pk)


@login_required
@require_POST
def decline_copy(request: HttpRequest, delivery_id: str) -> HttpResponse:
    offer = _offer(request, delivery_id)
    try:
        services.decline_delivery(delivery=offer, user=request.user)
    except services.GalleryError as exc:
        messages.error(request, str(exc))
        return redirect("copy", delivery_id=offer.pk)
    messages.success(request, f"You declined the copy of \u201c{offer.sent.name}\u201d.")
    return redirect("copies")


@login_required
@require_POST
def copy_settings(request: HttpRequest) -> HttpResponse:
    """Refuse every copy others would send (refuse_all=1), or take them again."""
    refuse = request.POST.get("refuse_all") == "1"
    services.set_refuse_all(user=request.user, refuse=refuse)
    messages.success(request, "Nobody can send you a copy now." if refuse
                     else "People can send you copies again.")
    return redirect("copies")


@login_required
@require_GET
def sent_copies(request: HttpRequest) -> HttpResponse:
    """The copies I sent, with what each recipient did; withdraw those still waiting."""
    mine = SentCopy.objects.filter(sender=request.user).prefetch_related(
        Prefetch("deliveries", queryset=Delivery.objects.select_related(
            "recipient", "group", "sent").order_by("recipient__username")))
    page = Paginator(mine, 20).get_page(request.GET.get("page"))
    return render(request, "gallery/sent_copies.html", {"page": page})


@login_required
@require_POST
def withdraw_copy(request: HttpRequest, sent_id: str) -> HttpResponse:
    try:
        sent = services.sent_by(request.user, sent_id)
    except services.NotFound:
        raise Http404("There is no such copy.") from None
    recipient = request.POST.get("recipient", "")
    try:
        count = services.withdraw_copy(sent=sent, user=request.user, recipient=recipient)
    except services.GalleryError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Withdrawn from {recipient}." if recipient else
                         f"Withdrawn from {count} {'person' if count == 1 else 'people'}.")
    return redirect(reverse("sent-copies") + f"#sent-{sent.pk}")

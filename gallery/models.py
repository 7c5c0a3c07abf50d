"""The domain: examples, their revisions, submissions, reviews, data links and jobs.

State changes happen only in `services.py`; the models hold the rules of one row
(`Submission.can_become`) and the queries of many (`ExampleQuerySet`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone


class IllegalTransition(Exception):
    """A state change the life of an example does not allow."""


@contextmanager
def snapshot() -> Iterator[None]:
    """Reads inside see the database at one moment, as one transaction's snapshot.

    Without it, a page that reads an example and then its revisions may read the example
    before a worker's commit and the revision after it (an approved commit on a staged
    example). PostgreSQL's default isolation gives each statement its own snapshot, so the
    reads share one in REPEATABLE READ; SQLite's read transaction holds writers off until it
    ends. Inside an outer transaction the outer one decides.
    """
    outer = connection.in_atomic_block
    with transaction.atomic():
        if not outer and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        yield


SEARCH_CONFIG = "english"  # the text search configuration of the stored search_vector
REVIEW_PERMISSION = "gallery.review_submission"


def is_reviewer(user: Any) -> bool:
    """The centre's reviewers hold the review permission (from the hub's review scope or
    group): they review every example, of every group. A project's reviewers do not hold it
    (`HubGroup.reviewers`, `may_review`)."""
    return bool(user.is_active and user.has_perm(REVIEW_PERMISSION))


def reviews_a_group(user: Any) -> bool:
    """Whether a person reviews the examples of some group (a project's reviewer)."""
    return bool(user.is_authenticated and user.is_active
                and HubGroup.objects.filter(reviewers=user).exists())


def may_review(user: Any, example: Example) -> bool:
    """The centre's reviewers review every example; a project's reviewers those of their
    group(s)."""
    if not user.is_authenticated:
        return False
    return is_reviewer(user) or (user.is_active
                                 and example.groups.filter(reviewers=user).exists())


# The ids of the groups whose examples a listing shows; None: of every group.
Audience = tuple[int, ...] | None


def search_words(q: str) -> list[str]:
    """The words of a query, at most ten, split at punctuation and underscores as the
    indexed notebook text is (migration 0005), without any query syntax."""
    return re.findall(r"[^\W_]+", q.lower())[:10]


class StoredSearchVector(models.Expression):
    """A tsvector column only PostgreSQL has: `search_vector` (everything, GIN-indexed, see
    migration 0002) or `search_head` (title and summary, for ranking, migration 0004)."""

    def __init__(self, column: str = "search_vector") -> None:
        from django.contrib.postgres.search import SearchVectorField

        super().__init__(output_field=SearchVectorField())
        self.column = column

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        table = connection.ops.quote_name(Example._meta.db_table)
        return f"{table}.{connection.ops.quote_name(self.column)}", []


class ExampleQuerySet(models.QuerySet["Example"]):
    def curated(self) -> ExampleQuerySet:
        return self.filter(state=Example.State.APPROVED, current_revision__isnull=False)

    def staged(self) -> ExampleQuerySet:
        return self.filter(state=Example.State.STAGED)

    def visible(self) -> ExampleQuerySet:
        """What everyone logged in sees: the curated examples and those still under review."""
        return self.filter(state__in=Example.PUBLIC_STATES)

    def visible_to(self, user: Any) -> ExampleQuerySet:
        """The examples a person may see, by the one rule every page and API call follows.

        An example is public or belongs to hub groups; a group's example is for its members
        alone (the hub says who they are: `HubGroup.members`, kept at login and at every
        recheck of the session). Within what their groups allow: curated and staged examples
        are for everyone logged in; a rejected or retired one stays with its contributor; a
        retired one also with those who hold a copy of it, as retiring hides an example from
        new users only. The centre's reviewers see everything; a project's reviewers
        everything of their group.
        """
        if not user.is_authenticated:
            return self.none()
        if is_reviewer(user):
            return self.all()
        in_groups = Example.groups.through.objects.filter(example=models.OuterRef("pk"))
        audience = ~models.Exists(in_groups) | models.Exists(
            in_groups.filter(hubgroup__members=user))
        reviews = models.Exists(in_groups.filter(hubgroup__reviewers=user))
        holds_copy = models.Exists(Job.objects.filter(
            kind=Job.Kind.USE, state=Job.State.DONE, user=user,
            revision__example=models.OuterRef("pk")))
        return self.filter((audience & (
            models.Q(state__in=Example.PUBLIC_STATES) | models.Q(contributor=user)
            | (models.Q(state=Example.State.RETIRED) & holds_copy))) | reviews)

    def for_audience(self, audience: Audience) -> ExampleQuerySet:
        """The public examples and those of the groups in `audience` (None: of every group).
        `audience_of` gives a person's, so that a listing shows what `visible_to` allows."""
        if audience is None:
            return self
        in_groups = Example.groups.through.objects.filter(example=models.OuterRef("pk"))
        return self.filter(~models.Exists(in_groups)
                           | models.Exists(in_groups.filter(hubgroup__in=audience)))

    def reviewable_by(self, user: Any) -> ExampleQuerySet:
        """The examples a person reviews: all for the centre's reviewers, their groups' for a
        project's reviewers, none for anyone else."""
        if not user.is_authenticated or not user.is_active:
            return self.none()
        if is_reviewer(user):
            return self.all()
        return self.filter(pk__in=Example.groups.through.objects.filter(
            hubgroup__reviewers=user).values("example"))

    def tagged(self, tag: str) -> ExampleQuerySet:
        return self.filter(tags__name=tag)

    def search(self, q: str) -> ExampleQuerySet:
        """Full-text search on PostgreSQL; word-by-word substring matching elsewhere.

        On PostgreSQL every word must match, as a prefix (for partial typing), against the
        stored, GIN-indexed `search_vector` (title, summary, tags and notebook text); results
        come by their rank in title and summary, then newest first.
        """
        from django.db import connection

        words = search_words(q)
        if not words:
            return self
        if connection.vendor == "postgresql":
            from django.contrib.postgres.search import SearchQuery, SearchRank

            query = SearchQuery(" & ".join(f"{w}:*" for w in words), search_type="raw",
                                config=SEARCH_CONFIG)
            # Rank by title and summary only: the whole text's vector is large to read.
            return self.alias(vector=StoredSearchVector()).filter(vector=query).annotate(
                rank=SearchRank(StoredSearchVector("search_head"), query)).order_by(
                "-rank", "-updated")
        found = self
        for word in words:
            found = found.filter(
                models.Q(title__icontains=word) | models.Q(summary__icontains=word)
                | models.Q(search_text__icontains=word)
            )
        return found

    def stamp(self) -> tuple[Any, ...]:
        """Changes whenever an example is added or changes state or content (not use counts):
        the key of what pages render once for everyone."""
        found = self.aggregate(last=models.Max("updated"), n=models.Count("pk"),
                               run=models.Max("last_run_id"))
        return (found["last"], found["n"], found["run"])

    def with_latest(self) -> ExampleQuerySet:
        """Fetch the revisions of a page of examples at once (for `latest_revision`)."""
        return self.prefetch_related(models.Prefetch(
            "revisions", to_attr="recent_revisions",
            queryset=Revision.objects.defer("metadata", "files").order_by("-number")))

    def verified(self) -> ExampleQuerySet:
        """Examples whose last run of their current content passed."""
        return self.filter(models.Q(last_run__revision=models.F("current_revision"))
                           | models.Q(current_revision__isnull=True),
                           last_run__state=Run.State.PASSED)

    def broken(self) -> ExampleQuerySet:
        return self.filter(last_run__state=Run.State.FAILED)

    def find(self, *, q: str = "", tag: str = "", state: str = "",
             verified: bool = False, audience: Audience = ()) -> ExampleQuerySet:
        """What the gallery page and the list API show for a query, a tag and a section, to
        the `audience` of a person (`audience_of`; by default the public examples only)."""
        found = {"approved": self.curated(), "staged": self.staged()}.get(state, self.visible())
        found = found.for_audience(audience)
        if tag:
            found = found.tagged(tag)
        if verified:
            found = found.verified()
        # search_text can be 100 kB an example; a page of cards never needs it.
        return found.search(q).select_related(
            "contributor", "current_revision", "last_run").prefetch_related("tags").defer(
            "search_text", "current_revision__metadata", "current_revision__files",
            "last_run__cells", "last_run__error_text", "last_run__differences")


class TagQuerySet(models.QuerySet["Tag"]):
    def popular(self, audience: Audience = ()) -> TagQuerySet:
        """Tags of curated examples an `audience` sees (`audience_of`), the most used first."""
        shown = Example.objects.curated().for_audience(audience).values("pk")
        return self.annotate(uses=models.Count(
            "examples", filter=models.Q(examples__in=shown))).filter(
            uses__gt=0).order_by("-uses", "name")


class HubGroup(models.Model):
    """A hub group as the gallery knows it: the audience of its examples, its members and
    its reviewers, as the hub said when each person last logged in or was rechecked."""

    name = models.CharField(max_length=255, unique=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True,
                                     related_name="hub_groups")
    reviewers = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True,
                                       related_name="reviewed_groups")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def groups_of(user: Any) -> Audience:
    """The ids of the groups a person is a member or a reviewer of, sorted; None for the
    centre's reviewers, who see every group's examples."""
    if not user.is_authenticated:
        return ()
    if user.is_staff and is_reviewer(user):  # the centre's reviewers are staff (grant_review)
        return None
    return tuple(_groups_of(user).values_list("pk", flat=True))


def _groups_of(user: Any) -> models.QuerySet[HubGroup]:
    return HubGroup.objects.filter(models.Q(members=user) | models.Q(reviewers=user)).order_by(
        "pk").distinct()


def audience_choices(user: Any) -> list[str]:
    """The names of the hub groups a person may show a new example to: those they are a
    member or a project reviewer of (what staging accepts of them), sorted."""
    if not user.is_authenticated:
        return []
    return list(_groups_of(user).order_by("name").values_list("name", flat=True))


def groups_with_examples() -> frozenset[int]:
    """The ids of the groups that have examples: the only ones a listing can differ by."""
    return frozenset(Example.groups.through.objects.values_list("hubgroup", flat=True))


def audience_of(user: Any) -> Audience:
    """The groups whose examples a person's listings show (as `visible_to` allows): the
    groups they are a member or a reviewer of, among those that have examples; None for the
    centre's reviewers, who see all. Sorted, so it can name a cached page."""
    if not user.is_authenticated:
        return ()
    if user.is_staff and is_reviewer(user):
        return None
    return tuple(_groups_of(user).filter(pk__in=Example.groups.through.objects.values(
        "hubgroup")).values_list("pk", flat=True))


def narrow_audience(groups: Audience, with_examples: frozenset[int]) -> Audience:
    return None if groups is None else tuple(g for g in groups if g in with_examples)


class Tag(models.Model):
    name = models.SlugField(max_length=50, unique=True)

    objects = TagQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Example(models.Model):
    """One example of the gallery, as users see it; its content lives in revisions."""

    class State(models.TextChoices):
        STAGED = "staged", "staged"  # submitted, never approved yet
        APPROVED = "approved", "approved"  # published (a commit in the repository)
        REJECTED = "rejected", "rejected"  # first submission refused
        RETIRED = "retired", "retired"  # hidden from new users; copies keep working

    slug = models.SlugField(max_length=80, unique=True)
    title = models.CharField(max_length=200)
    summary = models.TextField(blank=True)
    tags = models.ManyToManyField(Tag, blank=True, related_name="examples")
    # None: public. Else only the members of these hub groups see it (`visible_to`).
    groups = models.ManyToManyField("HubGroup", blank=True, related_name="examples")
    state = models.CharField(max_length=20, choices=State.choices, default=State.STAGED)
    contributor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="examples"
    )
    current_revision = models.ForeignKey(
        "Revision", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    use_count = models.PositiveIntegerField(default=0)
    # The last finished run of its current content (what its page and card say: verified or
    # broken), and since when that verdict holds (the first run of the current streak).
    last_run = models.ForeignKey("Run", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+")
    verdict_since = models.DateTimeField(null=True, blank=True)
    # Title, tags and the notebook's text, for full-text search.
    search_text = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(default=timezone.now)

    PUBLIC_STATES = (State.APPROVED, State.STAGED)  # seen by everyone logged in

    objects = ExampleQuerySet.as_manager()

    class Meta:
        ordering = ["-updated"]
        # The gallery page: one section per state, newest first.
        indexes = [models.Index(fields=["state", "-updated"], name="example_state_updated")]

    def __str__(self) -> str:
        return self.slug

    def is_visible_to(self, user: Any) -> bool:
        """Whether a person may see this example (`ExampleQuerySet.visible_to`)."""
        return Example.objects.visible_to(user).filter(pk=self.pk).exists()

    def revisable_by(self, user: Any) -> bool:
        """Its contributor and its reviewers send new revisions of an example."""
        return self.contributor_id == user.pk or may_review(user, self)

    def group_names(self) -> list[str]:
        """The hub groups it belongs to (empty: public); prefetched by `find`."""
        return sorted(g.name for g in self.groups.all())

    @property
    def is_public(self) -> bool:
        return not self.group_names()

    def run_badge(self) -> str:
        """"Verified <date> in <environment>" or "Broken since <date>: cell N, Error …"."""
        run = self.last_run
        if run is None or self.verdict_since is None:
            return ""
        if self.current_revision_id and run.revision_id != self.current_revision_id:
            return ""  # a newer version is published and has not run yet
        if run.state == Run.State.PASSED:
            return f"Verified {run.finished or run.queued:%Y-%m-%d} in {run.kernel}"
        if run.state == Run.State.FAILED:
            main = self.current_revision.notebook_name if self.current_revision else ""
            return f"Broken since {self.verdict_since:%Y-%m-%d}: {run.where_it_failed(main)}"
        return ""

    @property
    def latest_revision(self) -> Revision | None:
        prefetched = getattr(self, "recent_revisions", None)  # ExampleQuerySet.with_latest
        if prefetched is not None:
            return prefetched[0] if prefetched else None
        return self.revisions.order_by("-number").first()


class Revision(models.Model):
    """A version of an example's folder, identified by the hash of its content."""

    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    content_hash = models.CharField(max_length=64)  # sha256 over the whole folder
    notebook_sha256 = models.CharField(max_length=64)  # part of its preview's key
    notebook_name = models.CharField(max_length=200)
    metadata = models.JSONField(default=dict)  # example.toml as a dict
    files = models.JSONField(default=list)  # [{"path": ..., "size": ..., "sha256": ...}]
    git_commit = models.CharField(max_length=40, blank=True)
    created = models.DateTimeField(default=timezone.now)
    # What its environment spec resolved to (one `name==version` a line), kept so that every
    # later build of this revision installs the same packages; and the environment built.
    environment_lock = models.TextField(blank=True)
    environment = models.ForeignKey("Environment", null=True, blank=True,
                                    on_delete=models.SET_NULL, related_name="revisions")

    class Meta:
        ordering = ["example", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["example", "number"], name="one_number_per_revision")
        ]

    def __str__(self) -> str:
        return f"{self.example.slug} v{self.number}"

    @property
    def approved(self) -> bool:
        return bool(self.git_commit)

    def changes_from(self, previous: Revision | None) -> dict[str, Any]:
        """What changed since an earlier revision: files added, removed and changed."""
        if previous is None:
            return {"first": True, "added": [], "removed": [], "changed": []}
        before = {f["path"]: f["size"] for f in previous.files}
        after = {f["path"]: f["size"] for f in self.files}
        changed = sorted(p for p in after.keys() & before.keys() if after[p] != before[p])
        if (self.notebook_name == previous.notebook_name and self.notebook_name not in changed
                and self.notebook_sha256 != previous.notebook_sha256):
            changed.append(self.notebook_name)
        return {"first": False, "added": sorted(after.keys() - before.keys()),
                "removed": sorted(before.keys() - after.keys()), "changed": changed}


class Environment(models.Model):
    """One environment in the store, shared by every revision whose lock resolves to it:
    built once, by one job, for everyone. A spec that could not be locked has a row keyed by
    the spec itself, so its revisions show why."""

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        BUILDING = "building", "building"
        READY = "ready", "ready"
        FAILED = "failed", "failed"
        CANNOT_BUILD = "cannot_build", "cannot build"

    key = models.CharField(max_length=80, unique=True)
    lock = models.TextField(blank=True)
    python = models.CharField(max_length=40, blank=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.QUEUED)
    path = models.CharField(max_length=500, blank=True)
    log = models.TextField(blank=True)  # the last lines of uv's output when it failed
    reason = models.TextField(blank=True)  # why it failed, in plain words
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(default=timezone.now)
    # When an approved example's current revision was last seen using it (built, or found so
    # by `remove_unused_environments`); unused ones are removed after GALLERY_ENV_KEEP_DAYS.
    last_used = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"environment {self.key[:12]} ({self.state})"

    def status_text(self) -> str:
        """Where the environment stands, in plain words for the example's page."""
        return {
            self.State.QUEUED: "Its environment is waiting to be built.",
            self.State.BUILDING: "Its environment is being built.",
            self.State.READY: f"Its environment is built and ready (Python {self.python}).",
            self.State.FAILED: f"Its environment could not be built: {self.reason}",
            self.State.CANNOT_BUILD: f"The gallery cannot build its environment: {self.reason}",
        }[self.State(self.state)]


class DataLink(models.Model):
    """Data an example points at without carrying it: a shared path or a URL/DOI."""

    revision = models.ForeignKey(Revision, on_delete=models.CASCADE, related_name="data_links")
    name = models.CharField(max_length=100)
    target = models.CharField(max_length=2000)
    description = models.TextField(blank=True)
    size = models.BigIntegerField(null=True, blank=True)
    checksum = models.CharField(max_length=200, blank=True)
    licence = models.CharField(max_length=100, blank=True)

    def __str__(self) -> str:
        return self.name

    @property
    def is_path(self) -> bool:
        return self.target.startswith("/")


class SubmissionQuerySet(models.QuerySet["Submission"]):
    def seen_by(self, user: Any) -> SubmissionQuerySet:
        """The submissions a person may read: their own, of examples they still see, and
        those they review (`ExampleQuerySet.reviewable_by`)."""
        if not user.is_authenticated:
            return self.none()
        if is_reviewer(user):
            return self.all()
        return self.filter(
            (models.Q(contributor=user) & models.Q(example__in=Example.objects.visible_to(user)))
            | models.Q(example__in=Example.objects.reviewable_by(user)))


class Submission(models.Model):
    """A contributor's request to publish a revision, and its way through review."""

    class State(models.TextChoices):
        STAGED = "staged", "staged"
        IN_REVIEW = "in_review", "in review"
        APPROVED = "approved", "approved"
        CHANGES_REQUESTED = "changes_requested", "changes requested"
        REJECTED = "rejected", "rejected"
        WITHDRAWN = "withdrawn", "withdrawn"

    TRANSITIONS: dict[str, set[str]] = {
        State.STAGED: {State.IN_REVIEW, State.APPROVED, State.CHANGES_REQUESTED,
                       State.REJECTED, State.WITHDRAWN},
        State.IN_REVIEW: {State.APPROVED, State.CHANGES_REQUESTED, State.REJECTED,
                          State.WITHDRAWN},
        State.CHANGES_REQUESTED: {State.WITHDRAWN},
        State.APPROVED: set(),
        State.REJECTED: set(),
        State.WITHDRAWN: set(),
    }

    class ChecksState(models.TextChoices):
        PENDING = "pending", "pending"
        DONE = "done", "done"
        FAILED = "failed", "failed"

    class Meta:
        ordering = ["-created"]
        permissions = [("review_submission", "Can approve, reject or request changes")]

    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="submissions")
    revision = models.OneToOneField(Revision, on_delete=models.CASCADE, related_name="submission")
    contributor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="submissions"
    )
    state = models.CharField(max_length=20, choices=State.choices, default=State.STAGED)
    checks_state = models.CharField(
        max_length=10, choices=ChecksState.choices, default=ChecksState.PENDING
    )
    checks = models.JSONField(default=list)  # [{"name", "status": pass|warn|fail, "message"}]
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(default=timezone.now)

    objects = SubmissionQuerySet.as_manager()

    def __str__(self) -> str:
        return f"submission {self.pk} ({self.example.slug})"

    def can_become(self, state: str) -> bool:
        return state in self.TRANSITIONS.get(self.state, set())

    @property
    def waiting_since(self) -> timezone.datetime:
        return self.created

    @property
    def failed_checks(self) -> list[dict[str, str]]:
        return [c for c in self.checks if c.get("status") == "fail"]


class Review(models.Model):
    """A reviewer's decision on a submission."""

    class Decision(models.TextChoices):
        APPROVE = "approve", "approve"
        REQUEST_CHANGES = "request_changes", "request changes"
        REJECT = "reject", "reject"

    submission = models.ForeignKey(Submission, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT)
    decision = models.CharField(max_length=20, choices=Decision.choices)
    comment = models.TextField(blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.decision} by {self.reviewer}"


class StateChange(models.Model):
    """The record of every transition: what changed, from what to what, who, when, why."""

    example = models.ForeignKey(Example, on_delete=models.CASCADE, related_name="history")
    submission = models.ForeignKey(
        Submission, null=True, blank=True, on_delete=models.CASCADE, related_name="history"
    )
    subject = models.CharField(max_length=20)  # "example" or "submission"
    from_state = models.CharField(max_length=20, blank=True)
    to_state = models.CharField(max_length=20)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    reason = models.TextField(blank=True)
    at = models.DateTimeField(default=timezone.now)

    # A reviewer's words on a refused or returned revision are for its contributor and the
    # reviewers, as the submission is; the example's page tells others only that it happened.
    PRIVATE_REASONS = frozenset({Submission.State.REJECTED, Submission.State.CHANGES_REQUESTED})

    class Meta:
        ordering = ["at", "pk"]

    def __str__(self) -> str:
        return f"{self.subject} {self.from_state or '-'} -> {self.to_state}"

    @property
    def public_reason(self) -> str:
        """The reason as anyone who may see the example may read it."""
        return "" if self.to_state in self.PRIVATE_REASONS else self.reason


class JobQuerySet(models.QuerySet):
    def stale(self) -> JobQuerySet:
        """Jobs the broker may have lost: queued a while ago, or running past their lease.

        A job the sweep rang recently is left alone for another GALLERY_REQUEUE_AFTER, so a
        long queue during a burst is not flooded with repeats of the jobs still waiting in it.
        """
        now = timezone.now()
        requeue_before = now - timedelta(seconds=settings.GALLERY_REQUEUE_AFTER)
        not_rung_lately = models.Q(rung_at__isnull=True) | models.Q(rung_at__lt=requeue_before)
        return self.filter(
            (models.Q(state=Job.State.QUEUED, queued_at__lt=requeue_before)
             | models.Q(state=Job.State.RUNNING, lease_until__lt=now)) & not_rung_lately
        )


class Job(models.Model):
    """Slow or privileged work; the row is the truth, the broker only a doorbell."""

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"

    class Kind(models.TextChoices):
        CHECKS = "checks", "checks"
        PREVIEW = "preview", "preview"
        COMMIT = "commit", "commit"
        USE = "use", "use"
        ENVIRONMENT = "environment", "environment"
        UPDATE = "update", "update"
        RUN = "run", "run"
        ACCEPT = "accept", "accept a copy"  # a copy someone sent, written into the home

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    submission = models.ForeignKey(
        Submission, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    revision = models.ForeignKey(
        Revision, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    params = models.JSONField(default=dict)
    result = models.JSONField(default=dict)
    message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    queued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # When the sweep last asked the broker to deliver it again (queued_at stays the click).
    rung_at = models.DateTimeField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-queued_at"]
        indexes = [models.Index(fields=["state", "queued_at"])]

    def __str__(self) -> str:
        return f"{self.kind} job {self.pk} ({self.state})"

    @property
    def finished(self) -> bool:
        return self.state in (self.State.DONE, self.State.FAILED)

    def report(self) -> dict[str, Any]:
        """What the API and the job's page say of it: state, where the copy is, what went wrong."""
        return {
            "id": self.pk, "kind": self.kind, "state": self.state, "message": self.message,
            "target": self.result.get("path"), "open_url": self.result.get("lab_url"),
            "result": self.result, "queued_at": self.queued_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


class RunQuerySet(models.QuerySet["Run"]):
    def verdicts(self) -> RunQuerySet:
        """Finished runs that count for an example's badge (not a candidate stack's)."""
        return self.filter(state__in=Run.VERDICTS).exclude(kind=Run.Kind.CANDIDATE)


class Run(models.Model):
    """One run of a revision's notebooks top to bottom: where, as whom, in what kernel, and
    what came of it (per cell times, the first failing cell and its error)."""

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        PASSED = "passed", "passed"
        FAILED = "failed", "failed"
        NOT_RUN = "not_run", "not run"  # could not be made here (no runner account, …)

    class Kind(models.TextChoices):
        STAGING = "staging", "staging"  # a submission, as its contributor
        SCHEDULED = "scheduled", "scheduled"  # an approved example, as the runner
        CANDIDATE = "candidate", "candidate"  # against a candidate software stack

    VERDICTS = (State.PASSED, State.FAILED)

    revision = models.ForeignKey(Revision, on_delete=models.CASCADE, related_name="runs")
    job = models.OneToOneField(Job, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="run")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                     on_delete=models.SET_NULL, related_name="+")
    # A candidate stack: the kernel name or python path, and the batch of one check.
    candidate = models.CharField(max_length=500, blank=True)
    batch = models.CharField(max_length=40, blank=True, db_index=True)
    account = models.CharField(max_length=100, blank=True)
    sandboxed = models.BooleanField(default=False)
    kernel = models.CharField(max_length=500, blank=True)  # what it ran in, for people
    environment = models.ForeignKey(Environment, null=True, blank=True,
                                    on_delete=models.SET_NULL, related_name="runs")
    environment_key = models.CharField(max_length=80, blank=True)
    queued = models.DateTimeField(default=timezone.now)
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    seconds = models.FloatField(null=True, blank=True)
    cells = models.JSONField(default=list)  # [{"notebook", "cell", "seconds"}]
    failed_notebook = models.CharField(max_length=200, blank=True)
    failed_cell = models.IntegerField(null=True, blank=True)  # index in its notebook
    error_name = models.CharField(max_length=200, blank=True)
    error_text = models.TextField(blank=True)
    reason = models.TextField(blank=True)  # one line for people
    differences = models.JSONField(default=list)  # [{"notebook", "cell"}]: outputs changed
    # A main notebook saved without outputs is previewed with this run's: the sha256 of its
    # executed copy (the key of that preview), set when the run passed.
    outputs_sha256 = models.CharField(max_length=64, blank=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-queued", "-pk"]
        indexes = [models.Index(fields=["revision", "-queued"], name="run_revision_queued"),
                   models.Index(fields=["state", "finished"], name="run_state_finished")]

    def __str__(self) -> str:
        return f"{self.kind} run {self.pk} of {self.revision_id} ({self.state})"

    @property
    def finished_state(self) -> bool:
        return self.state in (*self.VERDICTS, self.State.NOT_RUN)

    def where_it_failed(self, main: str = "") -> str:
        """"cell 7, ModuleNotFoundError …" (or the reason when no cell is to blame); the
        notebook is named unless it is `main`."""
        if self.failed_cell is None:
            return self.reason
        head = f"cell {self.failed_cell + 1}"
        if self.failed_notebook and self.failed_notebook != main:
            head += f" of {self.failed_notebook}"
        _, found, first = self.reason.partition(f": {self.error_name}: ")
        first = first.split(" — ", 1)[0]  # without the hint the run's page gives
        if len(first) > 100:
            first = first[:99] + "…"
        return f"{head}, {self.error_name}" + (f": {first}" if found else "")


class Preview(models.Model):
    """The rendered, sanitised HTML of one notebook beside its files, keyed by
    `previews.revision_preview_key` (a sha256)."""

    class State(models.TextChoices):
        PENDING = "pending", "pending"
        READY = "ready", "ready"
        FAILED = "failed", "failed"

    sha256 = models.CharField(max_length=64, primary_key=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    error = models.TextField(blank=True)
    size = models.PositiveIntegerField(default=0)
    render_ms = models.PositiveIntegerField(default=0)
    rendered_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.sha256


class NotificationQuerySet(models.QuerySet["Notification"]):
    def unread(self) -> NotificationQuerySet:
        return self.filter(read_at__isnull=True)

    def seen_by(self, user: Any) -> NotificationQuerySet:
        """Those whose example the person still sees: a member removed from a group keeps no
        news of its examples."""
        return self.filter(models.Q(example__isnull=True)
                           | models.Q(example__in=Example.objects.visible_to(user)))


class Notification(models.Model):
    """Something a person should hear about: a decision on their submission, a comment, a
    publication, a retirement, a newer version of an example they used."""

    class Kind(models.TextChoices):
        REVIEW = "review", "review"
        PUBLISHED = "published", "published"
        RETIRED = "retired", "retired"
        RESTORED = "restored", "restored"
        UPDATED = "updated", "newer version"
        IMPORTED = "imported", "imported"
        RUN = "run", "run result"
        COPY = "copy", "copy sent to you"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                             related_name="notifications")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    example = models.ForeignKey(Example, null=True, blank=True, on_delete=models.CASCADE,
                                related_name="+")
    submission = models.ForeignKey(Submission, null=True, blank=True, on_delete=models.CASCADE,
                                   related_name="+")
    delivery = models.ForeignKey("Delivery", null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="+")  # a copy sent to the person
    message = models.TextField()
    created = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)
    emailed_at = models.DateTimeField(null=True, blank=True)

    objects = NotificationQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-pk"]
        indexes = [models.Index(fields=["user", "read_at"], name="notification_user_unread")]

    def __str__(self) -> str:
        return f"{self.kind} for {self.user}: {self.message[:40]}"


# --- copies sent between people (services/copies.py) -------------------------------------------


class SentCopy(models.Model):
    """A notebook or a folder a person sent to others, as it was when sent: the files are kept
    under GALLERY_SEND_DIR/<id>/ until no recipient can still accept them. Nothing of it is
    published or reviewed; only its sender and its recipients know of it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sender = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                               related_name="sent_copies")
    name = models.CharField(max_length=100)  # the folder a recipient gets, unless they rename it
    notebook = models.CharField(max_length=250)  # the main notebook, opened after accepting
    message = models.TextField(blank=True)
    files = models.JSONField(default=list)  # [{"path", "size"}]
    size = models.BigIntegerField(default=0)
    content_hash = models.CharField(max_length=64)
    groups = models.JSONField(default=list)  # the names of the groups it was sent to
    not_delivered = models.PositiveIntegerField(default=0)  # their members who take no copies
    created = models.DateTimeField(default=timezone.now)
    expires = models.DateTimeField()  # pending deliveries expire then (GALLERY_SEND_KEEP_DAYS)
    removed = models.DateTimeField(null=True, blank=True)  # when its files were removed

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["sender", "-created"], name="sentcopy_sender_created")]

    def __str__(self) -> str:
        return f"copy of {self.name} from {self.sender_id}"


class Delivery(models.Model):
    """A sent copy's offer to one recipient, and what became of it."""

    class State(models.TextChoices):
        PENDING = "pending", "waiting"
        ACCEPTED = "accepted", "accepted"
        DECLINED = "declined", "declined"
        WITHDRAWN = "withdrawn", "withdrawn"
        EXPIRED = "expired", "expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    sent = models.ForeignKey(SentCopy, on_delete=models.CASCADE, related_name="deliveries")
    recipient = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                  related_name="received_copies")
    group = models.ForeignKey(HubGroup, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")  # sent to them as a member of this group
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    # The job that writes it into the recipient's home (the last one, when a failed one was
    # tried again).
    job = models.OneToOneField(Job, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="delivery")
    decided = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-sent__created", "pk"]
        constraints = [models.UniqueConstraint(fields=["sent", "recipient"],
                                               name="one_delivery_per_recipient")]
        indexes = [models.Index(fields=["recipient", "state"], name="delivery_recipient_state")]

    def __str__(self) -> str:
        return f"delivery {self.pk} ({self.state})"

    @property
    def current_state(self) -> str:
        """The state as of now: an offer still pending when its copy expired is expired,
        whether or not the sweep has marked it so yet."""
        if self.state == self.State.PENDING and self.sent.expires <= timezone.now():
            return self.State.EXPIRED
        return self.state

    @property
    def current_state_display(self) -> str:
        return str(self.State(self.current_state).label)

    @property
    def can_accept_again(self) -> bool:
        """An acceptance whose copy failed may be tried again (the recipient fixed their home)."""
        return (self.state == self.State.ACCEPTED and self.job is not None
                and self.job.state == Job.State.FAILED)


class CopySettings(models.Model):
    """What a person says about copies others send them."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                primary_key=True, related_name="copy_settings")
    refuse_all = models.BooleanField(default=False)
    updated = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"copy settings of {self.user_id}"

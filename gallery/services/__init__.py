"""Every state change of the gallery, one function each, in one module per concern.

Views, the API, admin actions, management commands and Celery tasks all call these; there is
one way to stage, approve, retire or use an example. Each function runs in one transaction
and queues its slow work only after that transaction commits. The rooms, from the bottom:
`history` (the record of state changes), `notifications`, `queue` (jobs as rows: queue, claim,
lease, finish), `staging` (a submission, its checks and preview), `environments` (an approved
revision's environment locked and built once per key), `runs` (examples run top to bottom,
their verdicts and schedule), `review` (decisions, retirement, publishing), `use` (copies into
homes), `updates` (a copy brought to the new version with its owner's edits kept), `jobs` (the
runner and the sweep), `users` (people and reviewer rights) and `index` (rebuild from the
repository, bulk import).
Refusals are `gallery.errors`; the metadata schema is `gallery.schema`.
"""

from ..errors import Conflict, GalleryError, NotAllowed, NotFound
from ..models import is_reviewer, may_review, reviews_a_group
from ..schema import ExampleMeta
from .audience import audience_choices, set_audience
from .environments import (
    ForUse,
    do_environment,
    for_use,
    queue_environment,
    remove_unused_environments,
)
from .history import move_example, move_submission, record_change
from .index import IMPORT_MAX_NOTEBOOKS, ImportReport, import_notebooks, rebuild_index
from .jobs import GAVE_UP, GIVE_UP_AFTER, MAX_ATTEMPTS, perform_job, sweep_jobs
from .notifications import (
    email_address,
    email_notification,
    mark_notifications_read,
    notify,
    notify_decision,
    notify_users_of,
)
from .queue import (
    RUNNING_MESSAGES,
    TASKS,
    LeaseLost,
    Waiting,
    claim_job,
    enqueue,
    finish_job,
    park_job,
    queue_job,
    renew_lease,
    task,
)
from .review import (
    approve_submission,
    do_commit,
    publish_revision,
    reject_submission,
    request_changes,
    restore_example,
    retire_example,
    start_review,
)
from .runs import (
    candidate_batches,
    candidate_report,
    check_candidate,
    executed_notebook,
    give_up_run,
    notebook_names,
    queue_run,
    queue_verification,
    rerun,
    schedule_verifications,
    verified_notebook,
    verified_preview,
)
from .staging import (
    STAGING_GRACE,
    StagedFiles,
    do_checks,
    do_preview,
    preview_path,
    queue_preview,
    stage_submission,
    staged_folder,
    store_folder,
    sweep_staging,
)
from .updates import do_update, find_copies, plan_job, queue_update, update_plan
from .use import clear_use, count_uses, do_use, environment_instructions, queue_use, use_plan
from .users import (
    REVIEW_PERMISSIONS,
    ensure_user,
    grant_group_review,
    grant_review,
    import_user,
    revoke_review,
    set_hub_groups,
    sync_hub_user,
    user_for_person,
)

__all__ = [
    "candidate_batches",
    "candidate_report",
    "check_candidate",
    "executed_notebook",
    "give_up_run",
    "notebook_names",
    "queue_run",
    "queue_verification",
    "rerun",
    "schedule_verifications",
    "verified_notebook",
    "verified_preview",
    "Conflict",
    "ExampleMeta",
    "GAVE_UP",
    "GIVE_UP_AFTER",
    "GalleryError",
    "IMPORT_MAX_NOTEBOOKS",
    "ImportReport",
    "LeaseLost",
    "MAX_ATTEMPTS",
    "NotAllowed",
    "NotFound",
    "REVIEW_PERMISSIONS",
    "RUNNING_MESSAGES",
    "STAGING_GRACE",
    "StagedFiles",
    "TASKS",
    "approve_submission",
    "claim_job",
    "ForUse",
    "for_use",
    "park_job",
    "remove_unused_environments",
    "Waiting",
    "clear_use",
    "count_uses",
    "do_checks",
    "do_commit",
    "do_environment",
    "do_preview",
    "do_use",
    "email_address",
    "email_notification",
    "enqueue",
    "ensure_user",
    "environment_instructions",
    "finish_job",
    "grant_group_review",
    "grant_review",
    "import_notebooks",
    "import_user",
    "is_reviewer",
    "may_review",
    "reviews_a_group",
    "mark_notifications_read",
    "move_example",
    "move_submission",
    "notify",
    "notify_decision",
    "notify_users_of",
    "perform_job",
    "preview_path",
    "publish_revision",
    "queue_job",
    "queue_environment",
    "queue_preview",
    "queue_use",
    "queue_update",
    "update_plan",
    "plan_job",
    "find_copies",
    "do_update",
    "rebuild_index",
    "record_change",
    "reject_submission",
    "renew_lease",
    "request_changes",
    "restore_example",
    "retire_example",
    "revoke_review",
    "stage_submission",
    "staged_folder",
    "start_review",
    "store_folder",
    "sweep_jobs",
    "sweep_staging",
    "audience_choices",
    "set_audience",
    "set_hub_groups",
    "sync_hub_user",
    "task",
    "use_plan",
    "user_for_person",
]

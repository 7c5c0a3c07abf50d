"""Writing an example into a person's home.

`shared` holds what the backends share: the error and plan of a copy, where copies go, the
writers of the data manifest and the provenance record, and the messages a person reads.
`filesystem` is the Use backend that writes into the home as its owner, through a forked child
(`child`) dropped to the user. Callers use the names below.
"""

from .child import copied_by
from .filesystem import clear_leftovers, copy_into_home, start_helper
from .shared import (
    DATA_MANIFEST,
    DATA_MANIFEST_JSON,
    PROVENANCE_FILE,
    CopyError,
    CopyPlan,
    home_of,
    use_parent,
)

__all__ = [
    "DATA_MANIFEST",
    "DATA_MANIFEST_JSON",
    "PROVENANCE_FILE",
    "CopyError",
    "CopyPlan",
    "clear_leftovers",
    "copied_by",
    "copy_into_home",
    "home_of",
    "start_helper",
    "use_parent",
]

"""Writing an example into a person's home.

`shared` holds what the backends share: the error and plan of a copy, where copies go, the
writers of the data manifest and the provenance record, and the messages a person reads.
`filesystem` is the Use backend that writes into the home as its owner, through a forked child
(`child`) dropped to the user; `contents` is the one that writes through the user's own
Jupyter server, for homes the workers cannot reach. "Update my copy" reads and writes a copy
in place: `inplace` for the first, `contents_inplace` for the second. Callers use the names
below.
"""

from .child import copied_by
from .contents import ContentsError, clear_through_contents, copy_through_contents
from .contents_inplace import read_through_contents, update_through_contents
from .filesystem import clear_leftovers, copy_into_home, read_copy, start_helper, update_copy
from .inplace import BACKUP_DIR
from .inplace import MANIFEST as UPDATE_MANIFEST
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
    "BACKUP_DIR",
    "UPDATE_MANIFEST",
    "ContentsError",
    "DATA_MANIFEST",
    "DATA_MANIFEST_JSON",
    "PROVENANCE_FILE",
    "CopyError",
    "CopyPlan",
    "clear_leftovers",
    "clear_through_contents",
    "copied_by",
    "copy_into_home",
    "copy_through_contents",
    "home_of",
    "read_copy",
    "read_through_contents",
    "update_copy",
    "update_through_contents",
    "start_helper",
    "use_parent",
]

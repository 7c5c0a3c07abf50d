"""An example's environment: from its spec (requirements.txt, pyproject.toml or
environment.yml) to a lock (every package pinned) to a built, read-only environment in a
content-addressed store on shared storage, built once for every user.

uv resolves and installs; it always runs as an unprivileged build account (never as root),
with a time limit, a disk limit and, by default, wheels only, so no package's own build code
runs (`runner`). The conda dependencies of an environment.yml are resolved and installed the
same way by the conda-compatible executable a centre names (conda, mamba or micromamba; conda
packages are binaries), the pip part then by uv into that environment (`conda`). A lock's
text is read and keyed in `lockfile`, locked and built in `locks`, and sealed into the store
in `store`. Nothing here needs a request or the database.
"""

from ..specs import SPEC_FILES, Spec, SpecError, read_spec, requirement
from .lockfile import CONDA_PYTHON, KERNEL_PACKAGE, CondaPin, env_key, pins
from .locks import Interpreter, build, lock, python_fits, store_key
from .runner import (
    LOG_LINES,
    PASSED_ON,
    Account,
    BuildConfig,
    BuildError,
    CannotBuild,
    NotConfigured,
    build_account,
)
from .store import RECORD_FILE, _remove, remove

__all__ = [
    "CONDA_PYTHON", "KERNEL_PACKAGE", "LOG_LINES", "PASSED_ON", "RECORD_FILE", "SPEC_FILES",
    "Account", "BuildConfig", "BuildError", "CannotBuild", "CondaPin", "Interpreter",
    "NotConfigured", "Spec", "SpecError", "_remove", "build", "build_account", "env_key", "lock",
    "pins", "python_fits", "read_spec", "remove", "requirement", "store_key",
]

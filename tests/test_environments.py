"""Environments: specs read and refused, locks and builds with the real uv.

Builds are offline: the tests write tiny wheels into a folder (a wheel is a zip with a few
metadata files) and point uv at it with `--no-index --find-links`. That folder also holds a
stand-in `ipykernel` wheel, so the locks take the same path as in production (the kernel
package is always added) without the suite needing the network; one test, marked `network`,
resolves and builds from the real package index with the real ipykernel.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from django.conf import settings
from hypothesis import given
from hypothesis import strategies as st

from gallery import environments, notebooks, specs
from gallery.environments import BuildConfig, BuildError, SpecError

from .conftest import wait_for
from .unixusers import TAG, make_account, remove_account

IS_ROOT = os.geteuid() == 0


# --- specs ---------------------------------------------------------------------------------


def test_it_reads_the_three_kinds_of_spec() -> None:
    spec = environments.read_spec(
        "requirements.txt", b"# tools\nnumpy>=1.24  # arrays\n\nPandas[excel]==2.2; "
                            b"python_version >= '3.10'\n")
    assert spec.requirements == ("numpy>=1.24", 'Pandas[excel]==2.2; python_version >= "3.10"')
    spec = environments.read_spec(
        "pyproject.toml", b'[project]\nname = "x"\nrequires-python = ">=3.10"\n'
                          b'dependencies = ["scipy>=1.10", "six"]\n')
    assert (spec.requirements, spec.python) == (("scipy>=1.10", "six"), ">=3.10")
    spec = environments.read_spec(
        "environment.yml", b"channels: [conda-forge]\ndependencies:\n  - python=3.11\n"
                           b"  - pip\n  - conda-forge::hdf5>=1.14\n  - pip:\n    - six\n")
    assert (spec.requirements, spec.conda, spec.python) == (("six",), ("conda-forge::hdf5>=1.14",),
                                                            "3.11")
    assert spec.channels == ("conda-forge",)


@pytest.mark.parametrize("name,text,message", [
    ("requirements.txt", "-e ./mypkg", "pip options (-e)"),
    ("requirements.txt", "--index-url https://evil.example/simple\nsix",
     "pip options (--index-url)"),
    ("requirements.txt", "--extra-index-url=https://evil.example/simple", "--extra-index-url"),
    ("requirements.txt", "-f /srv/wheels", "pip options (-f)"),
    ("requirements.txt", "-r other.txt", "pip options (-r)"),
    ("requirements.txt", "six --hash=sha256:abc", "per-requirement options (--hash"),
    ("requirements.txt", "./mypkg", "is a path or a URL"),
    ("requirements.txt", "/srv/pkg.whl", "is a path or a URL"),
    ("requirements.txt", "mypkg-1.0-py3-none-any.whl", "is a path or a URL"),
    ("requirements.txt", "https://evil.example/pkg.tar.gz", "is a path or a URL"),
    ("requirements.txt", "git+https://github.com/x/y", "is a path or a URL"),
    ("requirements.txt", "pkg @ https://evil.example/pkg.whl", "is a path or a URL"),
    ("requirements.txt", "numpy>=>1", "line 1: 'numpy>=>1' is not a valid requirement"),
    ("requirements.txt", "six\nnumpy ==", "line 2:"),
    ("pyproject.toml", "[project\n", "not valid TOML"),
    ("pyproject.toml", "[tool.x]\n", "needs a [project] table"),
    ("pyproject.toml", '[project]\ndependencies = ["six @ file:///tmp/six"]\n',
     "is a path or a URL"),
    ("environment.yml", "dependencies: [\n", "not valid YAML"),
    ("environment.yml", "name: x\n", "needs a 'dependencies' list"),
    ("environment.yml", "dependencies:\n  - pip:\n    - -e .\n", "pip options (-e)"),
    ("environment.yml", "dependencies:\n  - https://evil.example/x.tar.bz2\n",
     "neither a conda package spec"),
    ("environment.yml", "channels:\n  - https://evil.example/conda\ndependencies:\n  - hdf5\n",
     "'https://evil.example/conda' is a path or a URL; only channel names are allowed"),
    ("environment.yml", "channels: [/srv/channel]\ndependencies: [hdf5]\n",
     "is a path or a URL; only channel names are allowed"),
    ("environment.yml", "channels: conda-forge\ndependencies: [hdf5]\n",
     "'channels' must be a list of channel names"),
    ("environment.yml", "dependencies: [..::hdf5]\n", "dependency 1 '..' is a path or a URL"),
    ("setup.py", "", "not an environment file"),
])
def test_it_refuses_a_bad_spec_with_a_plain_message(name: str, text: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        environments.read_spec(name, text.encode())
    assert message in str(caught.value)


def test_it_refuses_too_many_requirements() -> None:
    text = "".join(f"package-{i}\n" for i in range(specs.MAX_REQUIREMENTS + 1))
    with pytest.raises(SpecError, match="at most 200"):
        environments.read_spec("requirements.txt", text.encode())


_names = st.from_regex(r"[A-Za-z][A-Za-z0-9._-]{0,20}[A-Za-z0-9]", fullmatch=True)
_versions = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){1,2}", fullmatch=True)


@given(_names, st.sampled_from(["", "==", ">=", "<", "~=", "!="]), _versions)
def test_it_accepts_any_plain_requirement_and_refuses_it_as_an_option(
        name: str, op: str, version: str) -> None:
    line = f"{name}{op}{version}" if op else name
    spec = environments.read_spec("requirements.txt", f"{line}\n".encode())
    assert spec.requirements == (line,)
    for bad in (f"-e {line}", f"--index-url https://x.example/ {line}",
                f"{name} @ https://x.example/{name}.whl", f"./{name}"):
        with pytest.raises(SpecError):
            environments.read_spec("requirements.txt", f"{bad}\n".encode())


def test_it_shows_a_bad_spec_in_the_staging_check() -> None:
    check = notebooks.check_environment("requirements.txt", b"six\n--index-url https://x/\n")
    assert (check.status, check.message) == (
        "fail", "requirements.txt: line 2: pip options (--index-url) are not allowed; list "
                "package names only, the gallery decides where packages come from")
    check = notebooks.check_environment(
        "environment.yml", b"dependencies:\n  - python=3.11\n  - pandas>=2\n  - pip:\n    - six\n")
    assert check.status == "pass"
    assert "1 conda dependency (built with conda, mamba or micromamba)" in check.message


# --- building ------------------------------------------------------------------------------


def make_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = (),
               files: dict[str, bytes] | None = None, scripts: dict[str, str] | None = None
               ) -> Path:
    """A pure-Python wheel written by hand: metadata, the files, and a RECORD of them."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    entries = dict(files or {})
    entries[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode()
    entries[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                                b"Tag: py3-none-any\n")
    if scripts:
        entries[f"{info}/entry_points.txt"] = ("[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in scripts.items())).encode()
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry, data in entries.items():
            zf.writestr(entry, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{entry},sha256={digest.decode()},{len(data)}")
        zf.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return path


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """A folder the build account can read (pytest's own tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="gallery-envs-"))
    folder.chmod(0o755)
    yield folder
    environments._remove(folder)


@pytest.fixture(scope="module")
def wheels(shared: Path) -> Path:
    folder = shared / "wheels"
    folder.mkdir(mode=0o755)
    make_wheel(folder, "galleryfake-a", "1.0", ("galleryfake-b>=1",),
               {"galleryfake_a/__init__.py": b"from galleryfake_b import X\n"
                                             b"def main():\n    print('fake a', X)\n"},
               {"galleryfake-a": "galleryfake_a:main"})
    make_wheel(folder, "galleryfake-b", "1.2", (), {"galleryfake_b/__init__.py": b"X = 12\n"})
    make_wheel(folder, "galleryfake-b", "0.5", (), {"galleryfake_b/__init__.py": b"X = 5\n"})
    make_wheel(folder, "galleryfake-big", "1.0", (),
               {"galleryfake_big/data.bin": b"\0" * (3 * 1024 * 1024)})
    # Stands in for the real ipykernel offline; the network test builds the real one.
    make_wheel(folder, "ipykernel", "6.0.0", (), {"ipykernel/__init__.py": b"stand_in = True\n"})
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


@pytest.fixture(scope="module")
def builder() -> Iterator[str]:
    """The build account: a real unprivileged user when the tests run as root."""
    if not IS_ROOT:
        yield ""
        return
    name, root = f"gb{TAG}", Path(tempfile.mkdtemp())
    make_account(root, name)
    yield name
    remove_account(name)
    shutil.rmtree(root)


@pytest.fixture
def config(shared: Path, wheels: Path, builder: str, tmp_path: Path) -> BuildConfig:
    store = shared / f"store-{tmp_path.name}"
    return BuildConfig(store=store, python=settings.GALLERY_BUILD_PYTHON, user=builder,
                       time_limit=120, index_options=("--no-index", "--find-links", str(wheels)))


def spec(*lines: str) -> environments.Spec:
    return environments.read_spec("requirements.txt", "\n".join(lines).encode())


def in_store(config: BuildConfig) -> list[str]:
    return sorted(p.name for p in config.store.iterdir()
                  if not p.name.startswith(".")) + sorted(
        p.name for p in (config.store / ".building").iterdir()
        if p.name not in ("uv-cache", "conda"))


@pytest.mark.skipif(not IS_ROOT, reason="another build account needs root")
def test_it_runs_uv_from_the_store_when_the_gallerys_own_is_out_of_reach(
        config: BuildConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    # The gallery's virtual environment may sit in a folder only its own user can enter (a
    # fresh clone in a private temporary folder, a home): the build account must still run uv.
    import uv

    private = Path(tempfile.mkdtemp())  # 0700, root's alone
    try:
        hidden = private / "uv"
        shutil.copy2(uv.find_uv_bin(), hidden)
        monkeypatch.setattr(uv, "find_uv_bin", lambda: str(hidden))
        text = environments.lock(spec("galleryfake-a"), config=config)
        assert "galleryfake-a==" in text
        assert [p.name for p in (config.store / ".tools").iterdir()] != []
    finally:
        shutil.rmtree(private)


def test_it_locks_every_package_with_its_version(config: BuildConfig) -> None:
    text = environments.lock(spec("galleryfake-a"), config=config)
    assert environments.pins(text) == ["galleryfake-a==1.0", "galleryfake-b==1.2",
                                       "ipykernel==6.0.0"]


@pytest.mark.parametrize("lines,reason", [
    (("galleryfake-zz",), "galleryfake-zz was not found"),
    (("galleryfake-a", "galleryfake-b<1"), "requirements are unsatisfiable"),
])
def test_it_says_why_a_spec_cannot_be_locked(config: BuildConfig, lines: tuple[str, ...],
                                            reason: str) -> None:
    with pytest.raises(BuildError) as caught:
        environments.lock(spec(*lines), config=config)
    assert reason in caught.value.reason
    assert "No solution found" in caught.value.log


def test_it_says_plainly_that_conda_dependencies_cannot_be_built_here(
        config: BuildConfig) -> None:
    conda = environments.read_spec("environment.yml", b"dependencies:\n  - hdf5\n")
    with pytest.raises(environments.CannotBuild) as caught:
        environments.lock(conda, config=config)
    assert caught.value.reason == (
        "environment.yml has conda dependencies (hdf5), which need a conda-compatible "
        "executable (conda, mamba or micromamba) that this gallery does not have; a centre "
        "can name one with GALLERY_CONDA. Use a kernel of the centre that already has hdf5 "
        "instead.")


@pytest.mark.parametrize("wanted,fits", [
    ("3.11", True), ("3.11.2", True), ("3.12", False), (">=3.10", True), (">=3.12", False),
    ("3.1", False), (">=3.10,<3.11", False), ("3.11.*", True),
])
def test_it_knows_whether_a_python_meets_a_spec(wanted: str, fits: bool) -> None:
    assert environments.python_fits(wanted, "3.11.2") is fits


def test_it_says_plainly_when_a_spec_wants_another_python(config: BuildConfig) -> None:
    other = environments.read_spec(
        "pyproject.toml", b'[project]\nrequires-python = ">=3.99"\ndependencies = ["six"]\n')
    with pytest.raises(environments.CannotBuild, match="asks for Python >=3.99"):
        environments.lock(other, config=config)


def test_it_builds_a_read_only_environment_that_every_user_can_run(
        config: BuildConfig, builder: str) -> None:
    path = environments.build(environments.lock(spec("galleryfake-a"), config=config),
                              config=config)
    assert path.parent == config.store and len(path.name) == 64
    # Renamed into place after the build, its console scripts still find their python.
    as_builder = ["runuser", "-u", builder, "--"] if IS_ROOT else []
    out = subprocess.run([*as_builder, str(path / "bin" / "galleryfake-a")], check=True,
                         capture_output=True, text=True).stdout
    assert out == "fake a 12\n"
    record = json.loads((path / environments.RECORD_FILE).read_text())
    assert record["key"] == path.name and "galleryfake-b==1.2" in record["lock"]
    for item in [path, *path.rglob("*")]:
        st_ = item.lstat()
        if not stat.S_ISLNK(st_.st_mode):
            assert st_.st_mode & 0o222 == 0, item  # writable by no one
            assert st_.st_mode & 0o444 == 0o444, item  # readable by all
            assert st_.st_uid == os.geteuid(), item  # never the build account's
    assert in_store(config) == [path.name]


def test_it_builds_a_lock_once(config: BuildConfig) -> None:
    text = environments.lock(spec("galleryfake-b"), config=config)
    first = environments.build(text, config=config)
    made = first.stat().st_ino
    shuffled = "# the same pins, another order\n" + "\n".join(reversed(text.splitlines()))
    assert environments.build(shuffled, config=config) == first
    assert first.stat().st_ino == made


def test_it_builds_once_when_two_builds_of_a_lock_meet(config: BuildConfig) -> None:
    text = environments.lock(spec("galleryfake-a"), config=config)
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(
        environments.build(text, config=config))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(paths) == 3 and len(set(paths)) == 1
    assert in_store(config) == [paths[0].name]


def test_it_keys_an_environment_by_its_pins_python_and_platform() -> None:
    lock = "a==1\nb==2  # via a\n"
    key = environments.env_key(lock, "3.11.2 /usr/bin/python3.11", "linux-x86_64")
    assert key == environments.env_key("b==2\n\na==1\n", "3.11.2 /usr/bin/python3.11",
                                       "linux-x86_64")
    assert key != environments.env_key(lock, "3.12.1 /usr/bin/python3.12", "linux-x86_64")
    assert key != environments.env_key(lock, "3.11.2 /usr/bin/python3.11", "linux-aarch64")
    assert key != environments.env_key("a==1\nb==3\n", "3.11.2 /usr/bin/python3.11",
                                       "linux-x86_64")


@pytest.mark.parametrize("lock", ["six>=1\n", "six\n", "six @ https://x.example/six.whl\n",
                                  "--index-url https://x.example/\nsix==1\n"])
def test_it_refuses_a_lock_that_is_not_all_pins(config: BuildConfig, lock: str) -> None:
    with pytest.raises(BuildError, match="not"):
        environments.build(lock, config=config)


def test_it_runs_uv_as_the_build_account(config: BuildConfig, builder: str) -> None:
    environments.lock(spec("galleryfake-b"), config=config)
    cache = config.store / ".building" / "uv-cache"
    owners = {p.lstat().st_uid for p in cache.rglob("*")}
    assert owners == {pwd.getpwnam(builder).pw_uid if builder else os.geteuid()}


@pytest.mark.skipif(not IS_ROOT, reason="only root could build as root")
@pytest.mark.parametrize("user", ["", "root"])
def test_it_never_builds_as_root(config: BuildConfig, user: str) -> None:
    with pytest.raises(BuildError, match="never built as root"):
        environments.lock(spec("six"), config=replace(config, user=user))
    assert not config.store.exists()


def test_it_fails_a_build_with_the_last_lines_of_its_log(config: BuildConfig,
                                                       shared: Path) -> None:
    text = environments.lock(spec("galleryfake-a"), config=config)
    empty = Path(tempfile.mkdtemp(dir=shared))
    empty.chmod(0o755)
    elsewhere = replace(config, index_options=("--no-index", "--find-links", str(empty)))
    with pytest.raises(BuildError) as caught:
        environments.build(text, config=elsewhere)
    assert "galleryfake-a" in caught.value.reason
    assert 0 < len(caught.value.log.splitlines()) <= environments.LOG_LINES
    assert in_store(config) == []


def test_it_stops_a_build_that_writes_past_the_disk_limit(config: BuildConfig) -> None:
    text = environments.lock(spec("galleryfake-big"), config=config)
    with pytest.raises(BuildError, match="GALLERY_BUILD_MAX_MB"):
        environments.build(text, config=replace(config, max_mb=1))
    assert in_store(config) == []


def test_it_stops_a_build_past_its_time_limit_with_all_its_processes(
        config: BuildConfig, shared: Path, builder: str) -> None:
    """uv stands in for a resolver stuck on a server that never answers: it starts a child
    and waits; the time limit kills the whole process group."""
    folder = Path(tempfile.mkdtemp(dir=shared))
    folder.chmod(0o777)
    stuck = folder / "uv"
    stuck.write_text(f"#!/bin/sh\nsleep 600 &\necho $! > {folder}/child\nwait\n")
    stuck.chmod(0o755)
    text = environments.lock(spec("galleryfake-b"), config=config)
    with pytest.raises(BuildError, match="GALLERY_BUILD_TIMEOUT"):
        environments.build(text, config=replace(config, uv=str(stuck), time_limit=3))
    child = int((folder / "child").read_text())
    wait_for(lambda: not _alive(child), what="the build's child to end")
    assert in_store(config) == []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _online() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.network
@pytest.mark.skipif(not _online(), reason="the package index cannot be reached")
def test_it_builds_a_kernel_environment_from_the_package_index(config: BuildConfig) -> None:
    online = replace(config, index_options=(), time_limit=600)
    text = environments.lock(spec("six==1.16.0"), config=online)
    names = {pin.split("==")[0] for pin in environments.pins(text)}
    assert {"six", "ipykernel", "jupyter-client", "traitlets"} <= names
    path = environments.build(text, config=online)
    out = subprocess.run([str(path / "bin" / "python"), "-c",
                          "import six, ipykernel; print(six.__version__)"],
                         check=True, capture_output=True, text=True).stdout
    assert out == "1.16.0\n"
    assert shutil.which("python", path=str(path / "bin"))


# --- conda dependencies ----------------------------------------------------------------------
#
# No conda channel can be reached from here, so a stand-in plays `micromamba`: it answers
# `create --dry-run --json` with a LINK list from its own small index (channels as conda names
# them, or as micromamba's URLs with the platform's subfolder), and `create -y -p PREFIX` by
# making a real venv at PREFIX that holds the pinned packages; it records every call and the
# uid it ran as. The pip part is locked and installed by the real uv, offline.

STAND_IN = """#!{python}
import json, os, re, subprocess, sys

RECORDS = {records!r}
PYTHON = "%d.%d.%d" % sys.version_info[:3]
INDEX = {{  # name: (version, build, channel as the LINK list gives it, dependencies)
    "python": (PYTHON, "h_cpython_0", "conda-forge", []),
    "ipykernel": ("6.29.5", "pyh3099207_0", "https://conda.anaconda.org/conda-forge/noarch",
                  ["python"]),
    "galleryconda-hdf": ("1.14.3", "nompi_h2d575fe_105",
                         "https://conda.anaconda.org/conda-forge/linux-64", ["galleryconda-zlib"]),
    "galleryconda-zlib": ("1.3.1", "hb9d3cd8_2", "conda-forge", []),
    "galleryfake-b": ("1.2", "pyhd8ed1ab_0", "conda-forge", ["python"]),
}}
args = sys.argv[1:]
with open(os.path.join(RECORDS, "%d-%d.json" % (os.getpid(), len(os.listdir(RECORDS)))), "w") as fh:
    json.dump({{"args": args, "uid": os.getuid(),
               "env": {{k: os.environ.get(k) for k in ("CONDA_PKGS_DIRS", "MAMBA_ROOT_PREFIX")}}}},
              fh)
wanted, skip = [], False
for arg in args[1:]:
    if skip:
        skip = False
    elif arg in ("-p", "-c"):
        skip = True
    elif not arg.startswith("-"):
        wanted.append(arg)
prefix = args[args.index("-p") + 1]
if "--dry-run" in args:
    names, todo = [], [re.split(r"[=<>! ]", w)[0] for w in wanted]
    while todo:
        name = todo.pop()
        if name not in INDEX:
            print(json.dumps({{"success": False, "message": "The following packages are not "
                              "available from current channels: " + name}}))
            sys.exit(1)
        if name not in names:
            names.append(name)
            todo.extend(INDEX[name][3])
    print(json.dumps({{"actions": {{"LINK": [
        {{"name": n, "version": INDEX[n][0], "build_string": INDEX[n][1], "channel": INDEX[n][2]}}
        for n in names], "PREFIX": prefix}}, "dry_run": True, "success": True}}))
    sys.exit(0)
subprocess.run([sys.executable, "-m", "venv", "--without-pip", prefix], check=True)
site = subprocess.run([prefix + "/bin/python", "-c", "import sysconfig; "
                       "print(sysconfig.get_paths()['purelib'])"],
                      check=True, capture_output=True, text=True).stdout.strip()
os.makedirs(prefix + "/conda-meta")
for spec in wanted:
    name, version, build = spec.split("=")
    assert INDEX[name][:2] == (version, build), spec
    open("%s/conda-meta/%s-%s-%s.json" % (prefix, name, version, build), "w").write("{{}}")
    if name not in ("python", "ipykernel"):
        module = os.path.join(site, name.replace("-", "_"))
        os.makedirs(module)
        value = "'conda'" if name == "galleryfake-b" else repr(version)
        open(module + "/__init__.py", "w").write("X = %s\\n" % value)
"""


def write_stand_in(shared: Path) -> Path:
    """A fresh stand-in `micromamba`, with a folder for its records beside it."""
    folder = Path(tempfile.mkdtemp(dir=shared))
    folder.chmod(0o755)
    records = folder / "records"
    records.mkdir(mode=0o777)
    records.chmod(0o777)
    stand_in = folder / "micromamba"
    stand_in.write_text(STAND_IN.format(python=settings.GALLERY_BUILD_PYTHON,
                                        records=str(records)))
    stand_in.chmod(0o755)
    return stand_in


@pytest.fixture
def conda(shared: Path, config: BuildConfig) -> BuildConfig:
    """The build settings with the stand-in `micromamba` as GALLERY_CONDA."""
    return replace(config, conda=str(write_stand_in(shared)))


def calls(config: BuildConfig) -> list[dict[str, object]]:
    records = Path(config.conda).parent / "records"
    return [json.loads(p.read_text()) for p in sorted(records.iterdir(),
                                                       key=lambda p: p.stat().st_mtime_ns)]


def yml(text: str) -> environments.Spec:
    return environments.read_spec("environment.yml", text.encode())


HDF = yml("dependencies:\n  - python=3\n  - pip\n  - galleryconda-hdf>=1.14\n"
          "  - galleryfake-b\n  - pip:\n    - galleryfake-a\n")


def test_it_locks_conda_packages_and_then_the_pip_part(conda: BuildConfig, builder: str) -> None:
    text = environments.lock(HDF, config=conda)
    python = subprocess.run([settings.GALLERY_BUILD_PYTHON, "-c", "import platform; "
                             "print(platform.python_version())"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert environments.pins(text) == [
        "conda: galleryconda-hdf=1.14.3=nompi_h2d575fe_105 conda-forge",
        "conda: galleryconda-zlib=1.3.1=hb9d3cd8_2 conda-forge",
        "conda: galleryfake-b=1.2=pyhd8ed1ab_0 conda-forge",  # also the pip part's need
        "conda: ipykernel=6.29.5=pyh3099207_0 conda-forge",
        f"conda: python={python}=h_cpython_0 conda-forge",
        "galleryfake-a==1.0",  # neither galleryfake-b nor ipykernel again from the index
    ]
    [solve] = calls(conda)
    assert solve["args"][:4] == ["create", "--dry-run", "--json", "-p"]
    assert solve["args"][5:] == ["--override-channels", "-c", "conda-forge",
                                 "galleryconda-hdf>=1.14", "galleryfake-b", "python=3",
                                 "ipykernel"]
    assert solve["uid"] == (pwd.getpwnam(builder).pw_uid if builder else os.geteuid())
    assert str(solve["env"]["CONDA_PKGS_DIRS"]).startswith(str(conda.store / ".building"))
    assert not Path(str(solve["args"][4])).exists()  # the dry run's prefix is never made


def test_it_asks_the_channels_the_spec_names_else_the_centres(conda: BuildConfig) -> None:
    mirror = replace(conda, conda_channels=("https://conda.example.org/conda-forge",))
    text = environments.lock(yml("dependencies: [galleryconda-zlib]\n"), config=mirror)
    assert "conda: galleryconda-zlib=1.3.1=hb9d3cd8_2 https://conda.example.org/conda-forge" \
        in environments.pins(text)  # the mirror, as micromamba or conda name it
    with pytest.raises(BuildError, match="none of the channels asked for"):
        environments.lock(yml("channels: [gallery-forge, nodefaults]\n"  # the stand-in's
                              "dependencies: [galleryconda-zlib]\n"), config=mirror)  # differ
    first, second = (call["args"] for call in calls(conda))
    assert first[5:8] == ["--override-channels", "-c", "https://conda.example.org/conda-forge"]
    assert second[5:9] == ["--override-channels", "-c", "gallery-forge", "galleryconda-zlib"]


def test_it_says_why_conda_cannot_resolve_a_spec(conda: BuildConfig) -> None:
    with pytest.raises(BuildError) as caught:
        environments.lock(yml("dependencies: [galleryconda-zz]\n"), config=conda)
    assert caught.value.reason == ("The following packages are not available from current "
                                   "channels: galleryconda-zz")
    assert in_store(conda) == []


def test_it_builds_a_conda_lock_once_as_the_build_account(conda: BuildConfig,
                                                        builder: str) -> None:
    text = environments.lock(HDF, config=conda)
    path = environments.build(text, config=conda)
    key, python = environments.store_key(text, config=conda)
    assert path == conda.store / key and python.startswith("3.")
    as_builder = ["runuser", "-u", builder, "--"] if IS_ROOT else []
    out = subprocess.run([*as_builder, str(path / "bin" / "galleryfake-a")], check=True,
                         capture_output=True, text=True).stdout
    assert out == "fake a conda\n"  # the pip package on conda's galleryfake-b, not the index's
    subprocess.run([str(path / "bin" / "python"), "-c", "import galleryconda_hdf"], check=True)
    solve, create = calls(conda)
    assert create["args"] == [
        "create", "-y", "-p", str(path), "--override-channels", "-c", "conda-forge",
        "galleryconda-hdf=1.14.3=nompi_h2d575fe_105", "galleryconda-zlib=1.3.1=hb9d3cd8_2",
        "galleryfake-b=1.2=pyhd8ed1ab_0", "ipykernel=6.29.5=pyh3099207_0",
        f"python={python}=h_cpython_0"]
    assert create["uid"] == (pwd.getpwnam(builder).pw_uid if builder else os.geteuid())
    record = json.loads((path / environments.RECORD_FILE).read_text())
    assert (record["key"], record["python"], record["lock"]) == (key, python, text)
    for item in [path, *path.rglob("*")]:
        st_ = item.lstat()
        if not stat.S_ISLNK(st_.st_mode):
            assert st_.st_mode & 0o222 == 0, item
            assert st_.st_uid == os.geteuid(), item
    # A later copy of the same revision: the same key, and conda is not run again.
    made = path.stat().st_ino
    shuffled = "# the same pins\n" + "\n".join(reversed(text.splitlines()))
    assert environments.build(shuffled, config=conda) == path
    assert path.stat().st_ino == made and len(calls(conda)) == 2


def test_it_stops_a_conda_build_past_its_time_limit(conda: BuildConfig, shared: Path) -> None:
    text = environments.lock(HDF, config=conda)
    folder = Path(tempfile.mkdtemp(dir=shared))
    folder.chmod(0o777)
    stuck = folder / "micromamba"
    stuck.write_text(f"#!/bin/sh\nsleep 600 &\necho $! > {folder}/child\nwait\n")
    stuck.chmod(0o755)
    with pytest.raises(BuildError, match="GALLERY_BUILD_TIMEOUT"):
        environments.build(text, config=replace(conda, conda=str(stuck), time_limit=3))
    child = int((folder / "child").read_text())
    wait_for(lambda: not _alive(child), what="the build's child to end")
    assert [p.name for p in conda.store.iterdir() if not p.name.startswith(".")] == []


def test_it_says_plainly_when_a_conda_lock_meets_a_gallery_without_conda(
        conda: BuildConfig) -> None:
    text = environments.lock(HDF, config=conda)
    with pytest.raises(environments.CannotBuild, match="GALLERY_CONDA"):
        environments.build(text, config=replace(conda, conda=""))


@pytest.mark.parametrize("line", [
    "conda hdf5=1.14.3=h0 conda-forge",  # not a conda line, not a requirement
    "conda: hdf5>=1.14 conda-forge",
    "conda: hdf5=1.14.*=h0 conda-forge",
    "conda: hdf5=1.14.3=h0",
    "conda: hdf5=1.14.3=h0 conda-forge --yes",
    "conda: --yes=1.14.3=h0 conda-forge",
    "conda: hdf5=1.14.3=h0 ../channel",
    "conda: hdf5=1.14.3=h0 -cevil",
    "conda: hdf5=1.14.3=h0 https://evil.example/c'$(id)",
])
def test_it_refuses_a_lock_line_of_neither_kind(conda: BuildConfig, line: str) -> None:
    lock = f"conda: python=3.11.2=h0 conda-forge\n{line}\nsix==1.16.0\n"
    with pytest.raises(BuildError, match="not a pinned package"):
        environments.pins(lock)
    with pytest.raises(BuildError, match="not a pinned package"):
        environments.build(lock, config=conda)
    assert calls(conda) == []


def test_it_builds_only_from_channels_the_centre_allows(conda: BuildConfig) -> None:
    lock = "conda: python=3.11.2=h0 https://evil.example/c\n"
    with pytest.raises(BuildError, match="not one of GALLERY_CONDA_CHANNELS"):
        environments.build(lock, config=conda)
    assert calls(conda) == []


def test_it_keys_conda_and_pip_pins_apart() -> None:
    conda = "conda: six=1.16.0=pyh0 conda-forge\nconda: python=3.11.2=h0 conda-forge\n"
    assert environments.pins(conda) == ["conda: python=3.11.2=h0 conda-forge",
                                        "conda: six=1.16.0=pyh0 conda-forge"]
    assert environments.env_key(conda, "conda", "linux-x86_64") != environments.env_key(
        "six==1.16.0\n", "conda", "linux-x86_64")
    assert environments.env_key(conda, "conda", "linux-x86_64") == environments.env_key(
        "# another order\n" + "\n".join(reversed(conda.splitlines())), "conda", "linux-x86_64")


def test_it_builds_the_pip_part_with_uv_when_conda_brings_only_python_and_pip(
        conda: BuildConfig) -> None:
    spec = yml("dependencies:\n  - python=3.11\n  - pip\n  - pip:\n    - galleryfake-a\n")
    assert (spec.conda, spec.requirements) == ((), ("galleryfake-a",))
    for config in (conda, replace(conda, conda="")):
        text = environments.lock(spec, config=config)
        assert environments.pins(text) == ["galleryfake-a==1.0", "galleryfake-b==1.2",
                                           "ipykernel==6.0.0"]
    path = environments.build(text, config=conda)
    assert (path / "bin" / "galleryfake-a").is_file()
    assert calls(conda) == []  # conda never ran


def test_it_says_when_the_conda_executable_is_not_there(config: BuildConfig) -> None:
    with pytest.raises(environments.NotConfigured,
                       match="GALLERY_CONDA='no-such-conda' is not an executable here"):
        environments.lock(HDF, config=replace(config, conda="no-such-conda"))

"""Writing into homes: real unix users under a temporary root, planted and racing symlinks.

The tests that need root create throwaway users with `useradd` (homes under a temporary
folder) and remove them with `userdel` at the end; they skip themselves without root.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import grp
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gallery import homes, services
from gallery.homes import filesystem
from gallery.models import Example, Job

from .base import make_user, stage
from .conftest import wait_for
from .unixusers import TAG, Account, make_account, remove_account, remove_group, run

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="creating users and writing as them needs root")

SOURCE_FILES = {"hello.ipynb": b'{"cells": []}', "requirements.txt": b"numpy\n",
                "lib/helper.py": b"X = 1\n", "lib/deep/data.csv": b"a,b\n1,2\n",
                "README.md": b"# Hello\n"}


# --- the stage: a temporary root with homes, sentinels and real users ---------------------------


@dataclass
class Stage:
    root: Path
    alice: Account
    bob: Account
    team_gid: int
    rootonly: Path  # stands in for /etc: root's, 0755
    rootgroup: Path  # root:root 0775: catches a forgotten setgroups
    team: Path  # root:team 2775: alice may write here through her group
    shared: Path  # data readable by everyone

    def sentinels(self) -> list[Path]:
        return [self.rootonly, self.rootgroup, self.bob.home, self.shared]


@pytest.fixture(scope="module")
def stage_root() -> Iterator[Stage]:
    root = Path(tempfile.mkdtemp(prefix="gallery-homes-", dir="/tmp"))
    root.chmod(0o755)
    (root / "home").mkdir(mode=0o755)
    team_name, made = f"gt{TAG}", []
    try:
        run("groupadd", team_name)
        team_gid = grp.getgrnam(team_name).gr_gid
        alice = make_account(root, f"ga{TAG}", team_name)
        made.append(alice.name)
        bob = make_account(root, f"gb{TAG}")
        made.append(bob.name)
        rootonly = root / "rootonly"
        rootonly.mkdir(mode=0o755)
        (rootonly / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
        (rootonly / "secret").mkdir(mode=0o700)
        rootgroup = root / "rootgroup"
        rootgroup.mkdir()
        rootgroup.chmod(0o775)
        team = root / "team"
        team.mkdir()
        os.chown(team, 0, team_gid)
        team.chmod(0o2775)
        shared = root / "shared"
        shared.mkdir(mode=0o755)
        (shared / "big.nc").write_bytes(b"\0" * 1024)
        yield Stage(root, alice, bob, team_gid, rootonly, rootgroup, team, shared)
    finally:
        for name in made:
            remove_account(name)
        remove_group(team_name)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def st(stage_root: Stage, settings) -> Iterator[Stage]:  # type: ignore[no-untyped-def]
    """Fresh homes for every test; Use writes as the user.

    The worker gets root's group as a supplementary group, as a root shell has it (a systemd
    service has none): a copy that forgot to set the user's groups would then write into
    the root-group folder, and the tests would see it.
    """
    for account in (stage_root.alice, stage_root.bob):
        shutil.rmtree(account.home, ignore_errors=True)
        account.home.mkdir(mode=0o755)
        os.chown(account.home, account.uid, account.gid)
    stage_root.bob.examples.mkdir(mode=0o755)
    os.chown(stage_root.bob.examples, stage_root.bob.uid, stage_root.bob.gid)
    for leftover in stage_root.team.iterdir():
        shutil.rmtree(leftover)
    settings.GALLERY_HOME_TEMPLATE = str(stage_root.root / "home" / "{username}")
    settings.GALLERY_USE_AS_USER = True
    groups = os.getgroups()
    os.setgroups([0])
    try:
        yield stage_root
    finally:
        os.setgroups(groups)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """An exported example; its path is not readable by the users (tmp_path is root's 0700)."""
    folder = tmp_path / "export" / "demo"
    for name, data in SOURCE_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def plan_for(account: Account, source: Path, st: Stage, *, folder: str = "demo",
             job_id: str | None = None, delay: float = 0.0) -> homes.CopyPlan:
    return homes.CopyPlan(
        username=account.name, source=source, parent=account.examples, folder_name=folder,
        job_id=job_id or str(uuid.uuid4()), provenance={"slug": "demo", "version": 1},
        data_links=[{"name": "big", "target": str(st.shared / "big.nc")},
                    {"name": "hidden", "target": str(st.rootonly / "secret")},
                    {"name": "docs", "target": "https://example.org/d", "licence": "CC0-1.0"}],
        delay=delay, home=account.home,
    )


def snapshot(root: Path) -> dict[str, tuple]:
    """Mode, owner, size, times and link target of every entry under `root` (links not followed)."""
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, ""]:
            path = os.path.join(dirpath, name) if name else dirpath
            info = os.lstat(path)
            target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
            entries[path] = (info.st_mode, info.st_uid, info.st_gid, info.st_size,
                             info.st_mtime_ns, info.st_ctime_ns, target)
    return entries


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def owners_are_right(st: Stage) -> None:
    """Nothing in alice's home belongs to anyone else; nothing of hers lies outside it."""
    for path, entry in snapshot(st.root).items():
        inside = path == str(st.alice.home) or path.startswith(str(st.alice.home) + "/")
        if inside:
            assert entry[1] == st.alice.uid, f"{path} belongs to uid {entry[1]}"
        else:
            assert entry[1] != st.alice.uid, f"alice wrote {path} outside her home"


def assert_complete_copy(folder: Path, account: Account, job_id: str) -> None:
    for name, data in SOURCE_FILES.items():
        assert (folder / name).read_bytes() == data
    assert homes.copied_by(folder) == job_id
    for path in [folder, *folder.rglob("*")]:
        info = os.lstat(path)
        assert (info.st_uid, info.st_gid) == (account.uid, account.gid), path


# --- writing as the user ---------------------------------------------------------------------


@needs_root
def test_it_writes_as_the_user_with_their_uid_and_gid(st: Stage, source: Path) -> None:
    plan = plan_for(st.alice, source, st)
    # The user could not reach the source by its path: the copy reads it through a descriptor.
    assert any(os.stat(p).st_mode & 0o001 == 0 for p in source.parents if p != Path("/"))
    before = snapshot(st.root)
    folder = homes.copy_into_home(plan, as_user=True)
    assert folder == st.alice.examples / "demo"
    assert_complete_copy(folder, st.alice, plan.job_id)
    assert os.readlink(folder / "data" / "big") == str(st.shared / "big.nc")
    manifest = {d["name"]: d for d in json.loads((folder / "data-links.json").read_text())}
    assert manifest["hidden"]["note"].startswith("not readable for you")
    assert "hidden" not in os.listdir(folder / "data")
    assert "CC0-1.0" in (folder / "DATA.md").read_text()
    assert sorted(os.listdir(st.alice.examples)) == ["demo"]  # no temporary folder left
    assert all(p.startswith(str(st.alice.home)) for p in changes(before, snapshot(st.root)))
    owners_are_right(st)


@needs_root
def test_it_keeps_a_team_folder_the_user_may_write_to(st: Stage, source: Path) -> None:
    st.alice.examples.symlink_to(st.team)
    os.lchown(st.alice.examples, st.alice.uid, st.alice.gid)
    folder = homes.copy_into_home(plan_for(st.alice, source, st), as_user=True)
    copy = st.team / "demo"
    assert (copy / "hello.ipynb").read_bytes() == SOURCE_FILES["hello.ipynb"]
    assert folder.resolve() == copy
    assert os.lstat(copy).st_uid == st.alice.uid
    assert os.lstat(copy).st_gid == st.team_gid  # the team folder is setgid


@needs_root
def test_it_refuses_an_account_that_does_not_exist_or_is_root(st: Stage, source: Path) -> None:
    plan = plan_for(st.alice, source, st)
    plan.username = f"gx{TAG}"
    with pytest.raises(homes.CopyError, match="no account named"):
        homes.copy_into_home(plan, as_user=True)
    plan.username = "root"
    with pytest.raises(homes.CopyError, match="root's home"):
        homes.copy_into_home(plan, as_user=True)


# --- planted symlinks and other traps --------------------------------------------------------


def _link(st: Stage, path: Path, target: Path) -> None:
    path.symlink_to(target)
    os.lchown(path, st.alice.uid, st.alice.gid)


def _own_dir(st: Stage, path: Path, mode: int = 0o755) -> None:
    path.mkdir()
    path.chmod(mode)
    os.chown(path, st.alice.uid, st.alice.gid)


def _examples_dir(st: Stage) -> Path:
    _own_dir(st, st.alice.examples)
    return st.alice.examples


def plant_examples_to_rootonly(st: Stage) -> None:
    _link(st, st.alice.examples, st.rootonly)


def plant_examples_to_other_home(st: Stage) -> None:
    _link(st, st.alice.examples, st.bob.examples)


def plant_examples_to_root_group_folder(st: Stage) -> None:
    _link(st, st.alice.examples, st.rootgroup)


def plant_examples_dangling_into_rootonly(st: Stage) -> None:
    _link(st, st.alice.examples, st.rootonly / "new")


def plant_examples_as_fifo(st: Stage) -> None:
    os.mkfifo(st.alice.examples)
    os.lchown(st.alice.examples, st.alice.uid, st.alice.gid)


def plant_examples_read_only(st: Stage) -> None:
    _own_dir(st, st.alice.examples, 0o555)


def plant_target_link_to_rootonly(st: Stage) -> None:
    _link(st, _examples_dir(st) / "demo", st.rootonly)


def plant_target_empty_folder(st: Stage) -> None:
    _own_dir(st, _examples_dir(st) / "demo")


def plant_symlink_inside_target(st: Stage) -> None:
    target = _examples_dir(st) / "demo"
    _own_dir(st, target)
    _link(st, target / "hello.ipynb", st.rootonly / "passwd")
    _own_dir(st, target / "lib")
    _link(st, target / "lib" / "deep", st.rootonly)


def plant_fifo_as_provenance(st: Stage) -> None:
    target = _examples_dir(st) / "demo"
    _own_dir(st, target)
    os.mkfifo(target / homes.PROVENANCE_FILE)
    os.lchown(target / homes.PROVENANCE_FILE, st.alice.uid, st.alice.gid)


REFUSED = {
    plant_examples_to_rootonly: "cannot write into ~/examples (a link to",
    plant_examples_to_other_home: "cannot write into ~/examples (a link to",
    plant_examples_to_root_group_folder: "cannot write into ~/examples (a link to",
    plant_examples_dangling_into_rootonly: "is not a folder",
    plant_examples_as_fifo: "~/examples is not a folder",
    plant_examples_read_only: "cannot write into ~/examples as you",
}
ELSEWHERE = [plant_target_link_to_rootonly, plant_target_empty_folder,
             plant_symlink_inside_target, plant_fifo_as_provenance]


@needs_root
@pytest.mark.parametrize("plant", list(REFUSED), ids=lambda f: f.__name__[6:])
def test_it_refuses_a_planted_link_with_a_clear_message_and_writes_nothing(
        st: Stage, source: Path, plant: Callable[[Stage], None]) -> None:
    plant(st)
    before = snapshot(st.root)
    with pytest.raises(homes.CopyError) as raised:
        homes.copy_into_home(plan_for(st.alice, source, st), as_user=True, timeout=20)
    assert REFUSED[plant] in str(raised.value)
    assert "try again" in str(raised.value)
    assert changes(before, snapshot(st.root)) == set()
    owners_are_right(st)


@needs_root
@pytest.mark.parametrize("plant", ELSEWHERE, ids=lambda f: f.__name__[6:])
def test_it_never_writes_through_what_is_already_there(
        st: Stage, source: Path, plant: Callable[[Stage], None]) -> None:
    plant(st)
    before = snapshot(st.root)
    plan = plan_for(st.alice, source, st)
    folder = homes.copy_into_home(plan, as_user=True, timeout=20)
    assert folder == st.alice.examples / "demo-2"
    assert_complete_copy(folder, st.alice, plan.job_id)
    new = str(st.alice.examples / "demo-2")
    assert {p for p in changes(before, snapshot(st.root))
            if p != new and not p.startswith(new + "/")} == {str(st.alice.examples)}
    owners_are_right(st)


@needs_root
def test_it_ignores_a_planted_leftover_of_its_own_job(st: Stage, source: Path) -> None:
    plan = plan_for(st.alice, source, st)
    _link(st, _examples_dir(st) / (plan.temp_prefix + "0000"), st.rootonly)
    before = snapshot(st.rootonly)
    folder = homes.copy_into_home(plan, as_user=True)
    assert_complete_copy(folder, st.alice, plan.job_id)
    assert snapshot(st.rootonly) == before


# --- what another user can do ---------------------------------------------------------------


def _hold_as(account: Account, hold: Callable[[], object]) -> int:
    """Fork a process that becomes `account`, runs `hold`, says so and waits to be killed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(account.gid)
            os.setuid(account.uid)
            kept = hold()  # noqa: F841 - whatever it opened stays open until the kill
            os.write(w, b"ok")
            while True:
                time.sleep(60)
        finally:
            os._exit(1)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        assert fh.read(2) == b"ok", "the other user's process did not get that far"
    return pid


@needs_root
def test_it_copies_while_another_user_locks_the_use_folder(st: Stage, source: Path) -> None:
    examples = _examples_dir(st)  # alice's, 0755: bob may open it, and so lock it

    def lock_alices_folders() -> list[int]:
        fds = [os.open(path, os.O_RDONLY | os.O_DIRECTORY) for path in (examples, st.alice.home)]
        for fd in fds:
            fcntl.flock(fd, fcntl.LOCK_EX)
        return fds

    bob = _hold_as(st.bob, lock_alices_folders)
    try:
        plan = plan_for(st.alice, source, st)
        folder = homes.copy_into_home(plan, as_user=True, timeout=10)
    finally:
        os.kill(bob, signal.SIGKILL)
        os.waitpid(bob, 0)
    assert_complete_copy(folder, st.alice, plan.job_id)
    assert sorted(os.listdir(examples)) == ["demo"]


# --- races -----------------------------------------------------------------------------------


def _as_user_forever(account: Account, loop: Callable[[], None]) -> int:
    """Fork a process that becomes `account` and runs `loop` until it is killed."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(account.gid)
            os.setuid(account.uid)
            while True:
                loop()
        finally:
            os._exit(0)
    return pid


def _race(st: Stage, source: Path, loop: Callable[[], None], copies: int) -> list[object]:
    libc_racer = _as_user_forever(st.alice, loop)
    outcomes: list[object] = []
    try:
        for n in range(copies):
            try:
                outcomes.append(homes.copy_into_home(
                    plan_for(st.alice, source, st, folder=f"race{n}"), as_user=True, timeout=20))
            except homes.CopyError as exc:
                outcomes.append(exc)
    finally:
        os.kill(libc_racer, signal.SIGKILL)
        os.waitpid(libc_racer, 0)
    print(f"race: {sum(not isinstance(o, Exception) for o in outcomes)} of {copies} succeeded")
    return outcomes


@needs_root
def test_it_survives_a_racer_flipping_the_use_folder_into_a_link(st: Stage,
                                                                 source: Path) -> None:
    examples = _examples_dir(st)
    flip = st.alice.home / "flip"
    _link(st, flip, st.rootonly)
    libc = ctypes.CDLL(None, use_errno=True)
    a, b = os.fsencode(examples), os.fsencode(flip)

    def exchange() -> None:
        libc.renameat2(-100, a, -100, b, 2)  # RENAME_EXCHANGE: real folder <-> link

    before = [snapshot(p) for p in st.sentinels()]
    outcomes = _race(st, source, exchange, 40)
    assert [snapshot(p) for p in st.sentinels()] == before
    owners_are_right(st)
    real = examples if not examples.is_symlink() else flip
    for n, outcome in enumerate(outcomes):
        if isinstance(outcome, Exception):
            assert "try again" in str(outcome).lower(), outcome
        else:
            assert_complete_copy(real / f"race{n}", st.alice, homes.copied_by(real / f"race{n}"))


@needs_root
def test_it_survives_a_racer_swapping_the_temporary_folder(st: Stage, source: Path) -> None:
    examples = _examples_dir(st)

    def swap() -> None:
        for name in os.listdir(examples):
            if ".tmp-" in name and not name.endswith(".moved"):
                try:
                    os.rename(examples / name, examples / f"{name}.moved")
                    os.symlink(st.rootonly, examples / name)
                except OSError:
                    pass

    before = [snapshot(p) for p in st.sentinels()]
    outcomes = _race(st, source, swap, 25)
    assert [snapshot(p) for p in st.sentinels()] == before
    owners_are_right(st)
    for n, outcome in enumerate(outcomes):
        if isinstance(outcome, Exception):
            assert "try again" in str(outcome).lower(), outcome
        else:
            assert not (examples / f"race{n}").is_symlink()
            assert_complete_copy(examples / f"race{n}", st.alice,
                                 homes.copied_by(examples / f"race{n}"))


# --- whole or absent, once per job -----------------------------------------------------------


@pytest.fixture
def writer(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Account, bool]:
    """Alice when running as root; otherwise the current user writing into a private home."""
    if os.geteuid() == 0:
        st = request.getfixturevalue("st")
        return st.alice, True
    me = pwd.getpwuid(os.getuid())
    return Account(me.pw_name, me.pw_uid, me.pw_gid, tmp_path / "home" / me.pw_name), False


def _plan(account: Account, source: Path, **kwargs: object) -> homes.CopyPlan:
    return homes.CopyPlan(username=account.name, source=source, parent=account.examples,
                          folder_name="demo", job_id=str(uuid.uuid4()),
                          provenance={"slug": "demo"}, **kwargs)  # type: ignore[arg-type]


def plant_leftover(account: Account, plan: homes.CopyPlan) -> Path:
    """What a worker killed mid-copy leaves: the job's temporary folder, half written."""
    leftover = account.examples / (plan.temp_prefix + "dead")
    (leftover / "lib").mkdir(parents=True)
    (leftover / "hello.ipynb").write_bytes(b'{"cel')
    for path in (account.examples, leftover, leftover / "lib", leftover / "hello.ipynb"):
        os.chown(path, account.uid, account.gid)
    return leftover


def test_it_leaves_a_folder_whole_or_absent_and_a_retry_clears_the_leftovers(
        writer: tuple[Account, bool], source: Path) -> None:
    account, as_user = writer
    plan = _plan(account, source, delay=0.2)
    with pytest.raises(homes.CopyError, match="did not finish"):
        homes.copy_into_home(plan, as_user=as_user, timeout=0.5)  # killed mid-copy
    # The copy it had to stop is cleared at once: the job ends with nothing half-written.
    assert os.listdir(account.examples) == []
    # A worker killed mid-copy cannot clear; the next attempt of the job does.
    plant_leftover(account, plan)
    plan.delay = 0.0
    folder = homes.copy_into_home(plan, as_user=as_user)
    assert_complete_copy(folder, account, plan.job_id)
    assert os.listdir(account.examples) == ["demo"]
    # Once more for the same job (a redelivered task): the same folder, no second copy.
    assert homes.copy_into_home(plan, as_user=as_user) == folder
    assert os.listdir(account.examples) == ["demo"]


def test_it_leaves_one_whole_copy_when_two_attempts_of_a_job_overlap(
        writer: tuple[Account, bool], source: Path) -> None:
    account, as_user = writer
    plan = _plan(account, source, delay=0.2)
    first: dict[str, object] = {}

    def stalled_attempt() -> None:  # its worker stalled past the lease; its copy goes on
        try:
            first["folder"] = homes.copy_into_home(plan, as_user=as_user, timeout=60)
        except homes.CopyError as exc:
            first["error"] = str(exc)

    thread = threading.Thread(target=stalled_attempt)
    thread.start()
    try:
        def under_way() -> bool:
            names = os.listdir(account.examples) if account.examples.is_dir() else []
            return any(n.startswith(plan.temp_prefix) and os.listdir(account.examples / n)
                       for n in names)

        wait_for(under_way, timeout=30, what="the first attempt to be copying")
        second = homes.copy_into_home(dataclasses.replace(plan, delay=0.0), as_user=as_user)
    finally:
        thread.join(60)
    assert_complete_copy(second, account, plan.job_id)
    assert os.listdir(account.examples) == [second.name]  # one copy, nothing half-written
    # The attempt that was overtaken either found the copy or failed cleanly.
    assert first.get("folder") == second or "try again" in str(first.get("error")).lower()


def test_it_gives_a_second_use_a_new_name(writer: tuple[Account, bool], source: Path) -> None:
    account, as_user = writer
    first = homes.copy_into_home(_plan(account, source), as_user=as_user)
    second = homes.copy_into_home(_plan(account, source), as_user=as_user)
    assert (first.name, second.name) == ("demo", "demo-2")


def test_it_stops_the_copy_when_the_heartbeat_fails(writer: tuple[Account, bool],
                                                     source: Path) -> None:
    account, as_user = writer
    beats: list[float] = []

    def beat() -> None:
        beats.append(time.monotonic())
        if len(beats) == 2:
            raise services.LeaseLost("taken over")

    with pytest.raises(services.LeaseLost):
        homes.copy_into_home(_plan(account, source, delay=0.2), as_user=as_user,
                             heartbeat=beat, heartbeat_every=0.05)
    assert len(beats) == 2
    assert "demo" not in os.listdir(account.examples)


# --- messages a person can act on ------------------------------------------------------------


def assert_plain(message: str) -> None:
    """Words for a person: no path under /proc, no Python repr, no errno code."""
    for sign in ("/proc/", "Errno", "[(", "Error(", "Error:", "'/"):
        assert sign not in message, message


@pytest.mark.parametrize("code, says", [
    (errno.EDQUOT, "Your home is over its quota; free some space and try again."),
    (errno.ENOSPC, "The home filesystem is full; try again later or tell the centre's support."),
    (errno.EACCES, "The gallery cannot write into ~/examples as you (permission denied)."),
    (errno.EROFS, "~/examples is on a read-only filesystem; the gallery cannot copy there."),
], ids=["EDQUOT", "ENOSPC", "EACCES", "EROFS"])
def test_it_says_what_went_wrong_in_the_home_in_plain_words(
        writer: tuple[Account, bool], source: Path, monkeypatch: pytest.MonkeyPatch, code: int,
        says: str) -> None:
    account, as_user = writer
    # The copy is forked from this process (not the helper), so it writes with this fault:
    # the filesystem refuses the second file the way a full disk, a quota or a mount would.
    monkeypatch.setattr(filesystem._helper, "usable", lambda: False)
    copy2, written = shutil.copy2, []

    def refusing_copy(src: str, dst: str) -> object:
        if written:
            raise OSError(code, os.strerror(code), dst)
        written.append(dst)
        return copy2(src, dst)

    monkeypatch.setattr(shutil, "copy2", refusing_copy)
    with pytest.raises(homes.CopyError) as raised:
        homes.copy_into_home(_plan(account, source), as_user=as_user)
    assert str(raised.value).startswith(says), raised.value
    assert_plain(str(raised.value))
    assert os.listdir(account.examples) == []  # nothing half-written


@pytest.fixture
def approved(django_capture_on_commit_callbacks) -> Example:  # type: ignore[no-untyped-def]
    """An approved example (the one `stage` makes), ready to be used."""
    with django_capture_on_commit_callbacks(execute=True):
        submission = stage(make_user("connor"))
    with django_capture_on_commit_callbacks(execute=True):
        services.approve_submission(submission=submission,
                                    reviewer=make_user("rita", reviewer=True))
    return Example.objects.get(pk=submission.example_id)


def use_as(account: Account, example: Example, capture) -> Job:  # type: ignore[no-untyped-def]
    with capture(execute=True):
        job = services.queue_use(example=example, user=make_user(account.name))
    job.refresh_from_db()
    return job


@pytest.fixture
def small_examples(st: Stage) -> Iterator[Path]:
    """Alice's ~/examples on a filesystem of its own, one page (4 KiB) in size."""
    examples = _examples_dir(st)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=4k,mode=0755,uid={st.alice.uid},gid={st.alice.gid}",
         f"gallery-test-{TAG}", str(examples)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield examples
    finally:
        subprocess.run(["umount", "-l", str(examples)], capture_output=True)


@needs_root
@pytest.mark.django_db
def test_it_says_in_plain_words_that_the_home_filesystem_is_full(
        st: Stage, small_examples: Path, approved: Example,
        django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    job = use_as(st.alice, approved, django_capture_on_commit_callbacks)
    assert job.state == Job.State.FAILED
    assert job.message == ("The home filesystem is full; try again later or tell the centre's "
                           "support.")
    assert os.listdir(small_examples) == []  # nothing half-written on the full filesystem


@needs_root
@pytest.mark.django_db
def test_it_tells_a_user_whose_home_is_missing_to_ask_the_centre(
        st: Stage, approved: Example, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    shutil.rmtree(st.alice.home)
    job = use_as(st.alice, approved, django_capture_on_commit_callbacks)
    assert job.state == Job.State.FAILED
    assert job.message.startswith(f"Your home folder {st.alice.home} does not exist"), job.message
    assert "centre's support" in job.message
    assert "a folder you own" not in job.message  # nothing the user could do themselves
    assert_plain(job.message)
    assert not st.alice.home.exists()


# --- through the service ---------------------------------------------------------------------


@needs_root
@pytest.mark.django_db
def test_it_makes_a_use_as_the_user_through_the_service(
        st: Stage, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    user = make_user(st.alice.name)
    reviewer = make_user("rita", reviewer=True)
    with django_capture_on_commit_callbacks(execute=True):
        submission = stage(make_user("connor"), data_links=[
            {"name": "big", "target": str(st.shared / "big.nc")}])
    with django_capture_on_commit_callbacks(execute=True):
        services.approve_submission(submission=submission, reviewer=reviewer)
    example = Example.objects.get(pk=submission.example_id)
    with django_capture_on_commit_callbacks(execute=True):
        job = services.queue_use(example=example, user=user, folder_name="workshop")
    job.refresh_from_db()
    assert job.state == Job.State.DONE, job.message
    copy = st.alice.examples / "workshop"
    assert job.result["path"] == "~/examples/workshop"
    assert job.result["lab_url"].endswith(f"/user/{st.alice.name}/lab/tree/examples/workshop/"
                                          "hello.ipynb")
    for path in [copy, *copy.rglob("*")]:
        assert (os.lstat(path).st_uid, os.lstat(path).st_gid) == (st.alice.uid, st.alice.gid)
    assert os.readlink(copy / "data" / "big") == str(st.shared / "big.nc")
    assert homes.copied_by(copy) == str(job.pk)
    owners_are_right(st)


# --- the helper that forks the copies --------------------------------------------------------


def test_it_forks_copies_from_a_small_helper_and_restarts_it(writer: tuple[Account, bool],
                                                            source: Path) -> None:
    account, as_user = writer
    homes.copy_into_home(_plan(account, source), as_user=as_user)
    helper = filesystem._helper.process
    assert helper is not None and helper.poll() is None
    with open(f"/proc/{helper.pid}/status") as fh:
        rss_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    assert rss_kb < 60_000  # a fresh interpreter, not a copy of this process
    helper.kill()
    helper.wait()
    second = homes.copy_into_home(_plan(account, source), as_user=as_user)
    assert second.name == "demo-2"
    assert filesystem._helper.process is not None and filesystem._helper.process.pid != helper.pid


def test_it_copies_without_the_helper(writer: tuple[Account, bool], source: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    account, as_user = writer
    monkeypatch.setattr(filesystem._helper, "usable", lambda: False)
    plan = _plan(account, source)
    folder = homes.copy_into_home(plan, as_user=as_user)
    assert_complete_copy(folder, account, plan.job_id)


# --- the kernel of the example's environment --------------------------------------------------

KERNEL = {"name": "gallery-demo-0123456789",
          "spec": {"argv": ["/srv/envs/k/bin/python", "-m", "ipykernel_launcher", "-f",
                            "{connection_file}"],
                   "display_name": "Demo (Python 3.11, gallery)", "language": "python"}}


def kernel_dir(account: Account) -> Path:
    return account.home / ".local" / "share" / "jupyter" / "kernels" / KERNEL["name"]


@needs_root
def test_it_installs_the_kernel_as_the_user(st: Stage, source: Path) -> None:
    plan = plan_for(st.alice, source, st)
    plan.kernel = KERNEL
    before = snapshot(st.root)
    homes.copy_into_home(plan, as_user=True)
    spec = json.loads((kernel_dir(st.alice) / "kernel.json").read_text())
    assert spec == KERNEL["spec"]
    assert sorted(os.listdir(kernel_dir(st.alice))) == ["kernel.json"]  # no temporary file
    assert all(p.startswith(str(st.alice.home)) for p in changes(before, snapshot(st.root)))
    owners_are_right(st)
    # A second Use of it writes the same kernelspec again (a newer one replaces it).
    again = plan_for(st.alice, source, st, folder="again")
    again.kernel = {**KERNEL, "spec": {**KERNEL["spec"], "display_name": "Newer"}}
    homes.copy_into_home(again, as_user=True)
    assert json.loads((kernel_dir(st.alice) / "kernel.json").read_text())["display_name"] \
        == "Newer"


def plant_local_link_to_other_home(st: Stage) -> None:
    _link(st, st.alice.home / ".local", st.bob.home)


def plant_kernels_link_to_rootonly(st: Stage) -> None:
    folder = st.alice.home / ".local" / "share" / "jupyter"
    folder.mkdir(parents=True)
    for path in (st.alice.home / ".local", folder.parent, folder):
        os.chown(path, st.alice.uid, st.alice.gid)
    _link(st, folder / "kernels", st.rootonly)


def plant_kernel_folder_as_file(st: Stage) -> None:
    folder = st.alice.home / ".local" / "share" / "jupyter" / "kernels"
    folder.mkdir(parents=True)
    (folder / KERNEL["name"]).write_text("not a folder")
    for path in [st.alice.home / ".local", *(st.alice.home / ".local").rglob("*")]:
        os.chown(path, st.alice.uid, st.alice.gid)


@needs_root
@pytest.mark.parametrize("plant", [plant_local_link_to_other_home, plant_kernels_link_to_rootonly,
                                   plant_kernel_folder_as_file], ids=lambda f: f.__name__[6:])
def test_it_refuses_a_planted_link_on_the_kernel_path_and_copies_nothing(
        st: Stage, source: Path, plant: Callable[[Stage], None]) -> None:
    plant(st)
    before = snapshot(st.root)
    plan = plan_for(st.alice, source, st)
    plan.kernel = KERNEL
    with pytest.raises(homes.CopyError) as raised:
        homes.copy_into_home(plan, as_user=True, timeout=20)
    assert "kernel could not be installed" in str(raised.value)
    assert "symbolic link or not a folder" in str(raised.value)
    assert changes(before, snapshot(st.root)) == set()
    owners_are_right(st)
    # Only her Use fails: bob's goes ahead.
    other = plan_for(st.bob, source, st)
    other.kernel = KERNEL
    homes.copy_into_home(other, as_user=True)
    assert (kernel_dir(st.bob) / "kernel.json").is_file()


@needs_root
def test_it_replaces_a_planted_link_at_kernel_json_without_following_it(
        st: Stage, source: Path) -> None:
    folder = kernel_dir(st.alice)
    folder.mkdir(parents=True)
    for path in [st.alice.home / ".local", *(st.alice.home / ".local").rglob("*")]:
        os.chown(path, st.alice.uid, st.alice.gid)
    _link(st, folder / "kernel.json", st.rootonly / "passwd")
    before = snapshot(st.rootonly)
    plan = plan_for(st.alice, source, st)
    plan.kernel = KERNEL
    homes.copy_into_home(plan, as_user=True)
    assert not (folder / "kernel.json").is_symlink()
    assert json.loads((folder / "kernel.json").read_text()) == KERNEL["spec"]
    assert changes(before, snapshot(st.rootonly)) == set()
    owners_are_right(st)

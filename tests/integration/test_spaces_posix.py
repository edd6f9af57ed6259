"""Shared spaces on a real volume: real users, real ACLs, the kernel says yes or no.

Everything here is real: system users made with ``useradd``, a spaces root that is a
bind mount of a folder on an ACL-capable filesystem, POSIX groups made by hometier with
``groupadd``/``gpasswd``, and probes — processes running as a user, started once and
kept running like their server — that report ``ok`` or the errno of each operation.
No Hub here (members are named users; the Hub's groups are in tests/e2e).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.spaces import (
    USER_PYTHON,
    PartsMissing,
    Probe,
    SysUsers,
    bind_root,
    check_parts,
    getfacl_tree,
    make_world_dir,
    unbind,
)
from hometier.spaces import manage, sweep
from hometier.spaces.acl import Grants
from hometier.spaces.context import SpacesContext
from hometier.spaces.names import InvalidSpaceName
from hometier.spaces.posix import NotAMountPoint, UserMap
from hometier.state import open_database
from hometier.state import spaces as q

pytestmark = [pytest.mark.root]


@pytest.fixture
def world() -> Iterator[tuple[SpacesContext, SysUsers]]:
    try:
        check_parts()
    except PartsMissing as exc:
        pytest.skip(str(exc))
    tmp_path = make_world_dir()
    root = tmp_path / "spaces"
    homes = tmp_path / "homes"
    homes.mkdir()
    users = SysUsers(homes)
    try:
        bind_root(root)
    except PartsMissing as exc:
        pytest.skip(str(exc))
    base = 62000 + int(users.tag, 16) % 2000
    sp = SpacesContext(
        db=open_database(f"sqlite:///{tmp_path / 'state.db'}"),
        root=root,
        users=UserMap("{username}"),
        group_prefix=users.group_prefix,
        gid_range=(base, base + 50),
        store_url=f"file://{tmp_path / 'repo'}",
        secret_store_url=f"file://{tmp_path / 'secret'}",
        homes=homes,
    )
    probes: list[Probe] = []
    sp.probes = probes  # type: ignore[attr-defined]
    try:
        yield sp, users
    finally:
        for p in probes:
            p.close()
        sp.close()
        sp.db.dispose()
        unbind(root)
        users.close()
        shutil.rmtree(tmp_path, ignore_errors=True)


def probe(sp: SpacesContext, users: SysUsers, short: str) -> Probe:
    p = Probe(users.names[short])
    sp.probes.append(p)  # type: ignore[attr-defined]
    return p


def members(users: SysUsers, **roles: str) -> list[tuple[str, str, str]]:
    return [("user", users.names[k], r) for k, r in roles.items()]


def test_private_space_readers_read_writers_write_others_get_eacces(world):
    sp, users = world
    for short in ("own", "wri", "rea", "non"):
        users.add(short)
    space = manage.create(
        sp,
        name="proj-a",
        level="private",
        owner=users.names["own"],
        members=members(users, wri="writer", rea="reader"),
        actor="test",
    )
    top = sp.root / space.path
    w, r, n = (probe(sp, users, s) for s in ("wri", "rea", "non"))
    assert w.try_("create", top / "data.csv") == "ok"
    assert w.try_("mkdir", top / "sub") == "ok"
    assert w.try_("create", top / "sub" / "deep.txt") == "ok"
    # Readers read everything a writer made, through inherited default ACLs ...
    assert r.try_("read", top / "data.csv") == "ok"
    assert r.try_("read", top / "sub" / "deep.txt") == "ok"
    assert r.try_("list", top / "sub") == "ok"
    # ... and cannot write, create or delete anything.
    assert r.try_("write", top / "data.csv") == "EACCES"
    assert r.try_("create", top / "mine.txt") == "EACCES"
    assert r.try_("create", top / "sub" / "mine.txt") == "EACCES"
    assert r.try_("unlink", top / "data.csv") == "EACCES"
    # Non-members cannot even enter.
    for op, path in (("list", top), ("read", top / "data.csv"), ("stat", top / "sub")):
        assert n.try_(op, path) == "EACCES", (op, path)
    # New files inherit the space's default ACL (as Debian's getfacl reads it); the mask
    # the kernel derives from the creator's mode keeps files without an x bit.
    acl = subprocess.run(
        ["getfacl", "-n", "-p", str(top / "sub" / "deep.txt")], capture_output=True, text=True
    ).stdout
    assert f"user:{users.uid('rea')}:r-x\t#effective:r--" in acl
    assert f"user:{users.uid('wri')}:rwx\t#effective:rw-" in acl
    assert "group::---" in acl and "other::---" in acl
    # The POSIX group exists, owns the folder and lists the members.
    g = grp.getgrgid(space.gid)
    assert g.gr_name.startswith(users.group_prefix)
    assert set(g.gr_mem) == {users.names[s] for s in ("own", "wri", "rea")}
    assert top.stat().st_gid == space.gid and top.stat().st_mode & 0o2000


def test_public_space_everyone_reads_only_writers_write(world):
    sp, users = world
    for short in ("own", "any"):
        users.add(short)
    space = manage.create(
        sp, name="datasets", level="public", owner=users.names["own"], actor="test"
    )
    top = sp.root / space.path
    o, a = probe(sp, users, "own"), probe(sp, users, "any")
    assert o.try_("create", top / "iris.csv") == "ok"
    assert a.try_("read", top / "iris.csv") == "ok"
    assert a.try_("write", top / "iris.csv") == "EACCES"
    assert a.try_("create", top / "x") == "EACCES"


def test_membership_changes_take_effect_without_a_restart(world):
    sp, users = world
    for short in ("own", "wri", "rea"):
        users.add(short)
    space = manage.create(
        sp,
        name="lab",
        level="private",
        owner=users.names["own"],
        members=members(users, wri="writer", rea="reader"),
        actor="test",
    )
    top = sp.root / space.path
    w, r = probe(sp, users, "wri"), probe(sp, users, "rea")
    assert w.try_("create", top / "w.txt") == "ok"
    assert w.try_("mkdir", top / "wdir") == "ok"
    assert r.try_("read", top / "w.txt") == "ok"
    # The reader leaves, the writer becomes a reader: the same processes, no restart.
    manage.set_members(sp, space, members(users, wri="reader"), actor="test")
    assert r.try_("read", top / "w.txt") == "EACCES"
    assert r.try_("list", top) == "EACCES"
    assert w.try_("read", top / "w.txt") == "ok"
    # Being the owner of a file is no way around the ACL: it went to root.
    assert w.try_("write", top / "w.txt") == "EACCES"
    assert w.try_("create", top / "wdir" / "more") == "EACCES"
    assert (top / "w.txt").stat().st_uid == 0
    # Back as a writer: writes again.
    manage.set_members(sp, space, members(users, wri="writer"), actor="test")
    assert w.try_("write", top / "w.txt") == "ok"
    # Every change is in the audit log.
    kinds = [
        (e.kind, e.user, (e.detail or {}).get("role")) for e in q.space_events(sp.db, space.id)
    ]
    assert ("space.revoke", users.names["rea"], "reader") in kinds
    assert ("space.role", users.names["wri"], "reader") in kinds
    assert ("space.role", users.names["wri"], "writer") in kinds
    assert ("space.grant", users.names["rea"], "reader") in kinds


def test_secret_space_leaves_no_name_on_the_host(world):
    sp, users = world
    for short in ("own", "non"):
        users.add(short)
    space = manage.create(
        sp, name="merger-x", level="secret", owner=users.names["own"], actor="test"
    )
    assert space.path.startswith(".secret/") and "merger" not in space.path
    n = probe(sp, users, "non")
    assert n.try_("list", sp.root / ".secret") == "EACCES"
    assert n.try_("stat", sp.root / "merger-x") == "ENOENT"
    assert n.try_("list", sp.root / space.path) == "EACCES"
    assert grp.getgrgid(space.gid).gr_mem == []  # /etc/group is world-readable
    assert "merger" not in Path("/etc/group").read_text()
    o = probe(sp, users, "own")
    assert o.try_("create", sp.root / space.path / "plan.txt") == "ok"
    # Private → secret and back moves the folder between its two names.
    manage.update(sp, space, {"level": "private"}, actor="test")
    assert (sp.root / "merger-x" / "plan.txt").exists()
    manage.update(sp, q.get_space(sp.db, "merger-x"), {"level": "secret"}, actor="test")
    assert not (sp.root / "merger-x").exists() and (sp.root / space.path / "plan.txt").exists()


@pytest.mark.parametrize(
    "name",
    [
        "../etc",
        "/etc",
        "a/b",
        ".hidden",
        "..",
        "x" * 49,
        "Caps",
        "café",
        "ｄａｔａ",
        "sp ace",
        "",
        "a\0b",
        "-lead",
        "secret",
        "new\nline",
    ],
)
def test_hostile_space_names_are_refused_and_change_nothing(world, name):
    sp, users = world
    users.add("own")
    before = sorted(os.listdir(sp.root))
    groups_before = len(grp.getgrall())
    with pytest.raises(InvalidSpaceName):
        manage.create(sp, name=name, level="private", owner=users.names["own"], actor="t")
    assert sorted(os.listdir(sp.root)) == before
    assert q.list_spaces(sp.db) == []
    assert len(grp.getgrall()) == groups_before


def test_a_root_that_is_not_a_mount_point_is_refused(tmp_path):
    sp = SpacesContext(db=open_database("sqlite://"), root=tmp_path)
    with pytest.raises(NotAMountPoint):
        manage.create(sp, name="x", level="public", owner="a", actor="t")


# --- the race: a member swaps names for symlinks while hometier writes ACLs ----------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

ATTACKER = r"""
import ctypes, ctypes.util, os, sys, time
libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
top, canary, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
os.chdir(top)
os.makedirs("d/inner", exist_ok=True)
for i in range(20):
    open(f"d/f{i}", "w").write("x")
    open(f"d/inner/g{i}", "w").write("y")
for n, t in (("l", canary), ("d/lf", canary + "/secret.txt")):
    try:
        os.symlink(t, n)
    except FileExistsError:
        pass
swaps = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    # RENAME_EXCHANGE (2): the folder d and the link to the canary trade places.
    if libc.renameat2(-100, b"d", -100, b"l", 2) == 0:
        swaps += 1
    try:
        os.rename("d/f3", "d/tmp")
        os.symlink(canary + "/secret.txt", "d/f3")
        os.unlink("d/f3")
        os.rename("d/tmp", "d/f3")
        swaps += 1
    except OSError:
        pass
print(swaps)
"""


def tree_digest(path: Path) -> str:
    """Names, types, owners, modes, contents and ACLs of everything under ``path``."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(path)):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p}:{st.st_mode}:{st.st_uid}:{st.st_gid}:{st.st_size}".encode())
            if p.is_file() and not p.is_symlink():
                h.update(p.read_bytes())
    h.update(getfacl_tree(path).encode())
    return h.hexdigest()


def test_symlink_swaps_during_an_acl_sweep_never_reach_outside(world):
    sp, users = world
    tmp_path = sp.root.parent
    for short in ("own", "att", "rea"):
        users.add(short)
    canary = tmp_path / "canary"
    (canary / "sub").mkdir(parents=True)
    (canary / "secret.txt").write_text("root's")
    (canary / "sub" / "x").write_text("x")
    os.chmod(canary, 0o755)
    before = tree_digest(canary)
    space = manage.create(
        sp,
        name="race",
        level="private",
        owner=users.names["own"],
        members=members(users, att="writer", rea="reader"),
        actor="test",
    )
    top = sp.root / space.path
    pw = __import__("pwd").getpwnam(users.names["att"])
    seconds = 6.0
    attacker = subprocess.Popen(
        [USER_PYTHON, "-I", "-c", ATTACKER, str(top), str(canary), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=os.getgrouplist(pw.pw_name, pw.pw_gid),
    )
    time.sleep(0.3)  # let it build its tree
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    totals = sweep.SweepStats()
    rounds = 0
    grants = [
        Grants(frozenset({users.uid("att")}), frozenset({users.uid("rea")})),
        Grants(frozenset({users.uid("att"), users.uid("rea")})),
    ]
    try:
        end = time.monotonic() + seconds - 0.5
        while time.monotonic() < end:
            s = sweep.sweep(fd, grants[rounds % 2])
            rounds += 1
            for f in ("raced", "moved", "changed", "files"):
                setattr(totals, f, getattr(totals, f) + getattr(s, f))
    finally:
        os.close(fd)
        out, _ = attacker.communicate(timeout=30)
    swaps = int(out.strip() or 0)
    print(
        f"\n{rounds} sweeps, {totals.files} files visited, {totals.changed} ACLs written; "
        f"attacker: {swaps} swaps; a swap landed mid-sweep {totals.raced + totals.moved} "
        f"times (raced {totals.raced}, moved {totals.moved})"
    )
    assert tree_digest(canary) == before
    assert swaps > 100 and rounds > 10
    assert totals.raced + totals.moved > 0, "no swap ever landed mid-sweep: the race proved nothing"


# --- tiering: an idle space goes to its repository and comes back -----------------


def test_archive_and_restore_keep_every_acl_byte_for_byte(world, request):
    sp, users = world
    for short in ("own", "wri", "rea"):
        users.add(short)
    space = manage.create(
        sp,
        name="cold",
        level="private",
        owner=users.names["own"],
        members=members(users, wri="writer", rea="reader"),
        actor="test",
    )
    top = sp.root / space.path
    w = probe(sp, users, "wri")
    for rel in ("a.csv", "nested", "nested/b.txt", "nested/deeper", "nested/deeper/c.bin"):
        op = "mkdir" if "." not in rel.rsplit("/", 1)[-1] else "create"
        assert w.try_(op, top / rel) == "ok", rel
    # A member's own tightening of one of their files is part of what must come back.
    subprocess.run(["setfacl", "-m", "m::r--", str(top / "nested" / "b.txt")], check=True)
    from hometier.spaces import tiering

    before = getfacl_tree(top)
    done = tiering.archive_space(sp, q.get_space(sp.db, "cold"), actor="test")
    assert done.outcome == "archived"
    assert sorted(os.listdir(top)) == [tiering.NOTICE]
    r = probe(sp, users, "rea")
    assert r.try_("read", top / tiering.NOTICE) == "ok"
    assert w.try_("create", top / "while-archived") == "EACCES"  # read-only meanwhile
    # From the repository, not the quarantine: that is what tiering is for.
    tiering.purge_quarantine(sp)  # too young: kept
    for name in os.listdir(sp.root / ".hometier" / "quarantine"):
        shutil.rmtree(sp.root / ".hometier" / "quarantine" / name)
    back = tiering.restore_space(sp, q.get_space(sp.db, "cold"), actor="test")
    assert back.outcome == "restored" and back.source == "repository"
    after = getfacl_tree(top)
    assert r.try_("read", top / "nested" / "deeper" / "c.bin") == "ok"
    assert w.try_("write", top / "a.csv") == "ok"
    assert after == before
    states = [
        (e.from_state, e.to_state)
        for e in q.space_events(sp.db, space.id)
        if e.kind == "space.state"
    ]
    assert states[::-1] == [
        ("active", "archiving"),
        ("archiving", "archived"),
        ("archived", "restoring"),
        ("restoring", "active"),
    ]


def test_a_secret_space_is_archived_into_a_repository_of_its_own(world):
    sp, users = world
    users.add("own")
    pub = manage.create(sp, name="open", level="public", owner=users.names["own"], actor="t")
    sec = manage.create(sp, name="hush", level="secret", owner=users.names["own"], actor="t")
    for s in (pub, sec):
        (sp.root / s.path / "same.txt").write_text("identical content in both")
    from hometier.spaces import tiering

    tiering.archive_space(sp, q.get_space(sp.db, "open"), actor="t")
    tiering.archive_space(sp, q.get_space(sp.db, "hush"), actor="t")
    secret_repo = sp.repository(q.get_space(sp.db, "hush"))
    shared_repo = sp.repository(q.get_space(sp.db, "open"))
    assert secret_repo.store.url != shared_repo.store.url
    assert secret_repo.config.id != shared_repo.config.id  # own key, own dedup domain
    assert str(sp.secret_store_url).split("://")[1] in secret_repo.store.url
    assert sec.key in secret_repo.store.url and "hush" not in secret_repo.store.url
    assert [s.user for s in shared_repo.list_snapshots()] == [pub.key]
    # Both bring their files back.
    for name in ("open", "hush"):
        tiering.restore_space(sp, q.get_space(sp.db, name), actor="t")
    assert (sp.root / sec.path / "same.txt").read_text() == "identical content in both"


# --- software spaces and quotas --------------------------------------------------

LMOD_INIT = Path("/usr/share/lmod/lmod/init")


def test_software_space_module_load_works_in_a_terminal_and_a_kernel(world):
    if not (LMOD_INIT / "bash").exists():
        pytest.skip("Lmod is not installed (apt-get install lmod)")
    sp, users = world
    for short in ("mnt", "usr"):
        users.add(short)
    space = manage.create(
        sp, name="bio", level="public", kind="software", owner=users.names["mnt"], actor="test"
    )
    m = probe(sp, users, "mnt")
    top = sp.root / space.path
    assert m.try_("mkdir", top / "modulefiles") == "ok"
    assert m.try_("mkdir", top / "modulefiles" / "hello") == "ok"
    lua = 'setenv("HELLO_FROM_SPACE", "yes")\nprepend_path("PATH", "/opt/hello/bin")\n'
    assert m.try_("create", top / "modulefiles" / "hello" / "1.0.lua", data=lua) == "ok"
    from hometier.spaces.mounts import mounts_for

    [mount] = [x for x in mounts_for(sp, users.names["usr"]) if x.name == "bio"]
    assert mount.read_only and mount.host_modulepath == f"{top}/modulefiles"
    # What the spawn hook sets in the server's environment reaches terminals and kernels.
    env = {"PATH": "/usr/bin:/bin", "HOME": "/", "MODULEPATH": mount.host_modulepath}
    pw = __import__("pwd").getpwnam(users.names["usr"])
    terminal = subprocess.run(
        ["bash", "-c", f". {LMOD_INIT}/bash && module load hello && echo $HELLO_FROM_SPACE"],
        env=env,
        capture_output=True,
        text=True,
        user=pw.pw_uid,
        group=pw.pw_gid,
        timeout=60,
    )
    assert terminal.stdout.strip() == "yes", terminal.stderr
    kernel = subprocess.run(
        [
            USER_PYTHON,
            "-c",
            f"exec(open('{LMOD_INIT}/env_modules_python.py').read()); module('load', 'hello'); "
            "import os; print(os.environ['HELLO_FROM_SPACE'])",
        ],
        env=env,
        capture_output=True,
        text=True,
        user=pw.pw_uid,
        group=pw.pw_gid,
        timeout=60,
    )
    assert kernel.stdout.strip() == "yes", kernel.stderr
    # Everyone loads it; nobody but its maintainers changes it.
    u = probe(sp, users, "usr")
    assert u.try_("write", top / "modulefiles" / "hello" / "1.0.lua") == "EACCES"


def test_a_space_over_its_quota_turns_read_only_until_it_is_under(world):
    from hometier.spaces.reconcile import measure_space

    sp, users = world
    users.add("wri")
    space = manage.create(
        sp, name="small", level="private", owner=users.names["wri"], quota_bytes=1000, actor="test"
    )
    top = sp.root / space.path
    w = probe(sp, users, "wri")
    assert w.try_("create", top / "big", data="x" * 5000) == "ok"
    space = measure_space(sp, q.get_space(sp.db, "small"))
    assert space.over_quota and space.used_bytes == 5000
    manage.apply_now(sp, space, actor="test")
    assert w.try_("create", top / "more") == "EACCES"
    assert w.try_("read", top / "big") == "ok"
    assert w.try_("unlink", top / "big") == "EACCES"  # an admin or a raised quota frees it
    manage.update(sp, space, {"quota_bytes": 10_000}, actor="test")
    assert w.try_("create", top / "more") == "ok"
    events = [e.kind for e in q.space_events(sp.db, space.id)]
    assert "space.quota" in events

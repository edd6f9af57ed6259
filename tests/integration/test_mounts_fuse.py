"""Bucket folders on a real host: s3fs (Debian) over SeaweedFS, real FUSE mounts, binds
and mount propagation, as root.

Each test registers folders on a fresh prefix, attaches servers with a ``MountManager``
whose mounts root and homes live in ``tmp_path``, and attacks: two servers sharing one
mount, read-only consumers, a daemon killed with SIGKILL or frozen with SIGSTOP while a
"container" (a process in a mount namespace of its own, bound as a slave like a Docker
``rslave`` volume) keeps reading, a file still open at the last release, a restart of
hometier (a manager in another process that exits without releasing), a crash between
the kernel and the database, two replicas attaching at once (PostgreSQL), bad
credentials, a missing bucket, an outage (a proxy answering 503) and a hostile user's
symlink. The finalizer lazily unmounts whatever is still mounted under ``tmp_path``,
top first, and stops every daemon it knows by PID.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from fixtures.servers import S3Server
from hometier.crypto import Sealer
from hometier.mounts import folders
from hometier.mounts.client import pid_alive, stop_pid
from hometier.mounts.host import HostLayout
from hometier.mounts.manager import MountManager
from hometier.mounts.mountinfo import MountTable
from hometier.mounts.objects import FolderObjects
from hometier.mounts.reconcile import check
from hometier.mounts.syscalls import umount
from hometier.state import mounts as q
from hometier.state.db import Database, open_database

pytestmark = [pytest.mark.root, pytest.mark.slow]

ALICE, BOB = 1000, 1001  # uids of the homes' owners
KEY = Fernet.generate_key().decode()


def _need_fuse() -> None:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this machine")
    if shutil.which("s3fs") is None:
        pytest.skip("s3fs is not installed: apt-get install s3fs (scripts/test does)")


def unmount_all_under(root: Path) -> list[str]:
    """Lazily unmount every mount at or below ``root``, newest first."""
    done = []
    for _ in range(200):
        here = MountTable.read().under(root)
        if not here:
            return done
        top = max(here, key=lambda e: e.mount_id)
        try:
            umount(top.mount_point, detach=True)
            done.append(top.mount_point)
        except OSError:
            break
    return done


@dataclass
class World:
    tmp: Path
    s3: S3Server
    db_url: str
    db: Database
    sealer: Sealer = field(default_factory=lambda: Sealer([KEY.encode()]))
    managers: list[MountManager] = field(default_factory=list)
    seq: int = 0
    homes: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hometier-homes-")))
    """Outside pytest's private tmp folder, so that users can reach their homes."""

    @property
    def root(self) -> Path:
        return self.tmp / "mnt"

    def manager(self, **kw: Any) -> MountManager:
        kw.setdefault("unmount_after", dt.timedelta(0))
        kw.setdefault("probe_timeout", 3.0)
        mgr = MountManager(self.db, HostLayout(self.root), self.sealer, host="h1", **kw)
        self.managers.append(mgr)
        return mgr

    def creds(self) -> dict[str, str]:
        return {"access_key_id": self.s3.access_key, "secret_access_key": self.s3.secret_key}

    def folder(self, name: str, access: list[str], **kw: Any) -> dict[str, Any]:
        self.seq += 1
        doc: dict[str, Any] = {
            "name": name,
            "bucket": self.s3.bucket,
            "endpoint": self.s3.endpoint,
            "prefix": f"{self.tmp.name}-{self.seq}",
            "credentials": self.creds(),
            "access": access,
        }
        doc.update(kw)
        folders.register(self.db, self.sealer, doc, "test", dt.datetime.now(dt.UTC))
        return doc

    def objects(self, doc: dict[str, Any]) -> FolderObjects:
        with self.db.transaction(write=False) as s:
            row = q.get_folder(s, doc["name"])
        return FolderObjects(folders.spec_of(row), folders.credentials_of(row, self.sealer))

    def home(self, user: str, uid: int) -> Path:
        self.homes.chmod(0o755)
        h = self.homes / user
        h.mkdir(parents=True, exist_ok=True)
        os.chown(h, uid, uid)
        h.chmod(0o700)
        return h

    def rows(self) -> list[q.HostMount]:
        with self.db.transaction(write=False) as s:
            return q.all_host_mounts(s)

    def attachments(self) -> list[q.MountAttachment]:
        with self.db.transaction(write=False) as s:
            return q.list_attachments(s)

    def fuse_points(self) -> list[str]:
        return [e.mount_point for e in MountTable.read().under(self.root / "fs") if e.is_fuse]


@pytest.fixture
def world(s3_server: S3Server, tmp_path: Path) -> Iterator[World]:
    _need_fuse()
    w = World(tmp_path, s3_server, f"sqlite:///{tmp_path / 'state.db'}", None)  # type: ignore[arg-type]
    w.db = open_database(w.db_url)
    try:
        yield w
    finally:
        pids = {pid for m in w.managers for pid in m.procs}
        with contextlib.suppress(Exception):
            pids |= {hm.pid for hm in w.rows() if hm.pid}
        unmount_all_under(tmp_path)
        unmount_all_under(w.homes)
        for pid in pids:
            stop_pid(pid, grace=2.0)
        for m in w.managers:
            for proc in m.procs.values():
                proc.wait(10)  # reap our own children
        w.db.dispose()
        if not MountTable.read().under(w.homes):
            shutil.rmtree(w.homes, ignore_errors=True)


def as_user(uid: int, code: str) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` as ``uid`` (setpriv drops every privilege)."""
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def try_write(path: Path) -> int:
    """0 if a file can be created at ``path``, else the errno."""
    try:
        path.write_text("x")
        return 0
    except OSError as exc:
        return exc.errno or -1


# -- sharing -------------------------------------------------------------------------------


def test_two_servers_share_one_mount_and_the_other_still_reads_after_one_releases(world):
    doc = world.folder("data", ["group:staff:rw"])
    mgr = world.manager()
    a = mgr.attach_server("alice", "a", kind="host", groups=["staff"], uid=ALICE, gid=ALICE)
    b = mgr.attach_server("alice", "b", kind="host", groups=["staff"], uid=ALICE, gid=ALICE)
    assert [o.state for o in a + b] == ["attached", "attached"]
    ta, tb = Path(a[0].target), Path(b[0].target)
    [hm] = world.rows()
    assert hm.refs == 2 and hm.generation == 1
    assert len(world.fuse_points()) == 1, "one daemon for both servers"

    (ta / "shared.txt").write_text("from a")
    assert (tb / "shared.txt").read_text() == "from a"
    assert world.objects(doc).get("shared.txt") == b"from a"  # really in the bucket

    [r] = mgr.release_server("alice", "a")
    assert r.state == "released"
    assert (tb / "shared.txt").read_text() == "from a"
    assert MountTable.read().top(ta) is None
    [hm] = world.rows()
    assert hm.refs == 1

    mgr.release_server("alice", "b")
    assert world.rows() == [] and world.attachments() == []
    assert world.fuse_points() == []
    assert not pid_alive(hm.pid), "the daemon stops with its last mount"


def test_a_folder_appears_inside_the_home_owned_by_its_user_and_closed_to_others(world):
    world.folder("lab", ["user:alice:rw"], mount_path="data/{name}")
    home = world.home("alice", ALICE)
    home.chmod(0o755)  # others may enter the home: the mount itself must keep them out
    mgr = world.manager()
    [o] = mgr.attach_server("alice", "", kind="local", home=home, uid=ALICE, gid=ALICE)
    assert o.target == str(home / "data" / "lab")
    assert (home / "data").stat().st_uid == ALICE, "folders on the way are made as the user"
    ok = as_user(ALICE, f"open({str(home / 'data/lab/x.txt')!r}, 'w').write('mine')")
    assert ok.returncode == 0, ok.stderr
    other = as_user(BOB, f"import os; os.listdir({str(Path(o.target))!r})")
    assert "PermissionError" in other.stderr
    # The archiver walks one file system: the bucket is not part of the home.
    assert os.lstat(home / "data" / "lab").st_dev != os.lstat(home).st_dev
    mgr.release_server("alice", None)
    assert sorted(os.listdir(home / "data" / "lab")) == [], "the empty mount point stays"


def test_read_only_consumers_get_erofs_while_writers_write(world):
    world.folder("course", ["group:staff:rw", "group:students:ro"])
    mgr = world.manager()
    [w] = mgr.attach_server("teacher", "", kind="host", groups=["staff"], uid=ALICE, gid=ALICE)
    home = world.home("student", BOB)
    [r] = mgr.attach_server(
        "student", "", kind="local", groups=["students"], home=home, uid=BOB, gid=BOB
    )
    assert (w.read_only, r.read_only) == (False, True)
    (Path(w.target) / "notes.txt").write_text("read me")
    ro = Path(r.target)
    assert (ro / "notes.txt").read_text() == "read me"
    # Even root: the kernel refuses, not a permission check.
    assert try_write(ro / "new.txt") == errno.EROFS
    for op in (
        lambda: (ro / "notes.txt").unlink(),
        lambda: (ro / "d").mkdir(),
        lambda: os.rename(ro / "notes.txt", ro / "n2"),
        lambda: os.truncate(ro / "notes.txt", 0),
    ):
        with pytest.raises(OSError) as exc:
            op()
        assert exc.value.errno == errno.EROFS
    # Its own daemon's superblock is read-only too, so no bind of it can write.
    entry = MountTable.read().top(ro)
    assert entry is not None and "ro" in entry.super_options and "ro" in entry.options
    # And as the student, who owns the files of that mount:
    run = as_user(BOB, f"open({str(ro / 'mine.txt')!r}, 'w')")
    assert "Read-only file system" in run.stderr
    mgr.release_server("teacher", None)
    mgr.release_server("student", None)


def test_credentials_never_reach_a_command_line_or_a_readable_file(world):
    world.folder("secret", ["user:alice:rw"])
    mgr = world.manager()
    [o] = mgr.attach_server("alice", "", kind="host", uid=ALICE, gid=ALICE)
    [hm] = world.rows()
    secret = world.s3.secret_key.encode()
    assert secret not in Path(f"/proc/{hm.pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{hm.pid}/environ")
    st = environ.stat()
    assert st.st_uid == 0 and st.st_mode & 0o077 == 0
    env = dict(kv.split(b"=", 1) for kv in environ.read_bytes().split(b"\0") if b"=" in kv)
    assert env[b"AWS_SECRET_ACCESS_KEY"] == secret
    # Only the folder's key: none of hometier's own variables (the repository's).
    assert set(env) <= {b"PATH", b"HOME", b"LANG", b"AWS_ACCESS_KEY_ID", b"AWS_SECRET_ACCESS_KEY"}
    as_other = as_user(BOB, f"open('/proc/{hm.pid}/environ').read()")
    assert as_other.returncode != 0
    for path in [*world.root.rglob("*"), Path(world.db_url.removeprefix("sqlite:///"))]:
        if path.is_file() and not path.is_symlink() and MountTable.read().top(path) is None:
            assert secret not in path.read_bytes(), path
    mgr.release_server("alice", None)


# -- the daemon dies ----------------------------------------------------------------------


def reader(path: Path, log: Path) -> subprocess.Popen[bytes]:
    """A "container": a mount namespace of its own whose copy of ``path`` is a slave of
    the host's (as Docker binds an ``rslave`` volume), reading ``path`` ten times a second
    and logging ok/fail."""
    script = f"while :; do if cat {path} >/dev/null 2>&1; then echo ok; else echo fail; fi; sleep 0.1; done"
    with open(log, "wb") as f:
        return subprocess.Popen(
            ["unshare", "--mount", "--propagation", "slave", "sh", "-c", script],
            stdout=f,
            stderr=subprocess.DEVNULL,
        )


def wait_for(pred: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_a_dead_or_hung_daemon_is_recovered_and_consumers_see_it_again(world, how):
    world.folder("data", ["user:alice:rw"])
    home = world.home("alice", ALICE)
    mgr = world.manager(probe_timeout=1.0)
    [o] = mgr.attach_server("alice", "", kind="local", home=home, uid=ALICE, gid=ALICE)
    target = Path(o.target)
    (target / "a.txt").write_text("v1")
    [att] = world.attachments()
    [hm] = world.rows()
    log = world.tmp / "reader.log"
    container = reader(target / "a.txt", log)
    try:
        assert wait_for(lambda: "ok" in log.read_text())
        os.kill(hm.pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        if how == "kill":
            with pytest.raises(OSError) as exc:
                os.listdir(target)
            assert exc.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
            assert wait_for(lambda: log.read_text().rstrip().endswith("fail"))
        started = time.monotonic()
        report = check(mgr)
        took = time.monotonic() - started
        print(f"{how}: recovered in {took:.2f} s: {report.to_doc()}")
        assert report.recovered == [hm.key[:12]] and report.errors == []
        assert not pid_alive(hm.pid)
        [new] = world.rows()
        assert new.generation == 2 and new.pid != hm.pid and new.refs == 1
        # The server's own bind mount is the same one; the new mount was propagated onto it.
        assert MountTable.read().get(att.mount_id) is not None
        assert [a.mount_id for a in world.attachments()] == [att.mount_id]
        assert (target / "a.txt").read_text() == "v1"
        (target / "b.txt").write_text("after")
        # And the container, which nobody restarted, reads again.
        mark = len(log.read_text())
        assert wait_for(lambda: "ok" in log.read_text()[mark:]), log.read_text()[-200:]
        assert world.objects({"name": "data"}).get("b.txt") == b"after"
    finally:
        container.kill()
        container.wait()
    assert check(mgr).recovered == [], "a healthy mount is left alone"
    with world.db.transaction(write=False) as s:
        kinds = [e.kind for e in q.mount_events(s, "alice")]
    assert "mount.lost" in kinds and "mount.recovered" in kinds  # what the owner is told
    mgr.release_server("alice", None)
    assert world.fuse_points() == []


def test_an_outage_during_recovery_is_retried_and_told_until_the_bucket_answers(world):
    from reliability.faultproxy import FaultProxy, Rule

    with FaultProxy(world.s3.endpoint) as proxy:
        world.folder("data", ["user:alice:rw"], endpoint=proxy.url)
        mgr = world.manager()
        [o] = mgr.attach_server("alice", "", kind="host", uid=ALICE, gid=ALICE)
        [hm] = world.rows()
        proxy.set_rules(Rule("503"))
        os.kill(hm.pid, signal.SIGKILL)
        report = check(mgr)
        assert report.recovered == [] and "does not answer" in report.errors[0]
        [att] = world.attachments()
        assert att.error and "interrupted" in att.error
        [failed] = world.rows()
        assert failed.state == q.FAILED and failed.refs == 1
        proxy.clear()
        assert check(mgr).recovered == [hm.key[:12]]
        assert os.listdir(o.target) == []
        [att] = world.attachments()
        assert att.error is None
        mgr.release_server("alice", None)


# -- release ------------------------------------------------------------------------------


HOLDER = textwrap.dedent(
    """
    import sys
    f = open(sys.argv[1], "w")
    f.write("part1"); f.flush()
    print("ready", flush=True)
    sys.stdin.readline()
    f.write("part2"); f.close()
    """
)


def test_an_open_file_at_the_last_release_keeps_the_mount_until_it_is_closed(world):
    doc = world.folder("data", ["user:alice:rw"])
    mgr = world.manager()
    [o] = mgr.attach_server("alice", "", kind="host", uid=ALICE, gid=ALICE)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(Path(o.target) / "busy.txt")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        [r] = mgr.release_server("alice", None)
        assert r.state == "releasing"
        assert f"[{holder.pid}] (open file" in r.error, r.error
        assert MountTable.read().top(Path(o.target)) is not None, "nothing was unmounted"
        [hm] = world.rows()
        assert hm.refs == 1 and pid_alive(hm.pid)
        assert check(mgr).busy == [o.target]
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.wait(30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for pipe in (holder.stdin, holder.stdout):
            if pipe is not None:
                pipe.close()
    report = check(mgr)
    assert report.released == ["alice/"] and report.unmounted == [hm.key[:12]]
    assert world.rows() == [] and world.fuse_points() == []
    assert world.objects(doc).get("busy.txt") == b"part1part2", "nothing written was lost"


def test_an_idle_mount_waits_for_its_delay_and_a_new_server_takes_it_back(world):
    world.folder("data", ["user:alice:rw"])
    clock = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC)]
    mgr = world.manager(unmount_after=dt.timedelta(minutes=5), clock=lambda: clock[0])
    mgr.attach_server("alice", "", kind="host", uid=ALICE, gid=ALICE)
    [hm] = world.rows()
    mgr.release_server("alice", None)
    [idle] = world.rows()
    assert idle.refs == 0 and idle.idle_since == clock[0]
    clock[0] += dt.timedelta(minutes=4)
    assert check(mgr).unmounted == []
    mgr.attach_server("alice", "", kind="host", uid=ALICE, gid=ALICE)
    [again] = world.rows()
    assert (again.pid, again.generation, again.idle_since) == (hm.pid, 1, None)
    mgr.release_server("alice", None)
    clock[0] += dt.timedelta(minutes=6)
    assert check(mgr).unmounted == [hm.key[:12]]
    assert world.fuse_points() == [] and not pid_alive(hm.pid)


# -- restarts and crashes ------------------------------------------------------------------


FIRST_RUN = textwrap.dedent(
    """
    import datetime as dt, json, sys
    from pathlib import Path
    from hometier.crypto import Sealer
    from hometier.mounts.host import HostLayout
    from hometier.mounts.manager import MountManager
    from hometier.state.db import open_database
    db_url, root, key = sys.argv[1:4]
    mgr = MountManager(open_database(db_url), HostLayout(root), Sealer([key.encode()]), host="h1",
                       unmount_after=dt.timedelta(0))
    for server in ("a", "b"):
        out = mgr.attach_server("alice", server, kind="host", uid=1000, gid=1000)
        print(json.dumps([o.to_doc() for o in out]))
    """
)


def test_a_restarted_hometier_adopts_the_mounts_it_left(world):
    world.folder("data", ["user:alice:rw"])
    run = subprocess.run(
        [sys.executable, "-c", FIRST_RUN, world.db_url, str(world.root), KEY],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    [hm] = world.rows()
    assert hm.refs == 2 and pid_alive(hm.pid), "the daemon outlived the process that started it"
    targets = [Path(a.target) for a in world.attachments()]
    (targets[0] / "f").write_text("still here")
    mgr = world.manager()  # the restarted service
    report = check(mgr)
    assert report.adopted == [hm.key[:12]] and report.recovered == [] and report.errors == []
    [same] = world.rows()
    assert (same.pid, same.generation) == (hm.pid, 1)
    assert (targets[1] / "f").read_text() == "still here"
    mgr.release_server("alice", None)
    assert world.rows() == [] and world.fuse_points() == []
    assert wait_for(lambda: not pid_alive(hm.pid))


def test_mounts_without_rows_after_a_crash_are_cleaned_up(world):
    world.folder("data", ["user:alice:rw"])
    home = world.home("alice", ALICE)
    mgr = world.manager()
    [o] = mgr.attach_server("alice", "", kind="local", home=home, uid=ALICE, gid=ALICE)
    [hm] = world.rows()
    with world.db.transaction() as s:  # the commit that never happened
        for a in q.list_attachments(s):
            s.delete(a)
        s.flush()
        for h in q.all_host_mounts(s):
            s.delete(h)
    report = check(world.manager())
    assert o.target in report.orphans, report.to_doc()
    assert MountTable.read().top(Path(o.target)) is None
    assert world.fuse_points() == [] and MountTable.read().under(world.root / "shared") == []
    assert wait_for(lambda: not pid_alive(hm.pid))


# -- two replicas --------------------------------------------------------------------------


REPLICA = textwrap.dedent(
    """
    import datetime as dt, json, sys, time
    from hometier.crypto import Sealer
    from hometier.mounts.host import HostLayout
    from hometier.mounts.manager import MountManager
    from hometier.state.db import open_database
    db_url, root, key, server = sys.argv[1:5]
    mgr = MountManager(open_database(db_url, migrate=False), HostLayout(root), Sealer([key.encode()]),
                       host="h1", unmount_after=dt.timedelta(0))
    print("ready", flush=True)
    while sys.stdin.readline().strip() == "go":
        t0 = time.time()
        out = mgr.attach_server("alice", server, kind="host", uid=1000, gid=1000)
        doc = {"t0": t0, "t1": time.time(), "out": [o.to_doc() for o in out]}
        print(json.dumps(doc), flush=True)
    """
)


def test_two_replicas_attaching_at_once_mount_once(world, pg_url):
    world.db.dispose()
    world.db_url, world.db = pg_url, open_database(pg_url)
    world.folder("data", ["user:alice:rw"])
    rounds, overlapped = 3, 0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", REPLICA, pg_url, str(world.root), KEY, server],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for server in ("a", "b")
    ]
    try:
        for p in procs:  # both imported and connected
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for _ in range(rounds):
            for p in procs:  # now start them together
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            docs = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
            assert all(d["out"][0]["state"] == "attached" for d in docs), docs
            first, second = sorted(docs, key=lambda d: d["t0"])
            overlapped += second["t0"] < first["t1"]
            [hm] = world.rows()
            assert (hm.refs, hm.generation) == (2, 1), "one mount, counted twice"
            assert len(world.fuse_points()) == 1
            world.manager().release_server("alice", None)
            assert world.rows() == [] and world.fuse_points() == []
            assert wait_for(lambda pid=hm.pid: not pid_alive(pid))
    finally:
        for p in procs:
            p.communicate(input="", timeout=30)
    print(f"two replicas attached at the same moment in {overlapped} of {rounds} rounds")
    assert overlapped >= 1, "the replicas never raced: the test proved nothing"


# -- errors ---------------------------------------------------------------------------------


def test_bad_credentials_a_missing_bucket_and_an_outage_fail_cleanly(world):
    from reliability.faultproxy import FaultProxy, Rule

    with FaultProxy(world.s3.endpoint, [Rule("503")]) as proxy:
        world.folder(
            "badkey",
            ["user:alice:rw"],
            credentials={"access_key_id": "nobody", "secret_access_key": "wrong"},
        )
        world.folder("nobucket", ["user:alice:rw"], bucket="no-such-bucket")
        world.folder("down", ["user:alice:rw"], endpoint=proxy.url)
        world.folder("good", ["user:alice:rw"])
        mgr = world.manager()
        out = {
            o.folder: o for o in mgr.attach_server("alice", "", kind="host", uid=ALICE, gid=ALICE)
        }
    assert out["good"].state == "attached"
    assert out["badkey"].error == (
        "Bucket folder badkey cannot be used: access denied: the credentials are wrong or "
        "may not read the bucket"
    )
    assert out["nobucket"].error == (
        "Bucket folder nobucket cannot be used: bucket no-such-bucket does not exist"
    )
    assert out["down"].error.startswith("Bucket folder down cannot be used: the endpoint http")
    assert out["down"].error.endswith("does not answer")
    # Nothing of the failed ones is mounted, recorded or running.
    [hm] = world.rows()
    assert len(world.fuse_points()) == 1 and len(mgr.procs) == 1
    mgr.release_server("alice", None)
    assert world.fuse_points() == [] and world.rows() == []


def test_when_s3fs_itself_refuses_nothing_is_left_behind(world):
    world.folder(
        "badkey",
        ["user:alice:rw"],
        credentials={"access_key_id": "nobody", "secret_access_key": "wrong"},
    )
    mgr = world.manager(preflight=False, mount_timeout=15.0)
    [o] = mgr.attach_server("alice", "", kind="host", uid=ALICE, gid=ALICE)
    assert o.state == "failed" and o.error.startswith(
        "The bucket folder badkey could not be mounted"
    )
    assert world.rows() == [] and world.fuse_points() == []
    assert all(not pid_alive(pid, proc) for pid, proc in mgr.procs.items())


def test_a_symlink_or_files_in_the_way_are_refused_and_nothing_is_mounted_there(world):
    world.folder("data", ["user:alice:rw"])
    home = world.home("alice", ALICE)
    canary = world.tmp / "canary"
    canary.mkdir()
    (canary / "keep").write_text("untouched")
    os.symlink(canary, home / "buckets")  # what a user could do to their own home
    mgr = world.manager()
    [o] = mgr.attach_server("alice", "", kind="local", home=home, uid=ALICE, gid=ALICE)
    assert o.state == "failed" and "cannot be used" in o.error
    assert MountTable.read().under(canary) == [] and sorted(os.listdir(canary)) == ["keep"]
    os.unlink(home / "buckets")
    (home / "buckets" / "data").mkdir(parents=True)
    (home / "buckets" / "data" / "mine.txt").write_text("hidden?")
    [o] = mgr.attach_server("alice", "", kind="local", home=home, uid=ALICE, gid=ALICE)
    assert o.state == "failed" and "holds files" in o.error
    assert (home / "buckets" / "data" / "mine.txt").read_text() == "hidden?"
    assert world.rows() == [] and world.fuse_points() == []


ATTACKER = textwrap.dedent(
    """
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    home, stop = sys.argv[1], sys.argv[2]
    a, b = os.path.join(home, "buckets").encode(), os.path.join(home, "buckets.alt").encode()
    swaps = 0
    while not os.path.exists(stop):
        # RENAME_EXCHANGE: the real folder and a symlink to the canary trade places.
        if libc.renameat2(-100, a, -100, b, 2) == 0:
            swaps += 1
    print(swaps)
    """
)


def test_a_user_swapping_the_mount_path_with_a_symlink_never_gets_a_mount_outside(world):
    """THREATS.md rule 1, raced for real: while alice's own process swaps her
    ``buckets`` folder with a symlink to a folder outside her home (RENAME_EXCHANGE, in a
    tight loop), servers attach and release again and again. Every bind lands inside
    her home or is refused; nothing is ever mounted on the canary."""
    world.folder("data", ["user:alice:rw"])
    home = world.home("alice", ALICE)
    canary = world.tmp / "canary"
    (canary / "data").mkdir(parents=True)
    (canary / "data" / "keep").write_text("untouched")
    (home / "buckets").mkdir()
    os.chown(home / "buckets", ALICE, ALICE)
    os.symlink(canary, home / "buckets.alt")
    os.lchown(home / "buckets.alt", ALICE, ALICE)
    mgr = world.manager(unmount_after=dt.timedelta(hours=1))  # binds only, after the first
    stop = world.homes / "stop"  # where alice's process can see it
    attacker = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={ALICE}",
            f"--regid={ALICE}",
            "--clear-groups",
            sys.executable,
            "-c",
            ATTACKER,
            str(home),
            str(stop),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    outcomes: dict[str, int] = {"attached": 0, "refused": 0, "moved": 0, "releasing": 0}
    try:
        for _ in range(150):
            [o] = mgr.attach_server("alice", "", kind="local", home=home, uid=ALICE, gid=ALICE)
            assert MountTable.read().under(canary) == [], "a mount landed outside the home"
            if o.state == "attached":
                outcomes["attached"] += 1
                [att] = world.attachments()
                where = MountTable.read().get(att.mount_id)
                assert where is not None and Path(where.mount_point).is_relative_to(home)
                outcomes["moved"] += "buckets.alt" in where.mount_point
            else:
                assert "cannot be used" in o.error, o.error
                outcomes["refused"] += 1
            for r in mgr.release_server("alice", None):
                outcomes["releasing"] += r.state == "releasing"
    finally:
        stop.touch()
        try:
            swaps = int(attacker.communicate(timeout=30)[0] or 0)
        finally:
            if attacker.poll() is None:
                attacker.kill()
                attacker.communicate()
    report = check(mgr)  # with the attacker gone, what was left releasing goes now
    assert world.attachments() == [], report.to_doc()
    print(f"attacker swaps: {swaps}; outcomes: {outcomes}")
    assert swaps > 0 and outcomes["refused"] > 0 and outcomes["attached"] > 0, (
        "the race never happened both ways: the test proved nothing"
    )
    assert MountTable.read().under(canary) == []
    assert sorted(os.listdir(canary / "data")) == ["keep"]
    assert [e.mount_point for e in MountTable.read().under(home)] == []

"""Contract of the bucket folders' tables, on SQLite and PostgreSQL (``db_url``): names
are unique under races, one host mount per key under races, ``refs`` always equals the
number of attachments, a folder in use cannot be removed, credentials are stored sealed,
and the check loop passes over a host mount another replica holds (PostgreSQL)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text

from hometier.crypto import Sealer
from hometier.mounts import folders
from hometier.state import mounts as q
from hometier.state.db import open_database
from hometier.state.models import Event

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
KEY = Fernet.generate_key().decode()


def register(db, name="data", **kw):
    doc = {"name": name, "bucket": "lab", "access": ["group:staff:rw"]}
    doc.update(kw)
    return folders.register(db, Sealer([KEY.encode()]), doc, "test", T0)


def host_mount(s, folder, key="k" * 64, host="h1"):
    return q.upsert_host_mount(
        s,
        host=host,
        key=key,
        folder=folder,
        read_only=False,
        uid=1000,
        gid=100,
        boot_id="b",
        now=T0,
    )


def attach(s, hm, user, server=""):
    return q.add_attachment(
        s,
        hm,
        user=user,
        server=server,
        kind="host",
        target=f"/t/{user}/{server}",
        base="/t",
        read_only=False,
        mount_id=1,
        actor="test",
        now=T0,
    )


def test_credentials_are_stored_sealed_and_never_shown(db):
    row = register(db, credentials={"access_key_id": "AKIA1", "secret_access_key": "hunter2"})
    with db.engine.connect() as conn:
        raw = conn.execute(text("SELECT credentials FROM bucket_folders")).scalar_one()
    assert "hunter2" not in raw and "AKIA1" not in raw
    assert folders.credentials_of(row, Sealer([KEY.encode()])).secret_access_key == "hunter2"
    doc = folders.folder_doc(row, admin=True)
    assert doc["credentials"] == "sealed" and "hunter2" not in str(doc)
    assert "credentials" not in folders.folder_doc(row, admin=False, mode="ro")


def test_a_name_is_registered_once_even_by_two_admins_at_once(db):
    results: list[str] = []
    barrier = threading.Barrier(4)

    def admin() -> None:
        barrier.wait()
        try:
            register(db)
            results.append("created")
        except q.FolderExists:
            results.append("exists")

    threads = [threading.Thread(target=admin) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["created", "exists", "exists", "exists"]


def test_changes_grow_the_revision_and_are_logged_without_secrets(db):
    register(db)
    row = folders.change(
        db,
        Sealer([KEY.encode()]),
        "data",
        {"prefix": "p", "credentials": {"access_key_id": "A", "secret_access_key": "s3cret"}},
        "ops",
        T0 + timedelta(minutes=1),
    )
    assert row.revision == 2 and row.prefix == "p"
    with db.transaction(write=False) as s:
        [event] = [e for e in q.mount_events(s) if (e.detail or {}).get("action") == "update"]
    assert event.detail["changed"] == ["credentials", "prefix"]
    assert "s3cret" not in str(event.detail)
    with pytest.raises(Exception, match="cannot change name"):
        folders.change(db, None, "data", {"name": "other"}, "ops", T0)
    same = folders.change(db, None, "data", {"prefix": "/p/"}, "ops", T0)
    assert same.revision == 2, "nothing changed: the mounts stay shared"


def test_one_host_mount_per_key_even_when_replicas_insert_at_once(db):
    register(db)
    ids: list[int] = []
    barrier = threading.Barrier(4)

    def replica() -> None:
        barrier.wait()
        with db.transaction() as s:
            folder = q.get_folder(s, "data")
            hm = host_mount(s, folder)
            attach(s, hm, f"u{threading.get_ident()}")
            ids.append(hm.id)

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(set(ids)) == 1
    with db.transaction(write=False) as s:
        [hm] = q.all_host_mounts(s)
        assert hm.refs == 4 == q.count_attachments(s, hm)


def test_refs_follow_attachments_and_the_last_release_starts_the_idle_time(db):
    register(db)
    with db.transaction() as s:
        hm = host_mount(s, q.get_folder(s, "data"))
        a, b = attach(s, hm, "alice"), attach(s, hm, "bob")
        assert hm.refs == 2 and hm.idle_since is None
        q.remove_attachment(s, a, hm, "test", T0 + timedelta(minutes=1))
        assert hm.refs == 1 and hm.idle_since is None
        q.remove_attachment(s, b, hm, "test", T0 + timedelta(minutes=2))
        assert hm.refs == 0 and hm.idle_since == T0 + timedelta(minutes=2)
        attach(s, hm, "carol")
        assert hm.refs == 1 and hm.idle_since is None
    with db.transaction(write=False) as s:
        kinds = [e.kind for e in s.scalars(select(Event).order_by(Event.id))]
    assert kinds.count("mount.attach") == 3 and kinds.count("mount.release") == 2


def test_a_folder_in_use_cannot_be_removed(db):
    register(db)
    with db.transaction() as s:
        hm = host_mount(s, q.get_folder(s, "data"))
        att = attach(s, hm, "alice")
    with pytest.raises(q.FolderInUse, match="1 server"):
        folders.remove(db, "data", "ops", T0)
    with db.transaction() as s:
        hm = q.lock_host_mount(s, "h1", "k" * 64)
        q.remove_attachment(s, s.get(q.MountAttachment, att.id), hm, "test", T0)
    folders.remove(db, "data", "ops", T0)  # its idle host mount goes with it
    with db.transaction(write=False) as s:
        assert q.list_folders(s) == [] and q.all_host_mounts(s) == []
    with pytest.raises(q.FolderNotFound):
        folders.remove(db, "data", "ops", T0)


def test_who_may_use_what(db):
    register(db, "course", access=["group:students:ro", "group:staff:rw"])
    register(db, "private", access=["user:alice:rw"])
    register(db, "archive", access=["group:staff:rw"], read_only=True)
    with db.transaction(write=False) as s:

        def names(user, groups, only=None):
            return {u.spec.name: u.mode for u in folders.usable(s, user, groups, only)}

        assert names("ann", ["students"]) == {"course": "ro"}
        assert names("alice", ["staff"]) == {"course": "rw", "private": "rw", "archive": "ro"}
        assert names("eve", []) == {}
        assert names("alice", [], only=["private", "course"]) == {"private": "rw"}


@pytest.mark.postgres
def test_the_check_loop_passes_over_a_mount_another_replica_holds(pg_url):
    db = open_database(pg_url)
    try:
        register(db)
        with db.transaction() as s:
            folder = q.get_folder(s, "data")
            host_mount(s, folder, key="a" * 64)
            host_mount(s, folder, key="b" * 64)
        with db.transaction() as first, db.transaction() as second:
            assert q.lock_host_mount(first, "h1", "a" * 64) is not None
            second.execute(text("SET LOCAL lock_timeout = '3s'"))
            seen = [hm.key[0] for hm in q.host_mounts(second, "h1", lock=True)]
        assert seen == ["b"]
    finally:
        db.dispose()

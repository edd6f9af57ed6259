"""Contract of the state layer, run on SQLite and PostgreSQL (the ``db_url`` fixture)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text

from hometier.errors import Conflict, NotFound, UsageError
from hometier.state import queries as q
from hometier.state.db import (
    Database,
    UnsupportedDatabase,
    alembic_config,
    make_engine,
    open_database,
)
from hometier.state.models import Base
from hometier.state.queries import (
    HomeNotFound,
    LeaseExpired,
    LeaseNotFound,
    SnapshotConflict,
    SnapshotInfo,
    StateConflict,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
def db(db_url):
    database = open_database(db_url)
    # The event log is append-only: no statement of any test may update or delete it.
    statements: list[str] = []

    @event.listens_for(database.engine, "before_cursor_execute")
    def _record(conn, cursor, statement, params, context, executemany):
        statements.append(" ".join(statement.split()).upper())

    yield database
    database.dispose()
    assert not [s for s in statements if s.startswith(("UPDATE EVENTS", "DELETE FROM EVENTS"))]


def make_home(db: Database, user: str = "alice", when: datetime = T0):
    return q.get_or_create_home(db, user, f"/home/{user}", when)


def snap(sid: str = "snap1", when: datetime = T0) -> SnapshotInfo:
    return SnapshotInfo(sid, when, files=10, bytes=1000, stored_bytes=400, tree="t1")


def archive(db: Database, user: str = "alice", now: datetime = T0, sid: str = "snap1"):
    [home] = q.begin_archive_claim(db, "w1", now, candidates=[user])
    assert q.finish_archive(db, user, "w1", home.version, now, snap(sid, now))


def moves(db: Database, user: str = "alice"):
    return [(e.from_state, e.to_state, e.actor) for e in q.events(db, user, kind="state")]


# -- schema ------------------------------------------------------------------------------


def test_migrations_create_exactly_the_models(db):
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        # The newest revision, whichever it is: every revision is applied.
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == head
    open_database(db.url).dispose()  # upgrading an up-to-date database is a no-op


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 's.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    engine.dispose()


def test_unsupported_url_is_a_usage_error():
    with pytest.raises(UnsupportedDatabase, match="mysql://") as err:
        make_engine("mysql://db/x")
    assert isinstance(err.value, UsageError)
    with pytest.raises(UnsupportedDatabase):
        make_engine("not a url")


def test_times_round_trip_as_utc(db):
    paris = timezone(timedelta(hours=2))
    local = datetime(2025, 6, 1, 14, 30, 15, 123456, tzinfo=paris)
    make_home(db, when=local)
    assert q.record_activity(db, "alice", local + timedelta(minutes=1), "files")
    home = q.get_home(db, "alice")
    assert home.state_since == local and home.state_since.tzinfo is UTC
    assert home.state_since.hour == 12 and home.state_since.microsecond == 123456
    assert home.last_activity == local + timedelta(minutes=1)
    assert home.last_activity.tzinfo is UTC
    [created] = q.events(db, "alice")
    assert created.at == local and created.at.tzinfo is UTC
    with pytest.raises(ValueError, match="naive"):
        q.record_activity(db, "alice", datetime(2025, 6, 2), "files")


# -- homes and errors ---------------------------------------------------------------------


def test_get_or_create_is_idempotent_and_logged(db):
    first = make_home(db)
    again = q.get_or_create_home(db, "alice", "/elsewhere", at(5))
    assert (again.id, again.path, again.state, again.version) == (
        first.id,
        "/home/alice",
        "active",
        1,
    )
    assert moves(db) == [(None, "active", "hometier")]
    make_home(db, "bob")
    assert [h.user for h in q.list_homes(db)] == ["alice", "bob"]
    assert q.list_homes(db, state="archived") == []


def test_list_homes_filters_on_the_quarantine_folder(db):
    """What recovery reads every cycle: only archived homes that still have a quarantine
    folder (a purged one has nothing to finish), in the database, not in Python."""
    for user in ("alice", "bob", "carol"):
        make_home(db, user)
    [a] = q.begin_archive_claim(db, "w1", T0, candidates=["alice"])
    assert q.finish_archive(db, "alice", "w1", a.version, T0, snap("s1"), quarantine_path="/q/a")
    archive(db, "bob", sid="s2")  # no quarantine folder (purged, or kept nowhere)
    held = q.list_homes(db, "archived", quarantined=True)
    assert [(h.user, h.quarantine_path) for h in held] == [("alice", "/q/a")]
    assert [h.user for h in q.list_homes(db, "archived", quarantined=False)] == ["bob"]
    assert [h.user for h in q.list_homes(db, quarantined=False)] == ["bob", "carol"]
    assert [h.user for h in q.list_homes(db, "archived")] == ["alice", "bob"]


def test_unknown_user_errors(db):
    with pytest.raises(HomeNotFound) as err:
        q.get_home(db, "nobody")
    assert isinstance(err.value, NotFound) and err.value.http_status == 404
    assert str(err.value) == "No home is known for user nobody."
    for call in (
        lambda: q.transition(db, "nobody", "active", "archiving", "cli", T0),
        lambda: q.request_restore(db, "nobody", "api:nobody", T0),
        lambda: q.acquire_lease(db, "nobody", "job", "batch", timedelta(hours=1), T0),
        lambda: q.active_leases(db, "nobody", T0),
        lambda: q.set_exempt(db, "nobody", True, "thesis", "cli", T0),
        lambda: q.list_snapshots(db, "nobody"),
        lambda: q.record_activity(db, "nobody", T0, "hub"),
        lambda: q.fail(db, "nobody", "boom", "cli", T0),
    ):
        with pytest.raises(HomeNotFound):
            call()
    for call in (
        lambda: q.renew_lease(db, "no-such-lease", timedelta(hours=1), T0),
        lambda: q.release_lease(db, "no-such-lease", T0),
    ):
        with pytest.raises(LeaseNotFound, match="No lease no-such-lease is known"):
            call()
    assert q.events(db, "nobody") == []


def test_record_activity_only_moves_forward(db):
    make_home(db)
    assert q.record_activity(db, "alice", at(10), "hub")
    assert not q.record_activity(db, "alice", at(5), "files")
    home = q.get_home(db, "alice")
    assert (home.last_activity, home.last_activity_source, home.version) == (at(10), "hub", 1)


# -- the lifecycle ------------------------------------------------------------------------


def test_full_cycle_every_transition_is_an_event(db):
    make_home(db)
    [home] = q.begin_archive_claim(db, "archiver:h:1", at(1))
    assert (home.state, home.version, home.claimed_by) == ("archiving", 2, "archiver:h:1")
    assert home.claimed_until == at(61)
    assert q.finish_archive(db, "alice", "archiver:h:1", 2, at(2), snap(when=at(1)))
    home = q.get_home(db, "alice")
    assert (home.state, home.version, home.archived_at) == ("archived", 3, at(2))
    assert home.claimed_by is None
    assert (home.stored_bytes, home.hot_bytes, home.hot_files) == (400, 1000, 10)
    assert home.is_cold
    assert q.request_restore(db, "alice", "api:alice", at(3))
    home = q.finish_restore(db, "alice", "restorer:h:2", at(4), hot_bytes=1001)
    assert (home.state, home.version, home.restored_at, home.hot_bytes) == (
        "active",
        5,
        at(4),
        1001,
    )
    assert (home.last_activity, home.last_activity_source) == (at(4), "restore")
    assert not home.is_cold
    assert moves(db) == [
        (None, "active", "hometier"),
        ("active", "archiving", "archiver:h:1"),
        ("archiving", "archived", "archiver:h:1"),
        ("archived", "restoring", "api:alice"),
        ("restoring", "active", "restorer:h:2"),
    ]
    log = q.events(db, "alice")
    assert [e.at for e in log] == [T0, at(1), at(2), at(3), at(4)]
    assert log[2].detail == {"snapshot": "snap1"}
    assert all(e.home_id == home.id and e.user == "alice" for e in log)
    assert [s.id for s in q.list_snapshots(db, "alice")] == ["snap1"]


def test_transition_is_compare_and_set(db):
    make_home(db)
    home = q.transition(db, "alice", ["active"], "archiving", "cli", at(1), claimed_by="cli")
    assert (home.version, home.state_since, home.claimed_by) == (2, at(1), "cli")
    with pytest.raises(StateConflict) as err:  # a stale version is refused
        q.transition(db, "alice", "archiving", "archived", "cli", at(2), version=1)
    assert isinstance(err.value, Conflict) and err.value.http_status == 409
    assert str(err.value) == "Home of alice is archiving (expected archiving at version 1)."
    with pytest.raises(StateConflict, match=r"Home of alice is archiving \(expected active\)"):
        q.transition(db, "alice", "active", "archiving", "cli", at(2))
    home = q.get_home(db, "alice")
    assert (home.state, home.version, home.state_since) == ("archiving", 2, at(1))
    assert len(q.events(db, "alice")) == 2  # refused changes leave no event
    with pytest.raises(TypeError):
        q.transition(db, "alice", "archiving", "archived", "cli", at(2), version=2, user="eve")
    with pytest.raises(ValueError):
        q.transition(db, "alice", "archiving", "gone", "cli", at(2))


def test_fail_and_recover(db):
    make_home(db)
    [home] = q.begin_archive_claim(db, "w1", at(1))
    home = q.fail(db, "alice", "disk on fire", "w1", at(2))
    assert (home.state, home.error, home.claimed_by) == ("failed", "disk on fire", None)
    [err] = q.events(db, "alice", kind="error")
    assert (err.from_state, err.to_state, err.detail) == (
        "archiving",
        "failed",
        {"error": "disk on fire"},
    )
    assert not home.is_cold  # failed while archiving: the files are still on the volume
    assert not q.request_restore(db, "alice", "api:alice", at(3))
    home = q.get_home(db, "alice")
    assert (home.state, home.error, home.last_activity) == ("active", None, at(3))

    archive(db, now=at(4), sid="s2")
    q.request_restore(db, "alice", "api:alice", at(5))
    home = q.fail(db, "alice", "bucket gone", "restorer", at(6), from_states="restoring")
    assert home.is_cold  # failed while restoring: the archive is the only copy
    assert q.request_restore(db, "alice", "api:alice", at(7))
    assert q.get_home(db, "alice").state == "restoring"


# -- archive claims -----------------------------------------------------------------------


def test_claim_respects_candidates_idleness_exemptions_and_limit(db):
    for i, user in enumerate(["a", "b", "c", "d", "e"]):
        make_home(db, user)
        q.record_activity(db, user, at(i), "hub")
    q.set_exempt(db, "a", True, "thesis", "api:admin", at(10))
    assert q.begin_archive_claim(db, "w", at(20), 5, candidates=[]) == []
    got = q.begin_archive_claim(
        db, "w", at(20), 2, candidates=["a", "b", "c", "d"], idle_before=at(3)
    )
    assert [h.user for h in got] == ["b", "c"]  # a is exempt, d too recent; oldest first
    assert [h.user for h in q.begin_archive_claim(db, "w", at(20), 10)] == ["d", "e"]
    assert q.begin_archive_claim(db, "w", at(20), 10) == []
    [ex] = q.events(db, "a", kind="exempt")
    assert (ex.actor, ex.detail) == ("api:admin", {"exempt": True, "reason": "thesis"})
    home = q.set_exempt(db, "a", False, None, "cli", at(21))
    assert (home.exempt, home.exempt_reason, home.version) == (False, None, 1)


def test_expired_claim_is_taken_over(db):
    make_home(db)
    [first] = q.begin_archive_claim(db, "w1", at(0), claim_for=timedelta(minutes=10))
    assert q.begin_archive_claim(db, "w2", at(5)) == []
    assert q.renew_claim(db, "alice", "w1", first.version, at(5), timedelta(minutes=10))
    assert q.begin_archive_claim(db, "w2", at(14)) == []
    [second] = q.begin_archive_claim(db, "w2", at(16))
    assert (second.claimed_by, second.version) == ("w2", first.version + 1)
    assert q.events(db, "alice")[-1].detail["took_over_from"] == "w1"
    # The first worker wakes up: it may neither renew nor finish.
    assert not q.renew_claim(db, "alice", "w1", first.version, at(17), timedelta(minutes=10))
    assert not q.finish_archive(db, "alice", "w1", first.version, at(17), snap())
    assert q.finish_archive(db, "alice", "w2", second.version, at(18), snap())


def test_finish_archive_refused_when_a_lease_is_active(db):
    make_home(db)
    [home] = q.begin_archive_claim(db, "w1", at(1))
    lease = q.acquire_lease(db, "alice", "dask:job7", "batch", timedelta(minutes=30), at(2))
    assert not q.finish_archive(db, "alice", "w1", home.version, at(3), snap())
    home = q.get_home(db, "alice")
    assert (home.state, home.claimed_by, home.archived_at) == ("active", None, None)
    last = q.events(db, "alice")[-1]
    assert (last.from_state, last.to_state, last.detail["cancelled"]) == (
        "archiving",
        "active",
        "lease",
    )
    assert last.detail["leases"] == [lease.id]
    assert [s.id for s in q.list_snapshots(db, "alice")] == ["snap1"]  # durable all the same
    # Leased homes are not claimed; once the lease is released they are.
    assert q.begin_archive_claim(db, "w1", at(4)) == []
    assert q.release_lease(db, lease.id, at(5))
    archive(db, now=at(6))


def test_finish_archive_refused_when_a_restore_was_requested(db):
    make_home(db)
    [home] = q.begin_archive_claim(db, "w1", at(1))
    assert not q.request_restore(db, "alice", "api:alice", at(2))  # a login cancels
    after_login = q.get_home(db, "alice")
    assert (after_login.state, after_login.last_activity) == ("active", at(2))
    assert not q.finish_archive(db, "alice", "w1", home.version, at(3), snap())
    home = q.get_home(db, "alice")
    assert (home.state, home.version) == ("active", after_login.version)
    assert moves(db)[-1] == ("archiving", "active", "api:alice")
    # The login counts as activity: an idleness-bounded claim skips the home now.
    assert q.begin_archive_claim(db, "w1", at(4), idle_before=at(1)) == []


def test_finish_archive_refused_when_exempted_meanwhile(db):
    make_home(db)
    [home] = q.begin_archive_claim(db, "w1", at(1))
    q.set_exempt(db, "alice", True, "asked", "api:alice", at(2))
    assert not q.finish_archive(db, "alice", "w1", home.version, at(3), snap())
    assert q.get_home(db, "alice").state == "active"
    assert q.events(db, "alice")[-1].detail["cancelled"] == "exempt"


def test_request_restore_is_idempotent(db):
    make_home(db)
    assert not q.request_restore(db, "alice", "api:alice", at(1))  # active: nothing to do
    archive(db, now=at(2))
    assert q.request_restore(db, "alice", "api:alice", at(3))
    assert not q.request_restore(db, "alice", "hook:alice", at(4))  # joins the restore
    assert not q.request_restore(db, "alice", "hook:alice", at(5))
    home = q.get_home(db, "alice")
    assert (home.state, home.version, home.state_since) == ("restoring", 4, at(3))
    assert moves(db).count(("archived", "restoring", "api:alice")) == 1
    q.finish_restore(db, "alice", "restorer", at(6))
    with pytest.raises(StateConflict):
        q.finish_restore(db, "alice", "restorer", at(7))


def test_concurrent_claimers_never_share_a_home(db):
    users = [f"user{i:02d}" for i in range(20)]
    for user in users:
        make_home(db, user)
    barrier = threading.Barrier(2)
    claimed: dict[str, list[str]] = {"w1": [], "w2": []}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            barrier.wait()
            while True:
                with db.transaction() as session:  # its own connection, locks held a while
                    got = q.begin_archive_claim(session, name, at(1), limit=3)
                    time.sleep(0.02)
                if not got and not _claimable(db):
                    return
                claimed[name] += [h.user for h in got]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert not set(claimed["w1"]) & set(claimed["w2"])
    assert sorted(claimed["w1"] + claimed["w2"]) == users
    assert all(len(set(c)) == len(c) for c in claimed.values())


def _claimable(db: Database) -> bool:
    return bool(q.list_homes(db, state="active"))


@pytest.mark.postgres
def test_skip_locked_does_not_wait_for_another_claimer(pg_url):
    """On PostgreSQL a claimer passes over rows another worker has locked, at once."""
    db = open_database(pg_url)
    try:
        for i in range(6):
            make_home(db, f"u{i}")
        with db.transaction() as first, db.transaction() as second:
            mine = {h.user for h in q.begin_archive_claim(first, "w1", at(1), limit=3)}
            # Were the locked rows waited for, this would fail instead of hanging.
            second.execute(text("SET LOCAL lock_timeout = '3s'"))
            theirs = {h.user for h in q.begin_archive_claim(second, "w2", at(1), limit=6)}
        assert len(mine) == 3 and theirs == {f"u{i}" for i in range(6)} - mine
    finally:
        db.dispose()


def test_a_lease_taken_during_finish_archive_is_seen(db):
    """acquire_lease and finish_archive serialize on the home: no lease slips past."""
    make_home(db)
    [home] = q.begin_archive_claim(db, "w1", at(1))
    q.record_snapshot(db, "alice", snap(), at(1))  # so that no insert waits on the home's row
    result: list[bool] = []
    with db.transaction() as session:
        q.acquire_lease(session, "alice", "job", "x", timedelta(hours=1), at(2))
        finisher = threading.Thread(
            target=lambda: result.append(
                q.finish_archive(db, "alice", "w1", home.version, at(3), snap())
            )
        )
        finisher.start()
        finisher.join(0.5)
        assert finisher.is_alive()  # waits for the lease's transaction
    finisher.join(30)
    assert result == [False]
    assert q.get_home(db, "alice").state == "active"


# -- leases, snapshots, events ------------------------------------------------------------


def test_lease_expiry_with_an_injected_clock(db):
    make_home(db)
    lease = q.acquire_lease(db, "alice", "cron:nightly", "report", timedelta(minutes=10), at(0))
    assert (lease.acquired_at, lease.expires_at, lease.released_at) == (at(0), at(10), None)
    assert [x.id for x in q.active_leases(db, "alice", at(9))] == [lease.id]
    assert q.active_leases(db, "alice", at(10)) == []
    renewed = q.renew_lease(db, lease.id, timedelta(minutes=10), at(9))
    assert renewed.expires_at == at(19)
    assert q.begin_archive_claim(db, "w1", at(18)) == []
    assert q.active_leases(db, "alice", at(19)) == []
    with pytest.raises(LeaseExpired):
        q.renew_lease(db, lease.id, timedelta(minutes=10), at(20))
    assert [h.user for h in q.begin_archive_claim(db, "w1", at(20))] == ["alice"]
    assert q.release_lease(db, lease.id, at(21))
    assert not q.release_lease(db, lease.id, at(22))
    log = [(e.actor, e.detail["action"]) for e in q.events(db, "alice", kind="lease")]
    assert log == [("cron:nightly", "acquire"), ("cron:nightly", "release")]
    other = q.acquire_lease(db, "alice", "job", "x", timedelta(hours=1), at(23))
    q.release_lease(db, other.id, at(24))
    with pytest.raises(LeaseExpired, match="was released"):
        q.renew_lease(db, other.id, timedelta(hours=1), at(25))


def test_snapshots_are_recorded_once(db):
    make_home(db)
    make_home(db, "bob")
    first = q.record_snapshot(db, "alice", snap("s1", at(1)), at(1))
    again = q.record_snapshot(db, "alice", snap("s1", at(1)), at(2))
    assert (again.id, again.created_at) == (first.id, at(1))
    q.record_snapshot(db, "alice", SnapshotInfo("s2", at(5), 1, 2, 3, parent="s1"), at(5))
    newest, oldest = q.list_snapshots(db, "alice")
    assert (newest.id, newest.parent, newest.time, oldest.id) == ("s2", "s1", at(5), "s1")
    with pytest.raises(SnapshotConflict):
        q.record_snapshot(db, "bob", snap("s1"), at(6))
    assert q.list_snapshots(db, "bob") == []


def test_event_queries(db):
    make_home(db)
    make_home(db, "bob", at(1))
    q.set_exempt(db, "bob", True, None, "cli", at(2))
    q.fail(db, "alice", "x", "cli", at(3))
    assert [e.user for e in q.events(db)] == ["alice", "bob", "bob", "alice"]
    assert [e.kind for e in q.events(db, "bob")] == ["state", "exempt"]
    assert [e.at for e in q.events(db, since=at(2))] == [at(2), at(3)]
    assert [e.kind for e in q.events(db, limit=1, newest_first=True)] == ["error"]


def test_a_callers_session_makes_several_calls_one_transaction(db):
    make_home(db)
    with pytest.raises(RuntimeError), db.transaction() as session:
        q.begin_archive_claim(session, "w1", at(1))
        q.acquire_lease(session, "alice", "job", "x", timedelta(hours=1), at(1))
        raise RuntimeError("crash before commit")
    home = q.get_home(db, "alice")
    assert (home.state, home.version) == ("active", 1)
    assert q.active_leases(db, "alice", at(2)) == [] and len(q.events(db)) == 1

"""A restore of an archived home brings back the snapshot its archive recorded.

Before: restore took the user's newest complete snapshot. ``hometier backup USER`` of an
archived home (or a replica whose clock runs ahead) made a newer snapshot of the stand-in,
which holds only the notice; the restore then brought back the notice alone, reported
success, and the quarantine — the last copy on the volume — was purged later.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from sqlalchemy import update

from adversarial.conftest import Victim, fill_home
from hometier.cli.main import main
from hometier.engine import backup
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.cycle import archive_home, purge_quarantine
from hometier.lifecycle.restoring import restore_home
from hometier.state import ARCHIVED, queries
from hometier.state.models import Home
from integration.lifecycle.conftest import manifest


def test_restore_uses_the_recorded_snapshot_not_the_newest(
    lc: Lifecycle, victim: Victim, tmp_path: Path
) -> None:
    before = manifest(victim.home)
    result = archive_home(lc, victim.user)
    assert result.outcome == "archived", result
    # A newer snapshot of the (now empty) home appears: an operator's backup, or a
    # replica whose clock is a day ahead.
    newer = backup(lc.repo, victim.home, user=victim.user)
    assert lc.repo.list_snapshots(victim.user)[-1].id == newer.id  # now the newest
    assert newer.stats.files == 1  # the notice alone

    for _ in range(2):
        restored = restore_home(lc, victim.user, "login")
        assert restored.snapshot == result.snapshot
        assert manifest(victim.home) == before
        # and once more from the bucket, the quarantine gone
        archive = archive_home(lc, victim.user)
        assert archive.outcome == "archived"
        lc.quarantine_for = dt.timedelta(0)
        purge_quarantine(lc)
        backup(lc.repo, victim.home, user=victim.user)
        result = archive


def test_backup_of_an_archived_home_is_refused(
    lc: Lifecycle,
    victim: Victim,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert archive_home(lc, victim.user).outcome == "archived"
    snaps_before = len(lc.repo.list_snapshots(victim.user))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOMETIER_HOMES", str(lc.layout.root))
    monkeypatch.setenv("HOMETIER_STORE", lc.repo.store.url)
    monkeypatch.setenv("HOMETIER_DB", str(lc.db.engine.url))

    code = main(["backup", victim.user])

    assert code == 4
    assert f"{victim.user} is archived; restore it first" in capsys.readouterr().err
    assert len(lc.repo.list_snapshots(victim.user)) == snaps_before
    # Without the database, the stand-in's notice tells the same.
    monkeypatch.setenv("HOMETIER_DB", f"sqlite:///{tmp_path}/missing/other.db")
    os.makedirs(tmp_path / "missing")
    assert main(["backup", victim.user]) == 4
    assert sorted(os.listdir(victim.home)) == [NOTICE_NAME]


def test_a_home_archived_before_the_column_existed_restores_its_archived_event_snapshot(
    lc: Lifecycle, victim: Victim
) -> None:
    """Rows written by 0.1 have no ``archived_snapshot``: the archive's event names it."""
    before = manifest(victim.home)
    result = archive_home(lc, victim.user)
    with lc.db.transaction() as s:  # as a 0.1 database would hold it
        s.execute(update(Home).values(archived_snapshot=None))
    backup(lc.repo, victim.home, user=victim.user)  # a newer, empty snapshot
    assert queries.get_home(lc.db, victim.user).state == ARCHIVED

    assert restore_home(lc, victim.user, "login").snapshot == result.snapshot
    assert manifest(victim.home) == before


def test_a_second_home_fills_in_correctly(lc: Lifecycle, victim: Victim) -> None:
    """Sanity: two users, each restores their own recorded snapshot."""
    other = lc.layout.path("other")
    fill_home(other, victim.uid + 500, victim.gid + 500)
    want = {u: manifest(lc.layout.path(u)) for u in (victim.user, "other")}
    for u in want:
        assert archive_home(lc, u).outcome == "archived"
    for u in want:
        restore_home(lc, u, "login")
        assert manifest(lc.layout.path(u)) == want[u]

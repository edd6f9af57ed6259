"""Processes binding a new state database to a repository at the same moment (two
archivers started together on a fresh setup): every one opens the repository it is
given if the others bound the same one, and none overwrites another's binding.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from hometier.lifecycle import binding
from hometier.lifecycle.binding import RepositoryMismatch, open_bound_repository
from hometier.state import Database, open_database
from hometier.state.settings import REPOSITORY_ID, get_settings

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
_OPEN: list[Database] = []


def request_dispose(db: Database) -> None:
    _OPEN.append(db)


@pytest.fixture(autouse=True)
def _dispose() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().dispose()  # every connection closed before the database is dropped


def test_a_process_that_read_the_settings_before_another_bound_them_does_not_rebind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_database(f"sqlite:///{tmp_path / 'state.db'}")
    request_dispose(db)
    first = open_bound_repository(db, f"file://{tmp_path}/one", NOW, create=True)
    # The second process read the settings before the first bound them, and was given
    # another repository: it must be refused, not move the binding.
    monkeypatch.setattr(binding, "get_settings", lambda _db: {})
    with pytest.raises(RepositoryMismatch):
        open_bound_repository(db, f"file://{tmp_path}/two", NOW, create=True)
    assert get_settings(db)[REPOSITORY_ID] == first.config.id
    # Given the same repository, it opens it.
    again = open_bound_repository(db, f"file://{tmp_path}/one", NOW, create=True)
    assert again.config.id == first.config.id


@pytest.mark.slow
def test_threads_binding_one_new_postgres_database_at_once(pg_url: str, tmp_path: Path) -> None:
    db = open_database(pg_url)
    request_dispose(db)
    url = f"file://{tmp_path}/repo"
    failures: list[BaseException] = []
    ids: set[str] = set()
    rounds = 15
    for _ in range(rounds):
        with db.engine.begin() as conn:
            conn.execute(text("DELETE FROM settings"))
        go = threading.Barrier(4)

        def one(go: threading.Barrier = go) -> None:
            try:
                go.wait()
                ids.add(open_bound_repository(db, url, NOW, create=True).config.id)
            except BaseException as exc:  # noqa: BLE001 - collected, asserted below
                failures.append(exc)

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(f"{rounds} rounds of 4 threads binding a new database: {len(failures)} failed")
    assert failures == [] and len(ids) == 1, failures[:3]

"""Fixtures of the contract suites: the state layer runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest

from hometier.state.db import open_database


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path):
    """A SQLAlchemy URL of a fresh, empty state database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def db(db_url):
    """A fresh state database on each backend (a suite may override it)."""
    database = open_database(db_url)
    yield database
    database.dispose()

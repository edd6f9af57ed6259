"""The state database: where every home is in its lifecycle, and why.

Terms:

- A *home* is one user's home directory. Its *state* is ``active`` (files on the volume),
  ``archiving`` (a worker holds a *claim* and is writing a snapshot), ``archived`` (files
  only in the repository), ``restoring`` (files coming back) or ``failed`` (``error`` says
  why). ``version`` grows on every state change; every change is a compare-and-set on it.
- A *snapshot* row records a snapshot the engine wrote to the repository (the repository
  is the truth; these rows are an index of it).
- A *lease* is a consumer's promise to keep a home hot until it expires or is released;
  a home with an active lease is never archived.
- An *exemption* keeps a home from being archived at all.
- The *event log* is append-only: one row for every transition, lease and exemption,
  naming the *actor* who caused it (``archiver:host:pid``, ``api:alice``, ``cli``).

SQLite (WAL, one writer) is the embedded default; PostgreSQL serves several workers, which
claim work with ``SELECT … FOR UPDATE SKIP LOCKED``. ``open_database(url)`` migrates the
schema (Alembic, shipped in ``migrations/``). Functions in ``queries`` take ``now`` as a
parameter and are atomic as their docstrings say. This package knows nothing of the
engine, the repository or object storage.
"""

from hometier.state.db import Database, UnsupportedDatabase, make_engine, open_database
from hometier.state.models import (
    ACTIVE,
    ARCHIVED,
    ARCHIVING,
    FAILED,
    HOME_STATES,
    RESTORING,
    Event,
    Home,
    Lease,
    Snapshot,
)
from hometier.state.queries import (
    HomeNotFound,
    LeaseExpired,
    LeaseNotFound,
    SnapshotConflict,
    SnapshotInfo,
    StateConflict,
)

__all__ = [
    "ACTIVE",
    "ARCHIVED",
    "ARCHIVING",
    "FAILED",
    "HOME_STATES",
    "RESTORING",
    "Database",
    "Event",
    "Home",
    "HomeNotFound",
    "Lease",
    "LeaseExpired",
    "LeaseNotFound",
    "Snapshot",
    "SnapshotConflict",
    "SnapshotInfo",
    "StateConflict",
    "UnsupportedDatabase",
    "make_engine",
    "open_database",
]

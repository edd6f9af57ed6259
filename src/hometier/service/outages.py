"""What callers are told when something below the service fails: outages and leaky errors.

An *outage* is the state database or object storage not answering. It is the caller's
cue to come back, not a bug: ``503 Service Unavailable`` with ``Retry-After``, a sentence
that names what is down (never where it is), and nothing changed.

Some errors carry text that is for operators only: a store error names the bucket URL
and an object key, an integrity error a pack id. Callers get a *stand-in* instead
(``StandIn``): a sentence and a short *reference*; the log line carries the same
reference and the whole detail, so an operator finds one from the other. Admins (the
``custom:hometier:admin`` scope) get the detail in the answer as well.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import ClassVar

from sqlalchemy import exc as sa_exc

from hometier.engine.check import CheckFailed
from hometier.engine.verify import VerifyFailed
from hometier.errors import Error, IntegrityError, new_reference
from hometier.repo.config import NotARepository, RepositoryNotFound, UnsupportedVersion
from hometier.store.errors import ObjectExists, ObjectNotFound, StoreError, StoreUnavailable

RETRY_AFTER = 10
"""Seconds a caller is asked to wait after an outage (``Retry-After``)."""

# Errors the database driver raises when the server is down, restarting, out of
# connections or unreachable. Constraint violations and bad SQL are bugs, not outages.
_DB_DOWN = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,  # the connection pool ran dry waiting for the database
    sa_exc.DisconnectionError,
)


class StandIn(Error):
    """{}"""

    retry_after: ClassVar[int | None] = None
    log_level: ClassVar[int] = logging.ERROR

    def __init__(self, ref: str, detail: str) -> None:
        super().__init__(ref)
        self.ref = ref
        self.detail = detail


class StateUnavailable(StandIn):
    """The state database is unreachable; try again shortly (reference {})."""

    exit_code = 6
    http_status = 503
    retry_after = RETRY_AFTER
    log_level = logging.WARNING


class StorageUnavailable(StandIn):
    """Object storage is unreachable; try again shortly (reference {})."""

    exit_code = 6
    http_status = 503
    retry_after = RETRY_AFTER
    log_level = logging.WARNING


class StorageFailed(StandIn):
    """Object storage could not serve this request; your administrator can look it up
    with reference {}."""

    exit_code = 6
    http_status = 502


class ArchiveDamaged(StandIn):
    """The archive is damaged; your administrator can look it up with reference {}."""

    exit_code = 5
    http_status = 500


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def is_state_outage(exc: BaseException) -> bool:
    """True if ``exc`` (or what caused it) says the state database cannot be reached."""
    psycopg = sys.modules.get("psycopg")  # imported only where PostgreSQL is used
    for e in _chain(exc):
        if isinstance(e, _DB_DOWN):
            return True
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if psycopg is not None and isinstance(e, psycopg.OperationalError | psycopg.InterfaceError):
            return True
    return False


def detail_of(exc: BaseException) -> str:
    """One line for the log: the error's own first line (no SQL, no debug dump)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        inner: BaseException = exc.orig
        text = str(inner).strip().splitlines()
        return f"{type(exc).__name__} ({type(inner).__name__}): {text[0] if text else ''}"
    text = (exc.get_message() if isinstance(exc, Error) else str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:1000] if text else ''}"


def stand_in(exc: BaseException) -> StandIn | None:
    """The ``StandIn`` callers see for ``exc``, or None when ``exc`` is fine to show
    as it is (its own message holds nothing for operators only)."""
    kind: type[StandIn] | None = None
    if isinstance(exc, StandIn):
        return None
    if is_state_outage(exc):
        kind = StateUnavailable
    elif isinstance(exc, StoreUnavailable):
        kind = StorageUnavailable
    elif isinstance(exc, ObjectExists):
        kind = None
    elif isinstance(exc, ObjectNotFound | IntegrityError | VerifyFailed | CheckFailed):
        kind = ArchiveDamaged
    elif isinstance(exc, StoreError | RepositoryNotFound | NotARepository | UnsupportedVersion):
        kind = StorageFailed
    if kind is None:
        return None
    public = kind(new_reference(), detail_of(exc))
    public.__cause__ = exc
    return public


__all__ = [
    "RETRY_AFTER",
    "ArchiveDamaged",
    "StandIn",
    "StateUnavailable",
    "StorageFailed",
    "StorageUnavailable",
    "detail_of",
    "is_state_outage",
    "new_reference",
    "stand_in",
]

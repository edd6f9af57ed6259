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
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
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


# --- health: is the database up, is the store up? ------------------------------------

HEALTH_TIMEOUT = 3.0
"""Seconds a health probe waits for the database or the store before calling it down."""
HEALTH_TTL = 5.0
"""Seconds a healthy answer is reused: a storm of health checks costs one probe."""
HEALTH_TTL_DOWN = 1.0
"""Seconds an answer naming a part down is reused: "back" shows within a second or so
(and a hung part is never probed twice at once: callers share the probe in flight)."""


@dataclass(frozen=True)
class Part:
    name: str
    ok: bool
    message: str
    """For people: "reachable", "unreachable (timed out after 3 s)"."""
    detail: str = ""
    """For operators (admins, the log): the error's first line."""


@dataclass(frozen=True)
class Health:
    parts: tuple[Part, ...]
    checked: float

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.parts)

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)


class HealthCheck:
    """Probes the state database (``SELECT 1``) and the store (a ``head`` of the
    repository's config object), each bounded by ``timeout``; a healthy answer is
    cached for ``ttl`` seconds, one naming a part down for ``ttl_down``, and concurrent
    callers share one probe in flight."""

    def __init__(
        self,
        probes: dict[str, Callable[[], object]],
        *,
        timeout: float = HEALTH_TIMEOUT,
        ttl: float = HEALTH_TTL,
        ttl_down: float = HEALTH_TTL_DOWN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probes = probes
        self.timeout = timeout
        self.ttl = ttl
        self.ttl_down = ttl_down
        self.clock = clock
        self.probe_count = 0
        """Probes run so far (a test counts them)."""
        self._lock = threading.Lock()
        self._last: Health | None = None
        # One thread per part: a hung probe occupies its own thread, never a caller's.
        self._pool = ThreadPoolExecutor(max_workers=len(probes) * 2, thread_name_prefix="health")
        self._busy: dict[str, Future[object]] = {}

    def cached(self) -> Health | None:
        """The last answer, if any (never probes)."""
        return self._last

    def check(self) -> Health:
        """The health now (cached for ``ttl``); blocks at most about ``timeout``."""
        with self._lock:
            last = self._last
            if last is not None:
                ttl = self.ttl if last.ok else self.ttl_down
                if self.clock() - last.checked < ttl:
                    return last
            parts = []
            futures = {}
            for name, probe in self.probes.items():
                busy = self._busy.get(name)
                if busy is None or busy.done():
                    self.probe_count += 1
                    busy = self._busy[name] = self._pool.submit(probe)
                futures[name] = busy
            deadline = self.clock() + self.timeout
            for name, fut in futures.items():
                try:
                    fut.result(timeout=max(0.0, deadline - self.clock()))
                    parts.append(Part(name, True, "reachable"))
                except FutureTimeout:
                    why = f"no answer within {self.timeout:g} s"
                    parts.append(Part(name, False, f"unreachable ({why})", why))
                except Exception as exc:  # noqa: BLE001 - any failure means "down"
                    parts.append(Part(name, False, "unreachable", detail_of(exc)))
            self._last = Health(tuple(parts), self.clock())
            return self._last

    def report(self, name: str, exc: BaseException) -> None:
        """A request just met ``name`` down: the next check probes again at once."""
        with self._lock:
            if self._last is not None and self._last.part(name).ok:
                self._last = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = [
    "RETRY_AFTER",
    "Health",
    "HealthCheck",
    "Part",
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

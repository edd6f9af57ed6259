"""The ``Store``: obstore behind retries, error classification and request counters."""

from __future__ import annotations

import datetime
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import obstore
import obstore.exceptions as obx

from hometier.store.errors import (
    AccessDenied,
    BucketNotFound,
    ObjectExists,
    ObjectNotFound,
    ShortRead,
    StoreError,
    StoreUnavailable,
    is_transient,
    short,
    status_code,
)

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime.datetime | None = None


@dataclass
class Retry:
    """Exponential backoff with full jitter: sleep U(0, min(cap, base * 2**n))."""

    attempts: int = 6
    base: float = 0.2
    cap: float = 8.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * (2**attempt)))


@dataclass
class StoreStats:
    """Requests and bytes per operation kind; thread-safe."""

    requests: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, op: str, nbytes: int = 0) -> None:
        with self._lock:
            self.requests[op] = self.requests.get(op, 0) + 1
            self.bytes[op] = self.bytes.get(op, 0) + nbytes

    def add_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "bytes": dict(self.bytes),
                "retries": self.retries,
            }


class Store:
    """A flat namespace of immutable objects under one URL.

    All methods are safe to call from several threads at once. Transient errors are
    retried (``Retry``); when attempts run out ``StoreUnavailable`` is raised. Permanent
    errors raise at once: ``ObjectNotFound``, ``ObjectExists``, ``AccessDenied``,
    ``BucketNotFound`` or ``StoreError``.
    """

    def __init__(
        self,
        backend: Any,
        url: str,
        *,
        retry: Retry | None = None,
        supports_create: bool = True,
    ) -> None:
        self._backend = backend
        self.url = url
        self.retry = retry or Retry()
        self.supports_create = supports_create
        self.stats = StoreStats()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # --- retry and classification -------------------------------------------------

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        last: BaseException | None = None
        for attempt in range(self.retry.attempts):
            try:
                return fn()
            except BaseException as exc:  # noqa: BLE001 - classified below
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                mapped = self._permanent(op, key, exc)
                if mapped is not None:
                    raise mapped from exc
                last = exc
                if attempt + 1 < self.retry.attempts:
                    self.stats.add_retry()
                    time.sleep(self.retry.delay(attempt))
        assert last is not None
        raise StoreUnavailable(self.url, self.retry.attempts, short(last)) from last

    def _permanent(self, op: str, key: str, exc: BaseException) -> StoreError | None:
        if isinstance(exc, FileNotFoundError | obx.NotFoundError):
            text = str(exc)
            if "NoSuchBucket" in text:
                return BucketNotFound(self.url, short(exc))
            return ObjectNotFound(key)
        if isinstance(exc, obx.AlreadyExistsError | obx.PreconditionError | FileExistsError):
            return ObjectExists(key)
        if isinstance(
            exc, obx.PermissionDeniedError | obx.UnauthenticatedError | PermissionError
        ) or status_code(exc) in (401, 403):  # S3 list errors are GenericError
            return AccessDenied(self.url, short(exc))
        if "NoSuchBucket" in str(exc) or "ContainerNotFound" in str(exc):
            return BucketNotFound(self.url, short(exc))
        if not is_transient(exc):
            return StoreError(f"{op} {key} at {self.url}: {short(exc)}")
        return None

    # --- operations ---------------------------------------------------------------

    def put(
        self, key: str, data: bytes | bytearray | memoryview, *, if_absent: bool = False
    ) -> None:
        """Write ``data`` at ``key`` in one request.

        With ``if_absent`` the write fails with ``ObjectExists`` when the key exists
        (atomically where the backend supports conditional create, else by a HEAD
        first, which is not atomic). Retrying a put is safe: objects are immutable and
        written with the same bytes, so a retry after a lost reply either succeeds or
        reports ``ObjectExists`` for data that is already there.
        """
        size = len(data)
        payload = data

        def do() -> None:
            if if_absent and not self.supports_create:
                if self._exists_raw(key):
                    raise FileExistsError(key)
            if if_absent and self.supports_create:
                obstore.put(self._backend, key, payload, mode="create", use_multipart=False)
            else:
                obstore.put(self._backend, key, payload, mode="overwrite", use_multipart=False)

        try:
            self._call("put", key, do)
        finally:
            self.stats.add("put", size)

    def get(self, key: str) -> bytes:
        """Read a whole object. Raises ``ObjectNotFound``."""

        def do() -> bytes:
            return bytes(obstore.get(self._backend, key).bytes())

        data = self._call("get", key, do)
        self.stats.add("get", len(data))
        return data

    def get_ranges(
        self, key: str, ranges: Sequence[tuple[int, int]], *, copy: bool = True
    ) -> list[bytes]:
        """Read byte ranges ``[start, end)`` of one object; the backend may coalesce them.

        Raises ``ShortRead`` (a ``StoreError`` and an ``IntegrityError``) if the object is
        shorter than a range twice in a row: a truncated object is never padded.
        ``copy=False`` returns the backend's own buffers (read-only, with ``len`` and the
        buffer protocol: read them through ``memoryview``) instead of copying each into
        ``bytes``, a copy made holding the GIL, into freshly mapped memory, for every
        segment a restore fetches.
        """
        if not ranges:
            return []
        starts = [r[0] for r in ranges]
        ends = [r[1] for r in ranges]

        def do() -> list[bytes]:
            parts = obstore.get_ranges(self._backend, key, starts=starts, ends=ends)
            return [bytes(p) for p in parts] if copy else parts  # type: ignore[return-value]

        def first_short(parts: list[bytes]) -> tuple[int, int, int] | None:
            for (start, end), part in zip(ranges, parts, strict=True):
                if len(part) != end - start:
                    return start, end, len(part)
            return None

        parts = self._call("get_range", key, do)
        if first_short(parts) is not None and not self.url.startswith(("file:", "memory:")):
            # A transfer cut short with a matching length (a proxy, a broken connection
            # reused) looks like a short object: ask once more before calling it one.
            # (A local file has no transfer to go wrong.) Not a retry of a transient
            # error: ``stats.retries`` counts those only.
            parts = self._call("get_range", key, do)
        cut = first_short(parts)
        if cut is not None:
            raise ShortRead(key, *cut)
        total = sum(len(p) for p in parts)
        self.stats.add("get_range", total)
        return parts

    def head(self, key: str) -> ObjectInfo:
        """Size of an object. Raises ``ObjectNotFound``."""

        def do() -> ObjectInfo:
            meta = obstore.head(self._backend, key)
            return ObjectInfo(key, int(meta["size"]))

        info = self._call("head", key, do)
        self.stats.add("head")
        return info

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    def _exists_raw(self, key: str) -> bool:
        try:
            obstore.head(self._backend, key)
        except (FileNotFoundError, obx.NotFoundError):
            return False
        return True

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a folder, ``"packs/"``)."""

        def first() -> Any:
            stream = obstore.list(self._backend, prefix or None, chunk_size=1000)
            return stream, next(stream, None)

        stream, batch = self._call("list", prefix, first)
        self.stats.add("list")
        while batch is not None:
            for meta in batch:
                yield ObjectInfo(str(meta["path"]), int(meta["size"]), meta.get("last_modified"))
            batch = self._call("list", prefix, lambda: next(stream, None))

    def delete(self, key: str) -> None:
        """Remove an object; removing a missing object is not an error (idempotent)."""

        def do() -> None:
            try:
                obstore.delete(self._backend, key)
            except (FileNotFoundError, obx.NotFoundError):
                pass

        self._call("delete", key, do)
        self.stats.add("delete")

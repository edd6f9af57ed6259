"""Writer processes for ``restore``: small files created, written and finished by forked
children, so that a restore's per-file work runs on every core instead of behind the
process's one GIL.

Most files of a home are one blob. For those the restore's fetch threads hand the blob
as it is stored (compressed) to the writer that owns the file; the writer decompresses
it and checks it against its keyed hash (``codec.decode``, ``ids.blob_id``: the same
verification as a read in the restoring process, on another core, and the pipe carries
the compressed bytes: a third as many on homes of real material), then creates the file (``O_CREAT|O_EXCL|O_NOFOLLOW``
relative to the staging folder's descriptor, which it inherited), writes it and sets
its metadata through the descriptor (``xattrs.apply_metadata``), exactly as the thread
would have. A blob that fails the check is not written: the writer lists it, and the
restoring process reads it again (``Writers.failed``) as it would any read that failed
verification. A writer owns runs of files of the same folders (so two processes rarely
insert into one directory at once), knows the plan from the fork (copy-on-write: only
the blob's bytes travel, through a pipe that also bounds what is in flight) and reports
the attributes it could not keep when it is done.

The children are forked from a process that may run other threads (the service): after
``fork`` only the calling thread exists in the child, so a child touches nothing that
another thread could have held locked — no logging, no imports, no store — closes every
descriptor but its own three at once (a service's sockets must not stay open in it),
disables the garbage collector (it would copy the parent's pages) and leaves with
``os._exit``. A child whose parent dies stops before its next file (it checks that its
parent is still the restoring process) or at end-of-file, without a word; the staging
folder is then a crash's leftover, removed by the next restore.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import marshal
import os
import signal
import struct
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from hometier.cpu import cores
from hometier.errors import IntegrityError
from hometier.repo import codec
from hometier.repo.ids import blob_id

_FRAME = struct.Struct("<IIIB32s")
"""A file's index in the plan, the length of what follows, the blob's decoded length,
its compression (``_VERIFIED``: the bytes that follow are the content, already checked)
and its id."""
_VERIFIED = 0xFF
_NO_ID = bytes(32)
_END = 0xFFFFFFFF
RUN = 256
"""Consecutive files of one folder that go to the same writer."""
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_PIPE_SIZE = 1 << 20


class WriterFailed(Exception):
    """A writer process stopped with an error (its message), or died."""


FinishFn = Callable[[int, int], list[str]]
"""Set a file's metadata through its descriptor: (fd, plan index) -> attributes lost."""


class Writers:
    """``count`` forked writers over the staging folder ``sfd``.

    ``send(idx, data)`` (from any thread) has file ``idx`` of ``files`` (paths relative to
    the staging folder) created with ``data`` and finished by ``finish`` in a child;
    ``send_stored(idx, bid, comp, raw_len, stored)`` the same with a blob as it is stored,
    which the child decodes and checks against ``bid`` (keyed with ``key``) first;
    ``close()`` waits for every child and returns what they could not keep as
    ``(path, [attributes])``, and leaves in ``failed`` the ``(idx, bid)`` of stored blobs
    that failed their check (those files were not created); ``abort()`` kills them (by
    their PIDs) and waits, so that nothing writes into the staging folder any more.
    """

    def __init__(
        self,
        files: list[tuple[bytes, bytes]],
        sfd: int,
        count: int,
        finish: FinishFn,
        key: bytes = b"",
    ):
        self.files = files
        self.key = key
        self.failed: list[tuple[int, bytes]] = []
        self.pids: list[int] = []
        self.pipes: list[int] = []
        self.results: list[int] = []
        self.locks: list[threading.Lock] = []
        self.reasons: dict[int, str] = {}
        """What a writer that stopped said, read once: several threads sending to it see
        the broken pipe, and the first to read its report empties the pipe."""
        try:
            for _ in range(count):
                self._start(sfd, finish)
        except BaseException:
            self.abort()
            raise

    def _start(self, sfd: int, finish: FinishFn) -> None:
        data_r, data_w = os.pipe2(os.O_CLOEXEC)
        res_r, res_w = os.pipe2(os.O_CLOEXEC)
        try:
            fcntl.fcntl(data_w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        except (OSError, AttributeError):
            pass  # a smaller pipe only means more wake-ups
        parent = os.getpid()
        with warnings.catch_warnings():
            # Python >= 3.12 warns about fork() beside other threads; the child below
            # uses nothing another thread could hold (see the module's docstring).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; its effects are tested
            code = 1
            try:
                code = _child(self.files, sfd, data_r, res_w, finish, parent, self.key)
            finally:
                os._exit(code)
        os.close(data_r)
        os.close(res_w)
        self.pids.append(pid)
        self.pipes.append(data_w)
        self.results.append(res_r)
        self.locks.append(threading.Lock())

    def owner(self, idx: int) -> int:
        # The plan lists a folder's files one after the other: runs of them stay together.
        return (idx // RUN) % len(self.pids)

    def send(self, idx: int, data: bytes | memoryview) -> None:
        self._send(idx, _FRAME.pack(idx, len(data), len(data), _VERIFIED, _NO_ID), data)

    def send_stored(
        self, idx: int, bid: bytes, comp: int, raw_len: int, stored: bytes | memoryview
    ) -> None:
        self._send(idx, _FRAME.pack(idx, len(stored), raw_len, comp, bid), stored)

    def _send(self, idx: int, head: bytes, data: bytes | memoryview) -> None:
        w = (idx // RUN) % len(self.pids)
        with self.locks[w]:
            try:
                n = os.writev(self.pipes[w], [head, data])
                if n < len(head) + len(data):  # interrupted part way (a signal): the rest
                    _write_all(self.pipes[w], memoryview(head + bytes(data))[n:])
            except BrokenPipeError:
                raise WriterFailed(self._why(w)) from None

    def close(self) -> list[tuple[bytes, list[str]]]:
        """Tell every writer that nothing more comes, wait for them, raise the first
        failure; returns the attributes they could not keep."""
        for w, fd in enumerate(self.pipes):
            with self.locks[w]:
                try:
                    _write_all(fd, _FRAME.pack(_END, 0, 0, _VERIFIED, _NO_ID))
                except BrokenPipeError:
                    pass
                os.close(fd)
        self.pipes = []
        lost: list[tuple[bytes, list[str]]] = []
        failure: str | None = None
        for w in range(len(self.pids)):
            doc = _read_all(self.results[w])
            os.close(self.results[w])
            _pid, status = os.waitpid(self.pids[w], 0)
            ok: bool = False
            value: Any = self.reasons.get(w) or _status(status)
            if doc:
                try:
                    ok, value = marshal.loads(doc)
                except (EOFError, ValueError, TypeError):
                    pass
            if not ok or status != 0:
                failure = failure or str(value)
            else:
                lost.extend(value[0])
                self.failed.extend(value[1])
        self.pids, self.results = [], []
        if failure is not None:
            raise WriterFailed(failure)
        return lost

    def abort(self) -> None:
        """Stop every writer now (SIGKILL by PID) and wait for it; idempotent."""
        for fd in self.pipes:
            os.close(fd)
        self.pipes = []
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        for fd in self.results:
            os.close(fd)
        self.pids, self.results = [], []

    def _why(self, w: int) -> str:
        """A writer that stopped reading: its own message if it left one (called with
        ``locks[w]`` held)."""
        if w not in self.reasons:
            self.reasons[w] = "a writer process stopped"
            try:
                ok, value = marshal.loads(_read_all(self.results[w]))
                if not ok:
                    self.reasons[w] = str(value)
            except (OSError, EOFError, ValueError, TypeError):
                pass
        return self.reasons[w]


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"a writer process was killed by signal {os.WTERMSIG(status)}"
    return f"a writer process exited with status {os.waitstatus_to_exitcode(status)}"


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, 1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def _child(
    files: list[tuple[bytes, bytes]],
    sfd: int,
    rfd: int,
    res: int,
    finish: FinishFn,
    parent: int,
    key: bytes,
) -> int:  # pragma: no cover - runs in the forked child
    gc.disable()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if threading.current_thread() is threading.main_thread():
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
    keep = {sfd, rfd, res}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep and fd > 2:
            try:
                os.close(fd)
            except OSError:
                pass
    lost: list[tuple[bytes, list[str]]] = []
    failed: list[tuple[int, bytes]] = []
    try:
        reader = os.fdopen(rfd, "rb", buffering=_PIPE_SIZE)
        while True:
            head = reader.read(_FRAME.size)
            if len(head) < _FRAME.size:
                return 2  # the parent is gone: leave the staging folder as a crash would
            idx, length, raw_len, comp, bid = _FRAME.unpack(head)
            if idx == _END:
                break
            data = reader.read(length) if length else b""
            if len(data) != length:
                return 2
            if os.getppid() != parent:
                # The restoring process died: what is still in the pipe (up to a MiB
                # of small files) is not written into a staging folder nobody owns.
                return 2
            if comp != _VERIFIED:
                # Checked before anything is created: a blob that fails goes back to
                # the restoring process, which reads it again.
                try:
                    data = codec.decode(comp, data, raw_len)
                    good = blob_id(key, data) == bid
                except IntegrityError:
                    good = False
                if not good:
                    failed.append((idx, bid))
                    continue
            rel = files[idx][0]
            fd = os.open(rel, _CREATE, 0o600, dir_fd=sfd)
            try:
                if data:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                what = finish(fd, idx)
            finally:
                os.close(fd)
            if what:
                lost.append((rel, what))
        _write_all(res, marshal.dumps((True, (lost, failed))))
        return 0
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        try:
            _write_all(res, marshal.dumps((False, _describe(exc))))
        except BaseException:  # noqa: BLE001
            pass
        return 1


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            return "no space left on the device holding the home"
        where = f" ({os.fsdecode(exc.filename)})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc) or type(exc).__name__


def available() -> bool:
    """Writer processes need ``fork`` and ``/proc/self/fd`` (Linux)."""
    return hasattr(os, "fork") and os.path.isdir("/proc/self/fd") and sys.platform == "linux"


class Budget:
    """Writer processes one process may run at once, shared by its restores: the
    service restores several homes at a time, each forking its own writers, and a pool
    raised to 32 would fork 64 processes on a 2-core machine.
    ``take(n)`` gets at most ``n`` of what is free (never waits: a restore that gets
    none writes from its threads), ``give`` returns them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self._lock = threading.Lock()

    def take(self, n: int) -> int:
        with self._lock:
            got = max(0, min(n, self.free))
            self.free -= got
            return got

    def give(self, n: int) -> None:
        with self._lock:
            self.free = min(self.size, self.free + n)


BUDGET = Budget(8 * cores())
"""Eight per core: the service's pool of 8 restores with a writer per core each fits.
Measured on 2 cores (16 real homes restored at once, 8 at a time, A/B twice): a budget
of two per core, which left most restores writing from their threads, made the storm's
p50 2-3x and its p95 1.5-1.7x slower than no budget; forked writers beat threads even
oversubscribed. The budget only caps what a larger pool would fork."""

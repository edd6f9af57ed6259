"""Reading a job's source and writing its outputs inside a home, root-safe.

hometier runs as root over homes their users control (THREATS.md), so nothing here
resolves a path string under a home: the home is opened once (``O_DIRECTORY |
O_NOFOLLOW``) and every component below is opened relative to its parent's descriptor
with ``O_NOFOLLOW``, so a ``..``, a symbolic link anywhere on the way (out of the home or
not) or a non-folder is refused, whatever a user swaps in meanwhile. Files are created
under a fresh name with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and renamed into place with
``renameat2(RENAME_NOREPLACE)``, never replacing anything. All of it runs with the home
owner's filesystem credentials (``setfsuid``/``setfsgid`` on the calling thread), so
the kernel refuses whatever that user could not do themselves, such as reading a file
another user hard-linked or left readable only to its group.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from hometier.engine.fsutil import rename_noreplace
from hometier.errors import NotFound, UsageError

MAX_PATH = 1024
SUFFIXES = {".ipynb": "notebook", ".py": "script"}
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class PathRefused(UsageError):
    """The path {!r} is refused: {}."""


class SourceNotFound(NotFound):
    """{!r} does not exist in the home of {}."""


class SourceTooLarge(UsageError):
    """{!r} is larger than {} bytes; a job's source is limited to that."""


def check_relpath(path: str) -> tuple[str, ...]:
    """The components of ``path``, a file relative to a home; ``PathRefused`` for an
    absolute path, ``..``, ``.``, empty or control-character components, or a suffix other
    than ``.ipynb`` or ``.py``."""
    if not isinstance(path, str) or not path:
        raise PathRefused(str(path)[:80], "it is empty")
    if len(path) > MAX_PATH:
        raise PathRefused(path[:80] + "…", f"longer than {MAX_PATH} characters")
    if path.startswith("/") or path.startswith("~"):
        raise PathRefused(path, "it must be relative to your home folder")
    parts = tuple(path.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise PathRefused(path, "it must not contain empty, '.' or '..' components")
        if any(ord(c) < 32 or c == "\x7f" for c in part) or "\\" in part:
            raise PathRefused(path, "it contains control characters or backslashes")
    if Path(parts[-1]).suffix not in SUFFIXES:
        raise PathRefused(path, "a job runs a notebook (.ipynb) or a Python script (.py)")
    return parts


def kind_of(path: str) -> str:
    return SUFFIXES[Path(check_relpath(path)[-1]).suffix]


# -- credentials --------------------------------------------------------------------------


@contextlib.contextmanager
def as_owner(uid: int, gid: int) -> Iterator[None]:
    """Use ``uid``/``gid`` for filesystem access on this thread (Linux ``setfsuid``,
    which is per thread), and root's again afterwards. A no-op unless running as root."""
    if os.geteuid() != 0 or (uid == 0 and gid == 0):
        yield
        return
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    try:
        yield
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)


def run_as_owner(home: Path, fn: object, *args: object) -> object:
    """Run ``fn(home_fd, *args)`` on a thread of its own with the home owner's
    filesystem credentials; the home's descriptor is opened first, refusing a symlink."""
    result: list[object] = []
    error: list[BaseException] = []

    def work() -> None:
        try:
            fd = open_home(home)
            try:
                st = os.fstat(fd)
                with as_owner(st.st_uid, st.st_gid):
                    result.append(fn(fd, *args))  # type: ignore[operator]
            finally:
                os.close(fd)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            error.append(exc)

    # A thread of its own: fsuid never leaks into a pool thread, whatever happens.
    t = threading.Thread(target=work, name="jobs-files", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0] if result else None


def open_home(home: Path) -> int:
    try:
        return os.open(home, _O_DIR)
    except OSError as exc:
        if exc.errno == errno.ELOOP or exc.errno == errno.ENOTDIR:
            raise PathRefused(str(home), "the home is not a real folder") from None
        raise


# -- walking ------------------------------------------------------------------------------


def _open_dir(home_fd: int, parts: tuple[str, ...], path: str, user: str) -> int:
    """A descriptor of the folder ``parts`` under the home, one component at a time."""
    fd = os.dup(home_fd)
    try:
        for part in parts:
            try:
                nxt = os.open(part, _O_DIR, dir_fd=fd)
            except OSError as exc:
                # O_DIRECTORY|O_NOFOLLOW on a link fails with ENOTDIR: say which it was.
                if exc.errno == errno.ENOTDIR and _is_link(fd, part):
                    raise PathRefused(path, "it goes through a symbolic link") from None
                _refuse(exc, path, user)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _refuse(exc: OSError, path: str, user: str) -> None:
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        raise PathRefused(path, "it goes through a symbolic link") from None
    if exc.errno == errno.ENOTDIR:
        raise PathRefused(path, "one of its folders is not a folder") from None
    if exc.errno == errno.ENOENT:
        raise SourceNotFound(path, user) from None
    if exc.errno in (errno.EACCES, errno.EPERM):
        raise PathRefused(path, "you cannot read it") from None
    raise exc


def read_source(home_fd: int, path: str, user: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` under the home (see the module docstring)."""
    parts = check_relpath(path)
    dfd = _open_dir(home_fd, parts[:-1], path, user)
    try:
        try:
            fd = os.open(
                parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd
            )
        except OSError as exc:
            _refuse(exc, path, user)
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PathRefused(path, "it is not a regular file")
        if st.st_size > max_bytes:
            raise SourceTooLarge(path, max_bytes)
        chunks, total = [], 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > max_bytes:
                raise SourceTooLarge(path, max_bytes)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_source(home_fd: int, path: str, user: str, max_bytes: int) -> None:
    """Refuse now what ``read_source`` would refuse at run time."""
    read_source(home_fd, path, user, max_bytes)


# -- outputs ------------------------------------------------------------------------------


def output_name(source: str, stamp: str, n: int = 0) -> str:
    """``report.ipynb`` → ``report.2025-01-31T0200.ipynb`` (``-2``… if taken); a
    script's output is its log: ``job.2025-01-31T0200.log``."""
    p = Path(source)
    suffix = ".ipynb" if p.suffix == ".ipynb" else ".log"
    return f"{p.stem}.{stamp}{f'-{n}' if n else ''}{suffix}"


def _outputs_pattern(source: str) -> re.Pattern[str]:
    p = Path(source)
    suffix = ".ipynb" if p.suffix == ".ipynb" else ".log"
    stamp = r"\d{4}-\d{2}-\d{2}T\d{4}(?:-\d+)?"
    return re.compile(rf"^{re.escape(p.stem)}\.{stamp}{re.escape(suffix)}$")


def write_output(
    home_fd: int, source: str, stamp: str, data: bytes, keep: int, mode: int = 0o644
) -> str:
    """Write ``data`` next to ``source`` under a new dated name (never replacing a file),
    then remove the oldest outputs of that source beyond ``keep``. Returns the new
    file's path relative to the home."""
    parts = check_relpath(source)
    dfd = _open_dir(home_fd, parts[:-1], source, "")
    try:
        tmp = f".{parts[-1]}.hometier-{secrets.token_hex(6)}.tmp"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            mode & 0o666,
            dir_fd=dfd,
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp, dir_fd=dfd)
            raise
        os.close(fd)
        for n in range(100):
            name = output_name(parts[-1], stamp, n)
            try:
                rename_noreplace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                break
            except FileExistsError:
                continue
        else:
            os.unlink(tmp, dir_fd=dfd)
            raise PathRefused(source, "too many outputs with the same date")
        if keep > 0:
            prune_outputs(dfd, parts[-1], keep)
        return "/".join((*parts[:-1], name))
    finally:
        os.close(dfd)


def prune_outputs(dir_fd: int, source: str, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` outputs of ``source`` in the folder (by name,
    which sorts by date); only regular files and links are unlinked, never followed."""
    pattern = _outputs_pattern(source)
    names = sorted(n for n in os.listdir(dir_fd) if pattern.match(n))
    removed = []
    for name in names[: max(0, len(names) - keep)]:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                os.unlink(name, dir_fd=dir_fd)
                removed.append(name)
        except FileNotFoundError:
            pass
    return removed

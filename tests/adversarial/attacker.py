"""A real unprivileged attacker for root-safety tests, and a canary to prove nothing leaked.

``Attacker(uid, gid, cwd, attack)`` forks a child that enters ``cwd`` (as root), drops
to ``uid``/``gid`` with no supplementary groups — a user with a shell in their own home
— and runs ``attack()`` in a tight loop until stopped, counting iterations in shared
memory. The child is a fork, never an exec: the interpreter under ``/root`` is not
readable by an unprivileged user, and a fork needs nothing but system calls. The test
brackets each root operation with ``attacker.mark()`` / ``attacker.landed(mark)`` to
count the operations during which the attacker's swap ran — printed, because a race
test whose attacker never raced proves nothing.

``Canary(path)`` builds a root-owned folder outside the home (a 0600 secret, files, a
subfolder) that an escaping root operation would damage, and ``changes()`` lists what
differs from when it was made: names, contents, modes, owners.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import hashlib
import mmap
import os
import signal
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)

UID = 47_000
"""First uid the tests attack with (no passwd entry is needed to drop to a uid)."""


def exchange(a: str | bytes, b: str | bytes) -> bool:
    """``renameat2(RENAME_EXCHANGE)`` relative to the working folder; True if it swapped."""
    return _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), RENAME_EXCHANGE) == 0


class Attacker:
    def __init__(
        self,
        uid: int,
        gid: int,
        cwd: str | os.PathLike[str],
        attack: Callable[[], Any],
        *,
        setup: Callable[[], Any] | None = None,
    ) -> None:
        self.uid, self.gid, self.cwd = uid, gid, os.fspath(cwd)
        self.attack, self.setup = attack, setup
        self.shared = mmap.mmap(-1, 16)  # [0:8] iterations, [8:16] stop flag
        self.pid = 0

    @property
    def iterations(self) -> int:
        return int(struct.unpack_from("<Q", self.shared, 0)[0])

    def mark(self) -> int:
        return self.iterations

    def landed(self, mark: int) -> bool:
        """True if the attacker ran at least once since ``mark``."""
        return self.iterations > mark

    def __enter__(self) -> Attacker:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            # A collection here could run a finaliser of an object the parent's other
            # threads share (an object store's runtime) and wait on a lock no thread of
            # this child will ever release: the attacker would hang before its first round.
            gc.disable()
            code = 0
            try:
                os.chdir(self.cwd)
                os.setgroups([])
                os.setresgid(self.gid, self.gid, self.gid)
                os.setresuid(self.uid, self.uid, self.uid)
                if self.setup is not None:
                    self.setup()
                n = 0
                while struct.unpack_from("<Q", self.shared, 8)[0] == 0:
                    try:
                        self.attack()
                    except OSError:
                        pass
                    n += 1
                    struct.pack_into("<Q", self.shared, 0, n)
            except BaseException as exc:  # noqa: BLE001 - a child must never return into pytest
                code = 1
                try:
                    os.write(2, f"attacker child: {exc!r}\n".encode())
                except OSError:
                    pass
            os._exit(code)
        self.pid = pid
        # A loaded two-core machine may take a while to schedule the child; it is not a
        # timed check, only a guard against a child that will never run.
        deadline = time.monotonic() + 60
        status = None
        while self.iterations == 0 and time.monotonic() < deadline:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status, self.pid = st, 0
                break
            time.sleep(0.001)
        if self.iterations == 0:
            if status is not None:
                raise RuntimeError(f"the attacker exited before its first round ({status:#x})")
            self.__exit__(None, None, None)
            raise RuntimeError("the attacker did not start in 60 s")
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.pid:
            return
        struct.pack_into("<Q", self.shared, 8, 1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            done, _status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.005)
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        self.pid = 0


class Canary:
    """A root-owned folder outside every home; ``changes()`` says what happened to it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(mode=0o755)
        (path / "secret").write_bytes(b"root's secret\n")
        os.chmod(path / "secret", 0o600)
        for i in range(40):
            (path / f"file{i:02d}").write_bytes(b"%d\n" % i)
        (path / "sub").mkdir()
        (path / "sub" / "deep").write_bytes(b"deep\n")
        self.before = self.describe()

    def describe(self) -> dict[str, tuple[Any, ...]]:
        out: dict[str, tuple[Any, ...]] = {}
        for dirpath, dirnames, filenames in os.walk(self.path):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                digest = ""
                if stat.S_ISREG(st.st_mode):
                    with open(full, "rb") as f:
                        digest = hashlib.sha256(f.read()).hexdigest()
                rel = os.path.relpath(full, self.path)
                out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, digest)
        st = os.lstat(self.path)
        out["."] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        return out

    def changes(self) -> list[str]:
        now = self.describe()
        diffs = [
            f"{k}: {self.before.get(k)} -> {now.get(k)}"
            for k in self.before
            if now.get(k) != self.before[k]
        ]
        diffs += [f"{k}: new" for k in now.keys() - self.before.keys()]
        return sorted(diffs)


RACES: list[str] = []
"""One line per race run; ``conftest.py`` prints them at the end of the session."""


def report(name: str, operations: int, landed: int, attacker: Attacker) -> str:
    """Record how hard the race was run (printed in the terminal summary)."""
    line = (
        f"{name}: {operations} root operations, {attacker.iterations} attacker iterations, "
        f"swap in flight during {landed} of them ({100 * landed // max(operations, 1)}%)"
    )
    RACES.append(line)
    return line

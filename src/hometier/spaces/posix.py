"""The host side of a space: the spaces root, POSIX groups, system users' uids.

- The spaces root must be a mount point (its own filesystem, or a bind mount onto
  itself: ``mount --bind /srv/spaces /srv/spaces``). The kernel refuses ``link(2)`` and
  ``rename(2)`` across mounts (EXDEV), so no member can hard-link a file from elsewhere
  into a space (and have hometier rewrite its ACL) nor move a folder out of a space
  while hometier walks it. ``check_root`` refuses a root that is not one.
- Each space has a POSIX group ``<prefix><gid>`` (``groupadd``/``gpasswd``/``groupdel``
  from Debian's ``passwd`` package). It owns the space's folder (setgid, so files made
  there belong to it) and lists the members of public and private spaces for tools and
  people (``getent group``). It grants nothing by itself: access is the ACL's. A secret
  space's group lists nobody, because ``/etc/group`` is world-readable.
- A JupyterHub user maps to a system user by a template (``jupyter-{username}`` on The
  Littlest JupyterHub, ``{username}`` for SystemUserSpawner).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import grp
import logging
import os
import pwd
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from hometier.errors import Error, UsageError
from hometier.spaces.names import SECRET_DIR, STATE_DIR

log = logging.getLogger(__name__)


class NotAMountPoint(UsageError):
    """The spaces root {} is not a mount point: make it one (mount --bind {} {}) so that
    nothing can be linked or moved into a space from outside, or set
    c.Spaces.require_mount_point = False (not recommended)."""


class GroupError(Error):
    """POSIX group {} could not be {}: {}"""

    exit_code = 6
    http_status = 500


def mount_points() -> set[str]:
    """Every mount point of this process's mount namespace (``/proc/self/mountinfo``)."""
    out: set[str] = set()
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            # Octal escapes (\040 for a space) as the kernel writes them.
            out.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return out


def check_root(root: Path, *, require_mount: bool) -> None:
    if require_mount and os.path.realpath(root) not in mount_points():
        raise NotAMountPoint(root, root, root)


def prepare_root(root: Path, *, require_mount: bool) -> int:
    """Open the spaces root (checked), with its private folders; returns its descriptor.

    ``<root>`` itself is 0755 (public and private names may be listed), ``.secret`` is
    0711 (members reach their secret folder by its key; nobody can list the keys) and
    ``.hometier`` is root's alone.
    """
    if not root.is_dir():
        raise UsageError(f"the spaces root {root} does not exist")
    check_root(root, require_mount=require_mount)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name, mode in ((SECRET_DIR, 0o711), (STATE_DIR, 0o700)):
            try:
                os.mkdir(name, mode, dir_fd=fd)
            except FileExistsError:
                pass
            sub = os.open(
                name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            try:
                st = os.fstat(sub)
                if st.st_uid != 0 and os.geteuid() == 0:
                    os.fchown(sub, 0, 0)
                if st.st_mode & 0o7777 != mode:
                    os.fchmod(sub, mode)
            finally:
                os.close(sub)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _run(args: list[str], name: str, what: str) -> None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GroupError(name, what, exc) from exc
    if done.returncode != 0:
        raise GroupError(name, what, (done.stderr or done.stdout).strip()[:300])


def ensure_group(name: str, gid: int) -> None:
    """Create group ``name`` with ``gid``, or accept it if it is already exactly that."""
    try:
        by_gid = grp.getgrgid(gid)
    except KeyError:
        by_gid = None
    try:
        by_name = grp.getgrnam(name)
    except KeyError:
        by_name = None
    if by_gid is not None and by_gid.gr_name == name:
        return
    if by_gid is not None:
        raise GroupError(name, "created", f"gid {gid} belongs to {by_gid.gr_name}")
    if by_name is not None:
        raise GroupError(name, "created", f"the name has gid {by_name.gr_gid}, not {gid}")
    _run(["groupadd", "-g", str(gid), name], name, "created")


def gid_taken(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
        return True
    except KeyError:
        return False


def set_group_members(name: str, users: list[str]) -> None:
    """Make ``users`` (system user names) exactly the group's members."""
    try:
        have = sorted(grp.getgrnam(name).gr_mem)
    except KeyError:
        raise GroupError(name, "updated", "it does not exist") from None
    if have == sorted(users):
        return
    _run(["gpasswd", "-M", ",".join(sorted(users)), name], name, "updated")


def delete_group(name: str) -> None:
    try:
        grp.getgrnam(name)
    except KeyError:
        return
    _run(["groupdel", name], name, "deleted")


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


@contextlib.contextmanager
def as_user(uid: int, gid: int) -> Iterator[None]:
    """File operations of this thread (only) run with ``uid``/``gid`` as filesystem
    credentials: Linux ``setfsuid``/``setfsgid``, which also drops the thread's
    filesystem capabilities (DAC override, chown, fowner) while they are not 0. The
    kernel then refuses whatever that user could not do themselves."""
    if uid == 0 or gid == 0:
        raise UsageError("as_user is for unprivileged users")
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    try:
        if _libc.setfsuid(-1) != uid or _libc.setfsgid(-1) != gid:
            raise OSError("could not take the user's filesystem credentials")
        yield
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)


class UserMap:
    """JupyterHub user name → system user (``template``), uid; unknown users → None."""

    def __init__(self, template: str = "{username}") -> None:
        self.template = template

    def system_name(self, user: str) -> str:
        return self.template.format(username=user)

    def uid(self, user: str) -> int | None:
        try:
            return pwd.getpwnam(self.system_name(user)).pw_uid
        except (KeyError, ValueError):
            return None

    def ids(self, user: str) -> tuple[int, int] | None:
        try:
            pw = pwd.getpwnam(self.system_name(user))
        except (KeyError, ValueError):
            return None
        return pw.pw_uid, pw.pw_gid

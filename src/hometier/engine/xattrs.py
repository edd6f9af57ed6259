"""Extended attributes, POSIX ACLs and file capabilities: read them all, put them back
in the order the kernel needs, and never widen permissions when one cannot be kept.

Every attribute ``listxattr`` shows is archived: ``user.*``, POSIX ACLs
(``system.posix_acl_access``/``_default``), NFSv4 ACLs (``system.nfs4_acl``), and, as
root, ``security.*`` (``security.capability``) and ``trusted.*``. Restoring them has an
order (see ``apply_metadata``): ``chown`` clears capabilities and set-id bits; ``chmod``
rewrites an ACL's mask; setting an access ACL rewrites the group bits. An attribute that
cannot be set (not root, a filesystem without ACLs or trusted attributes) is reported
to the caller, never dropped silently; when it is an access ACL, the mode is narrowed to
what the owning group really had, so a restore never grants more than the original did.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Mapping

ACL_ACCESS = b"system.posix_acl_access"
ACL_DEFAULT = b"system.posix_acl_default"
_ACL_HEAD = struct.Struct("<I")
_ACL_ENTRY = struct.Struct("<HHI")
_ACL_GROUP_OBJ, _ACL_MASK = 0x04, 0x10
_NOT_SUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EINVAL)

Target = int | bytes
"""An open descriptor, or a path (``/proc/self/fd/N/name``) for a symlink."""


def read_xattrs(target: Target) -> dict[bytes, bytes] | None:
    """Every extended attribute of ``target`` (a descriptor, or a path whose last
    component is not followed) this process can read; None if there are none or the
    filesystem has none. ``PermissionError`` if they cannot be listed."""
    follow_symlinks = isinstance(target, int)
    try:
        names = os.listxattr(target, follow_symlinks=follow_symlinks)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA):
            return None
        if exc.errno == errno.EPERM:
            return None
        raise
    out: dict[bytes, bytes] = {}
    for name in names:
        try:
            value = os.getxattr(target, name, follow_symlinks=follow_symlinks)
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOTSUP):
                continue  # removed meanwhile, or listed but not readable by this user
            raise
        out[name.encode("utf-8", "surrogateescape")] = value
    return out or None


def is_acl(name: bytes) -> bool:
    """ACLs are set after ``chmod`` (which would rewrite their mask)."""
    return name.startswith(b"system.")


def acl_group_bits(acl: bytes) -> int | None:
    """The permission bits (0–7) the owning group effectively has under an access ACL:
    its ``group::`` entry limited by the mask. None if ``acl`` does not parse."""
    if len(acl) < _ACL_HEAD.size or (len(acl) - _ACL_HEAD.size) % _ACL_ENTRY.size:
        return None
    group: int | None = None
    mask: int | None = None
    for tag, perm, _id in _ACL_ENTRY.iter_unpack(acl[_ACL_HEAD.size :]):
        if tag == _ACL_GROUP_OBJ:
            group = int(perm) & 7
        elif tag == _ACL_MASK:
            mask = int(perm) & 7
    if group is None:
        return None
    return group if mask is None else group & mask


def _set(target: Target, name: bytes, value: bytes, follow: bool) -> str | None:
    try:
        os.setxattr(target, name, value, follow_symlinks=follow)
        return None
    except OSError as exc:
        if exc.errno in _NOT_SUPPORTED:
            return exc.strerror or errno.errorcode.get(exc.errno or 0, "refused")
        raise


def apply_metadata(
    target: Target,
    *,
    mode: int,
    uid: int,
    gid: int,
    xattrs: Mapping[bytes, bytes] | None,
    times: tuple[int, int] | None,
    as_root: bool,
    symlink: bool = False,
) -> list[str]:
    """Set owner, extended attributes, mode, ACLs, then times, in the order the kernel
    needs; returns what could not be kept (``"NAME: reason"``), never raises for it.

    ``target`` is an open descriptor (files, folders) or, for a symlink or a device
    node, a ``/proc/self/fd/N/name`` path whose last component is never followed
    (``symlink=True``: no mode is set, since links have none). ``chown`` comes first because it clears capabilities and set-id bits;
    ``security.capability`` and the other attributes next; ``chmod`` then, because it
    rewrites an ACL's mask; the ACLs after it (they rewrite the group bits to match);
    times last. If an access ACL cannot be set, the group bits are narrowed to what the
    owning group really had, never left at the mask's wider value.
    """
    lost: list[str] = []
    # A descriptor is used as it is; a path (symlinks, device nodes) is never followed.
    follow = isinstance(target, int)
    if as_root:
        if follow:
            os.chown(target, uid, gid)
        else:
            os.chown(target, uid, gid, follow_symlinks=False)
    acls: list[tuple[bytes, bytes]] = []
    for name, value in sorted((xattrs or {}).items()):
        if is_acl(name):
            acls.append((name, value))
            continue
        why = _set(target, name, value, follow)
        if why is not None:
            lost.append(f"{os.fsdecode(name)}: {why}")
    if not symlink:
        os.chmod(target, mode)
        for name, value in acls:
            why = _set(target, name, value, follow)
            if why is None:
                continue
            lost.append(f"{os.fsdecode(name)}: {why}")
            if name == ACL_ACCESS:
                bits = acl_group_bits(value)
                narrowed = mode & ~0o070 | ((bits if bits is not None else 0) << 3)
                if narrowed != mode:
                    os.chmod(target, narrowed)
    else:
        for name, _value in acls:
            lost.append(f"{os.fsdecode(name)}: not settable on a symbolic link")
    if times is not None:
        if follow:
            os.utime(target, ns=times)
        else:
            os.utime(target, ns=times, follow_symlinks=False)
    return lost

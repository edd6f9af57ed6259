"""POSIX ACLs: the kernel's xattr format, and the ACLs a space wants on each entry.

Linux keeps an access ACL in the ``system.posix_acl_access`` attribute and a folder's
default ACL (inherited by what is created in it) in ``system.posix_acl_default``, both in
the same little-endian layout that libacl and ``setfacl`` write: a 4-byte version (2),
then 8-byte entries ``(tag: u16, perm: u16, id: u32)`` sorted by tag, then id. Writing
the attribute through a descriptor is exactly what ``acl_set_fd`` does; encoding it here
spares a C library while staying byte-compatible (tests compare with ``getfacl``).

The grants of a space (who reads, who writes) become, on every folder and file:

- a named user entry per member uid (``uids`` identity: real system users; a change
  takes effect at the next access, no restart), or a named group entry for the space's
  gid (``container`` identity: every server is uid 1000, the mounts enforce the rest);
- ``group::---``: the owning group (the space's POSIX group) grants nothing by itself,
  so a member cannot hand access to others with a setgid program;
- ``other::r-x`` for public spaces, ``---`` otherwise;
- on folders, the same as the default ACL, so new files inherit it.

Readers get ``r-x`` on folders and ``r--`` on files (``r-x`` when the file is
executable); writers ``rwx``/``rw-`` (``rwx``). The mask is the union of the named
entries, so nothing is masked away.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"
VERSION = 2
UNDEFINED = 0xFFFFFFFF

USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
R, W, X = 4, 2, 1

_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")


class AclFormatError(ValueError):
    """An ACL attribute that is not in the kernel's format."""


@dataclass(frozen=True)
class Acl:
    """An ACL: the three base entries, named users and groups, and the mask."""

    user_obj: int
    group_obj: int
    other: int
    users: tuple[tuple[int, int], ...] = ()
    groups: tuple[tuple[int, int], ...] = ()
    mask: int | None = None

    def encode(self) -> bytes:
        entries = [(USER_OBJ, self.user_obj, UNDEFINED)]
        entries += [(USER, p, uid) for uid, p in sorted(self.users)]
        entries.append((GROUP_OBJ, self.group_obj, UNDEFINED))
        entries += [(GROUP, p, gid) for gid, p in sorted(self.groups)]
        mask = self.mask
        if mask is None and (self.users or self.groups):
            mask = self.named_union()
        if mask is not None:
            entries.append((MASK, mask, UNDEFINED))
        entries.append((OTHER, self.other, UNDEFINED))
        return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(t, p & 7, i) for t, p, i in entries)

    def named_union(self) -> int:
        perm = self.group_obj
        for _, p in (*self.users, *self.groups):
            perm |= p
        return perm

    @classmethod
    def decode(cls, raw: bytes) -> Acl:
        if len(raw) < 4 or (len(raw) - 4) % 8 or _HEADER.unpack_from(raw)[0] != VERSION:
            raise AclFormatError("not a version-2 POSIX ACL attribute")
        base: dict[int, int] = {}
        users: list[tuple[int, int]] = []
        groups: list[tuple[int, int]] = []
        for off in range(4, len(raw), 8):
            tag, perm, ident = _ENTRY.unpack_from(raw, off)
            if tag == USER:
                users.append((ident, perm))
            elif tag == GROUP:
                groups.append((ident, perm))
            elif tag in (USER_OBJ, GROUP_OBJ, MASK, OTHER):
                base[tag] = perm
            else:
                raise AclFormatError(f"unknown ACL tag {tag:#x}")
        if not {USER_OBJ, GROUP_OBJ, OTHER} <= base.keys():
            raise AclFormatError("an ACL needs user::, group:: and other:: entries")
        return cls(
            user_obj=base[USER_OBJ],
            group_obj=base[GROUP_OBJ],
            other=base[OTHER],
            users=tuple(sorted(users)),
            groups=tuple(sorted(groups)),
            mask=base.get(MASK),
        )

    def text(self) -> str:
        """``getfacl``'s numeric form, for messages and tests."""

        def rwx(p: int) -> str:
            return ("r" if p & R else "-") + ("w" if p & W else "-") + ("x" if p & X else "-")

        lines = [f"user::{rwx(self.user_obj)}"]
        lines += [f"user:{u}:{rwx(p)}" for u, p in self.users]
        lines.append(f"group::{rwx(self.group_obj)}")
        lines += [f"group:{g}:{rwx(p)}" for g, p in self.groups]
        mask = self.mask if self.mask is not None else None
        if mask is None and (self.users or self.groups):
            mask = self.named_union()
        if mask is not None:
            lines.append(f"mask::{rwx(mask)}")
        lines.append(f"other::{rwx(self.other)}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Grants:
    """Who may do what in one space, as the volume must say it."""

    writers: frozenset[int] = field(default_factory=frozenset)
    """uids with read and write access (``uids`` identity)."""
    readers: frozenset[int] = field(default_factory=frozenset)
    """uids with read access only."""
    group_writers: frozenset[int] = field(default_factory=frozenset)
    """gids with read and write access (``container`` identity: the space's gid)."""
    group_readers: frozenset[int] = field(default_factory=frozenset)
    everyone_reads: bool = False
    """``other::`` may read (public spaces)."""

    def __post_init__(self) -> None:
        # A writer is not also a reader: the stronger role wins.
        object.__setattr__(self, "readers", self.readers - self.writers)
        object.__setattr__(self, "group_readers", self.group_readers - self.group_writers)

    def readonly(self) -> Grants:
        """The same people, nobody writing (a space over its quota)."""
        return Grants(
            readers=self.readers | self.writers,
            group_readers=self.group_readers | self.group_writers,
            everyone_reads=self.everyone_reads,
        )


def folder_acls(g: Grants, owner_perm: int = 7) -> tuple[Acl, Acl]:
    """The access and default ACL of a folder in the space."""
    users = tuple((u, 7) for u in g.writers) + tuple((u, 5) for u in g.readers)
    groups = tuple((x, 7) for x in g.group_writers) + tuple((x, 5) for x in g.group_readers)
    other = 5 if g.everyone_reads else 0
    access = Acl(user_obj=owner_perm, group_obj=0, other=other, users=users, groups=groups)
    default = Acl(user_obj=7, group_obj=0, other=other, users=users, groups=groups)
    return _with_mask(access), _with_mask(default)


def file_acl(g: Grants, mode: int) -> Acl:
    """The access ACL of a regular file whose mode is ``mode`` (owner bits are kept; the
    execute bit follows the file: a script stays runnable, data stays non-executable)."""
    x = X if mode & 0o111 else 0
    users = tuple((u, R | W | x) for u in g.writers) + tuple((u, R | x) for u in g.readers)
    groups = tuple((i, R | W | x) for i in g.group_writers)
    groups += tuple((i, R | x) for i in g.group_readers)
    other = (R | x) if g.everyone_reads else 0
    return _with_mask(
        Acl(user_obj=(mode >> 6) & 7, group_obj=0, other=other, users=users, groups=groups)
    )


def _with_mask(acl: Acl) -> Acl:
    if not acl.users and not acl.groups:
        return Acl(acl.user_obj, acl.group_obj, acl.other)
    return Acl(
        acl.user_obj,
        acl.group_obj,
        acl.other,
        tuple(sorted(acl.users)),
        tuple(sorted(acl.groups)),
        acl.named_union(),
    )

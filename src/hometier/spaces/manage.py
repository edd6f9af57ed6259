"""Create, change and delete spaces; who may see, read and manage which space.

Visibility (``Viewer``) is one rule used by the API, the dashboard and the CLI alike:
public and private spaces may be seen by every user (a private space's members only by
its members), a secret space only by its members and owner. For anybody else a secret
space does not exist: every lookup answers ``SpaceNotFound`` exactly as for a name that
was never used. hometier's admins see every space's settings and members, but read the
contents (snapshots, files) of a secret space only if they are members.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError as DBIntegrityError

from hometier.errors import UsageError
from hometier.spaces import names, volume
from hometier.spaces.context import SpacesContext
from hometier.spaces.reconcile import Report, reconcile
from hometier.state import spaces as q
from hometier.state.spaces import KINDS, LEVELS, MEMBER_KINDS, ROLES, Space, SpaceNotFound

log = logging.getLogger(__name__)
MAX_MEMBERS = 1000


@dataclass(frozen=True)
class Viewer:
    """Who is asking: a user name (or a service), and whether they are a hometier admin."""

    name: str
    admin: bool = False
    is_user: bool = True

    def role(self, sp: SpacesContext, space: Space) -> str | None:
        if self.is_user and space.owner == self.name:
            return "writer"
        if not self.is_user:
            return None
        return q.access(sp.db, space.id).get(self.name)

    def sees(self, sp: SpacesContext, space: Space) -> bool:
        if self.admin or space.level != "secret":
            return True
        return self.role(sp, space) is not None

    def reads(self, sp: SpacesContext, space: Space) -> bool:
        """May read the contents (files, snapshots)."""
        if self.role(sp, space) is not None or space.level == "public":
            return True
        return self.admin and space.level != "secret"

    def manages(self, space: Space) -> bool:
        return self.admin or (self.is_user and space.owner == self.name)


def find(sp: SpacesContext, name: str, viewer: Viewer) -> Space:
    """The space ``name`` if ``viewer`` may see it; else ``SpaceNotFound``, the same
    answer as for a name nobody uses (hostile names too: no lookup is made for them)."""
    try:
        names.check_space_name(name)
    except UsageError:
        raise SpaceNotFound(name[:64]) from None
    space = q.get_space(sp.db, name)
    if not viewer.sees(sp, space):
        raise SpaceNotFound(name)
    return space


def visible(sp: SpacesContext, viewer: Viewer) -> list[Space]:
    return [s for s in q.list_spaces(sp.db) if viewer.sees(sp, s)]


def parse_members(doc: Any) -> list[tuple[str, str, str]]:
    """``{"readers": {"users": [...], "groups": [...]}, "writers": {...}}`` or a list of
    ``{"kind", "name", "role"}`` → (kind, name, role) triples, validated."""
    out: dict[tuple[str, str], str] = {}

    def add(kind: Any, name: Any, role: Any) -> None:
        if kind not in MEMBER_KINDS:
            raise UsageError(f"member kind must be one of {', '.join(MEMBER_KINDS)}")
        if role not in ROLES:
            raise UsageError(f"member role must be one of {', '.join(ROLES)}")
        if not isinstance(name, str) or not name or len(name) > 255 or "\0" in name:
            raise UsageError("a member is a JupyterHub user or group name (1-255 characters)")
        if role == "writer" or (kind, name) not in out:
            out[(kind, name)] = role

    if doc is None:
        return []
    if isinstance(doc, list):
        for m in doc:
            if not isinstance(m, dict):
                raise UsageError("each member is an object with kind, name and role")
            add(m.get("kind"), m.get("name"), m.get("role"))
    elif isinstance(doc, dict):
        for plural, role in (("readers", "reader"), ("writers", "writer")):
            part = doc.get(plural) or {}
            if not isinstance(part, dict):
                raise UsageError(f"{plural} must be an object with users and groups")
            for kind in MEMBER_KINDS:
                for n in part.get(kind + "s") or []:
                    add(kind, n, role)
    else:
        raise UsageError("members must be a list or an object")
    if len(out) > MAX_MEMBERS:
        raise UsageError(f"at most {MAX_MEMBERS} members")
    return [(k, n, r) for (k, n), r in sorted(out.items())]


def create(
    sp: SpacesContext,
    *,
    name: str,
    level: str,
    owner: str,
    kind: str = "data",
    quota_bytes: int = 0,
    description: str = "",
    members: Iterable[tuple[str, str, str]] = (),
    actor: str,
) -> Space:
    """A new space: its row, its group, its folder and ACLs. Nothing is left behind when
    a step fails."""
    names.check_space_name(name)
    if level not in LEVELS:
        raise UsageError(f"level must be one of {', '.join(LEVELS)}")
    if kind not in KINDS:
        raise UsageError(f"kind must be one of {', '.join(KINDS)}")
    if not owner or len(owner) > 255:
        raise UsageError("a space needs an owner (a JupyterHub user name)")
    if quota_bytes < 0:
        raise UsageError("the quota must be positive (0: none)")
    key = names.new_key()
    sp.root_fd  # noqa: B018 - check the root before anything is recorded
    for _attempt in range(5):
        gid = volume.allocate_gid(sp, q.used_gids(sp.db))
        try:
            space = q.create_space(
                sp.db,
                name=name,
                key=key,
                level=level,
                kind=kind,
                owner=owner,
                gid=gid,
                path=names.folder_for(name, key, level),
                quota_bytes=quota_bytes,
                description=description[:2000],
                actor=actor,
                now=sp.now(),
            )
            break
        except DBIntegrityError:
            continue  # another process took the gid (or the name: create_space says so)
    else:
        raise UsageError("could not allocate a gid for the space; try again")
    try:
        q.set_members(sp.db, space.id, members, actor, sp.now())
        apply_now(sp, space, actor=actor)
    except BaseException:
        _undo_create(sp, space, actor)
        raise
    return q.get_space_by_id(sp.db, space.id)


def _undo_create(sp: SpacesContext, space: Space, actor: str) -> None:
    try:
        volume.trash_folder(sp, space, _stamp(sp))
        volume.remove_group(sp, space)
    finally:
        q.delete_space(sp.db, space.id, actor, sp.now())


def _stamp(sp: SpacesContext) -> str:
    return sp.now().strftime("%Y-%m-%dT%H_%M_%S")


def apply_now(sp: SpacesContext, space: Space, *, actor: str, reason: str = "") -> Report:
    """Reconcile this one space now (reads the Hub's groups)."""
    report = reconcile(sp, only={space.id}, actor=actor, reason=reason)
    if report.errors:
        raise UsageError("; ".join(report.errors))
    return report


def update(sp: SpacesContext, space: Space, changes: dict[str, Any], *, actor: str) -> Space:
    """Change level, owner, quota, description or exemption; applied at once."""
    allowed = {"level", "owner", "quota_bytes", "description", "exempt"}
    unknown = set(changes) - allowed
    if unknown:
        raise UsageError(f"cannot change {', '.join(sorted(unknown))}")
    if "level" in changes and changes["level"] not in LEVELS:
        raise UsageError(f"level must be one of {', '.join(LEVELS)}")
    if "quota_bytes" in changes and (
        not isinstance(changes["quota_bytes"], int) or changes["quota_bytes"] < 0
    ):
        raise UsageError("the quota must be a positive number of bytes (0: none)")
    if "owner" in changes and (not isinstance(changes["owner"], str) or not changes["owner"]):
        raise UsageError("the owner is a JupyterHub user name")
    level = changes.get("level", space.level)
    if level != space.level and "secret" in (level, space.level):
        if space.state != "active":
            raise UsageError("change the level of an archived space after restoring it")
        # A secret space's folder is named by its key, never by its name.
        new_path = names.folder_for(space.name, space.key, level)
        with volume.space_lock(sp, space):
            volume.move_folder(sp, space.path, new_path)
            try:
                space = q.update_space(sp.db, space.id, actor, sp.now(), path=new_path, **changes)
            except BaseException:
                volume.move_folder(sp, new_path, space.path)
                raise
    else:
        space = q.update_space(sp.db, space.id, actor, sp.now(), **changes)
    if space.quota_bytes and space.used_bytes <= space.quota_bytes and space.over_quota:
        space = q.update_space(sp.db, space.id, actor, sp.now(), over_quota=False)
    apply_now(sp, space, actor=actor)
    return q.get_space_by_id(sp.db, space.id)


def set_members(
    sp: SpacesContext, space: Space, members: Iterable[tuple[str, str, str]], *, actor: str
) -> Report:
    q.set_members(sp.db, space.id, members, actor, sp.now())
    return apply_now(sp, q.get_space_by_id(sp.db, space.id), actor=actor)


def delete(sp: SpacesContext, space: Space, *, actor: str) -> None:
    """Remove a space: nobody may enter at once; its folder goes to root's trash and is
    removed after ``quarantine_for``; its snapshots stay in the repository."""
    with volume.space_lock(sp, space):
        volume.close_gate(sp, space)
        volume.trash_folder(sp, space, _stamp(sp))
        volume.remove_group(sp, space)
        q.delete_space(sp.db, space.id, actor, sp.now())

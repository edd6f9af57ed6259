"""What a user's server mounts, and the links local spawners get in the home.

``mounts_for(sp, user)`` lists exactly the spaces the user may see in a server — public
ones, and those where they are a member — each read-only unless they may write (and the
space is active and within its quota). The hub integrations turn it into KubeSpawner
volumes, DockerSpawner binds or, for servers that run on this host as the user
(LocalProcessSpawner, SystemdSpawner, TLJH), symlinks in ``~/shared`` (``link_home``).

The links are written with the user's filesystem credentials (``posix.as_user``: their
uid and gid on this thread, no capability): the kernel refuses whatever the user could not do, so a home
full of traps (``shared`` a symlink to ``/etc``, a FIFO, another user's folder) can make
it fail, never make it write elsewhere. It only ever removes links that point into the
spaces root, and creates ``shared`` as 0700; a secret space's link is made only in a
``shared`` nobody else can read, since its name is secret.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hometier.errors import Error, UsageError
from hometier.spaces.context import SpacesContext
from hometier.spaces.names import volume_name
from hometier.spaces.posix import as_user
from hometier.state import spaces as q

log = logging.getLogger(__name__)


class LinkFailed(Error):
    """The links to the spaces of {} could not be written: {}"""

    http_status = 500


@dataclass(frozen=True)
class Mount:
    name: str
    level: str
    kind: str
    role: str
    read_only: bool
    state: str
    mount_path: str
    """Where the server sees it; ``~`` is the server's home."""
    host_path: str
    """The folder on the spaces volume (local spawners, DockerSpawner)."""
    sub_path: str
    """The folder relative to the spaces volume (KubeSpawner's ``subPath``)."""
    volume: str
    gid: int
    modulepath: str | None = None
    """For a software space: its LMod module files, as the server sees them."""
    host_modulepath: str | None = None
    """The same on the host (local spawners, whose servers see the host's paths)."""

    def doc(self) -> dict[str, Any]:
        return asdict(self)


def mounts_for(sp: SpacesContext, user: str) -> list[Mount]:
    roles = q.access_of(sp.db, user)
    out = []
    for space in q.list_spaces(sp.db):
        role = roles.get(space.id)
        if role is None and space.owner == user:
            role = "writer"
        if role is None and space.level == "public":
            role = "reader"
        if role is None:
            continue
        template = sp.software_mount_path if space.kind == "software" else sp.mount_path
        mount_path = template.format(name=space.name)
        writable = role == "writer" and space.state == "active" and not space.over_quota
        soft = space.kind == "software"
        host = os.path.join(str(sp.root), space.path)
        out.append(
            Mount(
                name=space.name,
                level=space.level,
                kind=space.kind,
                role=role,
                read_only=not writable,
                state=space.state,
                mount_path=mount_path,
                host_path=host,
                sub_path=space.path,
                volume=volume_name(space.id),
                gid=space.gid,
                modulepath=f"{mount_path}/{sp.modulefiles}" if soft else None,
                host_modulepath=f"{host}/{sp.modulefiles}" if soft else None,
            )
        )
    return out


def link_dir(mount_path: str) -> str:
    """``~/shared/{name}`` → ``shared``: the folder of the home that holds the links."""
    if not mount_path.startswith("~/") or not mount_path.endswith("/{name}"):
        raise UsageError(
            f"links need c.Spaces.mount_path like ~/shared/{{name}}, not {mount_path!r}"
        )
    rel = mount_path[2 : -len("/{name}")]
    if not rel or any(p in ("", ".", "..") for p in rel.split("/")) or "/" in rel:
        raise UsageError(f"c.Spaces.mount_path {mount_path!r}: one folder under the home")
    return rel


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _write_links(
    home: str, folder: str, root: str, want: dict[str, str], secret: set[str]
) -> dict[str, Any]:
    """Runs with the user's filesystem credentials (``as_user``)."""
    hfd = os.open(home, _DIR)
    try:
        try:
            os.mkdir(folder, 0o700, dir_fd=hfd)
        except FileExistsError:
            pass
        d = os.open(folder, _DIR, dir_fd=hfd)
    finally:
        os.close(hfd)
    try:
        private = stat.S_IMODE(os.fstat(d).st_mode) & 0o077 == 0
        want = {k: v for k, v in want.items() if private or k not in secret}
        out: dict[str, Any] = {"made": [], "removed": [], "kept": [], "conflicts": []}
        out["private"] = private
        prefix = root.rstrip("/") + "/"
        for name in os.listdir(d):
            try:
                target = os.readlink(name, dir_fd=d)
            except OSError:
                continue  # not a link: the user's own
            if target.startswith(prefix) and want.get(name) != target:
                os.unlink(name, dir_fd=d)
                out["removed"].append(name)
        for name, target in sorted(want.items()):
            try:
                os.symlink(target, name, dir_fd=d)
                out["made"].append(name)
            except FileExistsError:
                try:
                    same = os.readlink(name, dir_fd=d) == target
                except OSError:
                    same = False
                out["kept" if same else "conflicts"].append(name)
        return out
    finally:
        os.close(d)


def link_home(sp: SpacesContext, user: str, mounts: list[Mount]) -> dict[str, Any]:
    """Make ``~/shared`` of ``user`` hold one link per data space in ``mounts`` (and no
    stale ones), as the user. Software spaces are found through ``MODULEPATH``."""
    if sp.homes is None:
        raise UsageError("links need the homes root (c.Hometier.homes)")
    ids = sp.users.ids(user)
    if ids is None:
        raise LinkFailed(user, "there is no system user for them")
    home = Path(os.path.normpath(sp.homes / sp.home_template.format(username=user)))
    if sp.homes not in home.parents:
        raise LinkFailed(user, "their home would be outside the homes root")
    data = [m for m in mounts if m.kind == "data"]
    uid, gid = ids
    if uid == 0:
        raise LinkFailed(user, "they are root")
    try:
        with as_user(uid, gid):
            result = _write_links(
                str(home),
                link_dir(sp.mount_path),
                str(sp.root),
                {m.name: m.host_path for m in data},
                {m.name for m in data if m.level == "secret"},
            )
    except OSError as exc:
        raise LinkFailed(user, exc.strerror or exc) from exc
    if not result.get("private") and any(m.level == "secret" for m in data):
        log.warning("spaces: %s's shared folder is readable by others: no secret links", user)
    return result

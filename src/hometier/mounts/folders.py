"""The registry of bucket folders: what admins register, and who may use what.

Credentials are sealed (``hometier.crypto``) before they reach the database and are
never returned: a folder's document says only whether it has some.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from hometier.crypto import Sealer
from hometier.mounts.spec import AccessRule, Credentials, FolderSpec, InvalidFolder, Mode
from hometier.state import mounts as q
from hometier.state.db import Database

EDITABLE = {
    "description",
    "endpoint",
    "region",
    "bucket",
    "prefix",
    "access",
    "options",
    "mount_path",
    "read_only",
    "credentials",
}


def spec_of(row: q.BucketFolder) -> FolderSpec:
    """The registered folder as a ``FolderSpec`` (validated when it was registered)."""
    return FolderSpec(
        name=row.name,
        bucket=row.bucket,
        endpoint=row.endpoint,
        region=row.region,
        prefix=row.prefix,
        access=tuple(AccessRule.from_doc(r) for r in row.access or []),
        options=dict(row.options or {}),
        mount_path=row.mount_path,
        read_only=row.read_only,
        description=row.description,
    )


def credentials_of(row: q.BucketFolder, sealer: Sealer | None) -> Credentials | None:
    if row.credentials is None:
        return None
    if sealer is None:
        from hometier.crypto import NoSecretKey

        raise NoSecretKey()
    return Credentials.from_json(sealer.unseal(row.credentials))


def folder_doc(row: q.BucketFolder, *, admin: bool, mode: Mode | None = None) -> dict[str, Any]:
    """What the API shows of a folder: everything but the credentials to admins; name,
    description, mount path and the caller's own access mode to users."""
    doc: dict[str, Any] = {
        "name": row.name,
        "description": row.description,
        "mount_path": row.mount_path,
        "read_only": row.read_only,
    }
    if mode is not None:
        doc["mode"] = mode
    if admin:
        doc.update(
            endpoint=row.endpoint,
            region=row.region,
            bucket=row.bucket,
            prefix=row.prefix,
            access=list(row.access or []),
            options=dict(row.options or {}),
            credentials="sealed" if row.credentials else None,
            revision=row.revision,
            created_by=row.created_by,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )
    return doc


def _columns(spec: FolderSpec) -> dict[str, Any]:
    doc = spec.to_doc()
    doc.pop("name")
    return doc


def _seal(raw: Any, sealer: Sealer | None) -> str | None:
    creds = Credentials.from_doc(raw)
    if creds is None:
        return None
    if sealer is None:
        from hometier.crypto import NoSecretKey

        raise NoSecretKey()
    return sealer.seal(creds.to_json())


def register(
    db: Database, sealer: Sealer | None, doc: Mapping[str, Any], actor: str, now: dt.datetime
) -> q.BucketFolder:
    """Register a folder from an admin's document (``InvalidFolder``, ``FolderExists``)."""
    spec = FolderSpec.from_doc(doc)
    sealed = _seal(doc.get("credentials"), sealer)
    with db.transaction() as s:
        return q.create_folder(s, actor, now, name=spec.name, credentials=sealed, **_columns(spec))


def change(
    db: Database,
    sealer: Sealer | None,
    name: str,
    doc: Mapping[str, Any],
    actor: str,
    now: dt.datetime,
) -> q.BucketFolder:
    """Change some fields of a folder; ``credentials: null`` makes it anonymous."""
    unknown = set(doc) - EDITABLE
    if unknown:
        raise InvalidFolder(f"cannot change {', '.join(sorted(unknown))}")
    with db.transaction() as s:
        row = q.get_folder(s, name, lock=True)
        merged = spec_of(row).to_doc()
        merged.update({k: v for k, v in doc.items() if k != "credentials"})
        spec = FolderSpec.from_doc(merged)
        fields = _columns(spec)
        if "credentials" in doc:
            fields["credentials"] = _seal(doc["credentials"], sealer)
        return q.update_folder(s, name, actor, now, **fields)


def remove(db: Database, name: str, actor: str, now: dt.datetime) -> None:
    with db.transaction() as s:
        q.delete_folder(s, name, actor, now)


@dataclass(frozen=True)
class Usable:
    row: q.BucketFolder
    spec: FolderSpec
    mode: Mode


def usable(
    s: Session, user: str, groups: Iterable[str], only: Iterable[str] | None = None
) -> list[Usable]:
    """The folders ``user`` may use, with how; ``only`` narrows them by name (a name the
    user may not use is left out, as if it did not exist)."""
    wanted = set(only) if only is not None else None
    member = list(groups)
    out = []
    for row in q.list_folders(s):
        if wanted is not None and row.name not in wanted:
            continue
        spec = spec_of(row)
        mode = spec.decide(user, member)
        if mode is not None:
            out.append(Usable(row, spec, mode))
    return out


def rotate_credentials(db: Database, sealer: Sealer) -> int:
    """Seal every folder's credentials again with the newest key; returns how many."""
    n = 0
    with db.transaction() as s:
        for row in q.list_folders(s):
            if row.credentials:
                row.credentials = sealer.rotate(row.credentials)
                n += 1
    return n


__all__ = [
    "Usable",
    "change",
    "credentials_of",
    "folder_doc",
    "register",
    "remove",
    "rotate_credentials",
    "spec_of",
    "usable",
]

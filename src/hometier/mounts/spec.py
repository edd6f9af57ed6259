"""What a bucket folder is, who may use it and how: pure rules, no I/O.

- ``FolderSpec`` is the checked form of an admin's registration (names, endpoint, bucket,
  prefix, options, access rules, mount path); ``FolderSpec.from_doc`` refuses anything
  malformed with one ``InvalidFolder`` sentence.
- ``decide_access(rules, user, groups)`` says whether a user may use a folder and how
  (``"rw"``, ``"ro"`` or ``None``): the most permissive rule that names the user or one of
  their groups wins; a read-only folder is read-only for everyone.
- ``mount_key`` names one host mount: the same folder revision (bucket, prefix, options,
  credentials), access mode and owner give the same key, so servers share one mount.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

from hometier.errors import UsageError

Mode = Literal["ro", "rw"]
# A DNS label of at most 40 characters: a file name, a Kubernetes object name and a
# volume name ("hometier-bucket-NAME") alike.
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
# S3 bucket names (the strict rules of new buckets, plus `_` that older ones may hold).
BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
REGION = re.compile(r"^[a-z0-9-]{1,64}$")
PRINCIPAL = re.compile(r"^[^\x00-\x1f/]{1,255}$")
DEFAULT_MOUNT_PATH = "buckets/{name}"

# s3fs options an admin may set, with their kind. Everything that names a file or a
# folder (passwd_file, use_cache, logfile, ...), changes who may access the mount
# (allow_other, uid, umask, ...) or changes its identity (url, bucket) is hometier's own.
OPTIONS: dict[str, type] = {
    "stat_cache_expire": int,
    "stat_cache_interval_expire": int,
    "max_stat_cache_size": int,
    "enable_noobj_cache": bool,
    "multipart_size": int,
    "parallel_count": int,
    "multireq_max": int,
    "list_object_max_keys": int,
    "readwrite_timeout": int,
    "connect_timeout": int,
    "retries": int,
    "notsup_compat_dir": bool,
    "sigv2": bool,
    "sigv4": bool,
    "storage_class": str,
    "sse": str,
    "no_check_certificate": bool,
    "enable_content_md5": bool,
}
STORAGE_CLASSES = {
    "standard",
    "standard_ia",
    "onezone_ia",
    "reduced_redundancy",
    "intelligent_tiering",
    "glacier",
    "glacier_ir",
    "deep_archive",
}


class InvalidFolder(UsageError):
    """Invalid bucket folder: {}"""


@dataclass(frozen=True)
class AccessRule:
    """``group`` or ``user`` named ``name`` may use the folder in ``mode``."""

    kind: Literal["group", "user"]
    name: str
    mode: Mode = "ro"

    def to_doc(self) -> dict[str, str]:
        return {self.kind: self.name, "mode": self.mode}

    @classmethod
    def from_doc(cls, doc: Any) -> AccessRule:
        if isinstance(doc, str):  # "group:students:ro", "user:alice:rw", "group:staff"
            kind, _, rest = doc.partition(":")
            name, _, mode = rest.rpartition(":") if rest.count(":") else (rest, "", "ro")
            doc = {kind: name, "mode": mode or "ro"}
        if not isinstance(doc, Mapping):
            raise InvalidFolder(f"an access rule must be an object, not {doc!r}")
        kinds = [k for k in ("group", "user") if k in doc]
        if len(kinds) != 1:
            raise InvalidFolder(f"an access rule names one group or one user: {dict(doc)!r}")
        kind = kinds[0]
        name = str(doc[kind])
        mode = str(doc.get("mode", "ro"))
        if mode not in ("ro", "rw"):
            raise InvalidFolder(f"access mode must be ro or rw, not {mode!r}")
        if not PRINCIPAL.match(name):
            raise InvalidFolder(f"bad {kind} name {name!r}")
        return cls(kind, name, mode)  # type: ignore[arg-type]


def decide_access(
    rules: Iterable[AccessRule], user: str, groups: Iterable[str], *, read_only: bool = False
) -> Mode | None:
    """How ``user`` (member of ``groups``) may use a folder: rw if any matching rule
    says rw (and the folder is not read-only), ro if one matches, else None."""
    member = set(groups)
    best: Mode | None = None
    for rule in rules:
        hit = rule.name == user if rule.kind == "user" else rule.name in member
        if hit:
            if rule.mode == "rw" and not read_only:
                return "rw"
            best = "ro"
    return best


def check_endpoint(endpoint: str) -> str:
    """An ``https://`` URL, or ``http://`` on a loopback address (tests, a local proxy);
    empty means AWS itself."""
    endpoint = endpoint.strip().rstrip("/")
    if not endpoint:
        return ""
    u = urlparse(endpoint)
    if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/"):
        raise InvalidFolder(f"endpoint must be https://HOST[:PORT], not {endpoint!r}")
    if u.query or u.fragment or u.username or u.password:
        raise InvalidFolder("the endpoint URL may not carry a query, a fragment or a password")
    if u.scheme == "http":
        try:
            loop = u.hostname == "localhost" or ipaddress.ip_address(u.hostname).is_loopback
        except ValueError:
            loop = False
        if not loop:
            raise InvalidFolder(f"plain http is allowed on loopback addresses only: {endpoint}")
    return endpoint


def check_prefix(prefix: str) -> str:
    """A key prefix without leading or trailing slashes, empty segments, ``.`` or ``..``."""
    prefix = prefix.strip("/")
    if not prefix:
        return ""
    if len(prefix) > 900 or any(ord(c) < 32 for c in prefix):
        raise InvalidFolder("the prefix is too long or holds control characters")
    if any(part in ("", ".", "..") for part in prefix.split("/")):
        raise InvalidFolder(f"bad prefix {prefix!r}: empty, '.' or '..' segments")
    return prefix


def check_mount_path(path: str, name: str) -> str:
    """The default path in servers: relative to the server's home (or absolute, for
    containers); no ``..``, no empty segments; ``{name}`` becomes the folder's name."""
    path = path.replace("{name}", name).strip()
    if not path or any(ord(c) < 32 for c in path) or len(path) > 255:
        raise InvalidFolder(f"bad mount path {path!r}")
    rel = path.lstrip("/")
    if not rel or any(part in ("", ".", "..") for part in rel.split("/")):
        raise InvalidFolder(f"bad mount path {path!r}: empty, '.' or '..' segments")
    return path


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in options.items():
        kind = OPTIONS.get(key)
        if kind is None:
            allowed = ", ".join(sorted(OPTIONS))
            raise InvalidFolder(f"mount option {key!r} is not allowed; allowed: {allowed}")
        if kind is bool:
            if not isinstance(value, bool):
                raise InvalidFolder(f"mount option {key} takes true or false")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
                raise InvalidFolder(f"mount option {key} takes a non-negative integer")
        else:
            value = str(value)
            if key == "storage_class" and value not in STORAGE_CLASSES:
                raise InvalidFolder(f"unknown storage class {value!r}")
            if not re.fullmatch(r"[A-Za-z0-9_:-]{1,128}", value):
                raise InvalidFolder(f"bad value for mount option {key}")
        out[key] = value
    return out


@dataclass(frozen=True)
class FolderSpec:
    """A bucket folder as registered (without credentials, which are sealed apart)."""

    name: str
    bucket: str
    endpoint: str = ""
    region: str = "us-east-1"
    prefix: str = ""
    access: tuple[AccessRule, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    mount_path: str = DEFAULT_MOUNT_PATH
    read_only: bool = False
    description: str = ""

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> FolderSpec:
        unknown = set(doc) - {f for f in cls.__dataclass_fields__} - {"credentials"}
        if unknown:
            raise InvalidFolder(f"unknown field(s) {', '.join(sorted(unknown))}")
        name = str(doc.get("name", ""))
        if not NAME.match(name):
            raise InvalidFolder(
                f"name {name!r} must be 1-40 of a-z, 0-9 and '-', starting and ending with "
                "a letter or digit"
            )
        bucket = str(doc.get("bucket", ""))
        if not BUCKET.match(bucket) or ".." in bucket:
            raise InvalidFolder(f"bad bucket name {bucket!r}")
        region = str(doc.get("region") or "us-east-1")
        if not REGION.match(region):
            raise InvalidFolder(f"bad region {region!r}")
        rules = doc.get("access") or []
        if not isinstance(rules, list | tuple):
            raise InvalidFolder("access must be a list of rules")
        options = doc.get("options") or {}
        if not isinstance(options, Mapping):
            raise InvalidFolder("options must be an object")
        description = str(doc.get("description") or "")
        if len(description) > 1000:
            raise InvalidFolder("the description is longer than 1000 characters")
        return cls(
            name=name,
            bucket=bucket,
            endpoint=check_endpoint(str(doc.get("endpoint") or "")),
            region=region,
            prefix=check_prefix(str(doc.get("prefix") or "")),
            access=tuple(AccessRule.from_doc(r) for r in rules),
            options=check_options(options),
            mount_path=check_mount_path(str(doc.get("mount_path") or DEFAULT_MOUNT_PATH), name),
            read_only=bool(doc.get("read_only", False)),
            description=description,
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bucket": self.bucket,
            "endpoint": self.endpoint,
            "region": self.region,
            "prefix": self.prefix,
            "access": [r.to_doc() for r in self.access],
            "options": dict(self.options),
            "mount_path": self.mount_path,
            "read_only": self.read_only,
            "description": self.description,
        }

    def decide(self, user: str, groups: Iterable[str]) -> Mode | None:
        return decide_access(self.access, user, groups, read_only=self.read_only)


@dataclass(frozen=True)
class Credentials:
    """An S3 access key; ``repr`` never shows the secret."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)

    @classmethod
    def from_doc(cls, doc: Any) -> Credentials | None:
        if doc is None:
            return None
        if not isinstance(doc, Mapping):
            raise InvalidFolder(
                "credentials must be an object with access_key_id and secret_access_key"
            )
        key = str(doc.get("access_key_id") or "")
        secret = str(doc.get("secret_access_key") or "")
        if not key or not secret:
            raise InvalidFolder("credentials need access_key_id and secret_access_key")
        if any(ord(c) < 33 for c in key + secret) or len(key) > 256 or len(secret) > 512:
            raise InvalidFolder("the credentials hold spaces or control characters")
        return cls(key, secret, str(doc.get("session_token") or ""))

    def to_json(self) -> bytes:
        doc = {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key}
        if self.session_token:
            doc["session_token"] = self.session_token
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Credentials:
        creds = cls.from_doc(json.loads(raw))
        assert creds is not None
        return creds


def mount_key(
    spec: FolderSpec,
    credentials: Credentials | None,
    *,
    read_only: bool,
    uid: int,
    gid: int,
) -> str:
    """The identity of one host mount (64 hex digits).

    Covers everything the daemon is started with: endpoint, region, bucket, prefix,
    options, the credentials (as a hash), access mode and owner.
    """
    doc = {
        "endpoint": spec.endpoint,
        "region": spec.region,
        "bucket": spec.bucket,
        "prefix": spec.prefix,
        "options": spec.options,
        "credentials": hashlib.sha256(credentials.to_json()).hexdigest() if credentials else "",
        "read_only": read_only,
        "uid": uid,
        "gid": gid,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def safe_component(text: str) -> str:
    """A file name for a user or server name: readable and collision-free."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:40].lstrip(".") or "_"
    return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def split_relative(path: str) -> list[str]:
    return [p for p in posixpath.normpath(path).split("/") if p not in ("", ".")]


__all__ = [
    "DEFAULT_MOUNT_PATH",
    "OPTIONS",
    "AccessRule",
    "Credentials",
    "FolderSpec",
    "InvalidFolder",
    "Mode",
    "check_endpoint",
    "decide_access",
    "mount_key",
    "safe_component",
]

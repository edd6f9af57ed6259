"""Bucket folders, the pure parts: sealing, registration rules, access, mount keys, the
s3fs command line and environment, and reading mountinfo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from hometier.config import Hometier
from hometier.crypto import BadSecretKey, CannotUnseal, NoSecretKey, Sealer
from hometier.errors import UsageError
from hometier.mounts.client import S3fs
from hometier.mounts.mountinfo import MountTable, parse_line
from hometier.mounts.spec import (
    AccessRule,
    Credentials,
    FolderSpec,
    InvalidFolder,
    decide_access,
    mount_key,
)

# -- crypto (the interface bucket folders rely on) --------------------------------------


def new_key() -> bytes:
    return Fernet.generate_key()


def test_sealed_secrets_open_only_with_their_key_and_any_change_is_detected():
    sealer = Sealer([new_key()])
    token = sealer.seal(b"s3cr3t")
    assert b"s3cr3t" not in token.encode() and sealer.unseal(token) == b"s3cr3t"
    with pytest.raises(CannotUnseal):
        Sealer([new_key()]).unseal(token)
    flipped = token[:-5] + ("A" if token[-5] != "A" else "B") + token[-4:]
    with pytest.raises(CannotUnseal):
        sealer.unseal(flipped)
    with pytest.raises(CannotUnseal):
        sealer.unseal("not a token at all ☃")


def test_a_new_key_in_front_rotates_old_tokens_and_the_old_key_can_then_go():
    old, new = new_key(), new_key()
    token = Sealer([old]).seal(b"k")
    both = Sealer.from_config(Hometier(secret_key=f"{new.decode()}, {old.decode()}"))
    assert both.unseal(token) == b"k"
    rotated = both.rotate(token)
    assert Sealer([new]).unseal(rotated) == b"k"
    with pytest.raises(CannotUnseal):
        Sealer([old]).unseal(rotated)


def test_keys_come_from_config_env_or_a_private_file(tmp_path, monkeypatch):
    key = new_key()
    for name in ("HOMETIER_SECRET_KEY", "HOMETIER_SECRET_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(NoSecretKey):
        Sealer.from_config(Hometier())
    monkeypatch.setenv("HOMETIER_SECRET_KEY", key.decode())
    assert Sealer.from_config(Hometier()).unseal(Sealer([key]).seal(b"x")) == b"x"
    monkeypatch.delenv("HOMETIER_SECRET_KEY")
    f = tmp_path / "key"
    f.write_bytes(key + b"\n")
    f.chmod(0o644)
    cfg = Hometier(secret_key_file=str(f))
    with pytest.raises(UsageError):  # others may read it
        Sealer.from_config(cfg)
    f.chmod(0o600)
    assert Sealer.from_config(cfg).unseal(Sealer([key]).seal(b"y")) == b"y"
    os.symlink(f, tmp_path / "link")
    with pytest.raises((UsageError, OSError)):
        Sealer.from_config(Hometier(secret_key_file=str(tmp_path / "link")))
    with pytest.raises(BadSecretKey):
        Sealer([b"too-short"])


# -- registration ---------------------------------------------------------------------


def spec(**kw):
    doc = {"name": "data", "bucket": "lab-data", "access": ["group:staff:rw"]}
    doc.update(kw)
    return FolderSpec.from_doc(doc)


def test_a_folder_document_is_checked_field_by_field():
    s = spec(
        prefix="/projects/x/", endpoint="https://s3.example.org/", options={"multipart_size": 64}
    )
    assert (s.prefix, s.endpoint, s.mount_path) == (
        "projects/x",
        "https://s3.example.org",
        "buckets/data",
    )
    assert s.access == (AccessRule("group", "staff", "rw"),)
    assert FolderSpec.from_doc(s.to_doc() | {"credentials": None}) == s


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("name", "../etc", "name"),
        ("name", "Data", "name"),
        ("name", "a" * 41, "name"),
        ("name", "x_y", "name"),
        ("bucket", "a", "bucket"),
        ("bucket", "Bad..Bucket", "bucket"),
        ("endpoint", "http://s3.example.org", "loopback"),
        ("endpoint", "ftp://x", "https"),
        ("endpoint", "https://u:p@s3.example.org", "password"),
        ("endpoint", "https://s3.example.org/path", "https"),
        ("prefix", "a/../b", "'..'"),
        ("prefix", "a//b", "empty"),
        ("mount_path", "../outside", "'..'"),
        ("mount_path", "a/./b", "'.'"),
        ("options", {"passwd_file": "/etc/shadow"}, "not allowed"),
        ("options", {"allow_other": True}, "not allowed"),
        ("options", {"uid": 0}, "not allowed"),
        ("options", {"multipart_size": "64; rm -rf /"}, "integer"),
        ("options", {"storage_class": "cold storage"}, "storage class"),
        ("access", [{"group": "a", "user": "b"}], "one group or one user"),
        ("access", [{"group": "a", "mode": "admin"}], "ro or rw"),
        ("access", ["group:a/b:rw"], "bad group"),
        ("region", "us east", "region"),
        ("colour", "blue", "unknown field"),
    ],
)
def test_malformed_or_hostile_registrations_are_refused(field, value, says):
    with pytest.raises(InvalidFolder, match=says):
        spec(**{field: value})


def test_the_most_permissive_matching_rule_wins_and_read_only_folders_stay_read_only():
    rules = [
        AccessRule("group", "students", "ro"),
        AccessRule("group", "staff", "rw"),
        AccessRule("user", "guest", "ro"),
    ]
    assert decide_access(rules, "ann", ["students"]) == "ro"
    assert decide_access(rules, "ann", ["students", "staff"]) == "rw"
    assert decide_access(rules, "guest", []) == "ro"
    assert decide_access(rules, "eve", ["others"]) is None
    assert decide_access(rules, "ann", ["staff"], read_only=True) == "ro"
    assert AccessRule.from_doc("user:alice:rw") == AccessRule("user", "alice", "rw")
    assert AccessRule.from_doc("group:staff") == AccessRule("group", "staff", "ro")


def test_one_mount_key_per_bucket_prefix_options_credentials_mode_and_owner():
    s, c = spec(), Credentials("AKIA", "secret")
    base = mount_key(s, c, read_only=False, uid=1000, gid=100)
    assert base == mount_key(
        spec(), Credentials("AKIA", "secret"), read_only=False, uid=1000, gid=100
    )
    assert base == mount_key(
        spec(access=["user:x:ro"], mount_path="elsewhere"), c, read_only=False, uid=1000, gid=100
    ), "who and where do not matter"
    others = {
        mount_key(spec(prefix="p"), c, read_only=False, uid=1000, gid=100),
        mount_key(spec(options={"parallel_count": 2}), c, read_only=False, uid=1000, gid=100),
        mount_key(s, Credentials("AKIA", "rotated"), read_only=False, uid=1000, gid=100),
        mount_key(s, None, read_only=False, uid=1000, gid=100),
        mount_key(s, c, read_only=True, uid=1000, gid=100),
        mount_key(s, c, read_only=False, uid=1001, gid=100),
        mount_key(s, c, read_only=False, uid=1000, gid=101),
    }
    assert base not in others and len(others) == 7
    assert "secret" not in repr(c)


# -- s3fs ----------------------------------------------------------------------------


def test_s3fs_gets_its_credentials_in_its_environment_only(tmp_path):
    s = spec(prefix="p", endpoint="http://127.0.0.1:9000", options={"stat_cache_expire": 30})
    c = Credentials("AKIAEXAMPLE", "wJalrXUtnFEMI/K7MDENG", "tok")
    client = S3fs()
    argv = client.argv(s, tmp_path / "m", read_only=True, uid=1000, gid=100, public=False)
    line = " ".join(argv)
    assert "wJalrXUtnFEMI" not in line and "AKIAEXAMPLE" not in line and "tok" not in line
    assert argv[:4] == ["s3fs", "lab-data:/p", str(tmp_path / "m"), "-f"]
    for opt in (
        "ro",
        "uid=1000",
        "gid=100",
        "umask=0077",
        "allow_other",
        "default_permissions",
        "url=http://127.0.0.1:9000",
        "use_path_request_style",
        "stat_cache_expire=30",
    ):
        assert opt in argv, opt
    env = client.env(c, tmp_path)
    assert env["AWS_SECRET_ACCESS_KEY"] == "wJalrXUtnFEMI/K7MDENG"
    assert env["HOME"] == str(tmp_path) and "AWS_ENDPOINT_URL" not in env
    public = client.argv(s, tmp_path / "m", read_only=False, uid=0, gid=0, public=True)
    assert "public_bucket=1" in public and "ro" not in public
    assert "AWS_ACCESS_KEY_ID" not in client.env(None, tmp_path)


# -- mountinfo ----------------------------------------------------------------------


LINES = """\
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
45 27 254:0 /x /srv/m rw - ext4 /dev/vda rw
46 45 0:40 / /srv/m/fs/k.1 rw,nosuid - fuse.s3fs s3fs rw,allow_other
47 45 0:40 / /srv/m/shared/k rw shared:7 - fuse.s3fs s3fs rw
48 27 0:40 / /home/al\\040ice/buckets/data ro master:7 - fuse.s3fs s3fs ro
52 45 0:41 / /srv/m/fs/k.2 rw - fuse.s3fs s3fs rw
53 47 0:41 / /srv/m/shared/k rw shared:9 - fuse.s3fs s3fs rw
54 48 0:41 / /home/al\\040ice/buckets/data ro master:9 - fuse.s3fs s3fs rw
"""


def test_mountinfo_is_read_with_escapes_propagation_and_stacks():
    table = MountTable(parse_line(line) for line in LINES.splitlines())
    consumer = "/home/al ice/buckets/data"
    assert [e.mount_id for e in table.stack(consumer)] == [48, 54]
    assert table.top("/srv/m/shared/k").mount_id == 53
    base = table.get(48)
    assert base.slave and base.read_only and base.tags["master"] == "7"
    assert [e.mount_id for e in table.above(base)] == [54]
    assert table.get(47).shared and table.get(46).is_fuse and not table.get(45).is_fuse
    assert {e.mount_id for e in table.under("/srv/m")} == {45, 46, 47, 52, 53}
    assert {e.mount_id for e in table.with_dev((0, 41))} == {52, 53, 54}
    assert table.stack("/srv/m/nothing") == [] and table.top("/nope") is None
    with pytest.raises(ValueError):
        parse_line("garbage")


def test_the_real_mountinfo_parses():
    table = MountTable.read()
    assert table.top("/") is not None
    assert all(Path(e.mount_point).is_absolute() for e in table.entries)

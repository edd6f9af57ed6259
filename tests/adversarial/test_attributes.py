"""ACLs, capabilities and ``trusted.*`` survive, a restore never widens permissions, and
a home restored into a missing folder gets its own owner and mode back.

Before: only ``user.*`` attributes were kept; ACLs (``system.posix_acl_access``/
``_default``), ``security.capability`` and ``trusted.*`` were dropped silently, and the
ACL's mask became the group bits (a ``group::---`` came back ``group::rw-``: wider). A
home restored into a missing folder (from the quarantine or the bucket) was created
root:root 0755: its user could not write, and other users read what 0700 protected.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from adversarial.conftest import Victim
from hometier.engine import backup, restore
from hometier.engine.fsutil import remove_path
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.cycle import archive_home
from hometier.lifecycle.restoring import restore_home
from hometier.repo import Repository
from hometier.store import open_store
from integration.lifecycle.conftest import manifest

pytestmark = pytest.mark.root

# A v2 file capability: cap_net_bind_service (bit 10) permitted and effective.
CAPABILITY = bytes.fromhex("0100000200040000000000000000000000000000")


def getfacl(path: Path) -> str:
    out = subprocess.run(
        ["getfacl", "-R", "-p", "-n", "-P", "."],
        cwd=path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out


def xattrs_of(path: Path) -> dict[str, dict[str, bytes]]:
    """Every extended attribute of every entry, by relative path."""
    out: dict[str, dict[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (
            ["", *dirnames, *filenames] if dirpath == str(path) else [*dirnames, *filenames]
        ):
            full = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                continue
            out[rel] = {
                n: os.getxattr(full, n, follow_symlinks=False)
                for n in os.listxattr(full, follow_symlinks=False)
            }
    return out


def make_attributed_tree(root: Path, uid: int) -> None:
    """Files and folders with access ACLs (a narrow mask), a default ACL, a file
    capability, ``trusted.*`` and ``user.*`` attributes, and set-id bits."""
    (root / "shared").mkdir(parents=True)
    (root / "shared" / "report.csv").write_text("a,b\n1,2\n")
    (root / "private.txt").write_text("mine\n")
    (root / "tool").write_bytes(b"\x7fELF not really\n")
    (root / "setgid-dir").mkdir()
    os.chmod(root / "setgid-dir", 0o2770)
    (root / "setgid-dir" / "inherited").write_text("x\n")
    run = ["setfacl"]
    # group::--- with mask rw-: the owning group has nothing, a named user has rw.
    subprocess.run(
        [*run, "-m", f"u:{uid + 1}:rw-,g::---,m::rw-,o::---", str(root / "private.txt")], check=True
    )
    subprocess.run([*run, "-m", f"g:{uid + 2}:r-x,m::r-x", str(root / "shared")], check=True)
    subprocess.run(
        [*run, "-d", "-m", f"u:{uid + 1}:rwx,g::r-x,o::---", str(root / "shared")], check=True
    )
    subprocess.run(
        [*run, "-m", f"u:{uid + 3}:r--", str(root / "shared" / "report.csv")], check=True
    )
    subprocess.run([*run, "-m", f"g:{uid + 2}:rwx", str(root / "setgid-dir")], check=True)
    os.setxattr(root / "tool", "security.capability", CAPABILITY)
    os.chmod(root / "tool", 0o755)
    os.setxattr(root / "private.txt", "trusted.hometier-test", b"root only")
    os.setxattr(root / "shared", "trusted.dir-attribute", b"\x00\x01binary")
    os.setxattr(root / "private.txt", "user.comment", b"a user attribute")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)
    os.lchown(root, uid, uid)
    # chown clears capabilities and set-id bits: put them back as an owner would.
    os.setxattr(root / "tool", "security.capability", CAPABILITY)
    os.chmod(root / "setgid-dir", 0o2770)


@pytest.fixture(params=["file", "s3"])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Repository:
    url = (
        request.getfixturevalue("s3_url")
        if request.param == "s3"
        else f"file://{tmp_path / 'repo'}"
    )
    return Repository.create(open_store(url))


def test_acls_capabilities_and_trusted_attributes_round_trip(
    repo: Repository, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_attributed_tree(src, 48_100)
    want_acl, want_x, want_m = getfacl(src), xattrs_of(src), manifest(src)
    assert "group::---" in want_acl and "security.capability" in want_x["tool"]

    snap = backup(repo, src, user="alice")
    assert snap.stats.complete, snap.stats
    stats = restore(repo, snap, tmp_path / "out")

    assert stats.skipped == []
    assert getfacl(tmp_path / "out") == want_acl
    assert xattrs_of(tmp_path / "out") == want_x
    assert manifest(tmp_path / "out") == want_m
    assert os.stat(tmp_path / "out" / "setgid-dir").st_mode & 0o7777 == 0o2770
    caps = subprocess.run(
        ["getcap", str(tmp_path / "out" / "tool")], capture_output=True, text=True
    )
    assert "cap_net_bind_service" in caps.stdout


@pytest.fixture
def noacl_fs(tmp_path: Path) -> Iterator[Path]:
    """A filesystem with owners and modes but no extended attributes at all (ramfs:
    ext4 can no longer be mounted without ACLs)."""
    mnt = tmp_path / "noacl"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "-o", "size=64m", "ramfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_restore_where_acls_cannot_be_kept_lists_them_and_never_widens(
    tmp_path: Path, noacl_fs: Path
) -> None:
    repo = Repository.create(open_store(f"file://{tmp_path / 'repo'}"))
    src = tmp_path / "src"
    src.mkdir()
    make_attributed_tree(src, 48_200)
    snap = backup(repo, src, user="alice")

    stats = restore(repo, snap, noacl_fs / "out")

    skipped = "\n".join(stats.skipped)
    for entry, name in [
        ("private.txt", "system.posix_acl_access"),
        ("shared", "system.posix_acl_default"),
        ("tool", "security.capability"),
        ("private.txt", "trusted.hometier-test"),
        ("private.txt", "user.comment"),
    ]:
        assert f"{entry}: {name}" in skipped, skipped
    # rw for a named user via the mask used to make group bits rw: the owning group had
    # nothing, and still has nothing.
    assert os.stat(noacl_fs / "out" / "private.txt").st_mode & 0o777 == 0o600
    assert (
        os.stat(noacl_fs / "out" / "shared").st_mode & 0o070
        <= os.stat(src / "shared").st_mode & 0o070
    )


@pytest.mark.parametrize("source", ["quarantine", "bucket"])
def test_a_missing_home_comes_back_with_its_owner_and_mode(
    lc: Lifecycle, victim: Victim, source: str
) -> None:
    before = manifest(victim.home)
    subprocess.run(["setfacl", "-m", f"u:{victim.uid + 7}:r-x", str(victim.home)], check=True)
    st, acl = os.stat(victim.home), getfacl(victim.home)
    assert archive_home(lc, victim.user).outcome == "archived"
    lc.restore_from_quarantine = source == "quarantine"
    remove_path(victim.home)  # an operator cleaned up the "empty" home

    result = restore_home(lc, victim.user, "login")

    assert result.source == source
    now = os.stat(victim.home)
    assert (now.st_uid, now.st_gid, now.st_mode) == (st.st_uid, st.st_gid, st.st_mode)
    assert now.st_uid != 0 and now.st_mode & 0o007 == 0, "not the user's, or others may read"
    assert getfacl(victim.home) == acl
    assert manifest(victim.home) == before


def test_the_per_user_volume_stream_keeps_every_attribute(tmp_path: Path) -> None:
    """The init container's path (a PAX tar from the service, unpacked by ``untar``)
    keeps ACLs, capabilities and ``trusted.*`` as the direct restore does."""
    import io

    from hometier.engine.export import write_tar
    from hometier.engine.untar import unpack_tar

    repo = Repository.create(open_store(f"file://{tmp_path / 'repo'}"))
    src = tmp_path / "src"
    src.mkdir()
    make_attributed_tree(src, 48_300)
    want_acl, want_x = getfacl(src), xattrs_of(src)
    snap = backup(repo, src, user="alice")
    stream = io.BytesIO()
    write_tar(repo, snap, "", stream)
    stream.seek(0)

    stats = unpack_tar(stream, tmp_path / "volume")

    assert stats.skipped == []
    assert getfacl(tmp_path / "volume") == want_acl
    assert xattrs_of(tmp_path / "volume") == want_x

"""Content shared between homes is stored once, on a local folder and on S3.

Ten homes hold the same 50 MB folder (random, so compression cannot hide anything) and a
few files of their own; backed up as ten users into one repository, the repository
grows by about one copy of the shared folder plus the unique files.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from hometier.engine import backup, check
from hometier.repo import Repository
from hometier.store import open_store
from treeutil import MiB

USERS = [f"user{i:02d}" for i in range(10)]
SHARED_BYTES = 50 * 1000 * 1000
SHARED_FILES = 10


def _shared_folder(root: Path) -> int:
    """A 50 MB folder of random files, some nested; returns its size."""
    rng = random.Random(42)
    each = SHARED_BYTES // SHARED_FILES
    for i in range(SHARED_FILES):
        folder = root / "datasets" / ("raw" if i % 2 else "processed")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"part-{i:02d}.bin").write_bytes(rng.randbytes(each))
    return each * SHARED_FILES


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """Ten homes (real copies, not links) sharing a folder; (root, shared, unique bytes)."""
    root = tmp_path_factory.mktemp("homes")
    template = root / ".template"
    shared = _shared_folder(template)
    rng = random.Random(7)
    unique = 0
    for user in USERS:
        home = root / user
        shutil.copytree(template, home)
        for j in range(3):
            data = rng.randbytes(rng.randrange(1000, 200_000))
            (home / f"notes-{j}.bin").write_bytes(data)
            unique += len(data)
        (home / "work").mkdir()
        data = rng.randbytes(2 * MiB)  # one unique file large enough to be chunked
        (home / "work" / "model.bin").write_bytes(data)
        unique += len(data)
    shutil.rmtree(template)
    return root, shared, unique


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/repo"
    s3_url: str = request.getfixturevalue("s3_url")
    return s3_url


def test_a_folder_shared_by_ten_homes_is_stored_once(
    url: str, homes: tuple[Path, int, int]
) -> None:
    root, shared, unique = homes
    repo, created = Repository.open_or_create(open_store(url))
    assert created
    snaps = [backup(repo, root / user, user=user) for user in USERS]

    budget = 1.2 * (shared + unique)
    first, rest = snaps[0].stats, [s.stats for s in snaps[1:]]
    assert first.bytes_new_stored >= shared  # the first home pays for the shared folder
    for s in rest:
        # Each later home adds its own files, and none of the shared folder.
        assert s.bytes_new_stored < 0.1 * shared
        assert s.bytes_read >= shared  # it was read (and hashed), just not stored
    total_new = sum(s.stats.bytes_new_stored for s in snaps)
    assert total_new < budget

    packs = sum(o.size for o in repo.store.list("packs/"))
    assert shared <= packs < budget
    everything = sum(o.size for o in repo.store.list(""))
    assert everything < budget

    assert {s.user for s in repo.list_snapshots()} == set(USERS)
    report = check(repo)
    assert report.ok and report.snapshots == len(USERS)

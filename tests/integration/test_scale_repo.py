"""A repository that grows: locators, split index objects, repacking, repair, upgrade.

Every test here uses real folders and a ``file://`` bucket (the S3 variants of the same
code paths run in the corruption, prune and dedup suites); the bounds that matter at 50
million blobs are lowered by a parameter so that the same code meets them with a few
hundred.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hometier.engine import backup, check, restore
from hometier.engine.maintenance import repair_index, upgrade
from hometier.engine.prune import forget, prune
from hometier.errors import IntegrityError
from hometier.repo import Repository, index
from hometier.repo.index import decode_index_raw, encode_index
from hometier.repo.pack import parse_trailer
from hometier.store import Store, open_store
from treeutil import snapshot_of_tree

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
GOLDEN = Path(__file__).resolve().parent.parent / "golden"


def _home(root: Path, seed: int, files: int = 20, size: int = 30_000) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    (root / "sub").mkdir()
    for i in range(files):
        where = root / "sub" if i % 3 else root
        (where / f"f{i:03d}.bin").write_bytes(rng.randbytes(rng.randrange(size // 2, size)))
    return root


class Spy:
    """Records every key a store reads (get and ranged get)."""

    def __init__(self, store: Store) -> None:
        self.keys: list[str] = []
        get, ranges = store.get, store.get_ranges

        def spy_get(key: str, *a: Any, **k: Any) -> Any:
            self.keys.append(key)
            return get(key, *a, **k)

        def spy_ranges(key: str, *a: Any, **k: Any) -> Any:
            self.keys.append(key)
            return ranges(key, *a, **k)

        store.get = spy_get  # type: ignore[method-assign]
        store.get_ranges = spy_ranges  # type: ignore[method-assign]


def test_restore_reads_the_snapshots_locator_and_no_index_object(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/repo"
    repo = Repository.create(open_store(url), cache_dir=str(tmp_path / "cache-w"))
    for i in range(5):  # other homes: index objects a restore of alice must not read
        backup(repo, _home(tmp_path / f"other{i}", seed=i), user=f"other{i}")
    snap = backup(repo, _home(tmp_path / "alice", seed=99), user="alice")

    store = open_store(url)
    spy = Spy(store)
    reader = Repository.open(store, cache_dir=str(tmp_path / "cache-r"))
    restore(reader, reader.find_snapshot("latest", "alice"), tmp_path / "out")
    assert snapshot_of_tree(tmp_path / "out") == snapshot_of_tree(tmp_path / "alice")
    assert not [k for k in spy.keys if k.startswith("index/")], spy.keys
    assert any(k.startswith(f"locators/{snap.id}/") for k in spy.keys)
    assert not (tmp_path / "cache-r").exists(), "a restore opened the index cache"

    # Even with every index object gone, a snapshot with a locator restores.
    for obj in list(store.list("index/")):
        store.delete(obj.key)
    fresh = Repository.open(open_store(url), cache_dir=str(tmp_path / "cache-r2"))
    restore(fresh, snap, tmp_path / "out2")
    assert snapshot_of_tree(tmp_path / "out2") == snapshot_of_tree(tmp_path / "alice")


def _deep_home(root: Path, depth: int) -> Path:
    d = root
    for i in range(depth):
        d = d / f"level{i}"
        d.mkdir(parents=True)
        (d / "file.txt").write_bytes(b"at depth %d\n" % i)
        (d / "empty").mkdir()  # the same (empty) tree at every depth
    return root


def test_a_restore_fetches_every_tree_in_one_round_whatever_the_depth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The locator names every tree of the snapshot: they are fetched together, not one
    round of requests per level of folders (15 here)."""
    url = f"file://{tmp_path}/repo"
    repo = Repository.create(open_store(url))
    home = _deep_home(tmp_path / "home", depth=15)
    snap = backup(repo, home, user="u")
    want = snapshot_of_tree(home)

    store = open_store(url)
    spy = Spy(store)
    restore(Repository.open(store), snap, tmp_path / "out")
    assert snapshot_of_tree(tmp_path / "out") == want
    reads = [k for k in spy.keys if k.startswith("packs/")]
    assert len(reads) <= 3, reads  # the tree pack once, the data pack (maybe in two)

    # A locator that lacks some trees (or a snapshot without one) still restores: what
    # the first round did not bring is fetched level by level.
    views = importlib.import_module("hometier.repo.views")
    real = views.SnapshotWhere.trees

    def half(self: Any) -> list[Any]:  # every other tree, and the root
        return [t for i, t in enumerate(real(self)) if i % 2 or t == snap.tree]

    monkeypatch.setattr(views.SnapshotWhere, "trees", half)
    spy = Spy(store := open_store(url))
    restore(Repository.open(store), snap, tmp_path / "out2")
    assert snapshot_of_tree(tmp_path / "out2") == want
    assert len([k for k in spy.keys if k.startswith("packs/")]) > len(reads)


def test_a_snapshot_without_locator_falls_back_to_the_index(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/repo"
    repo = Repository.create(open_store(url))
    snap = backup(repo, _home(tmp_path / "home", seed=1), user="u")
    for obj in list(repo.store.list("locators/")):
        repo.store.delete(obj.key)
    with pytest.raises(Exception, match="1 problem"):
        check(Repository.open(open_store(url)))  # version 2: every snapshot needs one
    restore(Repository.open(open_store(url)), snap, tmp_path / "out")
    assert snapshot_of_tree(tmp_path / "out") == snapshot_of_tree(tmp_path / "home")


def test_index_objects_and_prune_consolidation_stay_within_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a prune wrote one consolidated index object of every kept pack, and past
    the readers' bound (256 MiB, ~5.8 M blobs) the repository could no longer be read.
    Here the bound is lowered to 6 KiB (~120 blobs) for readers and writers alike."""
    monkeypatch.setattr(index, "MAX_INDEX_RAW", 6 * 1024)
    monkeypatch.setattr(index, "INDEX_TARGET", 3 * 1024)
    url = f"file://{tmp_path}/repo"
    repo = Repository.create(open_store(url))
    snaps = []
    for i in range(8):
        home = _home(tmp_path / f"h{i}", seed=10 + i, files=60, size=3000)
        snaps.append(backup(repo, home, user=f"u{i}", pack_size=20_000))
    entries = [r for o in repo.store.list("index/") for r in repo.read_index_object(o.key)]
    total = sum(r.count for r in entries)
    assert total > 400
    # What the old prune would have written is refused by a reader with this bound.
    old_style = encode_index(
        index.PackRecord(r.id, r.size, parse_trailer(repo.store.get(_pk(r.id)), r.size))
        for r in entries
    )
    with pytest.raises(IntegrityError, match="too large"):
        decode_index_raw(old_style)

    # Rebuilding the index from the trailers writes as many objects as the bound needs,
    # each naming packs of several homes (every other pack's home is forgotten below).
    rebuilt = repair_index(repo, now=NOW)
    assert rebuilt.index_objects_written >= 3 and rebuilt.entries == total, rebuilt
    forget(repo, snaps[::2])
    prune(repo, now=NOW, grace=dt.timedelta(0))
    swept = prune(repo, now=NOW + dt.timedelta(seconds=1), grace=dt.timedelta(0))
    assert swept.packs_deleted > 0 and swept.index_objects_written >= 2, swept
    for obj in repo.store.list("index/"):
        decode_index_raw(repo.store.get(obj.key))  # each within the lowered bound
    reader = Repository.open(open_store(url), cache_dir=str(tmp_path / "fresh"))
    check(reader, read_data=True)
    for i, snap in list(enumerate(snaps))[1::2]:
        restore(reader, snap, tmp_path / f"out{i}")
        assert snapshot_of_tree(tmp_path / f"out{i}") == snapshot_of_tree(tmp_path / f"h{i}")


def _pk(pid: bytes) -> str:
    from hometier.repo.ids import pack_key

    return pack_key(pid)  # type: ignore[arg-type]


def test_prune_repacks_a_wasteful_pack_and_a_reader_with_the_old_locator_recovers(
    tmp_path: Path,
) -> None:
    url = f"file://{tmp_path}/repo"
    repo = Repository.create(open_store(url))
    home = _home(tmp_path / "home", seed=5, files=10, size=400_000)
    first = backup(repo, home, user="u")
    for i in range(0, 10, 2):  # half the files go: the first data pack is half unused
        for p in home.rglob(f"f{i:03d}.bin"):
            p.unlink()
    second = backup(repo, home, user="u", parent=first)
    want = snapshot_of_tree(home)
    forget(repo, [first])
    packs_before = {o.key: o.size for o in repo.store.list("packs/")}

    marked = prune(repo, now=NOW, grace=dt.timedelta(hours=1), repack_waste=0.3)
    assert marked.packs_repacked >= 1 and marked.bytes_repacked > 0, marked
    # A reader that read the locator before the sweep keeps it cached.
    stale = Repository.open(open_store(url))
    stale_view = stale.for_snapshot(second)
    assert stale_view.where.has_locator

    swept = prune(repo, now=NOW + dt.timedelta(hours=2), grace=dt.timedelta(hours=1))
    assert swept.packs_deleted >= marked.packs_repacked and swept.locators_rewritten == 1
    packs_after = {o.key: o.size for o in repo.store.list("packs/")}
    assert sum(packs_after.values()) < sum(packs_before.values())
    assert [k for k in repo.locator_keys(second.id) if "/00000001-" in k], "no new generation"
    assert not [k for k in repo.locator_keys(second.id) if "/00000000-" in k]

    restore(stale_view, second, tmp_path / "stale")  # its packs are gone: it reads again
    assert snapshot_of_tree(tmp_path / "stale") == want
    fresh = Repository.open(open_store(url), cache_dir=str(tmp_path / "fresh"))
    check(fresh, read_data=True)
    restore(fresh, second, tmp_path / "fresh-out")
    assert snapshot_of_tree(tmp_path / "fresh-out") == want


def test_prune_with_repacking_while_archiving_never_breaks_a_snapshot(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/repo"
    repo = Repository.create(open_store(url))
    pruner_repo = Repository.open(open_store(url))
    homes = {u: _home(tmp_path / u, seed=i, files=12, size=200_000) for i, u in enumerate("abc")}
    latest: dict[str, Any] = {}
    errors: list[BaseException] = []
    stop = threading.Event()
    rounds = [0]

    def archiver() -> None:
        try:
            rng = random.Random(3)
            for r in range(6):
                for u, home in homes.items():
                    files = sorted(home.rglob("*.bin"))
                    rng.choice(files).unlink()
                    (home / f"r{r}.bin").write_bytes(rng.randbytes(150_000))
                    latest[u] = (backup(repo, home, user=u), snapshot_of_tree(home))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            stop.set()

    def pruner() -> None:
        try:
            while not stop.is_set():
                now = dt.datetime.now(dt.UTC)
                for u in homes:
                    snaps = pruner_repo.list_snapshots(u)
                    forget(pruner_repo, snaps[:-1])
                # grace 0.5 s: longer than no archive here, but archives_since says
                # which began before a mark, as the lifecycle does from its database.
                prune(
                    pruner_repo,
                    now=now,
                    grace=dt.timedelta(seconds=0.5),
                    archives_since=now - dt.timedelta(seconds=30),
                    repack_waste=0.05,
                )
                rounds[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=archiver), threading.Thread(target=pruner)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    print(f"prune ran {rounds[0]} times beside the archives")
    end = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    prune(pruner_repo, now=end, grace=dt.timedelta(seconds=1), repack_waste=0.05)
    prune(pruner_repo, now=end + dt.timedelta(seconds=5), grace=dt.timedelta(seconds=1))
    fresh = Repository.open(open_store(url), cache_dir=str(tmp_path / "fresh"))
    check(fresh, read_data=True)
    for u, (snap, want) in latest.items():
        restore(fresh, snap, tmp_path / f"out-{u}")
        assert snapshot_of_tree(tmp_path / f"out-{u}") == want, u


def test_two_backups_at_once_in_one_process_upload_shared_content_once(tmp_path: Path) -> None:
    shared = random.Random(8).randbytes(24 * 1024 * 1024)  # ~24 chunks, stored once
    homes = []
    for u in ("x", "y"):
        h = _home(tmp_path / u, seed=ord(u), files=3)
        (h / "shared.bin").write_bytes(shared)
        homes.append(h)
    repo = Repository.create(open_store(f"file://{tmp_path}/repo"))
    barrier = threading.Barrier(2)
    snaps: dict[str, Any] = {}
    held = repo.writer()  # keeps the process's shared writer open to read its counter

    def run(u: str, h: Path) -> None:
        barrier.wait()
        snaps[u] = backup(repo, h, user=u, workers=2)

    threads = [threading.Thread(target=run, args=(u, h)) for u, h in zip("xy", homes, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    seen: dict[bytes, int] = {}
    for obj in repo.store.list("packs/"):
        data = repo.store.get(obj.key)
        for e in parse_trailer(data, len(data)):
            seen[e.id] = seen.get(e.id, 0) + 1
    twice = [b.hex()[:12] for b, n in seen.items() if n > 1]
    stored = sum(s.stats.bytes_new_stored for s in snaps.values())
    print(
        f"stored {stored} bytes for {len(shared)} shared; blobs stored twice: {len(twice)}; "
        f"blobs found in flight in the other backup: {held.shared.joined}"
    )
    held.close()
    assert not twice
    assert stored < len(shared) * 1.1
    for u, h in zip("xy", homes, strict=True):
        restore(repo, snaps[u], tmp_path / f"out-{u}")
        assert snapshot_of_tree(tmp_path / f"out-{u}") == snapshot_of_tree(h)


@pytest.mark.parametrize("lanes", [0, 1], ids=["compressed-by-caller", "compressed-by-lane"])
def test_a_blob_reserved_by_another_backup_is_waited_for_not_reported_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lanes: int
) -> None:
    """Backup A has reserved a blob (it is pending) but not put it in a pack yet when
    backup B, which found it pending, flushes. B must wait for it: it used to fail with
    "written but is not indexed" (seen with 30 archives, 4 at a time, in one process).

    Without a lane A is still compressing it in its own ``add``; with one, A's ``add``
    has returned and the blob waits in the lane's batch until B's flush hands it over."""
    from hometier.repo import writer as writer_mod

    repo = Repository.create(open_store(f"file://{tmp_path}/repo"))
    content = b"shared by two homes " * 1000
    in_encode, release = threading.Event(), threading.Event()
    real_encode = writer_mod.codec.encode

    def slow_encode(data: bytes) -> Any:
        if data == content:
            in_encode.set()
            assert release.wait(30)
        return real_encode(data)

    monkeypatch.setattr(writer_mod.codec, "encode", slow_encode)
    a, b = repo.writer(lanes=lanes), repo.writer()
    errors: list[BaseException] = []

    def run(fn: Any) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    adder = threading.Thread(target=run, args=(lambda: a.add(index.BlobType.DATA, content),))
    adder.start()
    bid = repo.blob_id(content)
    deadline = time.monotonic() + 30
    while not a.shared.pending(bid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert a.shared is b.shared
    bid, new = b.add(index.BlobType.DATA, content)
    assert not new  # pending in A: B does not store it again
    flusher = threading.Thread(target=run, args=(b.flush,))
    flusher.start()
    assert in_encode.wait(30)  # by A's add, or by the lane once B's flush handed it over
    flusher.join(0.5)
    still_waiting = flusher.is_alive()
    release.set()
    adder.join(30)
    flusher.join(30)
    a.flush()
    assert not errors, errors
    assert still_waiting, "B's flush returned while the blob was not in any pack"
    assert bid in b.locations
    a.close()
    b.close()


def test_repair_index_rebuilds_from_pack_trailers(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/repo"
    repo = Repository.create(open_store(url))
    snaps = [backup(repo, _home(tmp_path / f"h{i}", seed=i), user=f"u{i}") for i in range(3)]
    store = repo.store
    keys = [o.key for o in store.list("index/")]
    store.delete(keys[0])
    store.put(keys[1], b"not an index object at all")
    with pytest.raises(Exception, match="problem"):
        check(Repository.open(open_store(url), cache_dir=str(tmp_path / "c1")))
    report = repair_index(Repository.open(open_store(url), cache_dir=str(tmp_path / "c2")), now=NOW)
    assert report.packs == len(list(store.list("packs/"))) and not report.problems
    fresh = Repository.open(open_store(url), cache_dir=str(tmp_path / "c3"))
    check(fresh, read_data=True)
    # The verbs an operator types, with and without a terminal's progress (--json).
    env = dict(os.environ, HOMETIER_STORE=url, HOMETIER_CACHE_DIR=str(tmp_path / "c4"))
    env.pop("HOMETIER_FAULTS", None)
    for what in ("index", "locators"):
        for extra in ([], ["--json"]):
            done = _cli([*extra, "repair", what], env)
            assert done.returncode == 0, done.stderr
    for i, snap in enumerate(snaps):
        for obj in list(store.list(f"locators/{snap.id}/")):
            store.delete(obj.key)  # make the restore depend on the rebuilt index
        restore(fresh, snap, tmp_path / f"out{i}")
        assert snapshot_of_tree(tmp_path / f"out{i}") == snapshot_of_tree(tmp_path / f"h{i}")


def test_upgrade_of_the_golden_v1_repository_in_place(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(GOLDEN / "repo-v1", copy)
    before = {
        p.relative_to(copy).as_posix(): p.read_bytes() for p in copy.rglob("*") if p.is_file()
    }
    repo = Repository.open(open_store(f"file://{copy}"))
    assert repo.config.version == 1
    report = upgrade(repo, now=NOW)
    assert report.locators_written == 1 and report.upgraded_from == 1
    after = {p.relative_to(copy).as_posix(): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed == {"config"}, "upgrade rewrote something besides the config"
    assert {k for k in after if k not in before} == {k for k in after if k.startswith("locators/")}
    fresh = Repository.open(open_store(f"file://{copy}"))
    assert fresh.config.version == 2
    report2 = check(fresh, read_data=True)
    assert report2.warnings == [] and report2.locators == 1
    (snap,) = fresh.list_snapshots()
    restore(fresh, snap, tmp_path / "out")
    assert upgrade(fresh, now=NOW).locators_written == 0  # nothing left to do


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hometier.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_upgrade_killed_midway_resumes_and_runs_beside_a_backup(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/repo"
    repo = Repository.create(open_store(url))
    for i in range(4):
        backup(repo, _home(tmp_path / f"h{i}", seed=i, files=4), user=f"u{i}")
    for obj in list(repo.store.list("locators/")):
        repo.store.delete(obj.key)  # as a version 1 repository has none
    env = dict(os.environ, HOMETIER_STORE=url, HOMETIER_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("HOMETIER_FAULTS", None)
    killed = _cli(["upgrade"], env | {"HOMETIER_FAULTS": "after_upgrade_locator:kill"})
    assert killed.returncode == -9, killed.stderr
    assert len(list(repo.store.list("locators/"))) == 1
    assert repo.store.exists("locks/prune")  # left behind by the killed process

    # A backup runs while the upgrade resumes (it takes over the dead process's lock).
    writer = Repository.open(open_store(url))
    result: list[Any] = []
    t = threading.Thread(
        target=lambda: result.append(
            backup(writer, _home(tmp_path / "late", seed=50, files=30), user="late")
        )
    )
    t.start()
    done = _cli(["upgrade", "--json"], env)
    t.join(120)
    assert done.returncode == 0, done.stderr
    final = _cli(["upgrade", "--json"], env)  # catches a snapshot written meanwhile
    assert final.returncode == 0, final.stderr
    fresh = Repository.open(open_store(url))
    report = check(fresh, read_data=True)
    assert report.locators == report.snapshots == 5
    assert not fresh.store.exists("locks/prune")
    restore(fresh, result[0], tmp_path / "out")
    assert snapshot_of_tree(tmp_path / "out") == snapshot_of_tree(tmp_path / "late")


def test_golden_v2_restores_through_its_locator_alone(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(GOLDEN / "repo-v2", copy)
    shutil.rmtree(copy / "index")  # the locator is all a restore needs
    repo = Repository.open(open_store(f"file://{copy}"))
    assert repo.config.version == 2
    (snap,) = repo.list_snapshots()
    restore(repo, snap, tmp_path / "out")
    copy_v1 = tmp_path / "v1"
    shutil.copytree(GOLDEN / "repo-v1", copy_v1)
    (old,) = Repository.open(open_store(f"file://{copy_v1}")).list_snapshots()
    restore(Repository.open(open_store(f"file://{copy_v1}")), old, tmp_path / "out-v1")
    # The same home in both versions (the README names the version it was written for).
    a, b = snapshot_of_tree(tmp_path / "out"), snapshot_of_tree(tmp_path / "out-v1")
    assert {k for k in a} == {k for k in b}


def test_the_reader_of_format_md_appendix_a_reads_the_golden_v2_repository(
    tmp_path: Path,
) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "format.md").read_text()
    appendix = doc[doc.index("## Appendix A") :]
    code = appendix[appendix.index("```python") + len("```python") : appendix.index("\n```\n")]
    script = tmp_path / "reader.py"
    script.write_text(code)
    copy = tmp_path / "repo"
    shutil.copytree(GOLDEN / "repo-v2", copy)
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, str(script), str(copy), "golden", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (restored,) = list(out.iterdir())
    assert (restored / "README.txt").read_bytes().startswith(b"This is the hometier golden")


def test_browse_and_download_read_the_locator_alone(tmp_path: Path) -> None:
    """What the service does for browsing, file downloads and the init container's tar
    stream: never the whole index (here there is none left to read)."""
    import io
    import tarfile

    from hometier.engine.export import find, iter_content, list_dir, write_tar, write_zip

    url = f"file://{tmp_path}/repo"
    repo = Repository.create(open_store(url))
    home = _home(tmp_path / "home", seed=21)
    snap = backup(repo, home, user="u")
    for obj in list(repo.store.list("index/")):
        repo.store.delete(obj.key)
    svc = Repository.open(open_store(url), cache_dir=str(tmp_path / "svc-cache"))
    assert {n.name for n in list_dir(svc, snap, "sub")} == {
        p.name.encode() for p in (home / "sub").iterdir()
    }
    view = svc.for_snapshot(snap)
    node = find(view, snap, "f000.bin")
    assert b"".join(iter_content(view, node)) == (home / "f000.bin").read_bytes()
    buf = io.BytesIO()
    write_tar(svc, snap, "", buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        assert len(tar.getnames()) == len(list(home.rglob("*"))) + 1
    write_zip(svc, snap, "sub", io.BytesIO())
    assert not (tmp_path / "svc-cache").exists(), "browsing opened the index cache"

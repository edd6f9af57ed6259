"""The local index cache: sorted runs and ``BlobIndex``, against a hand-made index.

No store here: ``sync`` gets the listing and a reader function, so each test says
exactly which index objects exist and counts which ones were read.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from hometier.errors import IntegrityError
from hometier.repo import runs
from hometier.repo.blobindex import BlobIndex
from hometier.repo.ids import BlobId, PackId
from hometier.repo.index import RawPack
from hometier.repo.pack import ENTRY
from hometier.repo.runs import REC, CacheDamaged, Run, RunBuilder, merge

rng = random.Random(12)


def _pack(n: int, ids: list[bytes] | None = None) -> RawPack:
    ids = ids or [rng.randbytes(32) for _ in range(n)]
    table = b"".join(ENTRY.pack(b, 0, 1, i * 10, 10, 20) for i, b in enumerate(ids))
    return RawPack(PackId(rng.randbytes(32)), 10 * len(ids) + 100, table, len(ids))


class Objects:
    """Index objects by key, and how often each was read."""

    def __init__(self) -> None:
        self.objs: dict[str, list[RawPack]] = {}
        self.reads: list[str] = []

    def add(self, *packs: RawPack) -> str:
        key = f"index/{rng.randbytes(32).hex()}"
        self.objs[key] = list(packs)
        return key

    def read(self, key: str) -> list[RawPack]:
        self.reads.append(key)
        return self.objs[key]

    def sync(self, bi: BlobIndex) -> int:
        return bi.sync({k: 100 for k in self.objs}, self.read)


def test_run_finds_every_record_and_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "SPILL", 1000)  # the partitioned path, with small numbers
    recs = [REC.pack(rng.randbytes(32), i % 7, 0, 0, i, 1, 1) for i in range(5000)]
    dup = recs[10][:32]
    recs.append(dup + REC.pack(b"\0" * 32, 99, 1, 1, 5, 5, 5)[32:])
    with RunBuilder(str(tmp_path)) as b:
        for r in recs:
            b.add(r)
        b.finish(str(tmp_path / "a.run"))
    run = Run(str(tmp_path / "a.run"))
    assert len(run) == len(recs) and list(run) == sorted(recs)
    for r in recs[::97]:
        assert r in run.find(r[:32])
    assert len(run.find(dup)) == 2
    assert run.find(rng.randbytes(32)) == []
    merged = merge(str(tmp_path / "m.run"), [run, run], drop={99})
    assert merged == len(recs) - 1  # exact duplicates once, pack 99 dropped
    assert not [p for p in os.listdir(tmp_path) if p.startswith("spill-")]


def test_a_truncated_run_is_refused(tmp_path: Path) -> None:
    recs = sorted(REC.pack(rng.randbytes(32), 1, 0, 0, 0, 1, 1) for _ in range(300))
    runs.write_run(str(tmp_path / "r.run"), recs, len(recs))
    with open(tmp_path / "r.run", "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / "r.run") - 7)
    with pytest.raises(CacheDamaged):
        Run(str(tmp_path / "r.run"))


def test_sync_reads_only_new_objects_and_forgets_vanished_packs(tmp_path: Path) -> None:
    objs = Objects()
    p1, p2, p3 = _pack(50), _pack(60), _pack(70)
    k1 = objs.add(p1)
    k2 = objs.add(p2, p3)
    bi = BlobIndex(str(tmp_path / "c"))
    assert objs.sync(bi) == 2 and len(bi) == 180
    some = BlobId(p2.table[:32])
    assert bi.get(some) is not None and bi.get(some).pack == p2.id  # type: ignore[union-attr]
    objs.reads.clear()
    assert objs.sync(bi) == 0 and objs.reads == []
    # A prune replaced k2 by an object naming only p3: p2 is dead, p3 stays.
    del objs.objs[k2]
    k3 = objs.add(p3)
    objs.sync(bi)
    assert objs.reads == [k3]
    assert bi.get(some) is None and some not in bi
    assert bi.get(BlobId(p3.table[:32])) is not None and set(bi.packs()) == {p1.id, p3.id}
    # Another process's instance on the same folder sees the same, without reading.
    other = BlobIndex(str(tmp_path / "c"))
    assert other.get(BlobId(p1.table[:32])) is not None and other.get(some) is None
    # The pack comes back (re-indexed): its blobs are found again.
    objs.add(p2)
    objs.sync(bi)
    assert bi.get(some) is not None
    assert k1 in bi.objects()


def test_marked_packs_are_readable_but_not_known_and_copies_win(tmp_path: Path) -> None:
    objs = Objects()
    shared = [rng.randbytes(32) for _ in range(5)]
    old, new = _pack(0, shared), _pack(0, shared)
    objs.add(old)
    bi = BlobIndex(str(tmp_path / "c"))
    objs.sync(bi)
    bi.set_marked([old.id])
    b = BlobId(shared[0])
    assert not bi.known(b) and bi.get(b) is not None  # readable, not deduplicated against
    objs.add(new)  # a repack copied them
    objs.sync(bi)
    assert bi.known(b) and bi.get(b).pack == new.id  # type: ignore[union-attr]
    assert {loc.pack for loc in bi.locations(b)} == {old.id, new.id}
    assert bi.locate_except(b, {new.id}).pack == old.id  # type: ignore[union-attr]


def test_merges_keep_every_lookup_and_a_failed_sync_changes_nothing(tmp_path: Path) -> None:
    objs = Objects()
    bi = BlobIndex(str(tmp_path / "c"))
    packs = []
    for _ in range(20):  # one sync each: many small runs, merged as they come
        packs.append(_pack(rng.randrange(1, 200)))
        objs.add(packs[-1])
        objs.sync(bi)
    assert len(bi._runs) <= 8
    for p in packs:
        for i in range(0, p.count, 17):
            assert bi.get(BlobId(p.table[i * 46 : i * 46 + 32])).pack == p.id  # type: ignore[union-attr]
    files = sorted(os.listdir(tmp_path / "c"))
    bad = _pack(10)
    bad = RawPack(bad.id, bad.size, bad.table[:32] + b"\x07" + bad.table[33:], bad.count)
    objs.add(bad)
    with pytest.raises(IntegrityError):
        objs.sync(bi)
    assert sorted(os.listdir(tmp_path / "c")) == files
    assert BlobId(bad.table[:32]) not in bi


def test_a_long_backup_adding_many_objects_keeps_few_runs(tmp_path: Path) -> None:
    from hometier.repo.index import PackRecord
    from hometier.repo.pack import decode_entries

    bi = BlobIndex(str(tmp_path / "c"))
    packs = [_pack(50) for _ in range(120)]
    for i, p in enumerate(packs):  # what write_index does after every 16 packs
        bi.add(f"index/{i:064x}", [PackRecord(p.id, p.size, decode_entries(p.table, p.count))])
    assert len(bi._runs) <= 12, len(bi._runs)
    assert all(bi.known(BlobId(p.table[:32])) for p in packs)


def test_lookups_racing_merges_never_read_a_closed_run(tmp_path: Path) -> None:
    """Several backups in one process look blobs up while others add index objects,
    which merges runs and retires the old ones. A retired run used to be closed one
    reload later, while a lookup that started before could still be reading it: the
    lookup failed with EBADF, and the descriptor's number could be reused by a file being
    archived. Runs are now closed only when no lookup is in flight."""
    import threading

    from hometier.repo.index import PackRecord
    from hometier.repo.pack import decode_entries

    bi = BlobIndex(str(tmp_path / "c"))
    first = [_pack(40) for _ in range(4)]
    for i, p in enumerate(first):
        bi.add(f"index/{i:064x}", [PackRecord(p.id, p.size, decode_entries(p.table, p.count))])
    wanted = [BlobId(p.table[k * 46 : k * 46 + 32]) for p in first for k in range(0, 40, 7)]
    more = [_pack(30) for _ in range(300)]
    stop = threading.Event()
    errors: list[BaseException] = []
    lookups = [0]

    def look() -> None:
        try:
            while not stop.is_set():
                for bid in wanted:
                    assert bi.get(bid) is not None
                    lookups[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    readers = [threading.Thread(target=look) for _ in range(4)]
    for t in readers:
        t.start()
    try:
        for i, p in enumerate(more):
            key = f"index/{i + 100:064x}"
            bi.add(key, [PackRecord(p.id, p.size, decode_entries(p.table, p.count))])
    finally:
        stop.set()
        for t in readers:
            t.join(30)
    print(f"{lookups[0]} lookups during 300 additions; {len(errors)} failed")
    assert errors == []
    assert all(bi.get(b) is not None for b in wanted)
    bi.close()


def test_a_run_closed_by_two_threads_closes_its_descriptor_once(tmp_path: Path) -> None:
    import threading

    with RunBuilder(str(tmp_path)) as b:
        b.extend([REC.pack(rng.randbytes(32), 1, 0, 0, 0, 1, 1)])
        b.finish(str(tmp_path / "r.run"))
    for _ in range(200):
        run = Run(str(tmp_path / "r.run"))
        gate = threading.Barrier(3)

        def close(r: Run = run, g: threading.Barrier = gate) -> None:
            g.wait()
            r.close()

        closers = [threading.Thread(target=close) for _ in range(2)]
        for t in closers:
            t.start()
        gate.wait()
        other = os.open(tmp_path / "r.run", os.O_RDONLY)  # may take the run's old number
        for t in closers:
            t.join()
        os.fstat(other)  # still open: no second close took it
        os.close(other)

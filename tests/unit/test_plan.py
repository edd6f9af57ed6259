"""``hometier plan``'s pure parts: thresholds, prices and costs, who moves, the estimate.

The estimate's statistics are checked on synthetic populations whose truth is known:
the Horvitz-Thompson ratio over a priority sample of sizes must be unbiased and its
stated ~95% tolerance must cover the truth in most seeded draws. A few tests walk a tiny
tree in ``tmp_path`` (the walker's rules: hard links, symlinks, the notice file).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import statistics
import time
from pathlib import Path

import pytest

from hometier.errors import UsageError
from hometier.lifecycle import plan
from hometier.lifecycle.activity import NOTICE_NAME, HubUser
from hometier.lifecycle.policy import Policy
from hometier.lifecycle.prices import DEFAULT_TIERS, GIB, make_prices, monthly_cost, tier_table
from hometier.repo.chunker import Chunking

UTC = dt.UTC
NOW = dt.datetime(2026, 11, 1, tzinfo=UTC)
DAY = dt.timedelta(days=1)


# --- thresholds ----------------------------------------------------------------------


def test_thresholds_sorted_and_deduplicated() -> None:
    got = plan.parse_thresholds("90d, 7d,30d,1w,180d,")
    assert got == [("7d", 7 * DAY), ("30d", 30 * DAY), ("90d", 90 * DAY), ("180d", 180 * DAY)]


@pytest.mark.parametrize("bad", ["", " , ", "0d", "soon", "7d,x"])
def test_thresholds_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        plan.parse_thresholds(bad)


# --- prices --------------------------------------------------------------------------


def test_default_prices_and_cost() -> None:
    p = make_prices("efs-standard", "s3-standard")
    assert (p.posix.price_per_gb, p.object.price_per_gb) == (0.30, 0.023)
    assert p.date == "2026-11" and "verify" in p.source and p.overridden == ()
    assert monthly_cost(10 * GIB, p.posix) == pytest.approx(3.0)
    assert {"s3-standard-ia", "s3-glacier-ir", "gcs-nearline", "gcs-coldline"} <= set(DEFAULT_TIERS)
    assert {"efs-ia", "ebs-gp3", "pd-balanced", "filestore-basic-hdd"} <= set(DEFAULT_TIERS)


def test_prices_overridden() -> None:
    p = make_prices(
        "my-nfs",
        "s3-standard-ia",
        object_price=0.01,
        posix_prices={"my-nfs": 0.12, "efs-standard": 0.33},
    )
    assert p.posix.name == "my-nfs" and p.posix.price_per_gb == 0.12
    assert p.object.price_per_gb == 0.01
    assert p.overridden == ("my-nfs", "s3-standard-ia")
    assert tier_table({"efs-standard": 0.33})["efs-standard"].price_per_gb == 0.33


@pytest.mark.parametrize(
    ("posix", "obj", "kw", "message"),
    [
        ("nope", "s3-standard", {}, "unknown posix tier 'nope'; known: ebs-gp2"),
        ("s3-standard", "s3-standard", {}, "unknown posix tier"),
        ("efs-standard", "efs-ia", {}, "unknown object tier"),
        ("efs-standard", "s3-standard", {"posix_price": -1.0}, "non-negative"),
        ("efs-standard", "s3-standard", {"object_prices": {"efs-ia": 0.1}}, "is a posix tier"),
    ],
)
def test_prices_refused(posix: str, obj: str, kw: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_prices(posix, obj, **kw)  # type: ignore[arg-type]


def test_row_costs_by_hand() -> None:
    """100 GiB on EFS; 60 GiB idle, stored at ratio 0.5 ± 0.1 in S3 Standard."""
    homes = [
        plan.HomeScan("a", "a", "/h/a", files=3, bytes=40 * GIB, allocated=41 * GIB),
        plan.HomeScan("b", "b", "/h/b", files=5, bytes=60 * GIB, allocated=60 * GIB),
    ]
    est = plan.Estimate(0.5, 0.1, 10, 20, 1000, "sample")
    row = plan.make_row(
        "30d", 30 * DAY, homes, {1}, est, make_prices("efs-standard", "s3-standard")
    )
    assert (row.homes, row.files, row.bytes, row.allocated) == (1, 5, 60 * GIB, 60 * GIB)
    assert row.stored == 30 * GIB
    assert (row.stored_low, row.stored_high) == (pytest.approx(24 * GIB), pytest.approx(36 * GIB))
    assert row.cost_before == pytest.approx(30.0)
    assert row.cost_after == pytest.approx(40 * 0.30 + 30 * 0.023)
    assert row.cost_after_low == pytest.approx(12 + 24 * 0.023)
    assert row.saving == pytest.approx(30 - 12.69)


# --- who moves -----------------------------------------------------------------------


def _home(name: str, idle_days: float | None, nbytes: int = 1000, **kw: object) -> plan.HomeScan:
    h = plan.HomeScan(name, name, f"/h/{name}", files=1, bytes=nbytes, **kw)  # type: ignore[arg-type]
    if idle_days is not None:
        h.newest_ns = int((NOW - idle_days * DAY).timestamp() * 1e9)
    return h


def _scan(homes: list[plan.HomeScan]) -> plan.HomesScan:
    return plan.HomesScan("/h", homes, {}, plan.SizeSample(10), 0.0)


def test_who_moves_at_each_threshold() -> None:
    homes = [
        _home("fresh", 1),
        _home("week", 8),
        _home("month", 31),
        _home("exactly-30d", 30),
        _home("year", 365),
        _home("archived", None, nbytes=0, archived=True),
        _home("hub-running", 400),
        _home("hub-recent", 400),
        _home("hub-old", 40),
        _home("tiny", 400, nbytes=10),
    ]
    hub = {
        "hub-running": HubUser("hub-running", NOW - 400 * DAY, running=True, servers=1),
        "hub-recent": HubUser("hub-recent", NOW - 2 * DAY, running=False, servers=1),
        "hub-old": HubUser("hub-old", NOW - 900 * DAY, running=False, servers=0),
    }
    thresholds = plan.parse_thresholds("7d,30d,90d")
    facts, sets = plan.decide(_scan(homes), NOW, thresholds, hub, Policy(min_size=100))
    names = [{homes[i].name for i in s} for s in sets]
    assert names[0] == {"week", "month", "exactly-30d", "year", "hub-old"}
    assert names[1] == {"month", "exactly-30d", "year", "hub-old"}
    assert names[2] == {"year"}
    by = {f.user: f for f in facts}
    assert by["hub-recent"].activity_source == "hub"
    assert by["hub-old"].activity_source == "files"  # the files are newer than the Hub says
    assert by["hub-running"].server_running
    assert by["archived"].last_activity is None and by["archived"].state == "archived"


def test_decide_needs_aware_now() -> None:
    with pytest.raises(ValueError):
        plan.decide(_scan([]), dt.datetime(2026, 1, 1), [("7d", 7 * DAY)])


# --- the estimate --------------------------------------------------------------------


def test_ratio_census_is_exact() -> None:
    obs = [plan.Observation(100, 50, 1.0), plan.Observation(300, 30, 1.0)]
    assert plan.ratio_estimate(obs) == (pytest.approx(80 / 400), 0.0)
    assert plan.ratio_estimate([]) is None


def test_ratio_by_hand() -> None:
    """Two units, π = 0.5 and 1: R = (10/0.5 + 30) / (100/0.5 + 100) = 50/300."""
    obs = [plan.Observation(100, 10, 0.5), plan.Observation(100, 30, 1.0)]
    r, se = plan.ratio_estimate(obs)  # type: ignore[misc]
    assert r == pytest.approx(50 / 300)
    # Only the first unit varies: (1 - 0.5)/0.5² (10 - R·100)² / X².
    assert se == pytest.approx(math.sqrt(2 * (10 - 100 * r) ** 2) / 300)


def _blobs(*names: str, size: int = 100) -> tuple[plan.Blob, ...]:
    return tuple(plan.Blob(n.encode(), size, size // 2) for n in names)


def test_class_stored() -> None:
    same = [_blobs("a")] * 4
    assert plan.class_stored(same, 1000) == 50  # all copies of one blob: stored once
    distinct = [_blobs(c) for c in "abcd"]
    assert plan.class_stored(distinct, 1000) == 1000 * 50  # all unique: every file once
    half = [_blobs("a"), _blobs("a"), _blobs("b"), _blobs("c")]
    assert plan.class_stored(half, 1000) == 50 + 2 * 50 * 250
    assert plan.class_stored(distinct, 4) == 4 * 50  # every file read: exact
    inner = [_blobs("z", "z", "y")]  # a blob repeated inside one file counts once
    assert plan.class_stored(inner, 1) == 100


def _priority_sample(sizes: list[int], k: int, seed: int) -> tuple[list[int], float]:
    q = sorted((plan.unit_hash(seed, s) / s, s) for s in sizes)
    tau = q[k][0] if len(q) > k else math.inf
    return [s for _, s in q[:k]], tau


def test_priority_sample_estimate_covers_truth() -> None:
    """On 3,000 sizes with mixed ratios, over 200 seeds: unbiased, ~95% coverage."""
    rnd = random.Random(7)
    sizes = rnd.sample(range(1, 5_000_000), 3000)
    files = {s: rnd.choice([1, 1, 1, 2, 5, 40]) for s in sizes}
    ratio = {s: rnd.choice([1.0, 0.98, 0.35, 0.2]) / rnd.choice([1, files[s]]) for s in sizes}
    x = {s: files[s] * s for s in sizes}
    truth = sum(x[s] * ratio[s] for s in sizes) / sum(x.values())
    got, covered = [], 0
    for seed in range(200):
        chosen, tau = _priority_sample(sizes, 150, seed)
        obs = [plan.Observation(x[s], x[s] * ratio[s], min(1.0, s * tau)) for s in chosen]
        r, se = plan.ratio_estimate(obs)  # type: ignore[misc]
        got.append(r)
        covered += abs(r - truth) <= plan.Z95 * se
    print(f"truth {truth:.4f} mean {statistics.mean(got):.4f} covered {covered / 200:.1%}")
    assert abs(statistics.mean(got) - truth) < 0.01
    assert covered / 200 >= 0.88


def test_size_sample_ignores_walk_order() -> None:
    rnd = random.Random(3)
    offers = [(rnd.randrange(1, 10**6), rnd.randrange(5), f"f{i}") for i in range(3000)]
    runs = []
    for order in (offers, offers[::-1], sorted(offers)):
        s = plan.SizeSample(50, seed=11, refs=4)
        for size, home, rel in order:
            if s.wants(size):
                s.offer(size, home, f"home{home}", rel)
        runs.append({c.size: sorted(c.refs) for c in s.ranked()})
    assert runs[0] == runs[1] == runs[2]
    assert len(runs[0]) == 51


def test_window_is_fixed_per_size() -> None:
    ch = Chunking()
    assert plan.window_of(5000, 0, ch) == (0, 5000)
    assert plan.window_of(plan.WINDOW, 0, ch) == (0, plan.WINDOW)
    off, length = plan.window_of(50 * 2**20, 0, ch)
    assert length == plan.WINDOW and 0 <= off <= 48 * 2**20
    assert plan.window_of(50 * 2**20, 0, ch) == (off, length)
    assert 0 < plan.unit_hash(1, 2) <= 1


# --- the walker's rules --------------------------------------------------------------


def test_walk_rules(tmp_path: Path) -> None:
    root = tmp_path / "homes"
    home = root / "jupyter-ann"
    (home / "d" / "e").mkdir(parents=True)
    (home / "a").write_bytes(b"x" * 100)
    os.link(home / "a", home / "d" / "a-link")  # one inode: counted once
    (home / "d" / "e" / "b").write_bytes(b"y" * 7)
    (home / "empty").write_bytes(b"")
    os.symlink("/etc", home / "etc-link")  # not followed
    (home / NOTICE_NAME).write_text("old notice")
    (root / "jupyter-gone").mkdir()
    (root / "jupyter-gone" / NOTICE_NAME).write_text("archived")
    (root / ".hometier-quarantine" / "x").mkdir(parents=True)
    (root / "other").mkdir()
    os.symlink(home, root / "jupyter-link")
    old = NOW.timestamp() - 400 * 86400
    for p in [home / "a", home / "d" / "e" / "b", home / "empty"]:
        os.utime(p, (old, old))
    future = time.time() + 10 * 86400
    os.utime(home / NOTICE_NAME, (future, future))  # ignored: else the home looks active

    homes, skipped = plan.list_homes(str(root), "jupyter-{username}")
    assert [(h.name, h.user) for h in homes] == [("jupyter-ann", "ann"), ("jupyter-gone", "gone")]
    assert skipped == {
        "jupyter-link": "a symlink (not followed)",
        "other": "does not match home_template",
    }
    ann = plan.walk_home(homes[0], 0)
    assert (ann.files, ann.bytes, ann.archived) == (4, 107, False)
    assert list(ann.sizes) == [7, 100] and list(ann.size_files) == [1, 1]
    assert ann.newest is not None and ann.newest.timestamp() < future - 86400
    gone = plan.walk_home(homes[1], 1)
    assert (gone.files, gone.archived, gone.newest) == (0, True, None)
    with pytest.raises(UsageError):
        plan.list_homes(str(root), "{username}/{username}")

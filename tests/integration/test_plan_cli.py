"""``hometier plan`` end to end on a synthetic homes tree whose figures are known by hand.

The tree (``build_tree``) has six homes whose newest file is exactly 3, 10, 45, 100, 200
and 500 days older than ``--now`` (ctime cannot be set, so every file time lies in the
real future and ``--now`` is 1000 days ahead), an archived home (notice file only), a
quarantine folder, ``lost+found``, a stray file and a symlinked home, which are all not
homes. Copies of three files sit in five homes (dedup across homes), the rest is random
(incompressible) or text (compressible), big and small, with a hard link, a symlink, an
empty file and a stale notice file in the way.

Counts and bytes must match the hand computation from the tree's specification exactly.
The stored size must be within the stated tolerance of the truth, computed here by
cutting every moved file with ``iter_chunks``, compressing each chunk with
``codec.encode`` and counting each distinct chunk once, as the archiver would store it.
``plan`` must change nothing: the tree (contents, metadata, atimes) is compared before
and after, no state database or repository is opened or created. It is run in-process
and once as a subprocess (the same figures). A last test reads activity from a real
JupyterHub: a running server keeps a home, the Hub's ``last_activity`` counts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from hometier.cli.main import main
from hometier.lifecycle.activity import NOTICE_NAME
from hometier.lifecycle.prices import GIB
from hometier.repo.chunker import Chunking, iter_chunks
from hometier.repo.codec import encode
from hometier.repo.ids import plain_hash
from treeutil import assert_same_tree, snapshot_of_tree

MiB = 1024 * 1024
DAY_NS = 86400 * 10**9
MAL = "<img src=x onerror=\"alert('x')\">&amp;"
"""A home named to break an HTML page that forgets to escape."""
AGES = {"alice": 3, "bob": 10, "carol": 45, "dave": 100, "eve": 200, MAL: 500}
SHARERS = ["bob", "carol", "dave", "eve", MAL]
THRESHOLDS = {"7d": 7, "30d": 30, "90d": 90, "180d": 180}
WORDS = (
    "home archive notebook kernel dataset python numpy pandas matplotlib result figure "
    "analysis model train loss epoch import from def return class self value for in"
).split()


@dataclass
class Tree:
    root: Path
    now_ns: int
    files: dict[str, dict[str, int]] = field(default_factory=dict)
    """home → relative path → size (hard links: the second name has size -1)."""

    def home_files(self, home: str) -> int:
        return len(self.files[home])

    def home_bytes(self, home: str) -> int:
        return sum(max(0, s) for s in self.files[home].values())

    @property
    def now_iso(self) -> str:
        return dt.datetime.fromtimestamp(self.now_ns // 10**9, dt.UTC).isoformat()


def _text(rnd: random.Random, n: int) -> bytes:
    words = rnd.choices(WORDS, k=n // 5 + 10)
    return " ".join(words).encode()[:n]


def build_tree(root: Path) -> Tree:
    rnd = random.Random(20261101)
    now_ns = (int(time.time()) + 1000 * 86400) * 10**9
    tree = Tree(root, now_ns)
    shared = {
        "data/shared-big.bin": rnd.randbytes(3 * MiB + 123),
        "data/shared-mid.bin": rnd.randbytes(600_000),
        "data/notes.txt": _text(rnd, 250_000),
    }

    def put(home: str, rel: str, data: bytes) -> None:
        p = root / home / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        tree.files[home][rel] = len(data)

    for home, age in AGES.items():
        tree.files[home] = {}
        (root / home).mkdir(parents=True)
        if home in SHARERS:
            for rel, data in shared.items():
                put(home, rel, data)
        put(home, "big.txt", _text(rnd, 4 * MiB))
        put(home, "random.bin", rnd.randbytes(1_500_000 + 1000 * len(tree.files)))
        for i in range(150):
            size = rnd.randrange(1, 30_000)
            data = rnd.randbytes(size) if i % 2 else _text(rnd, size)
            put(home, f"work/{i % 7}/f{i}.{'bin' if i % 2 else 'txt'}", data)
        newest = now_ns - age * DAY_NS
        for rel in tree.files[home]:
            t = newest if rel == "big.txt" else newest - 3 * DAY_NS
            os.utime(root / home / rel, ns=(t, t))
    # The odd ones out, inside homes.
    os.link(root / "dave" / "data/shared-mid.bin", root / "dave" / "data/mid-link")
    tree.files["dave"]["data/mid-link"] = -1  # a file, whose bytes count once
    os.symlink("/etc", root / "eve" / "etc")  # not followed, not a file
    (root / "carol" / "empty-dir").mkdir()
    (root / "carol" / "empty").write_bytes(b"")
    tree.files["carol"]["empty"] = 0
    recent = now_ns - DAY_NS
    (root / "carol" / NOTICE_NAME).write_text("restored\n")  # stale notice: ignored
    os.utime(root / "carol" / NOTICE_NAME, ns=(recent, recent))
    # Not homes, or not to be counted.
    (root / "frank").mkdir()
    (root / "frank" / NOTICE_NAME).write_text("archived\n")
    (root / ".hometier-quarantine" / "bob.0123").mkdir(parents=True)
    (root / ".hometier-quarantine" / "bob.0123" / "old.bin").write_bytes(rnd.randbytes(MiB))
    (root / "lost+found").mkdir()
    (root / "README").write_text("homes\n")
    os.symlink(root / "eve", root / "eve-link")
    return tree


def moved_homes(days: int) -> list[str]:
    return [h for h, age in AGES.items() if age >= days]


def true_stored(tree: Tree, homes: list[str]) -> int:
    """What the archiver would store: every distinct chunk once, compressed."""
    seen: dict[bytes, int] = {}
    for home in homes:
        for rel, size in tree.files[home].items():
            if size <= 0:
                continue
            fd = os.open(tree.root / home / rel, os.O_RDONLY | os.O_NOATIME)
            try:
                for chunk in iter_chunks(fd, size, Chunking()):
                    seen.setdefault(plain_hash(chunk), len(encode(chunk)[1]))
            finally:
                os.close(fd)
    return sum(seen.values())


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def doc(self) -> Any:
        return json.loads(self.out)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return build_tree(tmp_path_factory.mktemp("plan") / "homes")


@pytest.fixture
def state(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A database URL that must not be created, one that exists and must stay as it is."""
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"not touched")
    yield {"db": tmp_path / "state" / "absent.db", "existing": existing, "repo": tmp_path / "repo"}


def run_in_process(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return Run(code, out, err)


def plan_args(tree: Tree, db: Path, repo: Path, *extra: str) -> list[str]:
    return [
        "--db",
        f"sqlite:///{db}",
        "--store",
        f"file://{repo}",
        "--json",
        "plan",
        str(tree.root),
        "--now",
        tree.now_iso,
        "--object-tier",
        "s3-standard-ia",
        "--sample-sizes",
        "60",
        *extra,
    ]


def test_plan_matches_hand_computation(
    tree: Tree,
    state: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hometier.app
    import hometier.state

    def no_db(*a: object, **k: object) -> None:
        raise AssertionError("plan opened the state database")

    monkeypatch.setattr(hometier.app, "open_db", no_db)
    monkeypatch.setattr(hometier.state, "open_database", no_db)
    snapshot_of_tree(tree.root)  # settles directory atimes that listing the tree moves
    before = snapshot_of_tree(tree.root)
    page = tmp_path / "plan.html"

    run = run_in_process(capsys, *plan_args(tree, state["db"], state["repo"], "--html", str(page)))
    assert run.code == 0, run.err
    doc = run.doc

    assert_same_tree(before, snapshot_of_tree(tree.root))
    assert not state["db"].parent.exists() and not state["repo"].exists()

    # The scan, by hand.
    all_bytes = sum(tree.home_bytes(h) for h in AGES)
    assert doc["scan"]["homes"] == len(AGES) + 1  # and frank, archived
    assert doc["scan"]["archived_homes"] == 1
    assert doc["scan"]["files"] == sum(tree.home_files(h) for h in AGES)
    assert doc["scan"]["bytes"] == all_bytes
    assert doc["scan"]["skipped"] == {
        "README": "not a folder",
        "eve-link": "a symlink (not followed)",
        "lost+found": "not a home",
    }
    homes = {h["name"]: h for h in doc["homes"]}
    assert set(homes) == {*AGES, "frank"}
    for home, age in AGES.items():
        assert homes[home]["idle_seconds"] == age * 86400, home
        assert homes[home]["activity_source"] == "files"
        assert homes[home]["bytes"] == tree.home_bytes(home)
    assert homes["frank"]["archived"] and homes["frank"]["moves_at"] is None
    assert homes["alice"]["moves_at"] is None and homes[MAL]["moves_at"] == "180d"

    # Per threshold: counts and bytes exact, the estimate within its stated tolerance.
    prices = doc["prices"]
    assert prices["date"] == "2026-11"
    assert (prices["posix"]["tier"], prices["object"]["tier"]) == ("efs-standard", "s3-standard-ia")
    assert [r["threshold"] for r in doc["thresholds"]] == list(THRESHOLDS)
    errors = []
    for row in doc["thresholds"]:
        names = moved_homes(THRESHOLDS[row["threshold"]])
        moved = sum(tree.home_bytes(h) for h in names)
        assert row["homes"] == len(names)
        assert row["files"] == sum(tree.home_files(h) for h in names)
        assert row["bytes"] == moved
        truth = true_stored(tree, names) / moved
        errors.append(abs(row["ratio"] - truth))
        assert 0 < row["ratio_tolerance"] < 0.1, row
        assert abs(row["ratio"] - truth) <= row["ratio_tolerance"], (row, truth)
        assert row["stored_bytes"] == pytest.approx(moved * row["ratio"], abs=1)
        assert row["cost_before"] == pytest.approx(all_bytes / GIB * 0.30, abs=1e-4)
        after = (all_bytes - moved) / GIB * 0.30 + row["stored_bytes"] / GIB * 0.0125
        assert row["cost_after"] == pytest.approx(after, abs=1e-4)
    print("observed |ratio - truth| per threshold:", [round(e, 4) for e in errors])
    est = doc["estimate"]
    assert 0 < est["bytes_read"] <= est["budget_bytes"]
    assert est["sizes_read"] < len({s for h in AGES for s in tree.files[h].values()})

    # The page: parses, escapes the names (no <img> element), has the two charts.
    parsed = _Page()
    parsed.feed(page.read_text(encoding="utf-8"))
    assert MAL in parsed.text
    assert "img" not in parsed.tags and "script" not in parsed.tags
    assert parsed.tags.count("svg") >= 2 and parsed.tags.count("rect") >= 2 * len(THRESHOLDS)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text += data


def test_plan_subprocess_same_figures(
    tree: Tree, state: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The real command: exit 0, JSON on stdout, the same figures; an existing DB untouched."""
    existing = state["existing"]
    st = os.stat(existing)
    args = plan_args(tree, existing, state["repo"])
    proc = subprocess.run(
        [sys.executable, "-m", "hometier.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    again = run_in_process(capsys, *args).doc
    for d in (doc, again):
        d["scan"].pop("seconds")
    assert doc == again
    assert (
        existing.read_bytes() == b"not touched" and os.stat(existing).st_mtime_ns == st.st_mtime_ns
    )


def test_plan_table_and_errors(
    tree: Tree, state: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = plan_args(tree, state["db"], state["repo"])
    args.remove("--json")
    run = run_in_process(capsys, *args, "--sample-mb", "0")
    assert run.code == 0, run.err
    assert "180d" in run.out and "s3-standard-ia" in run.out
    assert "requests" in " ".join(run.out.split())  # the note that request costs are ignored

    bad = run_in_process(capsys, *plan_args(tree, state["db"], state["repo"], "--thresholds", "x"))
    assert bad.code == 2 and "not a duration" in bad.doc["error"]
    bad = run_in_process(capsys, *plan_args(tree, state["db"], state["repo"], "--posix-tier", "x"))
    assert bad.code == 2 and "known: " in bad.doc["error"]

    config = tmp_path / "hub.json"
    config.write_text(
        json.dumps(
            {"Archiver": {"hub_api_url": "http://127.0.0.1:9/hub/api", "hub_api_token": "t"}}
        )
    )
    down = run_in_process(capsys, "-c", str(config), *plan_args(tree, state["db"], state["repo"]))
    assert down.code == 6 and "could not be read" in down.doc["error"]
    ignored = run_in_process(
        capsys, "-c", str(config), *plan_args(tree, state["db"], state["repo"], "--no-hub")
    )
    assert ignored.code == 0 and ignored.doc["activity"]["hub_api_url"] is None
    assert not state["db"].parent.exists()


@pytest.mark.hub
@pytest.mark.slow
def test_plan_reads_a_real_hub(
    tmp_path: Path, state: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from fixtures.hub import start_hub
    from fixtures.servers import ServerUnavailable

    try:
        hub = start_hub(tmp_path / "hub-homes")
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        hub.create_users("alice", "bob")
        hub.start_server("alice")
        root = tmp_path / "homes"
        for user in ("alice", "bob", "carol"):
            (root / user).mkdir(parents=True)
            (root / user / "notebook.ipynb").write_text("{}")
        hub.request(
            "POST", "/users/bob/activity", {"last_activity": dt.datetime.now(dt.UTC).isoformat()}
        )
        seen = dt.datetime.fromisoformat(hub.user("bob")["last_activity"].replace("Z", "+00:00"))
        config = tmp_path / "hometier.json"
        config.write_text(
            json.dumps(
                {
                    "Archiver": {"hub_api_url": hub.api_url, "hub_api_token": hub.service_token},
                    "Plan": {"object_tier": "gcs-coldline", "thresholds": "7d,30d"},
                }
            )
        )
        now = (seen + dt.timedelta(days=10)).isoformat()
        run = run_in_process(
            capsys,
            "-c", str(config), "--db", f"sqlite:///{state['db']}", "--json",
            "plan", str(root), "--now", now,
        )  # fmt: skip
    finally:
        hub.close()
    assert run.code == 0, run.err
    doc = run.doc
    homes = {h["name"]: h for h in doc["homes"]}
    assert homes["alice"]["server_running"] and homes["alice"]["idle_seconds"] == 0
    assert homes["alice"]["moves_at"] is None  # running: kept whatever its files say
    assert homes["bob"]["activity_source"] == "hub"
    assert dt.datetime.fromisoformat(homes["bob"]["last_activity"]) == seen
    assert homes["bob"]["moves_at"] == "7d" and homes["carol"]["moves_at"] == "7d"
    assert homes["carol"]["activity_source"] == "files"
    assert doc["activity"] == {"hub_api_url": hub.api_url, "running_servers": 1}
    assert doc["prices"]["object"]["tier"] == "gcs-coldline"
    assert [r["threshold"] for r in doc["thresholds"]] == ["7d", "30d"]
    assert [r["homes"] for r in doc["thresholds"]] == [2, 0]
    assert not state["db"].parent.exists()


def test_estimate_within_tolerance_over_seeds(tree: Tree) -> None:
    """Not one lucky seed: over 10 seeds × 4 thresholds, ~95% intervals cover the truth."""
    from hometier.lifecycle import plan

    now = dt.datetime.fromisoformat(tree.now_iso)
    thresholds = plan.parse_thresholds(",".join(THRESHOLDS))
    truths: list[float] = []
    covered = total = 0
    for seed in range(1, 11):
        scan = plan.scan_homes(str(tree.root), sample_sizes=60, seed=seed)
        _, sets = plan.decide(scan, now, thresholds)
        if not truths:
            for s in sets:
                names = [scan.homes[i].name for i in s]
                truths.append(true_stored(tree, names) / sum(tree.home_bytes(h) for h in names))
        readings = plan.read_sample(scan, sets)
        for s, truth in zip(sets, truths, strict=True):
            est = plan.estimate(readings, s, set().union(*sets))
            total += 1
            covered += abs(est.ratio - truth) <= est.tolerance
            assert abs(est.ratio - truth) < 0.1
    assert covered >= 0.9 * total, f"{covered}/{total}"


def test_heavy_small_size_found_by_second_walk(tmp_path: Path) -> None:
    """Many identical small files hold much of the bytes but are unlikely in a sample
    drawn ∝ size: they are read for certain, found by a second walk, and deduped."""
    from hometier.lifecycle import plan

    rnd = random.Random(5)
    root = tmp_path / "homes"
    files: dict[str, dict[str, int]] = {}
    for h in range(6):
        home = f"user{h}"
        files[home] = {}
        for i in range(300):  # the same 1000 bytes, 300 times per home
            p = root / home / "env" / f"m{i}.py"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"#" * 10 + b"x" * 990)
            files[home][f"env/m{i}.py"] = 1000
        (root / home / "data.bin").write_bytes(rnd.randbytes(1_000_000 + h))
        files[home]["data.bin"] = 1_000_000 + h
    tree = Tree(root, 0, files)
    scan = plan.scan_homes(str(root), sample_sizes=1)
    everyone = set(range(6))
    readings = plan.read_sample(scan, [everyone])
    assert readings.second_walk_homes >= 1 and readings.heavy == 7
    est = plan.estimate(readings, everyone, everyone)
    truth = true_stored(tree, list(files)) / sum(tree.home_bytes(h) for h in files)
    assert abs(est.ratio - truth) < 0.01, (est, truth)

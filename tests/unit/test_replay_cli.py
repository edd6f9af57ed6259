"""``hometier plan --replay`` as an operator runs it: a homes tree and a login history.

The history is hostile on purpose: garbage lines, users without a home, a name that is
not UTF-8 and one made to break an HTML page, a file of nothing but garbage, a missing
file, an unknown time zone, a window that ends before it starts. Each gets one clear
line or error (exit status 2), the JSON stays valid JSON, the page escapes every name,
and nothing is written but the ``--html`` file: the tree is the same before and after,
no database or repository appears.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from hometier.cli.main import main

MAL = "<script>alert(1)</script>"


@dataclass
class Run:
    code: int
    out: str
    err: str


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return Run(code, out, err)


def tree_state(root: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.fsdecode(p)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def homes(tmp_path: Path) -> Path:
    root = tmp_path / "homes"
    for name, size in (("alice", 3_000_000), ("bob", 1_000_000), ("carol", 10)):
        (root / name).mkdir(parents=True)
        (root / name / "data.bin").write_bytes(os.urandom(size))
    odd = os.fsencode(root) + b"/caf\xe9"
    os.mkdir(odd)
    with open(odd + b"/notes.txt", "wb") as f:
        f.write(b"x" * 5000)
    old = 1_600_000_000 * 10**9
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), ns=(old, old))
    return root


def history(tmp_path: Path, body: bytes) -> Path:
    p = tmp_path / "logins.csv"
    p.write_bytes(body)
    return p


GOOD = (
    b"user,time\n"
    b"alice,2030-01-01T10:00:00Z\n"
    b"bob,2030-01-02T10:00:00+01:00\n"
    b"[I 2030-02-01 10:00:00.123 JupyterHub base:1033] User logged in: alice\n"
    b"caf\xe9,2030-02-20T10:00:00Z\n"
    b"mallory,2030-01-05T09:00:00Z\n" + MAL.encode() + b",2030-01-06T09:00:00Z\n"
    b"garbage\n"
    b"alice,yesterday\n"
)


def test_replay_reports_every_policy_and_what_it_skipped(
    capsys: pytest.CaptureFixture[str], homes: Path, tmp_path: Path
) -> None:
    before = tree_state(homes)
    logins = history(tmp_path, GOOD)
    page = tmp_path / "replay.html"
    os.chdir(tmp_path)
    r = run(
        capsys, "plan", str(homes), "--replay", str(logins), "--thresholds", "7d,30d",
        "--quarantine", "0d,3d", "--until", "2030-03-15", "--sample-mb", "1", "--json",
        "--html", str(page),
    )  # fmt: skip
    assert r.code == 0, r.err
    doc = json.loads(r.out)  # valid JSON: no Infinity, no NaN
    h = doc["history"]
    assert h["logins"] == 6 and h["malformed"] == 2
    assert h["unknown_users"] == 2 and set(h["unknown_examples"]) == {"mallory", MAL}
    assert [(p["threshold"], p["quarantine"]) for p in doc["policies"]] == [
        ("7d", "0d"), ("7d", "3d"), ("30d", "0d"), ("30d", "3d"),
    ]  # fmt: skip
    seven = doc["policies"][0]
    # The name that is not UTF-8 matched its folder: it logged in on day 50, after its
    # home was archived, so it waited like the others.
    assert seven["waits"] == 3 and seven["logins"] == 4
    assert seven["posix_bytes_without"] == 3_000_000 + 1_000_000 + 10 + 5000
    html = page.read_text()
    assert MAL not in html
    assert "<svg" in html and "without archiving" in html
    assert tree_state(homes) == before
    assert not (tmp_path / ".hometier").exists()


def test_the_table_names_what_was_skipped(
    capsys: pytest.CaptureFixture[str], homes: Path, tmp_path: Path
) -> None:
    logins = history(tmp_path, GOOD)
    r = run(capsys, "plan", str(homes), "--replay", str(logins), "--sample-mb", "0")
    assert r.code == 0, r.err
    assert "skipped line 8" in r.err and "mallory" in r.err
    assert "idle" in r.out and "30d" in r.out


def test_html_escapes_hostile_names_in_skipped_lines(
    capsys: pytest.CaptureFixture[str], homes: Path, tmp_path: Path
) -> None:
    logins = history(tmp_path, GOOD + MAL.encode() + b"\n")
    page = tmp_path / "r.html"
    r = run(capsys, "plan", str(homes), "--replay", str(logins), "--sample-mb", "0",
            "--html", str(page))  # fmt: skip
    assert r.code == 0, r.err
    assert "<script>" not in page.read_text()


@pytest.mark.parametrize(
    ("body", "extra", "message"),
    [
        (b"garbage\n\x00\x01\n" + b"x" * 10000 + b"\n", (), "no login found"),
        (b"", (), "no login found"),
        (GOOD, ("--tz", "Mars/Olympus"), "unknown time zone"),
        (GOOD, ("--since", "2030-03-01", "--until", "2030-02-01"), "must end after"),
        (GOOD, ("--until", "tomorrow"), "--until must be an ISO 8601 time"),
        (GOOD, ("--quarantine=-3d",), "not a duration"),
    ],
    ids=["garbage", "empty", "time-zone", "window", "until", "quarantine"],
)
def test_bad_input_gets_one_clear_error(
    capsys: pytest.CaptureFixture[str],
    homes: Path,
    tmp_path: Path,
    body: bytes,
    extra: tuple[str, ...],
    message: str,
) -> None:
    logins = history(tmp_path, body)
    r = run(capsys, "plan", str(homes), "--replay", str(logins), "--sample-mb", "0", *extra)
    assert r.code == 2
    assert message in " ".join(r.err.split())
    assert "Traceback" not in r.err


def test_a_missing_history_file(
    capsys: pytest.CaptureFixture[str], homes: Path, tmp_path: Path
) -> None:
    r = run(capsys, "plan", str(homes), "--replay", str(tmp_path / "nope.csv"), "--sample-mb", "0")
    assert r.code == 2 and "cannot read" in " ".join(r.err.split())

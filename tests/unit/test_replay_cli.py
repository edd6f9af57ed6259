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


def test_history_errors_come_before_the_scan_and_write_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The homes root does not exist either: the history (or a flag) is checked first,
    # so an operator with a typo does not wait for a scan of thousands of homes.
    page = tmp_path / "r.html"
    missing = tmp_path / "no-such-root"
    for args in (
        ("--replay", str(tmp_path / "nope.csv")),
        ("--replay", str(history(tmp_path, b"")), "--tz", "Nowhere/Else"),
        ("--replay", str(history(tmp_path, b"# nothing but a comment\n\n"))),
    ):
        r = run(capsys, "plan", str(missing), *args, "--html", str(page), "--json")
        assert r.code == 2, r
        assert "homes root" not in r.out + r.err
        kind = json.loads(r.out)["kind"]  # --json: the error as JSON too
        assert kind in ("HistoryUnreadable", "NoLogins", "UsageError")
        assert not page.exists() and not missing.exists()


def test_error_classes_and_exit_status(tmp_path: Path) -> None:
    from hometier.cli import replay_cmds as rc
    from hometier.cli.main import build_parser

    def load(body: bytes | None, *extra: str) -> rc.Replay:
        path = tmp_path / "h.csv" if body is not None else tmp_path / "missing.csv"
        if body is not None:
            path.write_bytes(body)
        args = build_parser().parse_args(["plan", "--replay", str(path), *extra])
        return rc.load(args, None)

    with pytest.raises(rc.HistoryUnreadable) as exc:
        load(None)
    assert exc.value.exit_code == 2 and "No such file" in exc.value.get_message()
    with pytest.raises(rc.NoLogins) as no:
        load(b"when_utc,uid\n2030-01-01T10:00:00Z,alice\n")
    msg = no.value.get_message()
    assert "no login found in 2 lines (2 malformed" in msg and "header needs" in msg
    assert load(GOOD).history.logins == 6


def test_a_directory_or_a_device_is_refused_a_pipe_is_read(
    capsys: pytest.CaptureFixture[str], homes: Path, tmp_path: Path
) -> None:
    for path in (tmp_path, Path("/dev/zero")):
        r = run(capsys, "plan", str(homes), "--replay", str(path), "--sample-mb", "0")
        assert r.code == 2 and "cannot read the login history" in " ".join(r.err.split())
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    import threading

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(GOOD)

    writer = threading.Thread(target=feed)
    writer.start()
    r = run(capsys, "plan", str(homes), "--replay", str(fifo), "--sample-mb", "0", "--json")
    writer.join(10)
    assert r.code == 0, r.err
    assert json.loads(r.out)["history"]["logins"] == 6


def test_the_order_of_the_lines_does_not_matter(
    capsys: pytest.CaptureFixture[str], homes: Path, tmp_path: Path
) -> None:
    lines = [f"{u},2030-01-{d:02d}T{h:02d}:00:00Z\n".encode()
             for u in ("alice", "bob") for d in range(1, 29, 5) for h in (9, 17)]  # fmt: skip
    docs = []
    for order in (lines, lines[::-1], lines[1::2] + lines[::2]):
        path = history(tmp_path, b"".join(order))
        r = run(capsys, "plan", str(homes), "--replay", str(path), "--sample-mb", "0",
                "--thresholds", "3d,7d", "--json")  # fmt: skip
        assert r.code == 0, r.err
        docs.append(json.loads(r.out)["policies"])
    assert docs[0] == docs[1] == docs[2]
    assert any(p["waits"] for p in docs[0])  # the history did make someone wait


def test_naive_times_are_in_the_time_zone_given(
    capsys: pytest.CaptureFixture[str], homes: Path, tmp_path: Path
) -> None:
    path = history(tmp_path, b"alice,2030-07-01 10:00\nbob,2030-07-02T10:00:00Z\n")
    r = run(capsys, "plan", str(homes), "--replay", str(path), "--sample-mb", "0",
            "--tz", "Europe/Berlin", "--json")  # fmt: skip
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["start"] == "2030-07-01T08:00:00+00:00"  # 10:00 in Berlin's summer
    assert doc["end"] == "2030-07-02T10:00:00+00:00"  # an offset wins over --tz


def test_a_huge_or_hostile_user_name_is_shown_short_and_escaped(
    capsys: pytest.CaptureFixture[str], homes: Path, tmp_path: Path
) -> None:
    huge = "z" * 3000
    body = (
        GOOD
        + f"{huge},2030-01-07T00:00:00Z\n".encode()
        + b"\x1b]0;owned\x07x,2030-01-08T00:00:00Z\n"
    )
    r = run(
        capsys, "plan", str(homes), "--replay", str(history(tmp_path, body)), "--sample-mb", "0"
    )
    assert r.code == 0, r.err
    assert "\x1b" not in r.err + r.out and "\x07" not in r.err + r.out
    assert huge not in r.err.replace("\n", "") and "zzz…" in r.err.replace("\n", "")

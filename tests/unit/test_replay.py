"""``plan --replay``'s pure parts: reading a login history, and the replay itself.

The reader gets hostile input (garbage, NUL bytes, bytes that are not UTF-8, lines of
megabytes without a newline, times in every zone and format, JupyterHub's own log with
colours and journald prefixes) and must count what it cannot read, never stop. The
replay is checked by hand on small cases and, on random histories, against a plain
simulator that runs every hourly cycle (the replay skips the cycles that cannot do
anything): the two must agree on every archive, restore and wait.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import random
import tracemalloc
import zoneinfo

import pytest

from hometier.lifecycle import replay as rp
from hometier.lifecycle.prices import GIB, make_prices, request_cost

UTC = dt.UTC
T0 = dt.datetime(2030, 1, 7, tzinfo=UTC).timestamp()
DAY = 86400.0
HOUR = 3600.0


def parse(text: str | bytes, tz: dt.tzinfo = UTC) -> rp.LoginHistory:
    data = text.encode() if isinstance(text, str) else text
    return rp.parse_logins(rp.bounded_lines(io.BytesIO(data)), tz)


def ts(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


# --- reading ---------------------------------------------------------------------------


def test_csv_with_and_without_header_and_columns_in_any_order() -> None:
    h = parse("user,time\nalice,2030-01-01T10:00:00Z\nbob,2030-01-02 10:00:00+01:00\n")
    assert h.logins == 2 and h.malformed == 0
    assert list(h.times["alice"]) == [ts("2030-01-01T10:00:00+00:00")]
    assert list(h.times["bob"]) == [ts("2030-01-02T09:00:00+00:00")]
    h = parse("time,user\n2030-01-01T10:00:00Z,alice\n")
    assert list(h.times) == ["alice"]
    h = parse("alice,2030-01-01T10:00:00Z\n")
    assert h.logins == 1


def test_times_in_every_form_and_zone() -> None:
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    h = parse(
        "a,2030-07-01 12:00\n"  # naive: in --tz (summer time, UTC+2)
        "b,2030-01-01 12:00\n"  # naive, winter (UTC+1)
        "c,2030-01-01T12:00:00-05:00\n"
        "d,1893456000\n"  # Unix seconds
        "e,1893456000.5\n"
        'f,"2030-01-01T12:00:00,123+00:00"\n',  # a comma before the fraction, quoted
        berlin,
    )
    assert h.malformed == 0, h.examples
    assert h.times["a"][0] == ts("2030-07-01T10:00:00+00:00")
    assert h.times["b"][0] == ts("2030-01-01T11:00:00+00:00")
    assert h.times["c"][0] == ts("2030-01-01T17:00:00+00:00")
    assert h.times["d"][0] == 1893456000 and h.times["e"][0] == 1893456000.5
    assert h.times["f"][0] == pytest.approx(ts("2030-01-01T12:00:00.123+00:00"))


def test_jupyterhub_log_lines_logins_and_spawns_in_the_hub_zone() -> None:
    ny = zoneinfo.ZoneInfo("America/New_York")
    log = (
        "[I 2030-03-10 01:30:00.123 JupyterHub base:1033] User logged in: alice\n"
        "\x1b[32m[I 2030-03-10 03:30:00.001 JupyterHub base:1193]\x1b[0m User bob took 3.210 seconds to start\n"
        "Mar 10 04:00:00 hub jupyterhub[812]: [I 2030-03-10 04:00:00.500 JupyterHub base:1193] "
        "User carol:gpu took 12.000 seconds to start\n"
        "[W 2030-03-10 04:00:01.000 JupyterHub base:900] Failed login for mallory\n"
        "[I 2030-03-10 04:00:02.000 JupyterHub log:192] 200 GET /hub/api/users (@127.0.0.1) 3.10ms\n"
    )
    h = parse(log, ny)
    assert sorted(h.times) == ["alice", "bob", "carol"]
    # 2030-03-10 is the DST change in New York: 01:30 is EST (-5), 03:30 is EDT (-4).
    assert h.times["alice"][0] == ts("2030-03-10T06:30:00.123+00:00")
    assert h.times["bob"][0] == ts("2030-03-10T07:30:00.001+00:00")
    # Other log lines are neither logins nor malformed CSV rows worth a warning... they
    # are not CSV with a readable time either, so they are counted as malformed.
    assert h.logins == 3 and h.malformed == 2


def test_garbage_is_counted_and_shown_escaped_never_fatal() -> None:
    data = (
        b"user,time\n"
        b"just garbage\n"
        b"alice,not a time\n"
        b",2030-01-01T00:00:00Z\n"
        b"bob,2030-01-01T00:00:00Z\x00\n"
        b"\xff\xfe\x00\x01binary\n"
        b'"unterminated,2030\n'
        b"carol,0001-01-01T00:00:00+14:00\n"
        b"[I 2030-13-45 99:99:99.000 JupyterHub base:1] User logged in: eve\n"
        b"\x1b]0;title\x07\x1b[31mred\n"
        b"dave,2030-01-01T00:00:00Z\n"
    )
    h = parse(data)
    assert h.logins == 1 and list(h.times) == ["dave"]
    assert h.malformed == 9
    assert len(h.examples) == rp.EXAMPLES
    for ex in h.examples:
        assert ex.isprintable() and "\x00" not in ex and "\x1b" not in ex


def test_a_header_may_name_its_columns_otherwise_and_add_others() -> None:
    h = parse("Login_Time,ip,UserName,agent\n2030-01-01T10:00:00Z,10.0.0.1,alice,curl\n")
    assert list(h.times) == ["alice"] and h.malformed == 0
    h = parse("id,user,when,user\n7,bob,2030-01-01T10:00:00Z,carol\n")
    assert list(h.times) == ["bob"]  # the first of each wins
    # A user called "time" after the first row is a user, not a header.
    h = parse("alice,2030-01-01T10:00:00Z\nuser,time\ntime,2030-01-02T10:00:00Z\n")
    assert sorted(h.times) == ["alice", "time"] and h.malformed == 1


def test_a_header_of_unknown_columns_is_named_and_rows_not_misread() -> None:
    # Neither column is named: the header is reported, and the rows (time first) are
    # not taken for users called "2030-01-01T10:00:00Z".
    h = parse("when_utc,uid\n2030-01-01T10:00:00Z,alice\n2030-01-02T10:00:00Z,bob\n")
    assert h.logins == 0 and h.malformed == 3
    assert "header needs a user and a time column" in h.examples[0]
    assert "unreadable time" in h.examples[1]


def test_logins_out_of_order_are_sorted_per_user() -> None:
    h = parse(
        "a,2030-01-03T00:00:00Z\na,2030-01-01T00:00:00Z\nb,1893456000\na,2030-01-02T00:00:00Z\n"
    )
    assert h.first == 1893456000 and h.last == ts("2030-01-03T00:00:00+00:00")
    homes = {"a": rp.ReplayHome(1), "b": rp.ReplayHome(1)}
    ordered = hist({"a": sorted(h.times["a"]), "b": list(h.times["b"])})
    pol = policy(1, 0)
    got = rp.replay(homes, h, pol, T0 - 400 * DAY, T0)
    want = rp.replay(homes, ordered, pol, T0 - 400 * DAY, T0)
    assert (got.archives, got.waits) == (want.archives, want.waits)


def test_a_huge_user_name_is_a_user_and_a_longer_line_is_not() -> None:
    name = "u" * 4000
    h = parse(f"{name},2030-01-01T00:00:00Z\n{'v' * 5000},2030-01-01T00:00:00Z\n")
    assert list(h.times) == [name] and h.malformed == 1
    assert "too long" in h.examples[0] and len(h.examples[0]) < 200


def test_names_that_are_not_utf8_still_match_their_folder() -> None:
    raw = b"caf\xe9,2030-01-01T00:00:00Z\n"
    h = parse(raw)
    folder = b"caf\xe9".decode("utf-8", "surrogateescape")  # as os.listdir gives it
    assert list(h.times) == [folder]


def test_bom_crlf_blank_and_comment_lines() -> None:
    h = parse(
        b"\xef\xbb\xbfuser,time\r\n\r\n# exported 2030-02-01\r\nalice,2030-01-01T00:00:00Z\r\n"
    )
    assert h.logins == 1 and h.malformed == 0


def test_a_line_of_megabytes_is_skipped_without_holding_it() -> None:
    huge = b"x" * (64 * 1024 * 1024)
    data = b"alice,2030-01-01T00:00:00Z\n" + huge + b"\nbob,2030-01-02T00:00:00Z\n" + huge
    f = io.BytesIO(data)
    tracemalloc.start()
    h = rp.parse_logins(rp.bounded_lines(f))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sorted(h.times) == ["alice", "bob"] and h.malformed == 2
    assert "too long" in h.examples[0]
    assert peak < 2 * 1024 * 1024, f"held {peak} bytes for a 64 MB line"


def test_many_lines_unsorted_and_repeated() -> None:
    rng = random.Random(1)
    users = [f"u{i}" for i in range(500)]
    lines = ["user,time"]
    for _ in range(100_000):
        t = T0 + rng.uniform(0, 120 * DAY)
        lines.append(f"{rng.choice(users)},{int(t)}")
    lines += lines[1:1000]  # the same logins twice (a log read twice)
    h = parse("\n".join(lines) + "\n")
    assert h.logins == 100_999 and h.malformed == 0 and len(h.times) == 500


# --- the replay ------------------------------------------------------------------------


def hist(logins: dict[str, list[float]]) -> rp.LoginHistory:
    h = rp.LoginHistory()
    for u, times in logins.items():
        for t in times:
            h.add(u, t)
    return h


def policy(days: float, keep: float = 0.0, **kw: object) -> rp.ReplayPolicy:
    return rp.ReplayPolicy(dt.timedelta(days=days), dt.timedelta(days=keep), **kw)  # type: ignore[arg-type]


def test_by_hand_an_active_user_an_idle_one_and_one_who_comes_back() -> None:
    mb = 1_000_000
    homes = {
        "alice": rp.ReplayHome(10 * mb),
        "bob": rp.ReplayHome(20 * mb),
        "carol": rp.ReplayHome(30 * mb),
    }
    h = hist(
        {
            "alice": [T0 - DAY] + [T0 + d * DAY for d in range(60)],
            "bob": [T0 - 100 * DAY],
            "carol": [T0 - 40 * DAY, T0 + 45 * DAY],
            "mallory": [T0 + DAY],  # no home: ignored
        }
    )
    res = rp.replay(homes, h, policy(30, 3), T0, T0 + 60 * DAY)
    # bob and carol go at the first cycle; carol comes back on day 45 (from the
    # bucket: her quarantine ended on day 3); alice is never idle for 30 days.
    assert res.archives == 2 and res.restores == 1
    assert [(w.user, w.source, w.bytes) for w in res.waits] == [("carol", "bucket", 30 * mb)]
    assert res.days[0].posix == 60 * mb  # day 0: both moved aside, still in the quarantine
    assert res.days[5].posix == 10 * mb and res.days[5].archived == 2
    assert res.posix_end == 40 * mb
    assert res.logins == 60 + 1


def test_a_login_within_the_quarantine_comes_back_from_it() -> None:
    homes = {"u": rp.ReplayHome(5_000_000)}
    h = hist({"u": [T0 - 10 * DAY, T0 + DAY]})
    res = rp.replay(homes, h, policy(7, 3), T0, T0 + 5 * DAY)
    assert [w.source for w in res.waits] == ["quarantine"]
    res = rp.replay(homes, h, policy(7, 0), T0, T0 + 5 * DAY)
    assert [w.source for w in res.waits] == ["bucket"]


def test_at_most_max_per_cycle_homes_per_cycle_least_recent_first() -> None:
    homes = {f"u{i:03d}": rp.ReplayHome(1) for i in range(120)}
    h = hist({f"u{i:03d}": [T0 - (200 - i) * DAY] for i in range(120)})
    res = rp.replay(homes, h, policy(30, 0), T0, T0 + 2 * HOUR + 1)
    assert res.archives == 120
    assert res.day(T0).archives == 120
    res = rp.replay(homes, h, policy(30, 0), T0, T0 + HOUR + 1)
    assert res.archives == 100  # two cycles of 50


def test_a_running_session_keeps_the_home_and_file_times_count() -> None:
    homes = {"u": rp.ReplayHome(1, newest=T0 - 2 * DAY), "v": rp.ReplayHome(1)}
    h = hist({"u": [T0 - 60 * DAY]})
    res = rp.replay(homes, h, policy(7, session=dt.timedelta(hours=8)), T0, T0 + 20 * DAY)
    # u: its files changed two days ago, so it goes on day 5, not at once; v: nothing
    # is known of it, it goes at the first cycle.
    assert res.day(T0).archives == 1
    assert res.day(T0 + 5 * DAY).archives == 1


def test_a_replay_must_end_after_it_starts() -> None:
    with pytest.raises(ValueError):
        rp.replay({}, rp.LoginHistory(), policy(7), T0, T0)


def test_the_month_costs_storage_requests_and_retrieval() -> None:
    prices = make_prices("efs-standard", "s3-standard-ia")
    homes = {"u": rp.ReplayHome(GIB)}
    h = hist({"u": [T0 - 100 * DAY, T0 + 50 * DAY]})
    res = rp.replay(homes, h, policy(30, 0), T0, T0 + 60 * DAY, ratio=0.5)
    m = res.month(prices)
    assert m["without"] == pytest.approx(0.30)
    # The last 30 days: on the volume since day 50, archived before: the averages.
    assert 0 < m["posix"] < m["without"]
    assert m["object"] == pytest.approx(0.5 * 0.0125)
    # One restore of 0.5 GiB from Standard-IA is in the window (its retrieval fee).
    assert m["requests"] >= request_cost(prices.object, 0, 0, 0.5 * GIB)
    assert m["total"] == pytest.approx(m["posix"] + m["object"] + m["requests"])


def brute_force(
    homes: dict[str, rp.ReplayHome],
    h: rp.LoginHistory,
    pol: rp.ReplayPolicy,
    start: float,
    end: float,
) -> tuple[int, int, list[tuple[str, float, str]]]:
    """Every hourly cycle, one after the other: the rules of the module doc, plainly."""
    step = pol.interval.total_seconds()
    idle, keep = pol.inactive_after.total_seconds(), pol.quarantine_for.total_seconds()
    session = pol.session.total_seconds()
    last: dict[str, float] = {}
    logins = []
    for u, home in homes.items():
        times = sorted(h.times.get(u, ()))
        before = [t + session for t in times if t < start]
        if home.newest is not None and home.newest <= start:
            before.append(home.newest)
        if before:
            last[u] = max(before)
        logins += [(t, u) for t in times if start <= t < end]
    logins.sort()
    on_disk, quarantine = set(homes), {}
    archives, waits = 0, []
    k, i = 0, 0
    while start + k * step <= end:
        t = start + k * step
        while i < len(logins) and logins[i][0] <= t:
            at, u = logins[i]
            i += 1
            if u not in on_disk:
                waits.append((u, at, "quarantine" if u in quarantine else "bucket"))
                quarantine.pop(u, None)
                on_disk.add(u)
            last[u] = max(last.get(u, -math.inf), at + session)
        ready = sorted(
            (last.get(u, -math.inf), u) for u in on_disk if last.get(u, -math.inf) + idle <= t
        )
        for _, u in ready[: pol.max_per_cycle]:
            on_disk.discard(u)
            quarantine[u] = t
            archives += 1
        for u, at in list(quarantine.items()):
            if at + keep <= t:
                del quarantine[u]
        k += 1
    # Logins after the last cycle still count.
    while i < len(logins):
        at, u = logins[i]
        i += 1
        if u not in on_disk:
            waits.append((u, at, "quarantine" if u in quarantine else "bucket"))
            quarantine.pop(u, None)
            on_disk.add(u)
    return archives, len(waits), waits


@pytest.mark.parametrize("seed", range(6))
def test_the_event_driven_replay_agrees_with_every_hourly_cycle(seed: int) -> None:
    rng = random.Random(seed)
    homes = {
        f"u{i}": rp.ReplayHome(
            rng.randrange(1, 10**8), rng.choice([None, T0 - rng.uniform(0, 90) * DAY])
        )
        for i in range(60)
    }
    logins: dict[str, list[float]] = {}
    for u in homes:
        n = rng.choice([0, 0, 1, 3, 10, 40])
        logins[u] = [T0 + rng.uniform(-200, 40) * DAY for _ in range(n)]
    h = hist(logins)
    pol = policy(
        rng.choice([3, 7, 30]),
        rng.choice([0, 1, 3]),
        max_per_cycle=rng.choice([5, 50]),
        session=dt.timedelta(minutes=rng.choice([0, 60, 300])),
    )
    end = T0 + 40 * DAY
    res = rp.replay(homes, h, pol, T0, end)
    archives, n, waits = brute_force(homes, h, pol, T0, end)
    assert (res.archives, res.restores) == (archives, n)
    assert [(w.user, w.at, w.source) for w in res.waits] == waits


def test_percentile_nearest_rank() -> None:
    assert rp.percentile([], 95) == 0
    assert rp.percentile([3, 1, 2], 50) == 2
    assert rp.percentile(list(range(1, 101)), 95) == 95
    assert rp.percentile([7], 99) == 7

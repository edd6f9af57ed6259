"""The dashboard in a real browser: Debian's headless Chromium through Playwright, against
a real JupyterHub and ``hometier serve`` holding real data (``e2e.dashboard_fixtures``).

Every browser signs in through the Hub's login form and OAuth. The admin sees the totals,
the chart, the failures and the table, and restores, archives and exempts homes from it;
a user sees only their own home, browses a snapshot and downloads an old file, byte for
byte, and a folder; a user who types another user's URL is refused. A screenshot of each
page goes to ``test-artifacts/dashboard/``. Tests run in file order and share one Hub.
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

from e2e.dashboard_fixtures import (  # noqa: F401 - the `dash` and `browser` fixtures
    HOSTILE,
    HOSTILE_REASON,
    ODD_CONTENT,
    Dash,
    browser_fixture,
    dash_fixture,
    shot,
)
from fixtures.service import PREFIX
from hometier.service.dashboard.summary import (
    Dashboard,
    SnapSize,
    Transition,
    human_bytes,
    make_chart,
    make_totals,
    tier_history,
)

pytestmark = [pytest.mark.hub, pytest.mark.slow]

RESTORE_TIMEOUT = 60_000  # ms


@pytest.fixture(scope="module")
def ops(dash: Dash, browser: Any) -> Any:
    """The admin's page, signed in once for the module."""
    page = dash.login(browser, "ops")
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def bob(dash: Dash, browser: Any) -> Any:
    page = dash.login(browser, "bob")
    yield page
    page.context.close()


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def _api(dash: Dash, path: str) -> Any:
    status, doc = dash.svc.call("GET", path, dash.svc.user_token("ops"))
    assert status == 200, (path, doc)
    return doc


def _download(page: Any, locator: Any) -> bytes:
    with page.expect_download() as info:
        locator.click()
    path = info.value.path()
    assert path is not None, info.value.failure()
    return Path(path).read_bytes()


# --- the history, without a browser ------------------------------------------------


def test_history_follows_transitions_and_snapshot_sizes() -> None:
    day = dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC)
    moves = [
        Transition("a", day, "active"),
        Transition("b", day, "active"),
        Transition("a", day + dt.timedelta(days=2), "archiving"),
        Transition("a", day + dt.timedelta(days=2, minutes=1), "archived"),
        Transition("a", day + dt.timedelta(days=4), "restoring"),
        Transition("a", day + dt.timedelta(days=4, minutes=1), "failed", "restoring"),
        Transition("b", day + dt.timedelta(days=4), "failed", "archiving"),  # still hot
    ]
    snaps = [SnapSize("a", day + dt.timedelta(days=2), 1000, 400)]
    homes: list[Any] = []
    totals = make_totals(homes, 400, Dashboard(), {})
    points = tier_history(
        moves, snaps, {"a": 900, "b": 50}, totals, (day + dt.timedelta(days=5)).date()
    )
    got = [(p.day.day, p.hot, p.archived, p.stored) for p in points]
    # Only the last transition before a window is needed: the same days come out.
    window = tier_history(
        [moves[1]] + [m for m in moves if m.at >= day + dt.timedelta(days=2)],
        snaps,
        {"a": 900, "b": 50},
        totals,
        (day + dt.timedelta(days=5)).date(),
        days=3,
    )
    assert [(p.day.day, p.hot, p.archived, p.stored) for p in window] == got[-3:]
    assert got == [
        (1, 950, 0, 0),  # a's current size before its first snapshot
        (2, 950, 0, 0),
        (3, 50, 1000, 400),  # archived with its snapshot's size
        (4, 50, 1000, 400),
        (5, 50, 1000, 400),  # a failed restore leaves it in the bucket
        (6, 0, 0, 400),  # today: the current totals (no homes given)
    ]
    chart = make_chart(points)
    assert [s.css for s in chart.series] == ["tier-hot", "tier-archived", "tier-stored"]
    assert all(len(s.dots) == len(points) for s in chart.series)
    assert chart.x_labels[0][1] == "2025-03-01" and chart.x_labels[-1][1] == "2025-03-06"


def test_the_saving_is_archived_bytes_off_posix_minus_the_bucket() -> None:
    class H:
        def __init__(self, user: str, state: str, size: int, cold: bool) -> None:
            self.user, self.state, self.hot_bytes, self.is_cold = user, state, size, cold

    gib = 1024**3
    homes = [H("a", "active", 10 * gib, False), H("b", "archived", 100 * gib, True)]
    homes.append(H("c", "active", 0, False))  # not measured: its snapshot's size counts
    totals = make_totals(homes, 40 * gib, Dashboard(), {"c": 5 * gib})
    assert (totals.hot_bytes, totals.archived_bytes) == (15 * gib, 100 * gib)
    assert totals.by_state["active"] == 2 and totals.by_state["archived"] == 1
    assert totals.saving == pytest.approx(100 * 0.30 - 40 * 0.023)


# --- the admin ---------------------------------------------------------------------


def test_admin_sees_totals_chart_failures_and_table(dash: Dash, ops: Any) -> None:
    expect = _expect()
    page = ops
    resp = page.goto(f"{dash.base}/admin")
    assert resp.status == 200
    homes = {h["user"]: h for h in _api(dash, "/api/homes")["homes"]}
    by_state = {s: sum(h["state"] == s for h in homes.values()) for s in ("archived", "failed")}
    card = page.locator("#totals")
    expect(card.locator("[data-total=homes] .n")).to_have_text(str(len(homes)))
    expect(card.locator("[data-total=archived] .n")).to_have_text(str(by_state["archived"]))
    expect(card.locator("[data-total=failed] .n")).to_have_text(str(by_state["failed"]))
    assert by_state == {"archived": 1, "failed": 1}
    cold = ("alice", "carol")  # carol's restore failed: her files are still only archived
    archived = sum(homes[u]["hot_bytes"] for u in cold)
    posix = sum(h["hot_bytes"] for u, h in homes.items() if u not in cold)
    stored = dash.db_scalar("SELECT sum(stored_bytes) FROM snapshots")
    assert posix > 0 and archived > 0 and stored > 0
    expect(page.locator("[data-total=posix-bytes] .n")).to_have_text(human_bytes(posix))
    expect(page.locator("[data-total=archived-bytes] .n")).to_have_text(human_bytes(archived))
    expect(page.locator("[data-total=stored-bytes] .n")).to_have_text(human_bytes(stored))
    expect(page.locator("[data-total=saving] .n")).to_contain_text("$")
    expect(page.locator("main")).to_contain_text("$0.3000 per GB-month")

    # The failed restore stands out, with its error, above everything else.
    failures = page.locator("#failures")
    expect(failures).to_contain_text("carol")
    expect(failures).to_contain_text("not found in the repository")
    carol = page.locator("#homes tr[data-user=carol]")
    expect(carol).to_have_class("state-failed row-failed")
    expect(carol.locator(".error-text")).to_contain_text("not found in the repository")

    # The chart: one line per tier.
    expect(page.locator("#tier-chart path.line")).to_have_count(3)

    # A hostile name and reason are shown as text, never run.
    hostile = page.locator("#homes tbody tr").filter(has=page.locator(".badge-exempt"))
    expect(hostile.locator("a.user")).to_have_text(HOSTILE)
    assert page.locator("img[src=x]").count() == 0
    assert page.title() != "pwned"
    assert HOSTILE_REASON in (hostile.locator(".badge-exempt").get_attribute("title") or "")
    hostile.locator("a.user").click()
    expect(page.locator("h1 .user")).to_have_text(HOSTILE)
    expect(page.locator("#home-state")).to_have_text("active")
    assert page.locator("img[src=x]").count() == 0 and page.title() != "pwned"
    page.goto(f"{dash.base}/admin")

    # Search as you type, and sort by a column.
    rows = page.locator("#homes tbody tr")
    page.fill("input[data-filter=homes]", "car")
    expect(page.locator("#homes tbody tr:visible")).to_have_count(1)
    expect(page.locator("#homes tbody tr:visible")).to_have_attribute("data-user", "carol")
    page.fill("input[data-filter=homes]", "")
    expect(page.locator("#homes tbody tr:visible")).to_have_count(rows.count())
    page.click("#homes th:text('Size')")
    sizes = [
        int(v)
        for v in rows.locator("td:nth-child(3)").evaluate_all(
            "cells => cells.map(c => c.dataset.sort)"
        )
    ]
    assert sizes == sorted(sizes) and len(sizes) == len(homes)
    page.click("#homes th:text('Size')")
    expect(page.locator("#homes th:text('Size')")).to_have_attribute("aria-sort", "descending")

    # The same search on the server (no script needed).
    page.goto(f"{dash.base}/admin?q=ali&state=archived&sort=-user")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-user", "alice")
    page.goto(f"{dash.base}/admin")
    shot(page, "admin-overview")


def test_admin_sees_a_failed_home_with_its_error_and_log(dash: Dash, ops: Any) -> None:
    expect = _expect()
    page = ops
    page.goto(f"{dash.base}/homes/carol")
    expect(page.locator("#home-state")).to_have_text("failed")
    expect(page.locator("#home-error")).to_contain_text("not found in the repository")
    expect(page.locator("#events tr.row-failed")).to_have_count(1)
    shot(page, "home-failed-admin-view")


def test_admin_restores_an_archived_home_and_it_completes(dash: Dash, ops: Any) -> None:
    expect = _expect()
    page = ops
    page.goto(f"{dash.base}/admin")
    page.locator("#homes tr[data-user=alice] button:text('Restore')").click()
    page.wait_for_url(f"{dash.base}/homes/alice")
    expect(page.locator(".flash")).to_have_text("Restore of alice started.")
    # The page reloads itself while the restore runs.
    expect(page.locator("#home-state")).to_have_text("active", timeout=RESTORE_TIMEOUT)
    expect(page.locator("#restore-job")).to_contain_text("Your files are back")
    assert dash.home_state("alice") == "active"
    for rel, content in dash.alice_files.items():
        assert (dash.svc.homes / "alice" / rel).read_bytes() == content, rel
    events = _api(dash, "/api/homes/alice")
    assert events["restored_at"]
    shot(page, "home-restored-admin-view")


def test_admin_archives_and_exempts_from_the_table(dash: Dash, ops: Any) -> None:
    expect = _expect()
    page = ops
    page.goto(f"{dash.base}/admin")
    row = page.locator("#homes tr[data-user=bob]")
    row.locator("button:text('Exempt')").click()
    page.wait_for_url(f"{dash.base}/admin")
    expect(page.locator(".flash")).to_have_text("bob is now exempt from archiving.")
    expect(row.locator(".badge-exempt")).to_have_count(1)
    # Exempt homes are not archived: the error comes back as a message, nothing changes.
    row.locator("button:text('Archive now')").click()
    expect(page.locator(".flash-error")).to_contain_text("it is exempt")
    assert dash.home_state("bob") == "active"
    row.locator("button:text('Unexempt')").click()
    expect(page.locator(".flash")).to_have_text("bob is no longer exempt from archiving.")
    expect(row.locator(".badge-exempt")).to_have_count(0)
    # dave is idle and has no lease: archived now, whatever the policy says.
    page.locator("#homes tr[data-user=dave] button:text('Archive now')").click()
    expect(page.locator(".flash")).to_contain_text("Archive of dave: archived")
    expect(page.locator("#homes tr[data-user=dave]")).to_have_class("state-archived")
    assert dash.home_state("dave") == "archived"


def test_a_form_without_the_xsrf_token_is_refused(dash: Dash, ops: Any) -> None:
    before = dash.home_state("carol")
    resp = ops.request.post(f"{dash.base}/homes/carol/restore", form={"back": "home"})
    assert resp.status == 403
    assert "XSRF" in resp.text()
    assert dash.home_state("carol") == before == "failed"


# --- a user --------------------------------------------------------------------------


def test_a_user_sees_only_their_own_home(dash: Dash, bob: Any) -> None:
    expect = _expect()
    page = bob
    page.goto(f"{dash.base}/")
    expect(page.locator("h1")).to_have_text("Your home")
    expect(page.locator("#home-state")).to_have_text("active")
    expect(page.locator("#snapshots tbody tr")).to_have_count(2)
    text = page.locator("body").inner_text()
    for other in ("alice", "carol", "ops", "All homes", "Added to the bucket"):
        assert other not in text, other
    expect(page.locator("button:text('Archive now')")).to_have_count(0)
    expect(page.locator("#home-size")).to_contain_text(
        human_bytes(_api(dash, "/api/homes/bob")["hot_bytes"])
    )
    shot(page, "own-home-user")


def test_a_user_downloads_an_old_version_and_a_folder(dash: Dash, bob: Any) -> None:
    expect = _expect()
    page = bob
    page.goto(f"{dash.base}/")
    # Snapshots are listed newest first: the last one holds the first version.
    page.locator("#snapshots tbody tr").last.locator("a.browse").click()
    expect(page.locator("h1")).to_contain_text("Snapshot of bob")
    expect(page.locator("#entries tr[data-name='notes.txt']")).to_have_count(1)
    shot(page, "browse-snapshot")
    old = _download(page, page.locator("#entries tr[data-name='notes.txt'] a.file"))
    assert old == dash.bob_notes_v1
    assert old != (dash.svc.homes / "bob" / "notes.txt").read_bytes()
    # A name that is not UTF-8 is shown with a replacement character and still downloads.
    odd = page.locator("#entries tr[data-name='caf\ufffd.txt'] a.file")
    assert "path_b64=" in (odd.get_attribute("href") or "")
    assert _download(page, odd) == ODD_CONTENT

    page.locator("#entries tr[data-name=project] a.dir").click()
    expect(page.locator(".crumbs")).to_contain_text("project")
    shot(page, "browse-folder")
    raw = _download(page, page.locator("#folder-zip"))
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        names = set(z.namelist())
        assert any(n.endswith("data/raw.csv") for n in names), names
        csv = next(n for n in names if n.endswith("data/raw.csv"))
        assert z.read(csv) == (dash.svc.homes / "bob" / "project/data/raw.csv").read_bytes()


def test_a_user_typing_another_users_url_is_refused(dash: Dash, bob: Any) -> None:
    expect = _expect()
    page = bob
    alice_snap = _api(dash, "/api/homes/alice/snapshots")["snapshots"][0]["id"]
    refused = {
        "/homes/alice": "bob may not read the home of alice",
        f"/homes/alice/snapshots/{alice_snap}/browse": "bob may not read the home of alice",
        "/admin": "for hometier's admins",
        f"/api/homes/alice/snapshots/{alice_snap}/file?path=thesis.tex": "may not read",
    }
    for path, message in refused.items():
        resp = page.goto(f"{dash.base}{path}")
        assert resp.status == 403, (path, resp.status)
        assert message in page.content(), path
        if not path.startswith("/api/"):
            expect(page.locator(".refusal h1")).to_contain_text("Not allowed")
    page.goto(f"{dash.base}/homes/alice")
    shot(page, "refused-other-users-home")
    # A POST to someone else's home is refused too, even with bob's valid XSRF token
    # (the _xsrf cookie's value is the token the forms carry).
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "_xsrf")
    for action in ("restore", "archive", "exempt"):
        resp = page.request.post(
            f"{dash.base}/homes/carol/{action}", form={"back": "home", "_xsrf": token}
        )
        assert resp.status == 403, action
        assert "bob may not" in resp.text(), action
    assert dash.home_state("carol") == "failed"
    assert not _api(dash, "/api/homes/carol")["exempt"]


def test_a_browser_without_a_session_is_sent_to_the_hub_login(dash: Dash, browser: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{dash.base}/admin")
        assert "/hub/login" in page.url
        assert PREFIX not in page.url.split("?")[0]
        shot(page, "hub-login")
    finally:
        context.close()

"""The dashboard in a real browser: Debian's headless Chromium through Playwright, against
a real JupyterHub and ``hometier serve`` on S3 behind a fault proxy, with 15 users
(``e2e.dashboard_fixtures``).

Every browser signs in through the Hub's login form and OAuth. Pages are checked at 1440
and 390 px (a phone): no horizontal overflow, bounded row heights, screenshots in
``test-artifacts/dashboard/`` (``*-1440.png``, ``*-390.png``, ``*-dark.png``). The admin
sees cards that add up, the chart, failures as one sentence with a reference and the
detail on demand, a paged table sorted and searched by the server; restores, archives
(confirmed, in the background, logged as the admin) and exempts homes. A user browses a
snapshot, previews text and images safely, downloads an old file and a folder (named by
user and date). With S3 unreachable the overview shows a banner, ``/health`` says so, a
restore fails with a sentence and the admins' webhook is told; it heals. Tests run in
file order and share one Hub.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from e2e.dashboard_fixtures import (  # noqa: F401 - the `dash` and `browser` fixtures
    HOSTILE,
    HOSTILE_REASON,
    ODD_CONTENT,
    PNG,
    Dash,
    browser_fixture,
    dash_fixture,
    shot,
)
from hometier.service.dashboard.summary import human_bytes
from reliability.faultproxy import Rule

pytestmark = [pytest.mark.hub, pytest.mark.slow]

RESTORE_TIMEOUT = 60_000  # ms
MAX_ROW = 420
"""px: the tallest a row of the homes table may be, even a failed one, even on a phone."""


@pytest.fixture(scope="module")
def ops(dash: Dash, browser: Any) -> Any:
    """The admin's page, signed in once for the module."""
    page = dash.login(browser, "ops")
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def ops_phone(dash: Dash, browser: Any) -> Any:
    page = dash.login(browser, "ops", width=390)
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def bob(dash: Dash, browser: Any) -> Any:
    page = dash.login(browser, "bob")
    yield page
    page.context.close()


@pytest.fixture(scope="module")
def bob_phone(dash: Dash, browser: Any) -> Any:
    page = dash.login(browser, "bob", width=390)
    yield page
    page.context.close()


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def _api(dash: Dash, path: str) -> Any:
    status, doc = dash.svc.call("GET", path, dash.svc.user_token("ops"))
    assert status == 200, (path, doc)
    return doc


def _download(page: Any, locator: Any) -> tuple[str, bytes]:
    with page.expect_download() as info:
        locator.click()
    path = info.value.path()
    assert path is not None, info.value.failure()
    return info.value.suggested_filename, Path(path).read_bytes()


def _layout(page: Any) -> dict[str, Any]:
    """What the page's layout is: its width against the viewport's, the tallest row."""
    return page.evaluate(
        """() => ({
            viewport: window.innerWidth,
            scroll: document.scrollingElement.scrollWidth,
            rows: Array.from(document.querySelectorAll('#homes tbody tr')).map(
                r => [r.dataset.user, Math.round(r.getBoundingClientRect().height)]),
            wide: Array.from(document.querySelectorAll('body *')).filter(
                e => e.getBoundingClientRect().right > window.innerWidth + 1
                     && getComputedStyle(e).position !== 'absolute').map(
                e => e.tagName + '.' + e.className).slice(0, 5),
        })"""
    )


def _assert_fits(page: Any, name: str) -> dict[str, Any]:
    got = _layout(page)
    assert got["scroll"] <= got["viewport"], (name, got)
    tall = [(u, h) for u, h in got["rows"] if h > MAX_ROW]
    assert not tall, (name, tall)
    return got


def _no_raw_times(page: Any) -> None:
    text = page.locator("body").inner_text()
    assert not re.search(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}", text), "an ISO time is shown"
    assert not re.search(r"\d{2}:\d{2}:\d{2}\.\d{3,}", text), "microseconds are shown"
    assert not re.search(r"\b[0-9a-f]{64}\b", text), "a 64-hex id is shown whole"


# --- the admin ---------------------------------------------------------------------


def test_admin_overview_cards_add_up_and_errors_are_sentences(dash: Dash, ops: Any) -> None:
    expect = _expect()
    page = ops
    resp = page.goto(f"{dash.base}/admin")
    assert resp.status == 200
    listed = _api(dash, "/api/homes")
    homes = {h["user"]: h for h in listed["homes"]}
    assert listed["total"] == len(homes) >= 15
    cold = {u for u, h in homes.items() if h["state"] in ("archived", "restoring", "failed")}
    card = page.locator("#totals")
    expect(card.locator("[data-total=homes] .n")).to_have_text(str(len(homes)))
    expect(card.locator("[data-total=archived] .n")).to_have_text("3")
    expect(card.locator("[data-total=failed] .n")).to_have_text("1")
    # Hot + archived is every home's size; stored is what the snapshots added.
    hot = sum(h["size"] for u, h in homes.items() if u not in cold)
    archived = sum(h["size"] for u, h in homes.items() if u in cold)
    stored = dash.db_scalar("SELECT sum(stored_bytes) FROM snapshots")
    assert hot > 0 and archived > 0 and stored > 0
    expect(page.locator("[data-total=posix-bytes] .n")).to_have_text(human_bytes(hot))
    expect(page.locator("[data-total=archived-bytes] .n")).to_have_text(human_bytes(archived))
    expect(page.locator("[data-total=stored-bytes] .n")).to_have_text(human_bytes(stored))
    expect(page.locator("[data-total=saving] .n")).to_contain_text("$")
    expect(page.locator("[data-cost=hot]")).to_contain_text("/ month at $0.3000 per GB-month")
    expect(page.locator("[data-total=stored-bytes]")).to_contain_text("every snapshot")

    # carol's failed restore: one sentence and a reference; the detail behind a toggle.
    failures = page.locator("#failures")
    item = failures.locator("li[data-user=carol]")
    expect(item.locator(".error-text")).to_have_text("Part of the archive is damaged.")
    expect(item.locator(".ref code")).to_have_text(re.compile(r"^[0-9a-f]{8}$"))
    detail = item.locator("details.more .detail-text")
    expect(detail).to_be_hidden()
    item.locator("details.more summary").click()
    expect(detail).to_be_visible()
    expect(detail).to_contain_text("not found in the repository")
    row = page.locator("#homes tr[data-user=carol]")
    expect(row).to_have_class("state-failed row-failed")
    expect(row.locator(".error-text")).to_have_text("Part of the archive is damaged.")
    assert "RestoreFailed(" not in row.inner_text() and "packs/" not in row.inner_text()

    # The chart: stacked areas by tier, the archived line, the cost; a range picker.
    expect(page.locator("#tier-chart path.area")).to_have_count(2)
    expect(page.locator("#tier-chart path.line")).to_have_count(1)
    expect(page.locator("#tier-chart path.cost")).to_have_count(1)
    labels = page.locator("#tier-chart text.tick").evaluate_all(
        "ts => ts.map(t => t.textContent.trim())"
    )
    assert "0" in labels and any(t.startswith("$") for t in labels)
    page.click(".ranges a:text('7 days')")
    expect(page.locator(".ranges a.current")).to_have_text("7 days")
    assert "days=7" in page.url
    _no_raw_times(page)
    # Times are people's; the exact time is in the title.
    when = page.locator("#homes time").first
    assert re.match(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$", when.get_attribute("title") or "")

    # A hostile name and reason are shown as text, never run.
    hostile = page.locator("#homes tbody tr").filter(has=page.locator(".badge-exempt"))
    expect(hostile.locator("a.user")).to_have_text(HOSTILE)
    assert page.locator("img[src=x]").count() == 0 and page.title() != "pwned"
    assert HOSTILE_REASON in (hostile.locator(".badge-exempt").get_attribute("title") or "")
    page.goto(f"{dash.base}/admin")
    shot(page, "admin-overview-1440")
    _assert_fits(page, "admin at 1440")


def test_admin_table_is_searched_sorted_and_paged_by_the_server(dash: Dash, ops: Any) -> None:
    expect = _expect()
    page = ops
    rows = page.locator("#homes tbody tr")
    # Search as you type: the server answers with the first page of matches.
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{dash.base}/admin")
    page.evaluate("window.stayed = true")  # gone if the page were reloaded
    page.fill("#homes-filter input[name=q]", "caro")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-user", "carol")
    assert "q=caro" in page.url and not errors, errors
    assert page.evaluate("window.stayed === true"), "the search reloaded the page"
    page.fill("#homes-filter input[name=q]", "")
    total = _api(dash, "/api/homes")["total"]
    expect(rows).to_have_count(total)
    # A column header sorts on the server (and again, descending).
    page.click("#homes th a[data-sort-key=size]")
    expect(page.locator("#homes th[aria-sort=ascending] a")).to_have_text("Size")
    sizes = [int(v) for v in rows.locator("td[data-label=Size]").evaluate_all(
        "cells => cells.map(c => c.dataset.sort)")]  # fmt: skip
    assert sizes == sorted(sizes)
    page.click("#homes th a[data-sort-key=size]")
    expect(page.locator("#homes th[aria-sort=descending] a")).to_have_text("Size")
    # Pages: five at a time, by cursor, every home once.
    page.goto(f"{dash.base}/admin?limit=5&sort=user")
    seen: list[str] = []
    for _ in range(10):
        seen += rows.evaluate_all("rs => rs.map(r => r.dataset.user)")
        nxt = page.locator("#next-page")
        if nxt.count() == 0:
            break
        nxt.click()
    assert len(seen) == len(set(seen)) == total
    assert seen == sorted(seen)
    # The same through the API, with filter and order.
    doc = _api(dash, "/api/homes?state=archived&sort=user&order=desc")
    assert [h["user"] for h in doc["homes"]] == ["judy", "ivan", "alice"]
    status, bad = dash.svc.call("GET", "/api/homes?sort=path", dash.svc.user_token("ops"))
    assert status == 400 and "sort must be one of" in bad["error"]


def test_admin_pages_fit_a_phone(dash: Dash, ops_phone: Any) -> None:
    page = ops_phone
    page.goto(f"{dash.base}/admin")
    got = _assert_fits(page, "admin at 390")
    heights = dict(got["rows"])
    assert heights["carol"] <= MAX_ROW, heights  # the failed row, error folded
    print(f"row heights at 390 px: {sorted(heights.values())}")
    shot(page, "admin-overview-390")
    page.locator("#homes tr[data-user=carol]").scroll_into_view_if_needed()
    shot(page, "admin-table-390-viewport", full_page=False)
    page.goto(f"{dash.base}/homes/carol")
    _assert_fits(page, "carol's home at 390")
    shot(page, "home-failed-admin-view-390")


def test_dark_mode_follows_the_system(dash: Dash, browser: Any) -> None:
    page = dash.login(browser, "ops")
    try:
        page.emulate_media(color_scheme="dark")
        page.goto(f"{dash.base}/admin")
        bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert bg == "rgb(33, 37, 41)", bg  # JupyterHub's (Bootstrap's) dark body
        # The Hub's header: its logo, its Home link, a Logout.
        assert page.locator("nav.navbar img.jpy-logo").evaluate("i => i.naturalWidth") > 0
        _expect()(page.locator("nav.navbar")).to_contain_text("Logout")
        shot(page, "admin-overview-dark")
    finally:
        page.context.close()


def test_admin_sees_a_failed_home_with_its_sentence_and_log(dash: Dash, ops: Any) -> None:
    expect = _expect()
    page = ops
    page.goto(f"{dash.base}/homes/carol")
    expect(page.locator("#home-state")).to_have_text("failed")
    expect(page.locator("#home-error-admin .error-text")).to_have_text(
        "Part of the archive is damaged."
    )
    expect(page.locator("#home-error-details .detail-text")).to_be_hidden()
    expect(page.locator("#events tr.row-failed")).to_have_count(1)
    _no_raw_times(page)
    shot(page, "home-failed-admin-view-1440")


def test_admin_restores_an_archived_home_and_it_completes(dash: Dash, ops: Any) -> None:
    expect = _expect()
    page = ops
    page.goto(f"{dash.base}/admin")
    page.locator("#homes tr[data-user=alice] button:text('Restore')").click()
    page.wait_for_url(f"{dash.base}/homes/alice")
    expect(page.locator(".flash")).to_have_text("Restore of alice started.")
    expect(page.locator("#home-state")).to_have_text("active", timeout=RESTORE_TIMEOUT)
    expect(page.locator("#restore-job")).to_contain_text("Your files are back")
    for rel, content in dash.alice_files.items():
        assert (dash.svc.homes / "alice" / rel).read_bytes() == content, rel
    shot(page, "home-restored-admin-view-1440")


def test_archive_now_asks_runs_in_the_background_and_names_the_admin(dash: Dash, ops: Any) -> None:
    expect = _expect()
    page = ops
    page.goto(f"{dash.base}/admin")
    # Not offered on a leased home, and refused if asked anyway.
    expect(page.locator("#homes tr[data-user=mallory] a:text('Archive now')")).to_have_count(0)
    expect(page.locator("#homes tr[data-user=mallory] .badge-leased")).to_have_count(1)
    page.goto(f"{dash.base}/homes/mallory/archive?back=admin")
    expect(page.locator("#confirm-archive")).to_contain_text("active lease")
    expect(page.locator("#confirm-button")).to_have_count(0)
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "_xsrf")
    resp = page.request.post(
        f"{dash.base}/homes/mallory/archive",
        form={"confirmed": "yes", "back": "admin", "_xsrf": token},
    )
    assert "1 active lease" in resp.text()
    assert dash.home_state("mallory") == "active"
    # Without the confirmation nothing starts.
    page.request.post(f"{dash.base}/homes/dave/archive", form={"back": "home", "_xsrf": token})
    assert dash.home_state("dave") == "active"
    # dave: asked, confirmed, started at once, followed on his page until archived.
    page.goto(f"{dash.base}/admin")
    page.locator("#homes tr[data-user=dave] a:text('Archive now')").click()
    expect(page.locator("#confirm-archive h1")).to_contain_text("dave")
    began = time.monotonic()
    page.click("#confirm-button")
    page.wait_for_url(f"{dash.base}/homes/dave")
    assert time.monotonic() - began < 5  # the request does not wait for the archive
    expect(page.locator(".flash")).to_contain_text("Archive of dave started")
    expect(page.locator("#home-state")).to_have_text("archived", timeout=RESTORE_TIMEOUT)
    expect(page.locator("#archive-job")).to_contain_text("Archive of dave: archived")
    actors = {e.inner_text() for e in page.locator("#events td.actor").all()}
    assert any(a.startswith("dashboard:ops:") for a in actors), actors
    assert dash.home_state("dave") == "archived"
    # The user was told, with the way back.
    told = [m for m in dash.hook if m["event"] == "archived" and m["user"] == "dave"]
    assert told and "log in" in told[0]["text"], dash.hook


def test_admin_exempts_from_the_table(dash: Dash, ops: Any) -> None:
    expect = _expect()
    page = ops
    page.goto(f"{dash.base}/admin")
    row = page.locator("#homes tr[data-user=bob]")
    row.locator("button:text('Exempt')").click()
    page.wait_for_url(re.compile(r".*/admin.*"))
    expect(page.locator(".flash")).to_have_text("bob is now exempt from archiving.")
    expect(row.locator(".badge-exempt")).to_have_count(1)
    expect(row.locator("a:text('Archive now')")).to_have_count(0)
    row.locator("button:text('Unexempt')").click()
    expect(page.locator(".flash")).to_have_text("bob is no longer exempt from archiving.")
    expect(row.locator(".badge-exempt")).to_have_count(0)


def test_a_form_without_the_xsrf_token_is_refused(dash: Dash, ops: Any) -> None:
    before = dash.home_state("carol")
    resp = ops.request.post(f"{dash.base}/homes/carol/restore", form={"back": "home"})
    assert resp.status == 403
    assert "XSRF" in resp.text()
    assert dash.home_state("carol") == before == "failed"


# --- a user --------------------------------------------------------------------------


def test_a_user_sees_only_their_own_home(dash: Dash, bob: Any, bob_phone: Any) -> None:
    expect = _expect()
    for page, width in ((bob, 1440), (bob_phone, 390)):
        page.goto(f"{dash.base}/")
        expect(page.locator("h1")).to_have_text("Your home")
        expect(page.locator("#home-state")).to_have_text("active")
        expect(page.locator("#snapshots tbody tr")).to_have_count(2)
        text = page.locator("body").inner_text()
        for other in ("alice", "carol", "ops", "All homes", "Added to the bucket"):
            assert other not in text, other
        expect(page.locator("a:text('Archive now')")).to_have_count(0)
        _no_raw_times(page)
        _assert_fits(page, f"own home at {width}")
        shot(page, f"own-home-user-{width}")


def test_a_user_downloads_an_old_version_and_a_named_folder(dash: Dash, bob: Any) -> None:
    expect = _expect()
    page = bob
    page.goto(f"{dash.base}/")
    page.locator("#snapshots tbody tr").last.locator("a.browse").click()
    expect(page.locator("h1")).to_contain_text("Snapshot of bob")
    shot(page, "browse-snapshot-1440")
    name, old = _download(page, page.locator("#entries tr[data-name='notes.txt'] a.file"))
    assert old == dash.bob_notes_v1 and name == "notes.txt"
    odd = page.locator("#entries tr[data-name='caf\ufffd.txt'] a.file")
    assert "path_b64=" in (odd.get_attribute("href") or "")
    assert _download(page, odd)[1] == ODD_CONTENT
    page.locator("#entries tr[data-name=project] a.dir").click()
    expect(page.locator(".crumbs")).to_contain_text("project")
    name, raw = _download(page, page.locator("#folder-zip"))
    day = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    assert name == f"bob-{day}-project.zip", name
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        csv = next(n for n in z.namelist() if n.endswith("data/raw.csv"))
        assert z.read(csv) == (dash.svc.homes / "bob" / "project/data/raw.csv").read_bytes()


def test_previews_are_safe(dash: Dash, bob: Any, bob_phone: Any) -> None:
    expect = _expect()
    page = bob
    page.goto(f"{dash.base}/")
    page.locator("#snapshots tbody tr").first.locator("a.browse").click()
    browse = page.url
    # An HTML file is shown as its text: the script is text, never run.
    page.locator("#entries tr[data-name='page.html'] a.preview").click()
    expect(page.locator("#preview-text")).to_contain_text("<script>document.title='pwned'")
    assert page.title() != "pwned" and page.locator("b:text('bold')").count() == 0
    # An image, recognized by its bytes, served as exactly that with a forbidding CSP.
    page.goto(browse)
    page.locator("#entries tr[data-name='plot.png'] a.preview").click()
    image = page.locator("#preview-image")
    expect(image).to_be_visible()
    assert image.evaluate("i => i.naturalWidth") == 16
    resp = page.request.get(dash.svc.hub.url + image.get_attribute("src"))
    assert resp.status == 200 and resp.body() == PNG
    assert resp.headers["content-type"] == "image/png"
    assert "sandbox" in resp.headers["content-security-policy"]
    assert resp.headers["x-content-type-options"] == "nosniff"
    # An SVG is a document: no preview, and its bytes are never served as an image.
    page.goto(browse)
    page.locator("#entries tr[data-name='logo.svg'] a.preview").click()
    expect(page.locator("#preview-text")).to_contain_text("<svg")
    svg_image = page.url.replace("/preview?", "/image?")  # an absolute URL
    assert page.request.get(svg_image).status == 415
    # A big text file: the first part, and the note to download the rest.
    page.goto(browse)
    page.locator("#entries tr[data-name='big.log'] a.preview").click()
    expect(page.locator("main")).to_contain_text("download the file for the rest")
    shot(page, "preview-text-1440")
    bob_phone.goto(page.url)
    _assert_fits(bob_phone, "preview at 390")
    shot(bob_phone, "preview-text-390")


def test_a_user_typing_another_users_url_is_refused(dash: Dash, bob: Any) -> None:
    expect = _expect()
    page = bob
    alice_snap = _api(dash, "/api/homes/alice/snapshots")["snapshots"][0]["id"]
    refused = {
        "/homes/alice": "bob may not read the home of alice",
        f"/homes/alice/snapshots/{alice_snap}/browse": "bob may not read the home of alice",
        f"/homes/alice/snapshots/{alice_snap}/preview?path=thesis.tex": "bob may not read",
        "/admin": "for hometier's admins",
        f"/api/homes/alice/snapshots/{alice_snap}/file?path=thesis.tex": "may not read",
    }
    for path, message in refused.items():
        resp = page.goto(f"{dash.base}{path}")
        assert resp.status == 403, (path, resp.status)
        assert message in page.content(), path
        if not path.startswith("/api/"):
            expect(page.locator(".refusal h1")).to_contain_text("Not allowed")
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "_xsrf")
    for action in ("restore", "archive", "exempt"):
        resp = page.request.post(
            f"{dash.base}/homes/carol/{action}",
            form={"back": "home", "_xsrf": token, "confirmed": "yes"},
        )
        assert resp.status == 403, action
    assert dash.home_state("carol") == "failed"


def test_a_browser_without_a_session_is_sent_to_the_hub_login(dash: Dash, browser: Any) -> None:
    snap = _api(dash, "/api/homes/bob/snapshots")["snapshots"][0]["id"]
    context = browser.new_context()
    page = context.new_page()
    try:
        for path in ("/admin", f"/api/homes/bob/snapshots/{snap}/file?path=notes.txt"):
            page.goto(f"{dash.base}{path}")
            assert "/hub/login" in page.url, (path, page.url)
            assert '"error"' not in page.content()
        shot(page, "hub-login-1440")
    finally:
        context.close()


# --- an S3 outage --------------------------------------------------------------------


def _health(dash: Dash) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{dash.svc.url}/health", timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_storm_of_health_probes_costs_one_probe_of_the_store(dash: Dash) -> None:
    before = dash.proxy.requests()
    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        answers = list(pool.map(lambda _: _health(dash), range(300)))
    took = time.monotonic() - began
    probes = dash.proxy.requests() - before
    print(f"300 health checks in {took:.1f}s reached the store {probes} time(s)")
    assert all(a == (200, {"status": "ok", "database": "ok", "store": "ok"}) for a in answers)
    assert probes <= took // 5 + 2, probes  # one probe per 5 s at most, whatever the storm


def test_an_s3_outage_is_visible_told_and_heals(dash: Dash, ops: Any, bob: Any) -> None:
    expect = _expect()
    page = ops
    assert _health(dash) == (200, {"status": "ok", "database": "ok", "store": "ok"})
    dash.proxy.set_rules(Rule("reset"))
    try:
        deadline = time.monotonic() + 30
        while _health(dash)[1]["store"] != "unreachable" and time.monotonic() < deadline:
            time.sleep(0.5)
        status, doc = _health(dash)
        assert status == 200 and doc == {
            "status": "degraded", "database": "ok", "store": "unreachable"
        }  # fmt: skip
        page.goto(f"{dash.base}/admin")
        banner = page.locator("#outage-banner")
        expect(banner).to_contain_text("Object storage is unreachable")
        assert "127.0.0.1" not in banner.inner_text() and "s3://" not in banner.inner_text()
        shot(page, "admin-s3-outage-1440")
        # A restore now fails at once with a sentence; the admins' webhook is told.
        page.locator("#homes tr[data-user=judy] button:text('Restore')").click()
        page.wait_for_url(f"{dash.base}/homes/judy")
        expect(page.locator("#home-state")).to_have_text("failed", timeout=RESTORE_TIMEOUT)
        expect(page.locator("#home-error")).to_contain_text("storage is unreachable")
        expect(page.locator("#home-error-details .detail-text")).to_be_hidden()
        deadline = time.monotonic() + 15
        while not any(m["event"] == "restore-failed" for m in dash.hook):
            assert time.monotonic() < deadline, dash.hook
            time.sleep(0.2)
        told = next(m for m in dash.hook if m["event"] == "restore-failed")
        assert told["user"] == "judy" and told["reason"] == "storage" and told["reference"]
        # The user's own page says what happened, in words; bob's snapshots wait.
        bob.goto(f"{dash.base}/")
        expect(bob.locator("main")).to_contain_text("The snapshots could not be listed")
        assert "127.0.0.1" not in bob.locator("main").inner_text()
    finally:
        dash.proxy.clear()
    deadline = time.monotonic() + 30
    while _health(dash)[1]["status"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _health(dash) == (200, {"status": "ok", "database": "ok", "store": "ok"})
    page.goto(f"{dash.base}/admin")
    expect(page.locator("#outage-banner")).to_have_count(0)
    page.locator("#homes tr[data-user=judy] button:text('Restore')").click()
    page.wait_for_url(f"{dash.base}/homes/judy")
    expect(page.locator("#home-state")).to_have_text("active", timeout=RESTORE_TIMEOUT)

"""One archiver cycle, and the loop that runs it every ``interval``.

A cycle: recover interrupted work → learn about homes on disk → gather what the database
and the Hub say (activity, leases, running servers) → walk the files of only the homes
that could be chosen, oldest first, until ``max_per_cycle`` are confirmed idle → archive
the chosen ones → purge the quarantine. A cycle costs O(homes it can archive), not a walk
of every idle home.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import stat
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from hometier.errors import Error
from hometier.lifecycle.activity import HubUnavailable, scan_home
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.cycle import ArchiveResult, archive_claimed, purge_quarantine, recover
from hometier.lifecycle.homes import QUARANTINE_DIR
from hometier.lifecycle.inuse import hardlinks_protected
from hometier.lifecycle.policy import Decision, HomeFacts, select_idle
from hometier.lifecycle.retention import apply_retention
from hometier.state import ACTIVE, candidates, queries

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    started: dt.datetime
    decisions: list[Decision] = field(default_factory=list)
    results: list[ArchiveResult] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: str | None = None
    """Why nothing was archived this cycle (the Hub could not be read), if so."""
    walked: int = 0
    """Homes whose files were walked this cycle (at most ``max_per_cycle`` plus those
    found active or out of the size bounds)."""


NOT_HOMES = frozenset({"lost+found"})
HUB_RETRY = dt.timedelta(minutes=1)
"""After a cycle skipped because the Hub could not be read, the next try comes this soon
(doubling up to ``interval``), not a whole interval later."""


def discover_homes(lc: Lifecycle) -> list[str]:
    """Register every folder under the homes root that maps back to a user name.

    Never a candidate: dot-folders (the quarantine among them), ``lost+found``, mount
    points (a filesystem of its own cannot be moved aside), and names that are not
    JupyterHub user names (``name_pattern``)."""
    found: list[str] = []
    now = lc.now()
    root = lc.layout.root
    if not root.is_dir():
        return found
    dev = os.stat(root).st_dev
    pattern = re.compile(lc.name_pattern)
    known = queries.home_users(lc.db)  # one statement, not one per folder
    for entry in os.scandir(root):
        user = entry.name
        if user.startswith(".") or user in NOT_HOMES or not pattern.search(user):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_dev != dev:
            continue
        if not lc.layout.maps_back(user):
            continue  # not a valid name, or a template that does not map names back
        if user not in known:
            queries.get_or_create_home(lc.db, user, str(root / user), now, actor=lc.worker)
        found.append(user)
    return found


NEXT_CYCLE = "over max_per_cycle; next cycle"
"""Why a home that could be archived was not (and not walked): the cycle's budget is spent."""


def gather_facts(lc: Lifecycle, report: CycleReport) -> tuple[list[HomeFacts], dict[str, str]]:
    """What the database and the Hub say about every home, without walking any: the facts
    (recorded activity and sizes) and each home's path. Hub activity newer than the
    database's is recorded first, in one transaction. Raises ``HubUnavailable``."""
    now = lc.now()
    homes = candidates.cycle_homes(lc.db, now)
    running: set[str] = set()
    if lc.hub is not None:
        seen = {h.user: h.last_activity for h in homes}
        newer: list[tuple[str, dt.datetime]] = []
        try:
            for u in lc.hub.users():
                # Only activity newer than what the database holds is written, for users
                # with a home here (the Hub also knows users who never had one).
                if u.last_activity is not None and u.name in seen:
                    known = seen[u.name]
                    if known is None or u.last_activity > known:
                        newer.append((u.name, u.last_activity))
                if u.running:
                    running.add(u.name)
        except HubUnavailable as exc:
            # Without the Hub nobody can tell who is logged in: archive nothing this time.
            report.errors.append(exc.get_message())
            raise
        if newer and candidates.record_activities(lc.db, newer, "hub"):
            homes = candidates.cycle_homes(lc.db, now)
    facts = [
        HomeFacts(
            user=h.user,
            state=h.state,
            hot_bytes=h.hot_bytes,
            exempt=h.exempt,
            last_activity=h.last_activity,
            activity_source=h.activity_source,
            server_running=h.user in running,
            leases=h.leases if h.state == ACTIVE else 0,
            folder_missing=h.state == ACTIVE and not os.path.isdir(h.path),
        )
        for h in homes
    ]
    return facts, {h.user: h.path for h in homes}


WALKS_AT_MOST = 8
"""Walks at once whatever ``archive_concurrency`` says: each holds a database connection
to record what it found (PostgreSQL's pool is 5 + 10 by default)."""


def decide(
    lc: Lifecycle, facts: list[HomeFacts], paths: dict[str, str], report: CycleReport
) -> list[Decision]:
    """``select_idle``'s decisions, walking only the homes that could be chosen.

    Everything the database and the Hub can refuse (state, exemption, a running server,
    leases, recorded activity, a missing folder, quiet hours) is refused without touching
    the volume. The rest are walked in the order ``select_idle`` chooses (least recently
    active first, then user) until ``max_per_cycle`` are confirmed idle and within the
    size bounds; the ones after that are left for the next cycle, unwalked. A walk records
    what it found (a recent file takes the home out of the candidates until it ages).

    With ``archive_concurrency`` above 1, that many walks run at once, at most
    ``WALKS_AT_MOST`` (a walk mostly waits on the filesystem: a round trip per folder on
    NFS), and a walk starts only while the homes chosen plus the walks under way are
    fewer than ``max_per_cycle``: the homes walked, and the decisions, are exactly those
    of walking one after the other. If a walk fails, walks already started finish (and
    record what they found) before the error is raised.
    """
    now = lc.now()
    policy = lc.policy
    threshold = now - policy.inactive_after
    # Sizes are checked after the walk: the recorded ones may be stale, and a home refused
    # for its size must not use up the cycle's budget.
    unbounded = replace(policy, min_size=0, max_size=0, max_per_cycle=len(facts))
    one = replace(policy, max_per_cycle=1)
    by_user = {f.user: f for f in facts}
    order = select_idle(facts, now, unbounded)
    walks = [d for d in order if d.chosen]
    width = max(1, min(lc.archive_concurrency, WALKS_AT_MOST))
    chosen: list[Decision] = []
    kept: list[Decision] = []
    pending: dict[str, Future[HomeFacts | None]] = {}
    started = 0
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="walk") as pool:

        def start_walks() -> None:
            nonlocal started
            while (
                started < len(walks)
                and len(pending) < width
                and len(chosen) + len(pending) < policy.max_per_cycle
            ):
                d = walks[started]
                pending[d.user] = pool.submit(_walk, lc, by_user[d.user], paths[d.user], threshold)
                started += 1

        try:
            for d in order:
                start_walks()
                if not d.chosen:
                    kept.append(d)
                elif d.user not in pending:  # the budget was used up before its turn
                    kept.append(Decision(d.user, False, NEXT_CYCLE, d.idle_for))
                else:
                    walked = pending.pop(d.user).result()
                    report.walked += 1
                    if walked is None:
                        kept.append(Decision(d.user, False, "no longer known", d.idle_for))
                        continue
                    [final] = select_idle([walked], now, one)
                    (chosen if final.chosen else kept).append(final)
        finally:
            for f in pending.values():
                f.cancel()
    return chosen + kept


def _walk(lc: Lifecycle, f: HomeFacts, path: str, threshold: dt.datetime) -> HomeFacts | None:
    """Walk one home (stopping at a change newer than ``threshold``) and record what it
    found in one statement; the home's facts after that, or None if it is gone."""
    scan = scan_home(path, stop_after=threshold)
    sizes = (scan.bytes, scan.files) if scan.complete else None
    row = candidates.record_walk(lc.db, f.user, scan.newest, sizes)
    if row is None:
        return None
    return replace(
        f,
        last_activity=row.last_activity,
        activity_source=row.activity_source,
        hot_bytes=row.hot_bytes,
    )


def run_cycle(lc: Lifecycle, *, dry_run: bool = False) -> CycleReport:
    """Run one archiver cycle; never raises for one home's failure (it is reported).

    ``dry_run`` registers homes, gathers activity (recording it in the database) and
    reports the decisions, but archives, recovers and purges nothing. It walks exactly the
    homes the real cycle would walk, so its decisions are that cycle's: homes past
    ``max_per_cycle`` say so, unwalked (``hometier plan`` walks every home).
    """
    report = CycleReport(started=lc.now())
    if lc.use_hub and lc.hub is None:
        report.skipped = (
            "no JupyterHub API is configured (c.Archiver.hub_api_url or JUPYTERHUB_API_URL, "
            "with a token), so nobody can tell whose server is running: archiving nothing. "
            "On a deployment without JupyterHub, set c.Archiver.use_hub = False"
        )
        report.errors.append(report.skipped)
        log.error("skipping this cycle: %s", report.skipped)
        return report
    if not dry_run:
        report.recovered = recover(lc, report.errors)
    discover_homes(lc)
    try:
        facts, paths = gather_facts(lc, report)
    except HubUnavailable:
        report.skipped = report.errors[-1]
        log.error("skipping this cycle: %s", report.skipped)
        return report
    report.decisions = decide(lc, facts, paths, report)
    if dry_run:
        return report
    idle_before = lc.now() - lc.policy.inactive_after
    chosen = [d.user for d in report.decisions if d.chosen]
    outcomes: dict[str, ArchiveResult | str | None] = {}

    def one(user: str) -> None:
        claimed = queries.begin_archive_claim(
            lc.db,
            lc.worker,
            lc.now(),
            limit=1,
            candidates=[user],
            idle_before=idle_before,
            claim_for=lc.claim_for,
        )
        if not claimed:
            outcomes[user] = None  # another worker took it, or it became active meanwhile
            return
        try:
            outcomes[user] = archive_claimed(lc, user, claimed[0].version, lc.layout.path(user))
        except Exception as exc:  # noqa: BLE001 - one home must not stop the cycle for all
            msg = exc.get_message() if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"
            log.error("archiving %s failed: %s", user, msg)
            outcomes[user] = msg

    if lc.archive_concurrency > 1 and len(chosen) > 1:
        with ThreadPoolExecutor(lc.archive_concurrency, thread_name_prefix="archive") as pool:
            for done in [pool.submit(one, u) for u in chosen]:
                done.result()  # ``one`` reports its own failures
    else:
        for user in chosen:
            one(user)
    for user in chosen:  # reported in the order they were chosen
        outcome = outcomes.get(user)
        if isinstance(outcome, str):
            report.errors.append(f"{user}: {outcome}")
        elif outcome is not None:
            report.results.append(outcome)
            if outcome.outcome == "failed":
                report.errors.append(f"{user}: {outcome.reason}")
    report.purged = purge_quarantine(lc, report.errors)
    return report


def run_forever(lc: Lifecycle, interval: dt.timedelta, stop: threading.Event) -> None:
    """Run cycles until ``stop`` is set; a failing cycle (database down) is logged and retried."""
    last_prune: dt.datetime | None = None
    retry = HUB_RETRY
    if hardlinks_protected() is False:
        log.warning(
            "fs.protected_hardlinks is 0 on this host: users can hard-link files they cannot "
            "read into their homes, and the archive reads them as root. Set it to 1 "
            "(sysctl fs.protected_hardlinks=1), the default of most distributions."
        )
    while not stop.is_set():
        wait = interval
        try:
            report = run_cycle(lc)
            archived = sum(1 for r in report.results if r.outcome == "archived")
            log.info("cycle done: %d archived, %d errors", archived, len(report.errors))
            if report.skipped is not None:
                # The Hub is not up yet (or down): try again soon, not an interval later.
                wait, retry = min(retry, interval), min(retry * 2, interval)
                log.info("next try in %s", wait)
            else:
                retry = HUB_RETRY
            every = lc.retention.every
            if every is not None and (last_prune is None or lc.now() - last_prune >= every):
                apply_retention(lc, lc.retention)
                last_prune = lc.now()
        except Exception:  # noqa: BLE001 - the loop must survive a bad cycle
            log.exception("archiver cycle failed; retrying in %s", interval)
        stop.wait(wait.total_seconds())


__all__ = ["QUARANTINE_DIR", "CycleReport", "discover_homes", "run_cycle", "run_forever"]

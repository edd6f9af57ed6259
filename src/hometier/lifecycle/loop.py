"""One archiver cycle, and the loop that runs it every ``interval``.

A cycle: recover interrupted work → learn about homes on disk → gather activity (Hub,
file times, leases) → ``select_idle`` → archive the chosen ones → purge the quarantine.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import stat
import threading
from dataclasses import dataclass, field

from hometier.errors import Error
from hometier.lifecycle.activity import HubUnavailable, scan_home
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.cycle import ArchiveResult, archive_claimed, purge_quarantine, recover
from hometier.lifecycle.homes import QUARANTINE_DIR, InvalidUsername
from hometier.lifecycle.inuse import hardlinks_protected
from hometier.lifecycle.policy import Decision, HomeFacts, select_idle
from hometier.lifecycle.retention import apply_retention
from hometier.state import ACTIVE, queries

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
        try:
            if lc.layout.path(user) != root / user:
                continue  # a template that does not map folder names back to users
        except InvalidUsername:
            continue
        if user not in known:
            queries.get_or_create_home(lc.db, user, str(root / user), now, actor=lc.worker)
        found.append(user)
    return found


def gather_facts(lc: Lifecycle, report: CycleReport) -> list[HomeFacts]:
    now = lc.now()
    running: set[str] = set()
    if lc.hub is not None:
        # Only activity newer than what the database holds is written (one statement for
        # all users to compare, rather than one update per Hub user per cycle).
        seen = {h.user: h.last_activity for h in queries.list_homes(lc.db)}
        try:
            for u in lc.hub.users():
                known = seen.get(u.name)
                if u.last_activity is not None and (known is None or u.last_activity > known):
                    try:
                        queries.record_activity(lc.db, u.name, u.last_activity, "hub")
                    except queries.HomeNotFound:
                        pass
                if u.running:
                    running.add(u.name)
        except HubUnavailable as exc:
            # Without the Hub nobody can tell who is logged in: archive nothing this time.
            report.errors.append(exc.get_message())
            raise
    threshold = now - lc.policy.inactive_after
    facts: list[HomeFacts] = []
    lease_counts = queries.active_lease_counts(lc.db, now)
    for home in queries.list_homes(lc.db):
        hot_bytes = home.hot_bytes
        if (
            home.state == ACTIVE
            and not home.exempt
            and (home.last_activity is None or home.last_activity < threshold)
        ):
            scan = scan_home(home.path, stop_after=threshold)
            if scan.newest is not None:
                queries.record_activity(lc.db, home.user, scan.newest, "files")
            if scan.complete:
                queries.set_sizes(lc.db, home.user, scan.bytes, scan.files)
                hot_bytes = scan.bytes
            home = queries.get_home(lc.db, home.user)
        leases = lease_counts.get(home.user, 0) if home.state == ACTIVE else 0
        facts.append(
            HomeFacts(
                user=home.user,
                state=home.state,
                hot_bytes=hot_bytes,
                exempt=home.exempt,
                last_activity=home.last_activity,
                activity_source=home.last_activity_source,
                server_running=home.user in running,
                leases=leases,
                folder_missing=home.state == ACTIVE and not os.path.isdir(home.path),
            )
        )
    return facts


def run_cycle(lc: Lifecycle, *, dry_run: bool = False) -> CycleReport:
    """Run one archiver cycle; never raises for one home's failure (it is reported).

    ``dry_run`` registers homes and gathers activity (database only) and reports the
    decisions, but archives, recovers and purges nothing.
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
        facts = gather_facts(lc, report)
    except HubUnavailable:
        report.skipped = report.errors[-1]
        log.error("skipping this cycle: %s", report.skipped)
        return report
    report.decisions = select_idle(facts, lc.now(), lc.policy)
    if dry_run:
        return report
    idle_before = lc.now() - lc.policy.inactive_after
    for d in report.decisions:
        if not d.chosen:
            continue
        claimed = queries.begin_archive_claim(
            lc.db,
            lc.worker,
            lc.now(),
            limit=1,
            candidates=[d.user],
            idle_before=idle_before,
            claim_for=lc.claim_for,
        )
        if not claimed:
            continue  # another worker took it, or it became active meanwhile
        try:
            result = archive_claimed(lc, d.user, claimed[0].version, lc.layout.path(d.user))
        except Exception as exc:  # noqa: BLE001 - one home must not stop the cycle for all
            msg = exc.get_message() if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"
            log.error("archiving %s failed: %s", d.user, msg)
            report.errors.append(f"{d.user}: {msg}")
            continue
        report.results.append(result)
        if result.outcome == "failed":
            report.errors.append(f"{d.user}: {result.reason}")
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

"""Follow JupyterHub's groups: make every space's volume say who may read and write now.

``reconcile`` reads the Hub's groups once, expands each space's declared members,
compares the result with what was last applied and, where it differs (or a setting
changed: ``members_version``), applies it to the volume first and records it second, with
one audit event per user who gained, lost or changed access. A crash in between is
repaired by the next round: applying is idempotent. When the Hub cannot be read nothing
is revoked or granted through groups; the round retries later.

``measure`` walks a space's metadata for its size and newest change: the quota (soft:
a space over its quota becomes read-only for everyone until it is back under) and the
idle time for tiering.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field

from hometier.errors import Error
from hometier.spaces import volume
from hometier.spaces.context import SpacesContext
from hometier.spaces.members import HubGroupsUnavailable, HubView, effective_access
from hometier.state import spaces as q
from hometier.state.spaces import Space

log = logging.getLogger(__name__)
GATE_ONLY_STATES = ("archiving", "restoring")


@dataclass
class Report:
    hub_ok: bool = True
    changes: dict[str, list[tuple[str, str | None, str | None]]] = field(default_factory=dict)
    """Space name → (user, old role, new role) for every user whose access changed."""
    applied: list[str] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)
    raced: int = 0
    errors: list[str] = field(default_factory=list)


def hub_view(sp: SpacesContext) -> tuple[HubView | None, bool]:
    """(the Hub's groups and users, True) — or (None, False) when it cannot be read;
    (None, True) when no Hub is configured (explicit members only)."""
    if sp.hub is None:
        return None, True
    try:
        return sp.hub.view(), True
    except HubGroupsUnavailable as exc:
        log.warning("spaces: %s; access through groups is left as it was", exc.get_message())
        return None, False


def reconcile(
    sp: SpacesContext,
    *,
    only: set[int] | None = None,
    force: bool = False,
    actor: str | None = None,
    reason: str = "",
) -> Report:
    """One round over every space (or the ids in ``only``); see the module docstring."""
    report = Report()
    view, report.hub_ok = hub_view(sp)
    declared = q.all_members(sp.db)
    for space in q.list_spaces(sp.db):
        if only is not None and space.id not in only:
            continue
        if not report.hub_ok and any(m.kind == "group" for m in declared.get(space.id, [])):
            continue  # groups unknown: neither grant nor revoke through them
        try:
            reconcile_space(
                sp,
                space,
                declared.get(space.id, []),
                view,
                report,
                force=force,
                actor=actor or sp.actor,
                reason=reason,
            )
        except Error as exc:
            report.errors.append(f"{space.name}: {exc.get_message()}")
            log.error("spaces: %s: %s", space.name, exc.get_message())
        except OSError as exc:
            report.errors.append(f"{space.name}: {exc.strerror or exc}")
            log.exception("spaces: applying %s failed", space.name)
    return report


def reconcile_space(
    sp: SpacesContext,
    space: Space,
    declared: list[q.SpaceMember],
    view: HubView | None,
    report: Report,
    *,
    force: bool,
    actor: str,
    reason: str = "",
) -> None:
    want = effective_access(space.owner, [(m.kind, m.name, m.role) for m in declared], view)
    have = q.access(sp.db, space.id)
    if want == have and space.applied_version >= space.members_version and not force:
        return
    lost_write = frozenset(u for u, r in have.items() if r == "writer" and want.get(u) != "writer")
    with volume.space_lock(sp, space, timeout=0 if space.state in GATE_ONLY_STATES else 600):
        fresh = q.get_space_by_id(sp.db, space.id)
        if fresh.state in GATE_ONLY_STATES:
            # Archive and restore close the gate themselves and reapply at their end.
            return
        # An archived space holds only the notice: its folder is all there is to set.
        applied = volume.apply(
            sp, fresh, want, disown=lost_write, gate_only=fresh.state == "archived"
        )
    report.raced += applied.stats.raced
    if applied.missing:
        report.missing[space.name] = applied.missing
    changes = q.record_access(
        sp.db, space.id, want, fresh.members_version, actor, sp.now(), reason=reason
    )
    report.applied.append(space.name)
    if changes:
        report.changes[space.name] = changes
        log.info("spaces: %s: %d access change(s) applied", space.name, len(changes))


def measure_due(sp: SpacesContext, *, force: bool = False) -> list[str]:
    """Measure the spaces not measured for ``measure_every``; flag quota changes."""
    out = []
    now = sp.now()
    for space in q.list_spaces(sp.db):
        if space.state != "active":
            continue
        if not force and space.measured_at and now - space.measured_at < sp.measure_every:
            continue
        try:
            measure_space(sp, space)
            out.append(space.name)
        except (Error, OSError) as exc:
            log.warning("spaces: measuring %s failed: %s", space.name, exc)
    return out


def measure_space(sp: SpacesContext, space: Space) -> Space:
    stats = volume.measure(sp, space)
    newest = dt.datetime.fromtimestamp(stats.newest_ns / 1e9, dt.UTC) if stats.newest_ns else None
    space = q.record_usage(sp.db, space.id, stats.bytes, stats.files, newest, sp.now())
    over = bool(space.quota_bytes) and space.used_bytes > space.quota_bytes
    if over != space.over_quota:
        space = q.update_space(sp.db, space.id, sp.actor, sp.now(), over_quota=over)
        with sp.db.transaction() as s:
            q.log_event(
                s,
                space,
                "space.quota",
                sp.actor,
                sp.now(),
                over=over,
                used_bytes=space.used_bytes,
                quota_bytes=space.quota_bytes,
            )
    return space


def run_forever(sp: SpacesContext, interval: float, stop: threading.Event) -> None:
    """Reconcile every ``interval`` seconds (and measure, archive idle spaces, purge
    quarantines) until ``stop`` is set. Errors are logged; the loop goes on."""
    from hometier.spaces import tiering

    while not stop.is_set():
        try:
            reconcile(sp)
            measure_due(sp)
            tiering.run_tiering(sp)
        except Exception:  # noqa: BLE001 - the loop must survive anything
            log.exception("spaces: reconcile round failed")
        stop.wait(interval)

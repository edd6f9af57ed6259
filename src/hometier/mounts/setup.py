"""Build the bucket folders' runtime objects from configuration, and run the check loop."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Any

from hometier.config import Hometier, Mounts
from hometier.crypto import NoSecretKey, Sealer
from hometier.errors import Error, UsageError
from hometier.mounts.client import S3fs
from hometier.mounts.host import HostLayout
from hometier.mounts.manager import MountManager
from hometier.state.db import Database

log = logging.getLogger(__name__)


def _seconds(text: str) -> dt.timedelta:
    # The units of hometier.lifecycle.units, which this layer may not import.
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return dt.timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return dt.timedelta(seconds=float(text))
    except ValueError:
        raise UsageError(f"bad duration {text!r}: use 30s, 5m, 1h") from None


@dataclass
class MountSettings:
    enabled: bool
    check_interval: dt.timedelta


def make_sealer(cfg: Hometier) -> Sealer | None:
    """The configured ``Sealer``, or None when no key is set (folders with credentials
    then cannot be registered or mounted, and say so)."""
    try:
        return Sealer.from_config(cfg)
    except NoSecretKey:
        return None


def make_manager(config: Any, db: Database) -> tuple[MountManager, MountSettings]:
    """A ``MountManager`` from a traitlets config (``c.Mounts``, ``c.Hometier``)."""
    cfg = Hometier(config=config)
    m = Mounts(config=config)
    mgr = MountManager(
        db=db,
        layout=HostLayout(m.root),
        sealer=make_sealer(cfg),
        host=m.host,
        client=S3fs(m.s3fs),
        unmount_after=_seconds(m.unmount_after),
        probe_timeout=float(m.probe_timeout),
        mount_timeout=float(m.mount_timeout),
    )
    return mgr, MountSettings(enabled=m.enabled, check_interval=_seconds(m.check_interval))


def run_checks(mgr: MountManager, every: dt.timedelta, stop: threading.Event) -> None:
    """Check mounts at once (adopting what an earlier hometier left) and then every
    ``every``, until ``stop`` is set. Errors are logged; the loop goes on."""
    from hometier.mounts.reconcile import check

    while not stop.is_set():
        try:
            report = check(mgr)
            for what, items in report.to_doc().items():
                if items and what != "adopted":
                    log.info("bucket folders: %s %s", what, ", ".join(items))
        except Error as exc:
            log.warning("bucket folders check: %s", exc)
        except Exception:  # noqa: BLE001 - the loop must survive anything
            log.exception("bucket folders check failed")
        stop.wait(max(1.0, every.total_seconds()))


__all__ = ["MountSettings", "make_manager", "make_sealer", "run_checks"]

"""Telling a job's owner how a run went.

hometier's notifier (``hometier.notify.notify(event, user, subject, text, **fields)``)
carries the message to wherever the operator configured (mail, a webhook, …). Where
that module is not installed, the message goes to the event log only, which the run's
page and ``hometier jobs runs`` show anyway.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Notify = Callable[..., Any]


def _event_log_only(event: str, user: str | None, subject: str, text: str, **fields: Any) -> None:
    log.info("%s for %s: %s", event, user, subject)


def find_notifier() -> Notify:
    """``hometier.notify.notify`` if present, else a stand-in that only logs."""
    try:
        module = importlib.import_module("hometier.notify")
    except ImportError:
        return _event_log_only
    fn = getattr(module, "notify", None)
    return fn if callable(fn) else _event_log_only


def tell_owner(
    notify: Notify, event: str, user: str, subject: str, text: str, **fields: Any
) -> None:
    """Send, never raising: a notifier that fails must not fail the run's bookkeeping."""
    try:
        notify(event, user, subject, text, **fields)
    except Exception:  # noqa: BLE001 - logged; the run's outcome is already recorded
        log.exception("could not notify %s of %s", user, event)

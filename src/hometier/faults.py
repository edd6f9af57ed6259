"""Named fault points for crash tests (fail points, as FoundationDB and TiKV have them).

``point("after_snapshot")`` does nothing unless the environment variable
``HOMETIER_FAULTS`` names that point: ``HOMETIER_FAULTS=after_snapshot:kill`` kills the
process with SIGKILL there, ``...:raise`` raises ``FaultInjected``. Tests use it to prove
that a crash at every step leaves every home on disk or fully restorable.
"""

from __future__ import annotations

import os
import signal


class FaultInjected(RuntimeError):
    pass


def _parse() -> dict[str, str]:
    spec = os.environ.get("HOMETIER_FAULTS", "")
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, _, action = item.partition(":")
        out[name] = action or "kill"
    return out


def point(name: str) -> None:
    action = _parse().get(name) if "HOMETIER_FAULTS" in os.environ else None
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise FaultInjected(name)

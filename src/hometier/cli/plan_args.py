"""The ``plan`` verb's arguments, without its code: a scan with its report, the replay
of a login history, the price tables and ``rich``'s progress are imported when ``plan``
runs, not by every command (``restore`` and ``fetch-home`` start in an init container
at each login)."""

from __future__ import annotations

import argparse
from typing import Any

from hometier.config import Hometier


def register(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="dry run: what archiving idle homes would move and save (changes nothing)",
    )
    p.add_argument("root", nargs="?", help="homes root to scan (default: --homes)")
    p.add_argument("--thresholds", help="idle thresholds, e.g. 7d,30d,90d,180d [c.Plan]")
    p.add_argument("--now", help="the time to judge idleness at (ISO 8601; default: now)")
    p.add_argument("--posix-tier", help="price tier of the homes volume, e.g. efs-standard")
    p.add_argument("--object-tier", help="price tier of the bucket, e.g. s3-standard-ia")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report")
    p.add_argument("--sample-mb", type=int, help="most MiB read for the estimate (0: none)")
    p.add_argument("--sample-sizes", type=int, help="most distinct file sizes sampled")
    p.add_argument("--seed", type=int, help="seed of the sample")
    p.add_argument("--workers", type=int, help="homes walked in parallel")
    p.add_argument("--no-hub", action="store_true", help="ignore the Hub even if configured")
    p.add_argument("--tiers", action="store_true", help="list the price tiers and exit")
    replay_args(p)
    p.set_defaults(handler=_cmd_plan)


def replay_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--replay",
        metavar="LOGINS",
        help="replay a login history (CSV user,time or JupyterHub's log) against each "
        "threshold and quarantine; changes nothing",
    )
    p.add_argument("--quarantine", default="0d,3d", help="quarantine times to replay [0d,3d]")
    p.add_argument("--tz", default="UTC", help="time zone of times without an offset [UTC]")
    p.add_argument("--session", default="1h", help="a server's life after a login [1h]")
    p.add_argument("--since", help="start of the replay (ISO 8601; default: first login)")
    p.add_argument("--until", help="end of the replay (ISO 8601; default: last login or --now)")


def _cmd_plan(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.cli.plan_cmds import cmd_plan

    return cmd_plan(args, cfg)

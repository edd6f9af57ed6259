"""``hometier spaces ...``: shared spaces from the command line, as a hometier admin.

Works on the same database and volume as the service (run it as root on the host that
holds the spaces root). Members are given as ``user:NAME`` or ``group:NAME``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from rich.table import Table

from hometier.cli.output import emit_json, err, human, out
from hometier.config import Hometier
from hometier.errors import UsageError

ADMIN = "cli"


def register(sub: Any) -> None:
    top = sub.add_parser("spaces", help="shared spaces: create, members, archive, mounts")
    verbs = top.add_subparsers(dest="spaces_verb", metavar="ACTION", required=True)

    p = verbs.add_parser("list", help="every space")
    p.set_defaults(handler=cmd_list)

    p = verbs.add_parser("show", help="one space, its members and who has access now")
    p.add_argument("name", help="the space's name")
    p.set_defaults(handler=cmd_show)

    p = verbs.add_parser("create", help="a new space (its folder, group and ACLs)")
    p.add_argument("name", help="the new space's name (lowercase letters, digits, -; at most 48)")
    p.add_argument(
        "--level",
        choices=["public", "private", "secret"],
        default="private",
        help="public: everyone reads; private: members; secret: members, and hidden from everyone else",
    )
    p.add_argument(
        "--kind",
        choices=["data", "software"],
        default="data",
        help="data (mounted at ~/shared/NAME) or software (read-only, with LMod module files)",
    )
    p.add_argument("--owner", required=True, help="JupyterHub user who manages it")
    p.add_argument("--quota", default="0", help="e.g. 50GB (0: none)")
    p.add_argument("--description", default="", help="what it holds, shown to those who may see it")
    p.add_argument(
        "--reader",
        action="append",
        default=[],
        metavar="user:X|group:Y",
        help="a reader (user:NAME or group:NAME of JupyterHub); repeat for more",
    )
    p.add_argument(
        "--writer",
        action="append",
        default=[],
        metavar="user:X|group:Y",
        help="a writer (user:NAME or group:NAME of JupyterHub); repeat for more",
    )
    p.set_defaults(handler=cmd_create)

    p = verbs.add_parser("set", help="change level, owner, quota, description, exemption")
    p.add_argument("name", help="the space's name")
    p.add_argument(
        "--level",
        choices=["public", "private", "secret"],
        help="the new level (public, private, secret)",
    )
    p.add_argument("--owner", help="the user who manages it")
    p.add_argument("--quota", help="soft quota, e.g. 50GB (0: none)")
    p.add_argument("--description", help="what it holds")
    p.add_argument(
        "--exempt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="never archive it (--no-exempt: archive it when idle)",
    )
    p.set_defaults(handler=cmd_set)

    for verb, text in (("grant", "add a member or change its role"), ("revoke", "remove one")):
        p = verbs.add_parser(verb, help=text)
        p.add_argument("name", help="the space's name")
        p.add_argument(
            "member",
            metavar="user:X|group:Y",
            help="a JupyterHub user or group: user:NAME or group:NAME",
        )
        if verb == "grant":
            p.add_argument(
                "--role",
                choices=["reader", "writer"],
                default="reader",
                help="what the member may do (default: reader)",
            )
        p.set_defaults(handler=cmd_grant if verb == "grant" else cmd_revoke)

    p = verbs.add_parser("delete", help="remove a space (its files go to the trash)")
    p.add_argument("name", help="the space's name")
    p.add_argument("--yes", action="store_true", help="really")
    p.set_defaults(handler=cmd_delete)

    p = verbs.add_parser("sync", help="follow JupyterHub's groups now")
    p.set_defaults(handler=cmd_sync)

    for verb in ("archive", "restore"):
        p = verbs.add_parser(verb, help=f"{verb} one space now")
        p.add_argument("name", help="the space's name")
        p.set_defaults(handler=cmd_archive if verb == "archive" else cmd_restore)

    p = verbs.add_parser("mounts", help="what a user's server mounts")
    p.add_argument("user", help="the JupyterHub user whose mounts to show")
    p.set_defaults(handler=cmd_mounts)

    p = verbs.add_parser("log", help="the audit log of a space")
    p.add_argument("name", help="the space's name")
    p.set_defaults(handler=cmd_log)


def _ctx(cfg: Hometier) -> Any:
    from hometier.app import make_spaces

    sp = make_spaces(cfg)
    if sp is None:
        raise UsageError("shared spaces are off: set c.Spaces.root (or HOMETIER_SPACES)")
    sp.actor = ADMIN
    return sp


def _viewer() -> Any:
    from hometier.spaces.manage import Viewer

    return Viewer(ADMIN, admin=True, is_user=False)


def _member(text: str) -> tuple[str, str]:
    kind, sep, name = text.partition(":")
    if not sep or kind not in ("user", "group") or not name:
        raise UsageError(f"a member is user:NAME or group:NAME, not {text!r}")
    return kind, name


def _doc(sp: Any, space: Any, full: bool = False) -> dict[str, Any]:
    from hometier.service.api.spaces import space_doc

    return space_doc(sp, space, _viewer(), full=full)


def cmd_list(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.spaces import manage

    sp = _ctx(cfg)
    docs = [_doc(sp, s) for s in manage.visible(sp, _viewer())]
    if args.json:
        emit_json(docs)
        return 0
    table = Table("name", "level", "kind", "owner", "state", "used", "quota")
    for d in docs:
        quota = human(d["quota_bytes"]) if d["quota_bytes"] else "-"
        table.add_row(
            d["name"],
            d["level"],
            d["kind"],
            d["owner"],
            d["state"],
            human(d["used_bytes"]),
            quota + (" (over)" if d["over_quota"] else ""),
        )
    out.print(table)
    return 0


def cmd_show(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.spaces import manage

    sp = _ctx(cfg)
    doc = _doc(sp, manage.find(sp, args.name, _viewer()), full=True)
    if args.json:
        emit_json(doc)
        return 0
    for key in ("name", "level", "kind", "owner", "state", "gid", "quota_bytes", "used_bytes"):
        out.print(f"{key}: {doc.get(key)}")
    for m in doc["members"]:
        out.print(f"member {m['kind']}:{m['name']} {m['role']}")
    for a in doc["access"]:
        out.print(f"access {a['user']} {a['role']}")
    return 0


def cmd_create(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.lifecycle.units import parse_size
    from hometier.spaces import manage

    sp = _ctx(cfg)
    members = [(*_member(m), "reader") for m in args.reader]
    members += [(*_member(m), "writer") for m in args.writer]
    space = manage.create(
        sp,
        name=args.name,
        level=args.level,
        kind=args.kind,
        owner=args.owner,
        quota_bytes=parse_size(args.quota),
        description=args.description,
        members=manage.parse_members([{"kind": k, "name": n, "role": r} for k, n, r in members]),
        actor=ADMIN,
    )
    return _print(args, _doc(sp, space, full=True), f"created {space.level} space {space.name}")


def cmd_set(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.lifecycle.units import parse_size
    from hometier.spaces import manage

    sp = _ctx(cfg)
    space = manage.find(sp, args.name, _viewer())
    changes: dict[str, Any] = {}
    for key in ("level", "owner", "description", "exempt"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    if args.quota is not None:
        changes["quota_bytes"] = parse_size(args.quota)
    space = manage.update(sp, space, changes, actor=ADMIN)
    return _print(args, _doc(sp, space, full=True), f"{space.name}: updated")


def _change_member(args: argparse.Namespace, cfg: Hometier, role: str | None) -> int:
    from hometier.spaces import manage
    from hometier.state import spaces as q

    sp = _ctx(cfg)
    space = manage.find(sp, args.name, _viewer())
    kind, name = _member(args.member)
    members = [
        (m.kind, m.name, m.role)
        for m in q.members(sp.db, space.id)
        if (m.kind, m.name) != (kind, name)
    ]
    if role is not None:
        members.append((kind, name, role))
    report = manage.set_members(sp, space, members, actor=ADMIN)
    changes = report.changes.get(space.name, [])
    doc = {"changes": [{"user": u, "was": a, "now": b} for u, a, b in changes]}
    lines = [f"{u}: {a or 'none'} -> {b or 'none'}" for u, a, b in changes] or ["no change"]
    return _print(args, doc, "\n".join(lines))


def cmd_grant(args: argparse.Namespace, cfg: Hometier) -> int:
    return _change_member(args, cfg, args.role)


def cmd_revoke(args: argparse.Namespace, cfg: Hometier) -> int:
    return _change_member(args, cfg, None)


def cmd_delete(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.spaces import manage

    if not args.yes:
        raise UsageError("deleting a space removes it for every member: add --yes")
    sp = _ctx(cfg)
    manage.delete(sp, manage.find(sp, args.name, _viewer()), actor=ADMIN)
    return _print(args, {"name": args.name, "deleted": True}, f"{args.name}: deleted")


def cmd_sync(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.spaces.reconcile import reconcile

    report = reconcile(_ctx(cfg), actor=ADMIN)
    if args.json:
        emit_json(dataclasses.asdict(report))
    else:
        for name, changes in report.changes.items():
            for u, a, b in changes:
                out.print(f"{name}: {u}: {a or 'none'} -> {b or 'none'}")
        for e in report.errors:
            err.print(f"[red]error:[/red] {e}", highlight=False)
        if not report.hub_ok:
            err.print("JupyterHub could not be read: access through groups left as it was")
    return 1 if report.errors or not report.hub_ok else 0


def cmd_archive(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.service.api.spaces import running_members
    from hometier.spaces import manage, tiering

    sp = _ctx(cfg)
    space = manage.find(sp, args.name, _viewer())
    done = tiering.archive_space(sp, space, actor=ADMIN, running=running_members(sp, space))
    return _print(args, dataclasses.asdict(done), f"{done.space}: {done.outcome}")


def cmd_restore(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.spaces import manage, tiering

    sp = _ctx(cfg)
    done = tiering.restore_space(sp, manage.find(sp, args.name, _viewer()), actor=ADMIN)
    return _print(args, dataclasses.asdict(done), f"{done.space}: {done.outcome}")


def cmd_mounts(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.lifecycle.homes import check_username
    from hometier.spaces.mounts import mounts_for

    found = [m.doc() for m in mounts_for(_ctx(cfg), check_username(args.user))]
    lines = [
        f"{m['mount_path']} <- {m['host_path']} ({'ro' if m['read_only'] else 'rw'})" for m in found
    ]
    return _print(args, found, "\n".join(lines) or "no spaces")


def cmd_log(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.spaces import manage
    from hometier.state import spaces as q

    sp = _ctx(cfg)
    events = q.space_events(sp.db, manage.find(sp, args.name, _viewer()).id, 200)
    docs = [
        {"at": e.at, "kind": e.kind, "user": e.user, "actor": e.actor, "detail": e.detail}
        for e in events
    ]
    lines = [
        f"{d['at']:%Y-%m-%d %H:%M:%S} {d['kind']} {d['user'] or ''} by {d['actor']}" for d in docs
    ]
    return _print(args, docs, "\n".join(lines) or "no events")


def _print(args: argparse.Namespace, doc: Any, text: str) -> int:
    if args.json:
        emit_json(doc)
    else:
        out.print(text, highlight=False)
    return 0

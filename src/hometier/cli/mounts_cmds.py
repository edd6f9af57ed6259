"""``hometier mounts ...``: bucket folders from the command line.

Secrets never go on the command line (``ps`` shows it to every user): the secret key of
a folder comes from ``HOMETIER_BUCKET_SECRET``, from ``--secret-file`` (a file only its
owner may read) or from a prompt on a terminal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import sys
from typing import Any

from hometier.cli.output import emit_json, err, out
from hometier.config import Hometier
from hometier.errors import UsageError

SECRET_ENV = "HOMETIER_BUCKET_SECRET"


def register(sub: Any) -> None:
    from hometier.cli.repo_cmds import add_common

    p = sub.add_parser("mounts", help="bucket folders: S3 buckets as folders in servers")
    verbs = p.add_subparsers(dest="mounts_verb", metavar="ACTION", required=True)

    def verb(name: str, help: str, handler: Any) -> argparse.ArgumentParser:
        v: argparse.ArgumentParser = verbs.add_parser(name, help=help)
        v.set_defaults(handler=handler)
        add_common(v)
        return v

    verb("list", "registered bucket folders", cmd_list)
    v = verb("show", "one bucket folder (never its credentials)", cmd_show)
    v.add_argument("name", help="the bucket folder's name")
    for name, handler in (("add", cmd_add), ("change", cmd_change)):
        v = verb(name, f"{name} a bucket folder", handler)
        v.add_argument("name", help="the bucket folder's name")
        _folder_flags(v, required=name == "add")
    v = verb("remove", "remove a bucket folder (none of its mounts may be attached)", cmd_remove)
    v.add_argument("name", help="the bucket folder's name")
    verb("status", "host mounts and the servers attached to them", cmd_status)
    v = verb("attach", "attach a user's folders to a server now (as its spawn would)", cmd_attach)
    v.add_argument("user", help="the JupyterHub user whose server gets the folders")
    v.add_argument("--server", default="", help="the server's name (empty: the default server)")
    v.add_argument(
        "--kind",
        choices=["local", "host"],
        default="local",
        help=(
            "local: the server runs on this host (each folder bound inside the home); "
            "host: it runs in a container (folders bound where the spawner binds them in)"
        ),
    )
    v.add_argument("--home", help="the home of a local server [from c.Hometier.homes]")
    v.add_argument(
        "--uid", type=int, help="uid the files appear to belong to (default: the home's owner)"
    )
    v.add_argument(
        "--gid", type=int, help="gid the files appear to belong to (default: the home's group)"
    )
    v.add_argument("--group", action="append", default=[], help="a JupyterHub group of the user")
    v = verb("release", "release a server's folders (as its stop would)", cmd_release)
    v.add_argument("user", help="the JupyterHub user whose server stopped")
    v.add_argument("--server", help="one server (default: all of the user's)")
    verb("check", "check, recover and clean up the mounts of this host once", cmd_check)
    v = verb("k8s", "PersistentVolumes and claims for a CSI driver", cmd_k8s)
    v.add_argument("names", nargs="*", help="folders (default: all)")
    v.add_argument("--namespace", default="jhub", help="the hub's namespace")
    v.add_argument(
        "--driver",
        choices=["csi-s3", "mountpoint-s3"],
        default="csi-s3",
        help="the CSI driver installed in the cluster",
    )
    v.add_argument(
        "--uid",
        type=int,
        default=1000,
        help="uid the files appear to belong to in the pods (default 1000)",
    )
    v.add_argument(
        "--gid",
        type=int,
        default=100,
        help="gid the files appear to belong to in the pods (default 100)",
    )
    v.add_argument(
        "--with-secrets",
        action="store_true",
        help="csi-s3: also print each folder's Secret (its credentials, in clear)",
    )
    verb("keygen", "print a new key for c.Hometier.secret_key", cmd_keygen)
    verb("rotate-key", "seal every folder's credentials again with the newest key", cmd_rotate)


def _folder_flags(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--bucket", required=required, help="the S3 bucket")
    p.add_argument("--endpoint", help="https://HOST[:PORT] of an S3 service (default: AWS)")
    p.add_argument("--region", help="the bucket's region")
    p.add_argument("--prefix", help="only this prefix of the bucket (a folder in it)")
    p.add_argument(
        "--access",
        action="append",
        help="who may use it: group:NAME:ro|rw or user:NAME:ro|rw (repeat)",
    )
    p.add_argument("--mount-path", help="path in servers, relative to the home (buckets/{name})")
    p.add_argument(
        "--read-only",
        action="store_true",
        default=None,
        help="read-only for everyone, whatever --access grants",
    )
    p.add_argument(
        "--writable",
        dest="read_only",
        action="store_false",
        help="writable for those granted write access",
    )
    p.add_argument("--option", action="append", help="s3fs option NAME=VALUE (repeat)")
    p.add_argument("--description", help="what it holds, shown to those who may use it")
    p.add_argument("--access-key-id", help=f"key id; its secret comes from {SECRET_ENV}")
    p.add_argument("--secret-file", help="file (mode 600) holding the secret access key")
    p.add_argument("--anonymous", action="store_true", help="a public bucket: no credentials")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _db(cfg: Hometier) -> Any:
    from hometier.app import open_db

    return open_db(cfg)


def _sealer(cfg: Hometier) -> Any:
    from hometier.mounts.setup import make_sealer

    return make_sealer(cfg)


def _secret(args: argparse.Namespace) -> str:
    if args.secret_file:
        from hometier.crypto import read_key_file

        return read_key_file(args.secret_file).strip()
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV]
    if sys.stdin.isatty():
        return getpass.getpass("secret access key: ")
    raise UsageError(f"give the secret access key in {SECRET_ENV} or --secret-file")


def _option(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep:
        return name, True
    if value.lower() in ("true", "false"):
        return name, value.lower() == "true"
    return name, int(value) if value.isdigit() else value


def _doc(args: argparse.Namespace) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key in ("bucket", "endpoint", "region", "prefix", "mount_path", "description"):
        if getattr(args, key) is not None:
            doc[key] = getattr(args, key)
    if args.read_only is not None:
        doc["read_only"] = args.read_only
    if args.access is not None:
        doc["access"] = args.access
    if args.option is not None:
        doc["options"] = dict(_option(o) for o in args.option)
    if args.anonymous:
        doc["credentials"] = None
    elif args.access_key_id:
        doc["credentials"] = {
            "access_key_id": args.access_key_id,
            "secret_access_key": _secret(args),
        }
    return doc


def _show(doc: dict[str, Any], args: argparse.Namespace) -> int:
    if args.json:
        emit_json(doc)
    else:
        for k, v in doc.items():
            out.print(f"{k}: {v}", highlight=False)
    return 0


def cmd_list(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.mounts import folders
    from hometier.state import mounts as q

    with _db(cfg).transaction(write=False) as s:
        docs = [folders.folder_doc(r, admin=True) for r in q.list_folders(s)]
    if args.json:
        emit_json(docs)
        return 0
    for d in docs:
        where = f"{d['endpoint'] or 'AWS'} {d['bucket']}/{d['prefix']}"
        rules = ", ".join(str(r) for r in d["access"])
        out.print(f"{d['name']}: {where} -> {d['mount_path']} ({rules})", highlight=False)
    return 0


def cmd_show(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.mounts import folders
    from hometier.state import mounts as q

    with _db(cfg).transaction(write=False) as s:
        return _show(folders.folder_doc(q.get_folder(s, args.name), admin=True), args)


def cmd_add(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.mounts import folders

    doc = dict(_doc(args), name=args.name)
    row = folders.register(_db(cfg), _sealer(cfg), doc, "cli", _now())
    return _show(folders.folder_doc(row, admin=True), args)


def cmd_change(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.mounts import folders

    row = folders.change(_db(cfg), _sealer(cfg), args.name, _doc(args), "cli", _now())
    return _show(folders.folder_doc(row, admin=True), args)


def cmd_remove(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.mounts import folders

    folders.remove(_db(cfg), args.name, "cli", _now())
    return _show({"removed": args.name}, args)


def _manager(cfg: Hometier) -> Any:
    from hometier.mounts.setup import make_manager

    return make_manager(cfg.config, _db(cfg))[0]


def cmd_status(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.state import mounts as q

    rows: list[dict[str, Any]] = []
    with _db(cfg).transaction(write=False) as s:
        names = {f.id: f.name for f in q.list_folders(s)}
        for hm in q.all_host_mounts(s):
            atts = [
                {"user": a.user, "server": a.server, "target": a.target, "state": a.state}
                for a in q.attachments_of(s, hm)
            ]
            rows.append(
                {
                    "host": hm.host,
                    "folder": names.get(hm.folder_id, "?"),
                    "mode": "ro" if hm.read_only else "rw",
                    "owner": f"{hm.uid}:{hm.gid}",
                    "state": hm.state,
                    "refs": hm.refs,
                    "generation": hm.generation,
                    "pid": hm.pid,
                    "error": hm.error,
                    "attachments": atts,
                }
            )
    if args.json:
        emit_json(rows)
        return 0
    for r in rows:
        out.print(
            f"{r['host']} {r['folder']} ({r['mode']}, {r['owner']}): {r['state']}, "
            f"{r['refs']} server(s), generation {r['generation']}"
            + (f" — {r['error']}" if r["error"] else ""),
            highlight=False,
        )
        for a in r["attachments"]:
            out.print(f"  {a['user']}/{a['server'] or 'default'}: {a['target']} ({a['state']})")
    return 0


def _outcomes(outcomes: list[Any], args: argparse.Namespace) -> int:
    docs = [o.to_doc() for o in outcomes]
    if args.json:
        emit_json(docs)
    for d in docs if not args.json else []:
        line = f"{d['folder']}: {d['state']}" + (f" at {d['target']}" if d.get("target") else "")
        (err if d.get("error") else out).print(
            line + (f": {d['error']}" if d.get("error") else ""), highlight=False
        )
    return 1 if any(d["state"] == "failed" for d in docs) else 0


def cmd_attach(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.lifecycle.homes import HomeLayout, check_username

    user = check_username(args.user)
    home = args.home or str(HomeLayout(cfg.homes, cfg.home_template).path(user))
    if args.kind == "local" and (args.uid is None or args.gid is None):
        st = os.stat(home, follow_symlinks=False)
        args.uid, args.gid = st.st_uid, st.st_gid
    outcomes = _manager(cfg).attach_server(
        user,
        args.server,
        kind=args.kind,
        groups=args.group,
        home=home,
        uid=args.uid if args.uid is not None else 1000,
        gid=args.gid if args.gid is not None else 100,
    )
    return _outcomes(outcomes, args)


def cmd_release(args: argparse.Namespace, cfg: Hometier) -> int:
    return _outcomes(_manager(cfg).release_server(args.user, args.server), args)


def cmd_check(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.mounts.reconcile import check

    report = check(_manager(cfg)).to_doc()
    if args.json:
        emit_json(report)
    else:
        for what, items in report.items():
            if items:
                out.print(f"{what}: {', '.join(items)}", highlight=False)
    return 1 if report["errors"] else 0


def cmd_k8s(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.hub import k8s_mounts as k
    from hometier.mounts import folders
    from hometier.state import mounts as q

    items: list[dict[str, Any]] = []
    with _db(cfg).transaction(write=False) as s:
        rows = [q.get_folder(s, n) for n in args.names] if args.names else q.list_folders(s)
    sealer = _sealer(cfg) if args.with_secrets else None
    for row in rows:
        items.append(
            k.make_persistent_volume(
                folder=row.name,
                bucket=row.bucket,
                namespace=args.namespace,
                driver=args.driver,
                prefix=row.prefix,
                endpoint=row.endpoint,
                region=row.region,
                read_only=row.read_only,
                uid=args.uid,
                gid=args.gid,
            )
        )
        items.append(
            k.make_persistent_volume_claim(
                folder=row.name, namespace=args.namespace, read_only=row.read_only
            )
        )
        if args.with_secrets and args.driver == "csi-s3" and row.credentials:
            creds = folders.credentials_of(row, sealer)
            assert creds is not None
            items.append(
                k.make_secret(
                    folder=row.name,
                    namespace=args.namespace,
                    access_key_id=creds.access_key_id,
                    secret_access_key=creds.secret_access_key,
                    endpoint=row.endpoint,
                    region=row.region,
                )
            )
    sys.stdout.write(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2))
    sys.stdout.write("\n")
    return 0


def cmd_keygen(args: argparse.Namespace, cfg: Hometier) -> int:
    from cryptography.fernet import Fernet

    out.print(Fernet.generate_key().decode())
    return 0


def cmd_rotate(args: argparse.Namespace, cfg: Hometier) -> int:
    from hometier.crypto import NoSecretKey
    from hometier.mounts import folders

    sealer = _sealer(cfg)
    if sealer is None:
        raise NoSecretKey()
    n = folders.rotate_credentials(_db(cfg), sealer)
    return _show({"resealed": n}, args)

"""Entry point: ``hometier VERB ...``."""

from __future__ import annotations

import argparse
import ctypes
import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from traitlets import TraitError
from traitlets.config import Config

from hometier import __version__
from hometier.cli import (
    client_cmds,
    home_cmds,
    jobs_cmds,
    lifecycle_cmds,
    mounts_cmds,
    plan_args,
    repo_cmds,
    snapshot_cmds,
    spaces_cmds,
)
from hometier.cli.output import err
from hometier.config import Hometier, load_config
from hometier.errors import Error, UsageError

Handler = Callable[[argparse.Namespace, Hometier], int]


EXIT_CODES = {
    0: "done",
    1: "not done: the work was refused or failed for one home (archive kept it, a backup "
    "was incomplete, a cycle had errors), or an unexpected internal error",
    2: "usage: a bad flag, name, URL or configuration",
    3: "not found: no such home, snapshot, path or repository",
    4: "conflict with existing state: already exists, busy, or another homes root or "
    "repository than the database's",
    5: "integrity: the repository is damaged",
    6: "unavailable: object storage or the state database could not be reached",
    7: "the backup could not be written (read or upload failed)",
    8: "a restore failed (the archive and the target are as they were), or the hometier "
    "service answered with an error (fetch-home)",
    130: "interrupted",
}
"""The documented exit codes (``docs/reference/cli.md``); every ``Error`` maps to one."""

CONFIG_CLASSES = {
    "Hometier": "hometier.config:Hometier",
    "Archiver": "hometier.config:Archiver",
    "Service": "hometier.config:Service",
    "Retention": "hometier.config:Retention",
    "Plan": "hometier.cli.plan_cmds:Plan",
    "Dashboard": "hometier.service.dashboard.summary:Dashboard",
}
"""Configurable classes a ``--Class.trait=value`` flag may name (imported only when used)."""

_TRAIT_FLAG = re.compile(r"^--([A-Z][A-Za-z0-9]*)\.([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$", re.S)


def _epilog() -> str:
    codes = "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_CODES.items())
    return (
        "Any configuration trait can also be given on the command line, before or after "
        "the verb, as JupyterHub does: --Archiver.inactive_after=2m, --Retention.keep_last 5.\n\n"
        f"exit codes:\n{codes}"
    )


def _cache_argparse_translations() -> None:
    """argparse translates its own words ("show this help message and exit", "options")
    once per sub-command, and ``gettext`` searches the locale folders on disk every time
    a language has no catalog: 180 searches, 20 ms of every command's start (and of every
    login's ``fetch-home``). The answers cannot change within a process: keep them."""
    if not hasattr(argparse._, "cache_info"):  # type: ignore[attr-defined]
        argparse._ = functools.lru_cache(maxsize=256)(argparse._)  # type: ignore[attr-defined]


def build_parser() -> argparse.ArgumentParser:
    _cache_argparse_translations()
    p = argparse.ArgumentParser(
        prog="hometier",
        description="Archive idle JupyterHub homes to object storage; restore them at login.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"hometier {__version__}")
    p.add_argument(
        "--config", "-c", help="config file (Python or JSON, traitlets style) [HOMETIER_CONFIG]"
    )
    p.add_argument("--homes", help="root folder of the homes [HOMETIER_HOMES]")
    p.add_argument("--store", help="repository URL [HOMETIER_STORE]")
    p.add_argument("--db", help="state database URL [HOMETIER_DB]")
    p.add_argument("--json", action="store_true", help="print one JSON document for scripts")
    p.set_defaults(json=False)
    p.add_argument(
        "--rebind",
        action="store_true",
        help=(
            "accept --homes and --store as the state database's own from now on (after "
            "the homes or the bucket really moved; otherwise a mismatch is refused)"
        ),
    )
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR")
    p.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="log lines on stderr"
    )
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    repo_cmds.register(sub)
    snapshot_cmds.register(sub)
    lifecycle_cmds.register(sub)
    home_cmds.register(sub)
    client_cmds.register(sub)
    plan_args.register(sub)
    spaces_cmds.register(sub)
    jobs_cmds.register(sub)
    mounts_cmds.register(sub)
    for parser in sub.choices.values():
        repo_cmds.add_common(parser)
    return p


def split_trait_flags(argv: Sequence[str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """``argv`` without its ``--Class.trait=value`` (or ``--Class.trait value``) flags,
    and those flags as ``{Class: {trait: raw text}}``."""
    rest: list[str] = []
    flags: dict[str, dict[str, str]] = {}
    items = list(argv)
    i = 0
    while i < len(items):
        arg = items[i]
        m = _TRAIT_FLAG.match(arg) if arg.startswith("--") else None
        if m is None:
            if arg == "--":
                rest.extend(items[i:])
                break
            rest.append(arg)
            i += 1
            continue
        cls, trait, value = m.group(1), m.group(2), m.group(3)
        if value is None:
            if i + 1 >= len(items):
                raise UsageError(f"--{cls}.{trait} needs a value (--{cls}.{trait}=VALUE)")
            value = items[i + 1]
            i += 1
        flags.setdefault(cls, {})[trait] = value
        i += 1
    return rest, flags


def trait_config(flags: dict[str, dict[str, str]]) -> Config:
    """The flags as a traitlets ``Config``, each value converted by its trait the way
    traitlets' own command line does; an unknown class or trait is a ``UsageError``."""
    import importlib

    config = Config()
    for cls_name, traits in flags.items():
        where = CONFIG_CLASSES.get(cls_name)
        if where is None:
            raise UsageError(
                f"unknown configuration section --{cls_name}.*: use one of "
                + ", ".join(sorted(CONFIG_CLASSES))
            )
        module, _, attr = where.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        known = cls.class_traits(config=True)
        for name, raw in traits.items():
            trait = known.get(name)
            if trait is None:
                raise UsageError(
                    f"unknown option --{cls_name}.{name}: {cls_name} has "
                    + ", ".join(sorted(known))
                )
            try:
                value = trait.from_string(raw)
            except Exception as exc:  # noqa: BLE001 - traitlets raises TraitError/ValueError
                raise UsageError(f"--{cls_name}.{name}={raw}: {exc}") from None
            config[cls_name][name] = value
    return config


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import json

        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def tune_malloc() -> None:
    """Return large buffers (packs, fetched segments: megabytes each, many threads) to
    the system when freed. glibc otherwise raises its mmap threshold after the first
    such free and keeps later ones in per-thread heaps: a 200,000-file restore peaked
    at 360 MB instead of 250 MB. No effect where mallopt does not exist."""
    try:
        libc = ctypes.CDLL(None)  # this process's own symbols, libc's among them
        libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 4)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _message(exc: Error) -> str:
    from hometier.repo.config import RepositoryNotFound

    if isinstance(exc, RepositoryNotFound):
        # The repository layer's sentence also suggests a backup, which no longer creates
        # one: say what the command line does.
        return (
            f"No hometier repository at {exc.args[0]}: check --store (HOMETIER_STORE), "
            "or create one with `hometier init`."
        )
    return exc.get_message()


def _fail(args: argparse.Namespace | None, msg: str, kind: str, code: int) -> int:
    if args is not None and args.json:
        from hometier.cli.output import emit_json

        emit_json({"error": msg, "kind": kind, "exit_code": code})
    err.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    tune_malloc()
    args: argparse.Namespace | None = None
    try:
        rest, flags = split_trait_flags(sys.argv[1:] if argv is None else argv)
        parser = build_parser()
        args = parser.parse_args(snapshot_cmds.normalize(rest))
        setup_logging(args.log_level, args.log_format)
        config = load_config(args.config or os.environ.get("HOMETIER_CONFIG"))
        config.merge(trait_config(flags))  # the command line wins over the file
        cfg = Hometier(config=config)
        for name in ("homes", "store", "db"):
            value = getattr(args, name)
            if value:
                setattr(cfg, name, value)
        handler: Handler = args.handler
        return handler(args, cfg)
    except Error as exc:
        return _fail(args, _message(exc), type(exc).__name__, exc.exit_code)
    except TraitError as exc:
        return _fail(args, f"bad configuration: {exc}", "UsageError", 2)
    except OSError as exc:
        where = f" ({os.fsdecode(exc.filename)})" if exc.filename else ""
        return _fail(args, f"{exc.strerror or exc}{where}", type(exc).__name__, 6)
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]")
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for people; the traceback in the log
        logging.getLogger("hometier").debug("unexpected error", exc_info=True)
        text = str(exc).split("\n\nDebug source:")[0].strip().splitlines()
        msg = f"unexpected {type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
        return _fail(args, msg + " (--log-level DEBUG shows the traceback)", "internal", 1)


if __name__ == "__main__":
    sys.exit(main())

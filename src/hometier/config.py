"""Configuration shared by the edges (CLI, service, hub), in JupyterHub's traitlets style.

Values come, in increasing precedence, from defaults, ``HOMETIER_*`` environment
variables, a config file (``hometier_config.py``/``.json``: ``c.Hometier.store = ...``)
and command-line flags. Only the edges read configuration; the engine gets arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Integer, Unicode, default
from traitlets.config import Config, Configurable
from traitlets.config.loader import JSONFileConfigLoader, PyFileConfigLoader

from hometier.errors import UsageError

DEFAULT_DIR = ".hometier"


class Hometier(Configurable):
    """Where homes live, where they are archived, where state is kept."""

    homes = Unicode(
        help="Root folder of the homes (the POSIX volume). Env: HOMETIER_HOMES.",
    ).tag(config=True)

    store = Unicode(
        help=(
            "Repository URL: file://PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, "
            "az://CONTAINER/PREFIX. Credentials come from each cloud's standard "
            "variables (AWS_*, GOOGLE_*, AZURE_*). Env: HOMETIER_STORE."
        ),
    ).tag(config=True)

    db = Unicode(
        help="SQLAlchemy URL of the state database (SQLite or PostgreSQL). Env: HOMETIER_DB.",
    ).tag(config=True)

    home_template = Unicode(
        "{username}",
        help=(
            "Folder of a user's home, relative to `homes`; `{username}` is replaced by "
            "the user name. Names that would leave the homes root are refused."
        ),
    ).tag(config=True)

    workers = Integer(4, help="Threads that read, hash, compress and transfer in parallel.").tag(
        config=True
    )

    pack_size_mb = Integer(32, help="Target size of a pack object, in MiB.").tag(config=True)

    cache_dir = Unicode(
        help=(
            "Local folder for the repository's index cache (sorted files and a small "
            "SQLite database, about 70 bytes per blob of the repository: 3.5 GB at 50 "
            "million blobs). Backup and prune deduplicate against it; restores do not "
            "need it. Derived data: it may be deleted at any time and is rebuilt from the "
            "bucket. Default: a `cache` folder beside the SQLite state database, else "
            "`.hometier/cache`. Env: HOMETIER_CACHE_DIR."
        ),
    ).tag(config=True)

    @default("homes")
    def _homes_default(self) -> str:
        return os.environ.get("HOMETIER_HOMES", "/home")

    @default("store")
    def _store_default(self) -> str:
        return os.environ.get("HOMETIER_STORE", f"file://{DEFAULT_DIR}/repo")

    @default("db")
    def _db_default(self) -> str:
        return os.environ.get("HOMETIER_DB", f"sqlite:///{DEFAULT_DIR}/state.db")

    @default("cache_dir")
    def _cache_dir_default(self) -> str:
        env = os.environ.get("HOMETIER_CACHE_DIR")
        if env:
            return env
        if self.db.startswith("sqlite:///"):
            path = self.db[len("sqlite:///") :].split("?", 1)[0]
            if path and path != ":memory:":
                return str(Path(path).parent / "cache")
        return f"{DEFAULT_DIR}/cache"


class Archiver(Configurable):
    """The idle policy and the archive loop (``c.Archiver.*``)."""

    inactive_after = Unicode(
        "30d", help="Archive a home after this long without activity (30d, 12h, 2w)."
    ).tag(config=True)
    min_size = Unicode("0", help="Skip homes smaller than this (e.g. 1MB).").tag(config=True)
    max_size = Unicode("0", help="Skip homes larger than this (e.g. 500GB); 0 means no cap.").tag(
        config=True
    )
    max_per_cycle = Integer(50, help="Archive at most this many homes per cycle.").tag(config=True)
    quiet_hours = Unicode(
        "", help="Local times when nothing is archived, e.g. 08:00-20:00 (may wrap midnight)."
    ).tag(config=True)
    timezone = Unicode("UTC", help="Time zone of quiet_hours (IANA name).").tag(config=True)
    interval = Unicode("1h", help="Time between two archiver cycles.").tag(config=True)
    quarantine_for = Unicode(
        "3d",
        help=(
            "Keep archived files in a quarantine folder on the same filesystem this long "
            "before removing them (0 removes them at the end of the cycle)."
        ),
    ).tag(config=True)
    restore_from_quarantine = Bool(
        True,
        help=(
            "Bring a home back from its quarantine folder (instant) while that still holds "
            "exactly the snapshot; else from object storage."
        ),
    ).tag(config=True)
    read_back = Bool(
        False, help="Download and hash every blob of a new snapshot before deleting the home."
    ).tag(config=True)
    hub_api_url = Unicode(
        help="JupyterHub API URL (http://127.0.0.1:8081/hub/api). Env: JUPYTERHUB_API_URL."
    ).tag(config=True)
    hub_api_token = Unicode(
        help=(
            "JupyterHub API token with list:users, read:users:activity and read:servers. "
            "Env: HOMETIER_HUB_TOKEN or JUPYTERHUB_API_TOKEN."
        ),
    ).tag(config=True)

    @default("hub_api_url")
    def _hub_url_default(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "")

    @default("hub_api_token")
    def _hub_token_default(self) -> str:
        return os.environ.get("HOMETIER_HUB_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", "")


class Service(Configurable):
    """The HTTP service (``c.Service.*``)."""

    ip = Unicode("127.0.0.1", help="Address to listen on (0.0.0.0 in a container).").tag(
        config=True
    )
    port = Integer(8765, help="Port to listen on.").tag(config=True)
    base_url = Unicode(
        help=(
            "URL prefix of every route; default: JUPYTERHUB_SERVICE_PREFIX when run as a "
            "JupyterHub service, else /services/hometier/."
        )
    ).tag(config=True)
    metrics_public = Bool(
        False, help="Serve /metrics without a token (for a scraper inside the cluster)."
    ).tag(config=True)
    restore_concurrency = Integer(
        8,
        help=(
            "Restores run at once in this process; later logins wait in arrival order. "
            "Each restore uses Hometier.workers threads; memory stays bounded either way."
        ),
    ).tag(config=True)

    @default("base_url")
    def _base_url_default(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/hometier/")


class Retention(Configurable):
    """Which snapshots to keep and how prune frees the rest (``c.Retention.*``)."""

    keep_last = Integer(3, help="Keep the newest N snapshots of every user.").tag(config=True)
    keep_within = Unicode(
        "30d", help="Also keep every snapshot younger than this (empty: none)."
    ).tag(config=True)
    grace = Unicode(
        "1d",
        help=(
            "Packs no snapshot uses are deleted only after being marked this long; it must "
            "be longer than the longest archive."
        ),
    ).tag(config=True)
    prune_interval = Unicode(
        "1d", help="How often the archiver loop applies retention and prunes (0: never)."
    ).tag(config=True)
    repack_waste = Float(
        0.5,
        help=(
            "Prune copies the used blobs out of a partly used pack, and deletes the pack "
            "after the grace period, once this fraction of its bytes is unused (0.5: half "
            "of it). 1 never repacks (unused packs are still deleted)."
        ),
    ).tag(config=True)
    repack_max = Unicode(
        "4GB", help="At most this many bytes of packs are repacked by one prune."
    ).tag(config=True)


def load_config(path: str | None) -> Config:
    """Read a Python or JSON config file; ``UsageError`` if it is missing or broken."""
    if not path:
        for candidate in ("hometier_config.py", "hometier_config.json"):
            if Path(candidate).is_file():
                path = candidate
                break
        else:
            return Config()
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file {path} does not exist")
    loader: Any
    if p.suffix == ".json":
        loader = JSONFileConfigLoader(p.name, path=str(p.parent.absolute()))
    else:
        loader = PyFileConfigLoader(p.name, path=str(p.parent.absolute()))
    try:
        cfg: Config = loader.load_config()
        return cfg
    except Exception as exc:
        raise UsageError(f"config file {path} could not be read: {exc}") from exc

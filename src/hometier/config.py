"""Configuration shared by the edges (CLI, service, hub), in JupyterHub's traitlets style.

Values come, in increasing precedence, from defaults, ``HOMETIER_*`` environment
variables, a config file (``hometier_config.py``/``.json``: ``c.Hometier.store = ...``)
and command-line flags. Only the edges read configuration; the engine gets arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from traitlets import Bool, Enum, Float, Integer, Unicode, default
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

    secret_key = Unicode(
        help=(
            "Fernet key(s) that seal secrets stored in the database (job secrets); several, "
            "comma separated, rotate: the first seals, all unseal. Env: HOMETIER_SECRET_KEY."
        ),
    ).tag(config=True)

    secret_key_file = Unicode(
        help=(
            "File holding the Fernet key(s), readable by its owner only (instead of "
            "secret_key). Env: HOMETIER_SECRET_KEY_FILE."
        ),
    ).tag(config=True)

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

    @default("secret_key")
    def _secret_key_default(self) -> str:
        return os.environ.get("HOMETIER_SECRET_KEY", "")

    @default("secret_key_file")
    def _secret_key_file_default(self) -> str:
        return os.environ.get("HOMETIER_SECRET_KEY_FILE", "")

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
    archive_concurrency = Integer(
        1,
        help=(
            "Homes one archiver archives at once within a cycle. Raise it (2-4) to drain a "
            "backlog of idle homes sooner, e.g. when archiving is first turned on: the "
            "archives share one upload of content they have in common. It is also how many "
            "candidate homes a cycle walks at once to confirm they are idle (a walk mostly "
            "waits on the filesystem); the homes walked are the same as one at a time."
        ),
    ).tag(config=True)
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
    use_hub = Bool(
        True,
        help=(
            "Decide idleness with JupyterHub (running servers, last activity). Without a "
            "reachable Hub API (hub_api_url or JUPYTERHUB_API_URL, and a token) nothing is "
            "archived, because a home whose server runs would look idle. Set False only "
            "on a deployment that has no JupyterHub: file times and leases decide then. "
            "Env: HOMETIER_USE_HUB (0 or false turns it off)."
        ),
    ).tag(config=True)
    username_pattern = Unicode(
        r"^[^A-Z\s]+$",
        help=(
            "Folders under the homes root whose names (after home_template) do not match "
            "this regular expression are never homes (JupyterHub lowercases user names "
            "by default). Dot-folders, lost+found and mount points never are."
        ),
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

    @default("use_hub")
    def _use_hub_default(self) -> bool:
        value = os.environ.get("HOMETIER_USE_HUB", "").strip().lower()
        return value not in ("0", "false", "no", "off")

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
            "The most restores run at once in this process; later logins wait in arrival "
            "order. Each restore uses Hometier.workers threads; memory stays bounded "
            "either way. See adaptive_restores for how many of them download at once."
        ),
    ).tag(config=True)
    adaptive_restores = Bool(
        True,
        help=(
            "Download one home per core at any time, and more (up to restore_concurrency) "
            "only while the CPU has room: while runnable tasks waited for a CPU less than "
            "a quarter of the last 0.25 s (Linux pressure stall information, the "
            "container's own under cgroup v2). Where the CPU is the bound (an S3 server "
            "near by), fewer restores at once finish sooner; where the bucket is far away, "
            "the CPU has room and more start. Without that information (a kernel without "
            "PSI) restore_concurrency alone bounds them. Homes of at most 1,000 files and "
            "16 MB download without waiting. False: always restore_concurrency."
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
        "1d",
        help=(
            "How often the archiver loop applies retention and prunes (0: never). A run "
            "that forgets nothing, when no snapshot has gone since the process's last full "
            "prune and no mark waits, skips the prune (at most for 7 days)."
        ),
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


class Spaces(Configurable):
    """Shared spaces (``c.Spaces.*``; docs/howto/spaces.md). Off unless ``root`` is set."""

    root = Unicode(
        help=(
            "Root folder of the spaces volume, a mount point of its own (a filesystem, or "
            "mount --bind ROOT ROOT); empty: no spaces. Env: HOMETIER_SPACES."
        )
    ).tag(config=True)
    identity = Enum(
        ["uids", "container"],
        "uids",
        help=(
            "uids: servers run as real system users (TLJH, SystemUserSpawner): one ACL "
            "entry per member. container: every server is the same uid (z2jh): the "
            "space's gid opens it and which mounts a server gets is the boundary."
        ),
    ).tag(config=True)
    user_template = Unicode(
        "{username}",
        help="The system user of a JupyterHub user (uids): jupyter-{username} on TLJH.",
    ).tag(config=True)
    group_prefix = Unicode("hts", help="POSIX groups are named PREFIX+gid.").tag(config=True)
    gid_min = Integer(61000, help="Lowest gid given to a space's group.").tag(config=True)
    gid_max = Integer(64999, help="Highest gid given to a space's group.").tag(config=True)
    manage_groups = Bool(
        True, help="Create, fill and delete the POSIX groups (groupadd, gpasswd; uids only)."
    ).tag(config=True)
    require_mount_point = Bool(
        True, help="Refuse a root that is not a mount point (see root)."
    ).tag(config=True)
    mount_path = Unicode(
        "~/shared/{name}", help="Where a server sees a data space (~: the server's home)."
    ).tag(config=True)
    software_mount_path = Unicode(
        "/opt/software/{name}", help="Where a server sees a software space."
    ).tag(config=True)
    modulefiles = Unicode(
        "modulefiles", help="Folder of LMod module files inside a software space (MODULEPATH)."
    ).tag(config=True)
    sync_interval = Float(
        60.0,
        help=(
            "Seconds between two reads of JupyterHub's groups (and quota checks). "
            "Env: HOMETIER_SPACES_SYNC_INTERVAL."
        ),
    ).tag(config=True)
    measure_every = Unicode("1h", help="How often a space's size is measured.").tag(config=True)
    inactive_after = Unicode(
        "", help="Archive a space nobody changed nor mounted for this long (empty: never)."
    ).tag(config=True)
    quarantine_for = Unicode(
        "3d", help="Keep an archived or deleted space's files on the volume this long."
    ).tag(config=True)
    store = Unicode(
        help=(
            "Repository of public and private spaces. Default: the homes' store URL "
            "followed by -spaces. Env: HOMETIER_SPACES_STORE."
        )
    ).tag(config=True)
    secret_store = Unicode(
        help=(
            "Where secret spaces are archived, one repository each (own key, own dedup) "
            "under this URL; empty: secret spaces are never archived. "
            "Env: HOMETIER_SECRET_STORE."
        )
    ).tag(config=True)
    secret_store_env = Unicode(
        help=(
            "A KEY=value file with the credentials of secret_store (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION), used instead of the "
            "process's own for secret spaces only."
        )
    ).tag(config=True)

    @default("root")
    def _root_default(self) -> str:
        return os.environ.get("HOMETIER_SPACES", "")

    @default("sync_interval")
    def _sync_default(self) -> float:
        return float(os.environ.get("HOMETIER_SPACES_SYNC_INTERVAL") or 60.0)

    @default("store")
    def _store_default(self) -> str:
        return os.environ.get("HOMETIER_SPACES_STORE", "")

    @default("secret_store")
    def _secret_store_default(self) -> str:
        return os.environ.get("HOMETIER_SECRET_STORE", "")


class Jobs(Configurable):
    """Jobs on behalf of users: scheduled notebooks and scripts (``c.Jobs.*``)."""

    enabled = Bool(
        True,
        help=(
            "Run the jobs scheduler in `hometier serve` (needs the Hub API: "
            "c.Archiver.hub_api_url and a token with the `tokens` scope)."
        ),
    ).tag(config=True)
    proxy_url = Unicode(
        help=(
            "Public URL of the Hub's proxy, where /user/<name>/ reaches a server "
            "(http://proxy-public on z2jh). Default: the origin of the Hub API URL. "
            "Env: HOMETIER_PROXY_URL."
        )
    ).tag(config=True)
    poll_interval = Unicode("15s", help="How often to look for due jobs and queued runs.").tag(
        config=True
    )
    heartbeat = Unicode("10s", help="How often a running run renews its claim and lease.").tag(
        config=True
    )
    stale_after = Unicode(
        "2m", help="A run whose heartbeat is older is taken over (its process died)."
    ).tag(config=True)
    activity_interval = Unicode(
        "60s",
        help="How often a run reports its server's activity to the Hub (the idle culler).",
    ).tag(config=True)
    spawn_timeout = Unicode("5m", help="How long a run waits for the server it starts.").tag(
        config=True
    )
    concurrency = Integer(4, help="Runs carried out at once by this process.").tag(config=True)
    max_source_size = Unicode("20MB", help="Largest notebook or script a job may run.").tag(
        config=True
    )
    max_output_size = Unicode(
        "50MB", help="A run whose outputs grow past this is stopped and fails."
    ).tag(config=True)
    min_interval = Unicode(
        "5m", help="Schedules that would fire more often than this are refused."
    ).tag(config=True)
    max_timeout = Unicode("24h", help="Longest timeout a job may ask for.").tag(config=True)
    kernel_name = Unicode(help="Kernel to start (empty: the server's default kernel).").tag(
        config=True
    )
    notify_success = Bool(False, help="Also tell owners about runs that succeeded.").tag(
        config=True
    )

    @default("proxy_url")
    def _proxy_url_default(self) -> str:
        return os.environ.get("HOMETIER_PROXY_URL", "")


class Mounts(Configurable):
    """Bucket folders on this host: FUSE mounts shared by servers (``c.Mounts.*``)."""

    enabled = Bool(
        True,
        help=(
            "Mount bucket folders on this host and run their check loop in `hometier "
            "serve` (needs root and /dev/fuse). Off: only the API, browsing and the "
            "Kubernetes manifests work."
        ),
    ).tag(config=True)
    root = Unicode(
        help=(
            "Root-owned folder holding the FUSE mounts, their shared anchors and logs "
            "(default /var/lib/hometier/mounts). Env: HOMETIER_MOUNTS_ROOT."
        ),
    ).tag(config=True)
    host = Unicode(
        help="Name of this host in the database (default: the host name). Env: HOMETIER_HOST."
    ).tag(config=True)
    s3fs = Unicode("s3fs", help="The s3fs-fuse program (Debian: apt-get install s3fs).").tag(
        config=True
    )
    unmount_after = Unicode(
        "5m", help="Keep a mount this long after its last server released it (0: at once)."
    ).tag(config=True)
    check_interval = Unicode(
        "15s", help="How often mounts are checked, recovered and reconciled with the kernel."
    ).tag(config=True)
    probe_timeout = Integer(
        5, help="Seconds a mount may take to answer statfs before its daemon is called hung."
    ).tag(config=True)
    mount_timeout = Integer(
        30, help="Seconds a FUSE daemon may take to mount before the attempt fails."
    ).tag(config=True)

    @default("root")
    def _root_default(self) -> str:
        return os.environ.get("HOMETIER_MOUNTS_ROOT", "/var/lib/hometier/mounts")

    @default("host")
    def _host_default(self) -> str:
        import socket

        return os.environ.get("HOMETIER_HOST") or socket.gethostname()


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

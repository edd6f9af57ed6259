"""The FUSE client that mounts a bucket: s3fs-fuse, started and watched by hometier.

Why s3fs and not ``rclone mount`` (both from Debian 12, measured against SeaweedFS; see
docs/howto/bucket-folders.md for the table): s3fs uploads a file when it is closed, so a
daemon killed right after a ``close()`` loses nothing (rclone's write cache lost a 3 MB
file closed before the kill); s3fs refuses other users by the mount's owner and umask
(rclone lets everyone in unless ``--default-permissions``); truncate and symlinks work
(EIO from rclone); an empty folder persists; s3fs idles at about 10 MB RSS (rclone about
47 MB); and ``-o ro`` makes the whole superblock read-only, so every bind of it refuses
writes with EROFS. Both report ENOTCONN once their daemon dies; neither comes back on its
own, which is what ``hometier.mounts.manager`` is for.

The daemon runs in the foreground (``-f``) as a child of hometier in its own session, so
that its PID is known, and it outlives a restart of hometier (which then adopts it). Its
credentials reach it through its environment only, never its command line
(``/proc/PID/cmdline`` is world-readable; ``/proc/PID/environ`` is not): the environment
is built from scratch, so none of hometier's own variables (the repository's
credentials) reach it either.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hometier.errors import Error
from hometier.mounts.mountinfo import MountTable
from hometier.mounts.spec import Credentials, FolderSpec

AWS_DEFAULT_URL = "https://s3.amazonaws.com"
# Bounded network waits: a bucket that stops answering gives errors, not hung servers.
BASE_OPTIONS = {"retries": 3, "connect_timeout": 5, "readwrite_timeout": 60}


class MountFailed(Error):
    """The bucket folder {} could not be mounted: {}"""

    exit_code = 6
    http_status = 502


@dataclass(frozen=True)
class Daemon:
    """A started FUSE daemon: its PID and where it mounts."""

    pid: int
    point: Path
    proc: subprocess.Popen[bytes] | None = None


def _opt(name: str, value: object) -> str:
    if value is True:
        return name
    return f"{name}={value}"


class S3fs:
    """Command line and environment of ``s3fs`` for one host mount."""

    def __init__(self, program: str = "s3fs") -> None:
        self.program = program

    def argv(
        self, spec: FolderSpec, point: Path, *, read_only: bool, uid: int, gid: int, public: bool
    ) -> list[str]:
        source = f"{spec.bucket}:/{spec.prefix}" if spec.prefix else spec.bucket
        opts: dict[str, object] = dict(BASE_OPTIONS)
        opts.update(spec.options)
        opts.update(
            {
                "url": spec.endpoint or AWS_DEFAULT_URL,
                "endpoint": spec.region,
                # Let the kernel check owner and mode on every access, on top of s3fs's own.
                "allow_other": True,
                "default_permissions": True,
                "uid": uid,
                "gid": gid,
                "umask": "0077",
                "mp_umask": "0077",
                "dbglevel": "warn",
            }
        )
        if spec.endpoint:
            opts["use_path_request_style"] = True
        if read_only:
            opts["ro"] = True
        if public:
            opts["public_bucket"] = 1
        argv = [self.program, source, str(point), "-f"]
        for name, value in opts.items():
            if value is False:
                continue
            argv += ["-o", _opt(name, value)]
        return argv

    def env(self, credentials: Credentials | None, home: Path) -> dict[str, str]:
        """The daemon's whole environment: a clean PATH, a private HOME (so no stray
        ``~/.passwd-s3fs`` is read), and the key pair."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
        if credentials is not None:
            env["AWS_ACCESS_KEY_ID"] = credentials.access_key_id
            env["AWS_SECRET_ACCESS_KEY"] = credentials.secret_access_key
            if credentials.session_token:
                env["AWS_SESSION_TOKEN"] = credentials.session_token
                env["AWSSESSIONTOKEN"] = credentials.session_token
        return env

    def start(
        self,
        spec: FolderSpec,
        credentials: Credentials | None,
        point: Path,
        *,
        read_only: bool,
        uid: int,
        gid: int,
        log: IO[bytes],
        home: Path,
    ) -> subprocess.Popen[bytes]:
        argv = self.argv(
            spec, point, read_only=read_only, uid=uid, gid=gid, public=credentials is None
        )
        try:
            return subprocess.Popen(
                argv,
                env=self.env(credentials, home),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=home,
                close_fds=True,
                # Its own session: a signal for hometier (Ctrl-C, a restart) is not for it.
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise MountFailed(
                spec.name, f"{self.program} is not installed (apt-get install s3fs)"
            ) from exc


def wait_mounted(
    proc: subprocess.Popen[bytes], point: Path, timeout: float, name: str, log_path: Path
) -> None:
    """Return once a FUSE file system is mounted at ``point``; ``MountFailed`` if the
    daemon exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        top = MountTable.read().top(point)
        if top is not None and top.is_fuse:
            return
        code = proc.poll()
        if code is not None:
            raise MountFailed(name, f"s3fs exited with status {code}: {log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise MountFailed(name, f"s3fs did not mount within {timeout:.0f} s")
        time.sleep(0.05)


def log_tail(path: Path, limit: int = 400) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    interesting = [ln for ln in lines if "[ERR]" in ln or "[CRT]" in ln or "[WAN]" in ln]
    text = " | ".join((interesting or lines)[-3:])
    return text[-limit:] or "(empty log)"


def stop_pid(pid: int, proc: subprocess.Popen[bytes] | None = None, grace: float = 5.0) -> None:
    """Stop a daemon by its PID: SIGTERM, then SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not pid_alive(pid, proc):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while pid_alive(pid, proc) and time.monotonic() < deadline:
            time.sleep(0.05)


def pid_alive(pid: int | None, proc: subprocess.Popen[bytes] | None = None) -> bool:
    """True while ``pid`` runs (a zombie counts as gone; our own children are reaped)."""
    if pid is None:
        return False
    if proc is not None and proc.pid == pid:
        return proc.poll() is None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


__all__ = ["Daemon", "MountFailed", "S3fs", "cmdline", "pid_alive", "stop_pid", "wait_mounted"]

"""Filesystems for the semester replay: a homes volume whose used bytes can be read at once.

As root, each volume is an ext4 image (sparse file) loop-mounted on its own folder, as a
hub's homes volume is its own filesystem: ``used()`` is ``statvfs`` (blocks in use, as
``df`` shows them, minus what the empty filesystem takes), free and exact at any moment,
and hometier's in-use check sees a device of its own. A volume is copied whole (the image
file, sparse) to start every policy from the same homes.

Without root (or with ``HOMETIER_SEMESTER_LOOP=0``) a volume is a plain folder and
``used()`` walks it (``st_blocks``), which is slower: the replay then samples it less.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path


def loop_available() -> bool:
    if os.environ.get("HOMETIER_SEMESTER_LOOP", "1") == "0" or os.geteuid() != 0:
        return False
    return shutil.which("mkfs.ext4") is not None and shutil.which("mount") is not None


def _run(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {r.stderr.strip() or r.stdout.strip()}")


class Volume:
    """A homes filesystem mounted at ``path`` (a loop-mounted image, or a plain folder)."""

    def __init__(self, path: Path, image: Path | None, empty_used: int = 0) -> None:
        self.path = path
        self.image = image
        self.empty_used = empty_used
        self.mounted = False

    @classmethod
    def create(cls, path: Path, image: Path | None, size: str = "32G") -> Volume:
        """A new empty volume (an image of ``size``, sparse, when ``image`` is given)."""
        path.mkdir(parents=True, exist_ok=True)
        if image is None:
            return cls(path, None)
        image.unlink(missing_ok=True)
        _run("truncate", "-s", size, str(image))
        # No reserved blocks, inodes for small files, no lazy init racing our counts.
        _run(
            "mkfs.ext4", "-q", "-F", "-m", "0", "-i", "8192",
            "-E", "lazy_itable_init=0,lazy_journal_init=0", str(image),
        )  # fmt: skip
        vol = cls(path, image)
        vol.mount()
        (path / "lost+found").rmdir()
        vol.empty_used = vol._statvfs_used()
        return vol

    def mount(self) -> None:
        if self.image is not None and not self.mounted:
            _run("mount", "-o", "loop", str(self.image), str(self.path))
            self.mounted = True

    def unmount(self) -> None:
        if self.image is not None and self.mounted:
            os.sync()
            _run("umount", str(self.path))
            self.mounted = False

    def copy(self, path: Path, image: Path | None) -> Volume:
        """A copy of this volume, mounted at ``path`` (this one is unmounted meanwhile)."""
        path.mkdir(parents=True, exist_ok=True)
        if self.image is None or image is None:
            if any(path.iterdir()):
                shutil.rmtree(path)
                path.mkdir()
            _run("cp", "-a", f"{self.path}/.", str(path))
            return Volume(path, None)
        was = self.mounted
        self.unmount()
        image.unlink(missing_ok=True)
        _run("cp", "--sparse=always", str(self.image), str(image))
        if was:
            self.mount()
        vol = Volume(path, image, self.empty_used)
        vol.mount()
        return vol

    def _statvfs_used(self) -> int:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def used(self) -> int:
        """Bytes the homes take on this volume (allocated blocks, folders included)."""
        if self.image is not None:
            return self._statvfs_used() - self.empty_used
        total = 0
        for dirpath, dirnames, filenames in os.walk(self.path):
            for name in dirnames + filenames:
                try:
                    st = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                if not stat.S_ISLNK(st.st_mode) or st.st_blocks:
                    total += st.st_blocks * 512
        return total

    def destroy(self) -> None:
        self.unmount()
        if self.image is not None:
            self.image.unlink(missing_ok=True)
        else:
            shutil.rmtree(self.path, ignore_errors=True)

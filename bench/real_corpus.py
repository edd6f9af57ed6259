#!/usr/bin/env python3
"""A corpus of homes built from real material, beside ``make_corpus.py``'s generated one.

The generated corpus imitates a course hub; this one is made of what real homes hold:
packages installed from PyPI into virtual environments (site-packages trees of numpy,
pandas, matplotlib, scikit-learn, scipy, and a JupyterLab environment), a conda-like
environment, ``node_modules`` from ``npm install``, git repositories (clones of real
projects given with ``--git``, and sdists from PyPI committed in steps so that ``.git``
holds loose objects as a working copy does), notebooks executed with nbclient (with
their PNG outputs), Debian's documentation, CSV files and random data.

The material is downloaded and built once into ``OUT/material/`` (each part marked done
when complete, so an interrupted run resumes), then the homes are assembled from it
into ``OUT/homes/<user>`` with ``OUT/summary.json`` beside them (the layout
``corpus_bench.py`` reads). Homes share material as real ones do (the same
site-packages in several homes), so deduplication across homes shows.

    python3 bench/real_corpus.py --out /var/tmp/hb-real                 # ~10 min the first time
    python3 bench/real_corpus.py --out /var/tmp/hb-real --git ~/src/flask --git ~/src/requests

Needs the network to PyPI and the npm registry the first time (``pip``, ``npm``), ``git``,
and Debian's ``/usr/share/doc``. Homes are owned by uid 1000+i, gid 100 when run as root.
A part that cannot be built (no npm, no network) is left out and listed in the summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VERSION = 1
"""Bumped when the recipe changes: a corpus of another version is built again."""
PY = f"python{sys.version_info[0]}.{sys.version_info[1]}"
SCI = ["numpy", "pandas", "matplotlib", "scikit-learn", "scipy"]
LAB = ["jupyterlab", "ipykernel", "nbclient", "nbformat", "matplotlib", "pandas", "seaborn"]
CONDA = ["sympy", "statsmodels", "requests", "pyyaml", "tqdm", "pillow"]
NPM = ["express", "lodash", "typescript", "eslint", "react", "react-dom", "axios"]
SDISTS = ["requests", "flask", "click", "rich", "attrs", "jinja2", "httpx", "tornado"]
MB = 10**6


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(*argv: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    r = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if r.returncode:
        err = [ln for ln in r.stderr.splitlines() if not ln.startswith("WARNING: Location")]
        raise subprocess.CalledProcessError(
            r.returncode, [str(a) for a in argv][:4], stderr="\n".join(err[-5:])
        )


def part(material: Path, name: str, build: object) -> Path | None:
    """``material/name``, built by ``build(path)`` unless marked done; None if it failed."""
    path = material / name
    if (material / f"{name}.done").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    log(f"building {name} ...")
    t0 = time.monotonic()
    try:
        build(path)  # type: ignore[operator]
    except (subprocess.CalledProcessError, OSError) as exc:
        log(f"  {name} left out: {exc} {getattr(exc, 'stderr', '') or ''}")
        shutil.rmtree(path, ignore_errors=True)
        return None
    (material / f"{name}.done").write_text(f"{time.monotonic() - t0:.0f}\n")
    log(f"  {name}: {time.monotonic() - t0:.0f} s")
    return path


def venv(path: Path, packages: list[str]) -> None:
    run(sys.executable, "-m", "venv", path)
    run(path / "bin" / "pip", "install", "-q", "--disable-pip-version-check", *packages)


def site_packages(env: Path) -> Path:
    return env / "lib" / PY / "site-packages"


def node_modules(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "package.json").write_text(json.dumps({"name": "webapp", "version": "1.0.0"}))
    run("npm", "install", "--no-audit", "--no-fund", "--loglevel=error", *NPM, cwd=path)


def sdist_repos(path: Path) -> None:
    """Each sdist unpacked and committed in three steps (docs, code, the rest), so the
    repository has history and loose objects, as a working copy does."""
    dl = path / ".downloads"
    dl.mkdir(parents=True)
    run(
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-d",
        dl,
        *SDISTS,
    )
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Student",
        "GIT_AUTHOR_EMAIL": "s@example.org",
        "GIT_COMMITTER_NAME": "Student",
        "GIT_COMMITTER_EMAIL": "s@example.org",
    }
    for arch in sorted(dl.iterdir()):
        tmp = path / ".unpack"
        shutil.unpack_archive(arch, tmp)
        (top,) = list(tmp.iterdir())
        repo = path / top.name.rsplit("-", 1)[0].lower()
        top.rename(repo)
        tmp.rmdir()
        run("git", "-c", "safe.directory=*", "init", "-q", repo, env=env)
        files = sorted(
            p.relative_to(repo) for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts
        )
        steps = [
            [f for f in files if f.suffix in (".rst", ".md", ".txt")],
            [f for f in files if f.suffix == ".py"],
            files,
        ]
        for i, step in enumerate(steps):
            for j in range(0, len(step), 200):
                run(
                    "git",
                    "-c",
                    "safe.directory=*",
                    "add",
                    "-f",
                    "--",
                    *step[j : j + 200],
                    cwd=repo,
                    env=env,
                )
            run(
                "git",
                "-c",
                "safe.directory=*",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                f"step {i}",
                cwd=repo,
                env=env,
            )
    shutil.rmtree(dl)


def clones(path: Path, sources: list[str]) -> None:
    path.mkdir(parents=True)
    for src in sources:
        name = Path(src.rstrip("/")).name
        name = (
            Path(src.rstrip("/")).parent.name.split("+")[-1] if name in ("repo", ".git") else name
        )
        run("git", "clone", "-q", "--no-hardlinks", src, path / name.removesuffix(".git"))


NOTEBOOK = [
    "%matplotlib inline\nimport numpy as np, pandas as pd\n"
    "import matplotlib.pyplot as plt\nrng = np.random.default_rng(SEED)",
    "df = pd.DataFrame(rng.normal(size=(ROWS, 4)).cumsum(axis=0), columns=list('abcd'))\n"
    "df['group'] = rng.integers(0, 5, ROWS)\ndf.describe()",
    "fig, ax = plt.subplots(figsize=(8, 4))\ndf[list('abcd')].plot(ax=ax)\nplt.show()",
    "fig, axes = plt.subplots(2, 2, figsize=(8, 6))\nfor c, ax in zip('abcd', axes.flat):\n"
    "    ax.hist(df[c], bins=40)\nplt.show()",
    "df.groupby('group').agg(['mean', 'std']).round(3)",
    "import seaborn as sns\nsns.pairplot(df.sample(min(300, ROWS), random_state=1), hue='group')\nplt.show()",
]


def notebooks(path: Path, lab: Path | None, count: int) -> None:
    """``count`` notebooks executed in the JupyterLab environment, with their outputs."""
    if lab is None:
        raise OSError("no JupyterLab environment to run notebooks in")
    path.mkdir(parents=True)
    script = path / ".run.py"
    script.write_text(
        "import json, sys, nbformat\nfrom nbclient import NotebookClient\n"
        "cells, out, seed, rows = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]\n"
        "nb = nbformat.v4.new_notebook()\n"
        "nb.cells = [nbformat.v4.new_code_cell(c.replace('SEED', seed).replace('ROWS', rows))"
        " for c in cells]\n"
        "NotebookClient(nb, timeout=300, kernel_name='python3').execute()\n"
        "nbformat.write(nb, out)\n"
    )
    rng = random.Random(7)
    for i in range(count):
        cells = NOTEBOOK[:3] + rng.sample(NOTEBOOK[3:], rng.randint(1, 3))
        run(
            lab / "bin" / "python",
            script,
            json.dumps(cells),
            path / f"analysis-{i:02d}.ipynb",
            str(i),
            str(rng.choice([200, 1000, 5000])),
        )
    script.unlink()


def csvs(path: Path, sci: Path | None) -> None:
    """scikit-learn's own datasets, and tables written by pandas."""
    path.mkdir(parents=True)
    if sci is not None:
        for f in (site_packages(sci) / "sklearn" / "datasets" / "data").glob("*.csv*"):
            shutil.copy2(f, path / f.name)
        code = (
            "import numpy as np, pandas as pd, sys\nrng = np.random.default_rng(3)\n"
            "for i, n in enumerate([2000, 20000, 200000, 600000]):\n"
            "    df = pd.DataFrame({'time': pd.date_range('2024-01-01', periods=n, freq='min'),"
            " 'station': rng.integers(0, 40, n), 'temp': rng.normal(12, 6, n).round(2),"
            " 'rain': rng.exponential(0.3, n).round(3), 'label': rng.choice(['a','bb','ccc'], n)})\n"
            "    df.to_csv(f'{sys.argv[1]}/measurements-{i}.csv', index=False)\n"
        )
        run(sci / "bin" / "python", "-c", code, path)


def build_material(out: Path, git: list[str], n_notebooks: int) -> dict[str, Path | None]:
    m = out / "material"
    m.mkdir(parents=True, exist_ok=True)
    got: dict[str, Path | None] = {}
    got["sci"] = part(m, "sci", lambda p: venv(p, SCI))
    got["lab"] = part(m, "lab", lambda p: venv(p, LAB))
    got["conda"] = part(m, "conda", lambda p: venv(p, SCI[:2] + CONDA))
    got["node"] = part(m, "node", node_modules)
    got["sdists"] = part(m, "sdists", sdist_repos)
    got["clones"] = part(m, "clones", lambda p: clones(p, git)) if git else None
    got["notebooks"] = part(m, "notebooks", lambda p: notebooks(p, got["lab"], n_notebooks))
    got["csv"] = part(m, "csv", lambda p: csvs(p, got["sci"]))
    doc = Path("/usr/share/doc")
    got["doc"] = doc if doc.is_dir() else None
    return got


# --------------------------------------------------------------------------- homes

KINDS = {
    # kind: what goes in (material, where in the home); weights pick kinds for users
    "student": ["notebooks", "csv", "dotfiles"],
    "pip-user": ["notebooks", "csv", "sci@.local/lib/PY/site-packages", "dotfiles"],
    "venv": ["notebooks", "sci@project/.venv", "dotfiles"],
    "lab-env": ["lab@.venvs/lab", "notebooks", "dotfiles"],
    "conda": ["conda@miniconda3/envs/ds", "notebooks", "csv", "dotfiles"],
    "developer": ["sdists@src", "clones@code", "node@src/webapp", "dotfiles"],
    "web": ["node@webapp", "sdists@src", "dotfiles"],
    "data": ["csv", "random", "notebooks", "dotfiles"],
    "docs": ["doc@reference/doc", "notebooks", "dotfiles"],
}
ORDER = [
    "pip-user",
    "student",
    "developer",
    "venv",
    "data",
    "conda",
    "student",
    "web",
    "pip-user",
    "lab-env",
    "docs",
    "student",
    "data",
    "venv",
    "developer",
    "student",
    "conda",
    "pip-user",
    "student",
    "data",
    "web",
    "lab-env",
    "student",
    "docs",
]


def copy_tree(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    run("cp", "-a", "--no-preserve=links", src, dst)


def add_dotfiles(home: Path, rng: random.Random) -> None:
    (home / ".ipython" / "profile_default").mkdir(parents=True, exist_ok=True)
    (home / ".jupyter" / "lab" / "workspaces").mkdir(parents=True, exist_ok=True)
    (home / ".bashrc").write_text("export PATH=$HOME/.local/bin:$PATH\nalias ll='ls -l'\n")
    (home / ".gitconfig").write_text("[user]\n\tname = Student\n\temail = s@example.org\n")
    ssh = home / ".ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "id_ed25519").write_bytes(rng.randbytes(400))
    os.chmod(ssh / "id_ed25519", 0o600)
    (home / ".jupyter" / "lab" / "workspaces" / "default.jupyterlab-workspace").write_text(
        json.dumps({"data": {"layout-restorer:data": {"main": {"current": "analysis.ipynb"}}}})
    )


def build_home(home: Path, kind: str, i: int, got: dict[str, Path | None], own: bool) -> list[str]:
    rng = random.Random(f"real-{i}")
    home.mkdir(parents=True)
    used: list[str] = []
    for item in KINDS[kind]:
        name, _, where = item.partition("@")
        where = where.replace("PY", PY)
        if name == "dotfiles":
            add_dotfiles(home, rng)
            continue
        if name == "random":
            data = home / "data" / "raw"
            data.mkdir(parents=True, exist_ok=True)
            for j in range(rng.randint(2, 5)):
                (data / f"run-{j:03d}.bin").write_bytes(os.urandom(rng.randint(5, 60) * MB))
            used.append(name)
            continue
        src = got.get(name)
        if src is None:
            continue
        if name == "sci" and where.endswith("site-packages"):
            src = site_packages(src)
        if name == "doc":
            # A part of Debian's documentation, different per home.
            dst = home / where
            dst.mkdir(parents=True)
            names = sorted(os.listdir(src))
            for d in rng.sample(names, len(names) // 2):
                if (src / d).is_dir() and not (src / d).is_symlink():
                    run("cp", "-a", src / d, dst / d)
        elif name == "notebooks":
            dst = home / "work"
            dst.mkdir(parents=True, exist_ok=True)
            pick = sorted(rng.sample(sorted(src.iterdir()), min(len(list(src.iterdir())), 6)))
            for f in pick:
                shutil.copy2(f, dst / f.name)
                ck = dst / ".ipynb_checkpoints"
                ck.mkdir(exist_ok=True)
                shutil.copy2(f, ck / f.name.replace(".ipynb", "-checkpoint.ipynb"))
        elif name == "csv":
            dst = home / "data"
            dst.mkdir(parents=True, exist_ok=True)
            files = sorted(src.iterdir())
            for f in rng.sample(files, min(len(files), rng.randint(3, len(files)))):
                shutil.copy2(f, dst / f.name)
                if f.suffix == ".csv" and rng.random() < 0.5:
                    # as a browser or wget would mark a download
                    os.setxattr(
                        dst / f.name,
                        "user.xdg.origin.url",
                        b"https://example.org/" + f.name.encode(),
                    )
        else:
            copy_tree(src, home / where if where else home / name)
        used.append(name)
    if own:
        uid = 1000 + i
        for dirpath, dirnames, filenames in os.walk(home):
            for n in dirnames + filenames:
                os.lchown(os.path.join(dirpath, n), uid, 100)
        os.lchown(home, uid, 100)
    return used


def summarize(homes: Path, per: list[dict[str, object]]) -> dict[str, object]:
    seen: dict[str, str] = {}
    total_files = total_bytes = dup = unique = 0
    for entry in per:
        files = size = small = 0
        for dirpath, _dirs, filenames in os.walk(homes / str(entry["user"])):
            for n in filenames:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                if not stat.S_ISREG(st.st_mode):
                    continue
                files += 1
                size += st.st_size
                small += st.st_size < 64 * 1024
                h = hashlib.blake2b(digest_size=16)
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                d = h.hexdigest()
                if d in seen and seen[d] != entry["user"]:
                    dup += st.st_size
                else:
                    seen.setdefault(d, str(entry["user"]))
                    unique += st.st_size
        entry.update(files=files, bytes=size, small_files=small)
        total_files += files
        total_bytes += size
    sizes = sorted(int(e["bytes"]) for e in per)  # type: ignore[call-overload]
    many = max(per, key=lambda e: int(e["small_files"]))  # type: ignore[call-overload]
    return {
        "users": len(per),
        "files": total_files,
        "bytes": total_bytes,
        "cross_user_duplicate_fraction": dup / max(1, total_bytes),
        "home_bytes_min": sizes[0],
        "home_bytes_median": sizes[len(sizes) // 2],
        "home_bytes_max": sizes[-1],
        "many_small_files": many["user"],
        "per_user": per,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="/var/tmp/hb-real", help="material, homes and summary.json")
    p.add_argument("--homes", type=int, default=16, help="how many homes (kinds repeat)")
    p.add_argument(
        "--git", action="append", default=[], help="a git repository to clone into developer homes"
    )
    p.add_argument("--notebooks", type=int, default=12, help="notebooks to execute")
    p.add_argument("--rebuild", action="store_true", help="assemble the homes again")
    a = p.parse_args(argv)
    out = Path(a.out)
    summary = out / "summary.json"
    recipe = {"version": VERSION, "homes": a.homes, "git": sorted(a.git), "notebooks": a.notebooks}
    if summary.exists() and not a.rebuild:
        if json.loads(summary.read_text()).get("recipe") == recipe:
            log(f"the corpus at {out} is up to date")
            return 0
    got = build_material(out, a.git, a.notebooks)
    homes = out / "homes"
    shutil.rmtree(homes, ignore_errors=True)
    homes.mkdir(parents=True)
    own = os.geteuid() == 0
    old = os.umask(0o022)
    t0 = time.monotonic()
    per: list[dict[str, object]] = []
    try:
        for i in range(a.homes):
            kind = ORDER[i % len(ORDER)]
            user = f"{kind}-{i:02d}"
            used = build_home(homes / user, kind, i, got, own)
            per.append({"user": user, "kind": kind, "material": used})
            log(f"  {user}: {', '.join(used)}")
    finally:
        os.umask(old)
    s = summarize(homes, per)
    s["recipe"] = recipe
    s["missing"] = sorted(k for k, v in got.items() if v is None)
    s["generator_seconds"] = round(time.monotonic() - t0, 1)
    with tempfile.NamedTemporaryFile("w", dir=out, delete=False) as f:
        f.write(json.dumps(s, indent=1) + "\n")
    os.replace(f.name, summary)
    log(
        f"{s['users']} homes, {s['files']} files, {int(s['bytes']) / MB:.0f} MB "  # type: ignore[call-overload]
        f"(many small files: {s['many_small_files']}); missing: {s['missing'] or 'nothing'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

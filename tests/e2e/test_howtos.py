"""The how-to guides, followed literally: their commands are taken from the Markdown code
blocks (never retyped here) and run, in order, against real parts.

A block is run when its info string is ``sh``; ``sh norun`` blocks are those a test
cannot run (``systemctl``, ``kubectl``, a browser). A block whose info string names a file
(```` ```python /etc/jupyterhub/jupyterhub_config.py ````) is that file's content. The only
changes made to a block are the substitutions each test lists: where this machine puts
things (a temporary folder instead of ``/etc/jupyterhub``, ``/opt/jupyterhub``, ``/home``),
the test S3 server instead of ``s3://my-bucket``, a free port instead of 8765, and no
``sudo`` (the tests run as root, and sudo is not installed here).

- README: the install (a wheel built with ``pip wheel`` into a fresh virtualenv) and the
  one-minute try-it, with its 30-second wait.
- local-spawners: everything — the wheel installed into the Hub's own environment, the
  settings file, the ``configure_hub`` block in a real JupyterHub started as the systemd
  unit says (its ``EnvironmentFile`` and interpreter; ``systemd-analyze verify`` checks
  the unit itself: there is no systemd to run it here), the check commands, and a user's
  home archived and restored at login with progress on the spawn page.
- TLJH: TLJH itself installs a whole machine and cannot run here. The plugin is loaded
  the way TLJH loads it (as in ``tests/unit/test_tljh.py``), the service it configures is
  run once, and the how-to's "check it" commands run as written.
- z2jh: no Kubernetes here (no API server can run on this machine). The files and names
  the how-to's commands use must exist (Dockerfiles and what they copy, the manifests,
  the Deployment and Service names), and every ``hometier`` command line in it parses.
- Every ``hometier ...`` command line of every how-to, run or not, parses with the real
  argument parser.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from e2e.conftest_service import ProgressReader, request_spawn, wait_ready
from fixtures.hub import start_hub
from fixtures.servers import S3Server, ServerUnavailable, free_port

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "howto"
WHEEL = "hometier-0.2.0-py3-none-any.whl"

pytestmark = [pytest.mark.slow]


@dataclass
class Block:
    lang: str
    info: list[str]
    text: str

    @property
    def runs(self) -> bool:
        return self.lang == "sh" and "norun" not in self.info

    @property
    def target(self) -> str | None:
        paths = [w for w in self.info if w.startswith("/")]
        return paths[0] if paths else None


_FENCE = re.compile(r"^([ \t]*)```([A-Za-z0-9_-]*)([^\n]*)\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)


def blocks(path: Path) -> list[Block]:
    out = []
    for m in _FENCE.finditer(path.read_text()):
        indent = len(m.group(1))
        text = "".join(line[indent:] for line in m.group(4).splitlines(keepends=True))
        out.append(Block(m.group(2), m.group(3).split(), text))
    return out


def substitute(text: str, subs: list[tuple[str, str]]) -> str:
    for old, new in subs:
        text = text.replace(old, new)
    return text


def run_sh(text: str, cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    """Run a block with bash, stop at the first failing command; its stdout."""
    print(f"$ (in {cwd})\n{text}")
    r = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print(r.stdout[-3000:], r.stderr[-3000:], sep="\n")
    assert r.returncode == 0, f"exit {r.returncode}:\n{r.stderr[-3000:]}"
    return r.stdout


def base_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HOMETIER_", "JUPYTERHUB_", "AWS_", "CI"))
    }
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's tracked files: what "a checkout of hometier" holds."""
    dst = tmp_path_factory.mktemp("checkout") / "hometier"
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for rel in filter(None, files):
        src = REPO / os.fsdecode(rel)
        if src.is_file():
            (dst / os.fsdecode(rel)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / os.fsdecode(rel))
    return dst


def _venv(path: Path) -> Path:
    """A virtualenv that sees the machine's packages (jupyterhub, obstore, ...) but not
    the hometier the tests run: the how-to's install step puts its wheel there."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--system-site-packages", str(path)], check=True)
    return path


# --- every hometier command line parses -----------------------------------------------------


def _hometier_lines(text: str) -> Iterator[list[str]]:
    """The argument lists of the ``hometier`` commands in shell text, also inside quoted
    scripts (``sh -c '...; exec hometier status'``)."""
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError:
            continue  # a here-document line or prose
        for i, w in enumerate(words):
            if " " in w:
                yield from _hometier_lines(w)
            elif (w == "hometier" or w.endswith("/bin/hometier")) and (
                i == 0 or words[i - 1] in ("sudo", "exec", "--") or words[i - 1][0] in ";|&("
            ):
                argv = []
                rest = iter(words[i + 1 :])
                for a in rest:
                    if a == "<(":  # process substitution: one argument, a /dev/fd path
                        for b in rest:
                            if b.startswith(")"):
                                break
                        argv.append("/dev/fd/63")
                        continue
                    if a and a[0] in ";|&<>()":
                        break
                    argv.append(a)
                yield argv


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")) + [REPO / "README.md"], ids=str)
def test_every_hometier_command_line_parses(page: Path) -> None:
    from hometier.cli import snapshot_cmds
    from hometier.cli.main import build_parser, split_trait_flags, trait_config

    parser = build_parser()
    seen = 0
    for block in blocks(page):
        if block.lang not in ("sh", ""):
            continue
        for argv in _hometier_lines(block.text):
            if argv in (["--version"],):
                continue
            rest, flags = split_trait_flags(argv)
            trait_config(flags)
            try:
                parser.parse_args(snapshot_cmds.normalize(rest))
            except SystemExit:
                pytest.fail(f"{page.name}: `hometier {' '.join(argv)}` does not parse")
            seen += 1
    print(f"{page.name}: {seen} command line(s)")


# --- README ---------------------------------------------------------------------------------


def test_readme_install_and_try_it(checkout: Path, tmp_path: Path) -> None:
    install, try_it = [b for b in blocks(REPO / "README.md") if b.runs][:2]
    subs = [("/tmp/hometier-try", str(tmp_path / "venv")), ("/tmp/try", str(tmp_path / "try"))]
    run_sh(substitute(install.text, subs), checkout, base_env())
    assert (tmp_path / "venv" / "bin" / "hometier").exists()
    began = time.monotonic()
    out = run_sh(substitute(try_it.text, subs), tmp_path, base_env(PATH=os.environ["PATH"]))
    took = time.monotonic() - began
    print(f"the try-it took {took:.0f} s")
    assert "would keep alice" in out and "would keep bob" in out
    assert "alice: archived" in out and "bob: archived" in out
    assert "ARCHIVED-BY-HOMETIER.txt" in out
    assert out.rstrip().endswith("my notebook"), out[-200:]
    assert took < 60


# --- local spawners -------------------------------------------------------------------------


def _unit(text: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    return unit


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def test_local_spawners_followed_literally(
    checkout: Path, tmp_path: Path, s3_server: S3Server
) -> None:
    page = blocks(DOCS / "local-spawners.md")
    runs = [b for b in page if b.runs]
    files = {b.target: b for b in page if b.target and "norun" not in b.info}
    install, settings, check, see = runs
    opt, etc, var = tmp_path / "opt-jupyterhub", tmp_path / "etc-jupyterhub", tmp_path / "var"
    homes, units = tmp_path / "home", tmp_path / "systemd"
    homes.mkdir()
    units.mkdir()
    port, hub_port = free_port(), free_port()
    bucket = s3_server.url(f"howto-{os.getpid()}-{int(time.time())}")
    s3 = s3_server.env()
    subs = [
        ("sudo ", ""),
        ("/opt/jupyterhub", str(opt)),
        ("/etc/jupyterhub", str(etc)),
        ("/var/lib/hometier", str(var)),
        ("/etc/systemd/system", str(units)),
        ("HOMETIER_HOMES=/home", f"HOMETIER_HOMES={homes}"),
        ("/home/test-user", f"{homes}/test-user"),
        ("s3://my-bucket/hometier", bucket),
        ("AWS_ACCESS_KEY_ID=AKIA-CHANGE-ME", f"AWS_ACCESS_KEY_ID={s3['AWS_ACCESS_KEY_ID']}"),
        ("AWS_SECRET_ACCESS_KEY=CHANGE-ME", f"AWS_SECRET_ACCESS_KEY={s3['AWS_SECRET_ACCESS_KEY']}"),
        (
            "AWS_REGION=eu-west-1",
            f"AWS_REGION=us-east-1\nAWS_ENDPOINT_URL={s3['AWS_ENDPOINT_URL']}",
        ),
        ("8765", str(port)),
        ("127.0.0.1:8081", f"127.0.0.1:{hub_port}"),
    ]
    print("substitutions:", *subs, sep="\n  ")

    # The Hub this page starts from: JupyterHub in /opt/jupyterhub (here a virtualenv that
    # sees the machine's jupyterhub, with the `jupyterhub` command a pip install makes).
    _venv(opt)
    launcher = opt / "bin" / "jupyterhub"
    launcher.write_text(f"#!{opt}/bin/python3\nfrom jupyterhub.app import main\nmain()\n")
    launcher.chmod(0o755)

    # 1. Install into the Hub's environment.
    run_sh(substitute(install.text, subs), checkout, base_env())
    where = subprocess.run(
        [str(opt / "bin" / "python3"), "-c", "import hometier; print(hometier.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(opt)), f"hometier not installed into the Hub's env: {where}"

    # 2. Settings.
    run_sh(substitute(settings.text, subs), tmp_path, base_env())
    env_file = etc / "hometier.env"
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"

    # 3. The Hub's config, and 4. its systemd unit.
    config = files["/etc/jupyterhub/jupyterhub_config.py"]
    (etc / "jupyterhub_config.py").write_text(substitute(config.text, subs))
    unit_text = substitute(files["/etc/systemd/system/jupyterhub.service"].text, subs)
    (units / "jupyterhub.service").write_text(unit_text)
    unit = _unit(unit_text)["Service"]
    exec_start = shlex.split(unit["ExecStart"])
    assert Path(exec_start[0]).is_file(), exec_start  # the Hub's jupyterhub, from step 1
    assert exec_start[1:] == ["-f", str(etc / "jupyterhub_config.py")]
    assert Path(unit["EnvironmentFile"]) == env_file and unit["User"] == "root"
    analyze = shutil.which("systemd-analyze")
    if analyze:
        r = subprocess.run(
            [analyze, "verify", "--man=no", str(units / "jupyterhub.service")],
            capture_output=True,
            text=True,
        )
        # Without a running systemd it may warn about the bus; errors in the unit show as
        # "Unknown key", "Invalid" or "is not executable".
        assert not re.search(
            r"Unknown (key|section)|Invalid|not executable|Failed to parse", r.stderr
        ), r.stderr

    # A user whose home will go and come back.
    (homes / "test-user" / "thesis").mkdir(parents=True)
    (homes / "test-user" / "thesis" / "draft.md").write_text("chapter one\n")
    (homes / "test-user" / "data.bin").write_bytes(os.urandom(300_000))
    before = {
        p.relative_to(homes / "test-user"): p.read_bytes()
        for p in (homes / "test-user").rglob("*")
        if p.is_file()
    }

    # The Hub as the unit starts it: its interpreter, its environment file. The test's
    # own Hub config (ports, the proxy, a dummy authenticator) comes first, then the
    # how-to's block.
    try:
        hub = start_hub(
            homes,
            extra_config=(etc / "jupyterhub_config.py").read_text()
            + '\nc.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}\n',
            python=str(opt / "bin" / "python3"),
            env=_env_file(env_file),
            hub_port=hub_port,
        )
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        # 5. Check it (the first cycle registers the homes a moment after the Hub is up).
        env = base_env()
        deadline = time.monotonic() + 60
        while True:
            out = run_sh(substitute(check.text, subs), tmp_path, env)
            if "test-user" in out or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert '"status": "ok"' in out, out
        assert "test-user" in out and "would keep test-user" in out, out
        # The dashboard answers through the Hub's proxy.
        with __import__("urllib.request").request.urlopen(
            f"{hub.url}/services/hometier/health", timeout=30
        ) as resp:
            assert json.load(resp)["status"] == "ok"

        # 6. One home goes...
        out = run_sh(substitute(see.text, subs), tmp_path, env)
        assert "test-user: archived" in out, out
        assert sorted(os.listdir(homes / "test-user")) == ["ARCHIVED-BY-HOMETIER.txt"]
        # ...and comes back at login, with the restore on the spawn page.
        hub.create_users("test-user")
        code, _ = request_spawn(hub, "test-user")
        assert code in (201, 202)
        reader = ProgressReader(hub, "test-user").start()
        server = wait_ready(hub, "test-user")
        events = reader.join()
        print("progress:", *events, sep="\n  ")
        assert server is not None, hub.log_tail()
        messages = [e.get("message", "") for e in events]
        assert any(m.startswith(("Restoring your files", "Your files are back")) for m in messages)
        after = {
            p.relative_to(homes / "test-user"): p.read_bytes()
            for p in (homes / "test-user").rglob("*")
            if p.is_file() and not p.relative_to(homes / "test-user").parts[0].startswith(".")
        }
        assert after == before
    finally:
        hub.close()


# --- TLJH -----------------------------------------------------------------------------------


def test_tljh_check_it_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pluggy
    from traitlets.config import Config

    from hometier.hub import tljh

    page = blocks(DOCS / "tljh.md")
    env_block = next(b for b in page if b.runs and "hometier.env" in b.text)
    checks = [b for b in page if b.runs and b is not env_block]
    assert checks, "the how-to has no check commands"
    state = tmp_path / "state"
    state.mkdir()
    subs = [
        ("sudo ", ""),
        ("/opt/tljh/state", str(state)),
        ("/opt/tljh/hub/bin/hometier", f"{sys.executable} -m hometier.cli.main"),
        ("s3://my-bucket/hometier", f"file://{tmp_path / 'bucket'}"),
    ]
    run_sh(substitute(env_block.text, subs), tmp_path, base_env())
    monkeypatch.setattr(tljh, "STATE", state)
    monkeypatch.setattr(tljh, "ENV_FILE", state / "hometier.env")
    pm = pluggy.PluginManager("tljh")
    pm.add_hookspecs(_TLJHSpecs)
    pm.register(tljh)
    c = Config()
    c.Authenticator.admin_users = {"ops"}
    pm.hook.tljh_custom_jupyterhub_config(c=c)
    (service,) = c.JupyterHub.services
    # The service the Hub would start, once, only registering (the homes of TLJH are this
    # machine's /home: nothing there is archived by a dry run).
    cmd = [*service["command"][: service["command"].index("serve")], "serve", "--once", "--dry-run"]
    env = base_env(**service["environment"])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode in (0, 1), r.stderr
    for block in checks:
        out = run_sh(substitute(block.text, subs), tmp_path, base_env())
        assert "Traceback" not in out
    assert (state / "hometier.sqlite").is_file()
    assert not (tmp_path / ".hometier").exists()
    text = (DOCS / "tljh.md").read_text()
    assert "/services/hometier/" in text and "hometier-admins" in text


import pluggy as _pluggy  # noqa: E402 - only for the spec below

_spec = _pluggy.HookspecMarker("tljh")


class _TLJHSpecs:
    @_spec
    def tljh_extra_hub_pip_packages(self) -> list[str]:  # type: ignore[empty-body]
        ...

    @_spec
    def tljh_custom_jupyterhub_config(self, c: Any) -> None: ...


# --- z2jh -----------------------------------------------------------------------------------


def test_z2jh_files_and_names_exist(checkout: Path) -> None:
    """No Kubernetes here: what the how-to's commands name must exist and agree."""
    import yaml

    page = blocks(DOCS / "z2jh.md")
    text = "\n".join(b.text for b in page)
    for m in re.finditer(r"docker build -f (\S+) .* \.\s*$", text, re.M):
        dockerfile = REPO / m.group(1)
        assert dockerfile.is_file(), m.group(1)
        for copy in re.finditer(r"^COPY (.+) \S+$", dockerfile.read_text(), re.M):
            for src in copy.group(1).split():
                if src.startswith("dist/"):
                    assert "pip wheel --no-deps -w dist ." in text, "the wheel is built first"
                    assert src.endswith(WHEEL), src
                else:
                    assert (REPO / src).exists(), (dockerfile, src)
    for m in re.finditer(r"kubectl -n jhub apply -k (\S+)", text):
        assert (REPO / m.group(1) / "kustomization.yaml").is_file()
    names = set()
    for path in (REPO / "deploy" / "k8s").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "metadata" in doc:
                names.add(f"{doc['kind'].lower()}/{doc['metadata']['name']}")
    # Resources named on kubectl command lines (deploy/NAME, svc/NAME), not the paths of
    # this repository's files that `-k` takes (deploy/k8s).
    for line in text.splitlines():
        if "kubectl" not in line:
            continue
        for m in re.finditer(r"(?<![\w/.-])(deploy|svc)/([a-z0-9-]+)(?![\w/.-])", line):
            if line[: m.start()].rstrip().endswith("-k"):
                continue
            kind = {"deploy": "deployment", "svc": "service"}[m.group(1)]
            assert f"{kind}/{m.group(2)}" in names, m.group(0)
    values = yaml.safe_load((REPO / "deploy" / "z2jh" / "values.yaml").read_text())
    assert values["hub"]["services"]["hometier"]["oauth_client_allowed_scopes"]

"""The monitoring files under ``deploy/monitoring`` against a real service's ``/metrics``.

A real ``hometier serve`` (``--Service.metrics_public=True``, no Hub: restores are
requested with restore tickets signed with its token) archives two homes through the
command line, restores one through the API and fails to restore the other (its packs
were removed), so the counters the rules and the dashboard use exist with real labels.
Then, with Debian's ``promtool`` (``apt-get install prometheus``; ``scripts/test``
installs it):

- ``promtool check metrics``: the exposition lints clean;
- ``promtool check rules``: the alert rules parse;
- every metric the rules and the Grafana dashboard query is one the service exposes;
- ``promtool test rules`` on the scraped values: a healthy scrape raises no alert but the
  one for the failed home, and a service that is down, failing restores or flaky
  storage raise theirs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fixtures.servers import free_port
from hometier.tickets import mint_ticket

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
SECRET = "m" * 64
PREFIX = "/services/hometier"

pytestmark = pytest.mark.slow


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed: apt-get install prometheus (scripts/test does)")
    return found


def _cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hometier.cli.main", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _call(url: str, method: str = "GET", token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("monitoring")
    homes = root / "homes"
    for user in ("alice", "bob"):
        (homes / user / "data").mkdir(parents=True)
        (homes / user / "data" / "x.bin").write_bytes(os.urandom(200_000))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "HOMETIER_"))}
    env.update(
        HOMETIER_HOMES=str(homes),
        HOMETIER_STORE=f"file://{root / 'repo'}",
        HOMETIER_DB=f"sqlite:///{root / 'state.db'}",
        JUPYTERHUB_API_TOKEN=SECRET,
    )
    r = _cli(env, "archive", "bob")
    assert r.returncode == 0, r.stderr
    # Bob's files are gone from everywhere but his (now broken) snapshot; alice is
    # archived afterwards, into packs of her own.
    shutil.rmtree(root / "repo" / "packs")
    shutil.rmtree(homes / ".hometier-quarantine")
    r = _cli(env, "archive", "alice")
    assert r.returncode == 0, r.stderr
    port = free_port()
    log = open(root / "service.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hometier.cli.main",
            "serve",
            "--no-loop",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--Service.metrics_public=True",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}{PREFIX}"
    try:
        deadline = time.monotonic() + 30
        while _call(f"{base}/health")[0] != 200 if _up(base) else True:
            assert proc.poll() is None, (root / "service.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.2)
        for user in ("alice", "bob"):
            ticket = mint_ticket(SECRET, user, 300)
            status, body = _call(f"{base}/api/homes/{user}/restore", "POST", ticket)
            assert status == 202, body
            deadline = time.monotonic() + 60
            while True:
                _, doc = _call(f"{base}/api/homes/{user}/restore", token=ticket)
                if json.loads(doc)["state"] != "running":
                    break
                assert time.monotonic() < deadline
                time.sleep(0.2)
        status, text = _call(f"{base}/metrics")
        assert status == 200
        yield text.decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _up(base: str) -> bool:
    try:
        return _call(f"{base}/health")[0] == 200
    except OSError:
        return False


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append((s.name, dict(s.labels), float(s.value)))
    return out


def _queried_metrics() -> dict[str, set[str]]:
    """Every ``hometier_*`` name the rules and the dashboard query, by file."""
    names: dict[str, set[str]] = {}
    rules = yaml.safe_load((DEPLOY / "alerts.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    names["alerts.yaml"] = set(re.findall(r"hometier_[a-z_]+", " ".join(exprs)))
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    names["grafana-dashboard.json"] = set(re.findall(r"hometier_[a-z_]+", " ".join(exprs)))
    return names


def test_the_exposition_lints_and_the_rules_parse(scrape: str, tmp_path: Path) -> None:
    promtool = _promtool()
    r = subprocess.run(
        [promtool, "check", "metrics"], input=scrape, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "alerts.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus-scrape.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_queried_metric_is_exposed(scrape: str) -> None:
    exposed = {name for name, _, _ in _samples(scrape)}
    print("exposed:", sorted(exposed))
    for where, names in _queried_metrics().items():
        assert names, where
        missing = sorted(names - exposed)
        assert not missing, f"{where} queries metrics the service does not expose: {missing}"
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dash["uid"] == "hometier" and len({p["id"] for p in dash["panels"]}) == len(
        dash["panels"]
    )
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]


def _series(samples: list[tuple[str, dict[str, str], float]], steps: int) -> list[dict[str, Any]]:
    out = []
    for name, labels, value in samples:
        if name.endswith("_created"):
            continue
        labels = {**labels, "job": "hometier", "instance": "svc"}
        sel = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        out.append({"series": f"{name}{{{sel}}}", "values": f"{value:g}+0x{steps}"})
    return out


def _promtool_test(tmp_path: Path, tests: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    shutil.copy(DEPLOY / "alerts.yaml", tmp_path / "alerts.yaml")
    doc = {"rule_files": ["alerts.yaml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return subprocess.run(
        [_promtool(), "test", "rules", "test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_alerts_fire_on_the_real_values_and_on_failures(scrape: str, tmp_path: Path) -> None:
    samples = _samples(scrape)
    failed = [v for n, lab, v in samples if n == "hometier_homes" and lab.get("state") == "failed"]
    assert failed == [1.0], "bob's restore was meant to fail"
    kinds = {lab["kind"] for n, lab, _ in samples if n == "hometier_failures_total"}
    assert kinds, "no restore failure was counted"
    kind = sorted(kinds)[0]
    healthy = _series(samples, 180) + [
        {"series": 'up{job="hometier",instance="svc"}', "values": "1+0x180"}
    ]
    quiet = [
        "HometierDown",
        "HometierRestoreFailing",
        "HometierArchiveFailing",
        "HometierStuckRestoring",
        "HometierStuckArchiving",
        "HometierStoreRetrying",
        "HometierSlowRestores",
    ]
    tests = [
        {
            # The scrape as it is, held for 3 hours: only bob's failed home alerts.
            "interval": "1m",
            "input_series": healthy,
            "alert_rule_test": [
                {"eval_time": "3h", "alertname": name, "exp_alerts": []} for name in quiet
            ]
            + [
                {
                    "eval_time": "3h",
                    "alertname": "HometierHomesFailed",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "warning",
                                "state": "failed",
                                "job": "hometier",
                                "instance": "svc",
                            },
                            "exp_annotations": _annotations("HometierHomesFailed", "1"),
                        }
                    ],
                }
            ],
        },
        {
            # The service goes down, restores start failing, storage retries pile up.
            "interval": "1m",
            "input_series": [
                {"series": 'up{job="hometier",instance="svc"}', "values": "1x10 0x20"},
                {
                    "series": "hometier_failures_total{"
                    f'job="hometier",instance="svc",operation="restore",kind="{kind}"}}',
                    "values": "0x5 1+1x20",
                },
                {
                    "series": 'hometier_store_retries_total{job="hometier",instance="svc"}',
                    "values": "0+120x30",
                },
            ],
            "alert_rule_test": [
                {"eval_time": "25m", "alertname": "HometierDown", "exp_alerts": [_down()]},
                {
                    "eval_time": "15m",
                    "alertname": "HometierRestoreFailing",
                    "exp_alerts": [_restore_failing(kind)],
                },
                {
                    "eval_time": "25m",
                    "alertname": "HometierStoreRetrying",
                    "exp_alerts": [_retrying()],
                },
            ],
        },
    ]
    r = _promtool_test(tmp_path, tests)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr


def _annotations(name: str, value: str) -> dict[str, str]:
    rules = yaml.safe_load((DEPLOY / "alerts.yaml").read_text())
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r["alert"] == name]
    return {
        k: v.replace("{{ $value }}", value).replace("{{ $labels.instance }}", "svc")
        for k, v in rule["annotations"].items()
    }


def _down() -> dict[str, Any]:
    return {
        "exp_labels": {"severity": "critical", "job": "hometier", "instance": "svc"},
        "exp_annotations": _annotations("HometierDown", "0"),
    }


def _restore_failing(kind: str) -> dict[str, Any]:
    ann = {
        k: v.replace("{{ $labels.kind }}", kind)
        for k, v in _annotations("HometierRestoreFailing", "").items()
    }
    return {
        "exp_labels": {
            "severity": "critical",
            "job": "hometier",
            "instance": "svc",
            "operation": "restore",
            "kind": kind,
        },
        "exp_annotations": ann,
    }


def _retrying() -> dict[str, Any]:
    return {
        "exp_labels": {"severity": "warning", "job": "hometier", "instance": "svc"},
        "exp_annotations": _annotations("HometierStoreRetrying", ""),
    }

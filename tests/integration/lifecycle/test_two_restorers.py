"""Two replicas on one PostgreSQL never restore the same home twice.

Several processes ask for the same archived home at the same instant (two service
replicas receiving one login each, say): the database lets exactly one perform the
restore, the others join it, and the home comes back once, byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hometier.state import open_database, queries

from .conftest import manifest, write_home

RESTORER = """
import os, sys, time
from hometier.cli.main import main
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.002)
sys.exit(main(["restore", "ada", "--json"]))
"""


@pytest.mark.slow
def test_concurrent_restores_of_one_home_from_several_processes(
    pg_url: str, s3_url: str, tmp_path: Path
) -> None:
    homes = tmp_path / "homes"
    write_home(homes / "ada", "ada")
    (homes / "ada" / "big.bin").write_bytes(os.urandom(8_000_000))  # a restore that takes a moment
    before = manifest(homes / "ada")
    env = dict(os.environ, HOMETIER_HOMES=str(homes), HOMETIER_STORE=s3_url, HOMETIER_DB=pg_url)
    config = tmp_path / "hometier_config.py"
    config.write_text("c.Archiver.restore_from_quarantine = False\n")
    run = [sys.executable, "-m", "hometier.cli.main", "--config", str(config)]
    subprocess.run([*run, "archive", "ada"], env=env, check=True, capture_output=True)
    assert sorted(os.listdir(homes / "ada")) == ["ARCHIVED-BY-HOMETIER.txt"]

    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RESTORER.replace('["restore"', f'["--config", {str(config)!r}, "restore"'),
                str(go),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    go.touch()
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        if p.returncode == 4:
            # Came after the restore had finished: the home is active and holds files,
            # and a plain restore into a non-empty home is refused, changing nothing.
            assert "not an empty folder" in json.loads(out)["error"], out
            outcomes.append("refused")
            continue
        assert p.returncode == 0, err.decode()
        outcomes.append(json.loads(out)["outcome"])
    assert outcomes.count("restored") == 1, outcomes
    # "active": it asked while the other was finishing; the files were back already.
    assert set(outcomes) <= {"restored", "joined", "active", "refused"}, outcomes
    assert manifest(homes / "ada") == before
    db = open_database(pg_url)
    try:
        kinds = [
            (e.from_state, e.to_state)
            for e in queries.events(db, "ada", limit=100)
            if e.kind == "state"
        ]
        assert kinds.count(("archived", "restoring")) == 1, kinds
        assert kinds.count(("restoring", "active")) == 1, kinds
    finally:
        db.dispose()

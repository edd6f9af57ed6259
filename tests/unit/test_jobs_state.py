"""Jobs in the state database (SQLite file): firing, skipping, retries with back-off,
pause and resume, sealed secrets; and the ``hometier jobs`` command line on it."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from hometier.crypto import Sealer
from hometier.jobs import spec
from hometier.state import jobs as jq
from hometier.state import open_database

T0 = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def db(tmp_path: Path):
    d = open_database(f"sqlite:///{tmp_path / 'state.db'}")
    yield d
    d.dispose()


def job(db, name: str = "j", **kw):
    fields = {"path": "a.ipynb", "schedule": "0 3 * * *", **kw}
    fields.setdefault("next_run_at", spec.first_time(fields, T0 - dt.timedelta(days=1)))
    return jq.create_job(db, "ada", "test", T0, name=name, **fields)


def test_a_due_job_fires_once_and_moves_on(db) -> None:
    j = job(db)
    [run] = jq.fire_due(db, T0, spec.next_time)
    assert (run.state, run.trigger, run.scheduled_for) == ("queued", "schedule", j.next_run_at)
    assert jq.fire_due(db, T0, spec.next_time) == []
    assert jq.get_job(db, j.id).next_run_at == dt.datetime(2026, 1, 11, 3, tzinfo=dt.UTC)


def test_times_missed_during_an_outage_fire_once(db) -> None:
    job(db, next_run_at=T0 - dt.timedelta(days=3))
    assert len(jq.fire_due(db, T0, spec.next_time)) == 1
    assert jq.fire_due(db, T0 + dt.timedelta(hours=1), spec.next_time) == []


def test_a_job_still_running_skips_its_next_time(db) -> None:
    j = job(db)
    jq.fire_due(db, T0, spec.next_time)
    jq.claim_runs(db, "w", T0)
    later = dt.datetime(2026, 1, 11, 3, 1, tzinfo=dt.UTC)
    [skipped] = jq.fire_due(db, later, spec.next_time)
    assert skipped.state == "skipped" and "still going" in (skipped.reason or "")
    with pytest.raises(jq.JobBusy):
        jq.enqueue(db, j.id, "test", later)
    with pytest.raises(jq.JobBusy):
        jq.delete_job(db, j.id, "test", later)


def test_failed_runs_are_retried_with_a_doubling_delay(db) -> None:
    j = job(db, retries=2, retry_delay=60)
    run = jq.enqueue(db, j.id, "test", T0)
    delays = []
    for attempt in (1, 2, 3):
        [run] = jq.claim_runs(db, "w", T0 + dt.timedelta(hours=attempt))
        assert run.attempt == attempt
        now = T0 + dt.timedelta(hours=attempt)
        _, retry = jq.finish_run(db, run.id, "w", jq.FAILED, now, reason="boom")
        if retry is not None:
            delays.append((retry.not_before - now).total_seconds())
    assert delays == [60, 120]  # then no attempt left
    assert jq.claim_runs(db, "w", T0 + dt.timedelta(days=1)) == []


def test_paused_jobs_do_not_fire_and_resume_from_now(db) -> None:
    j = job(db, next_run_at=T0 - dt.timedelta(minutes=1))
    jq.set_paused(db, j.id, True, "admin", T0)
    assert jq.fire_due(db, T0, spec.next_time) == []
    resumed = jq.update_job(
        db, j.id, "admin", T0, next_run_at=spec.resume_time(jq.get_job(db, j.id), T0)
    )
    jq.set_paused(db, j.id, False, "admin", T0)
    assert resumed.next_run_at == dt.datetime(2026, 1, 11, 3, tzinfo=dt.UTC)
    once = job(db, "once", schedule="", run_at=T0 + dt.timedelta(hours=1), next_run_at=None)
    assert spec.resume_time(once, T0) == T0 + dt.timedelta(hours=1)
    assert spec.resume_time(once, T0 + dt.timedelta(hours=2)) is None
    assert len(jq.set_paused(db, None, True, "admin", T0)) == 2  # pause every job


def test_a_one_off_job_fires_once(db) -> None:
    fields = {"path": "a.ipynb", "schedule": "", "run_at": T0}
    jq.create_job(
        db, "ada", "t", T0, name="once", next_run_at=spec.first_time(fields, T0), **fields
    )
    assert len(jq.fire_due(db, T0, spec.next_time)) == 1
    assert jq.list_jobs(db)[0].next_run_at is None
    assert jq.fire_due(db, T0 + dt.timedelta(days=9), spec.next_time) == []


def test_secrets_are_stored_sealed_only(db, tmp_path: Path) -> None:
    sealer = Sealer([Fernet.generate_key()])
    value = "plain-text-secret-value-1234"
    jq.set_secret(db, "ada", "TOKEN", sealer.seal(value.encode()), "t", T0)
    got = jq.sealed_secrets(db, "ada", ["TOKEN"])
    assert sealer.unseal(got["TOKEN"]).decode() == value
    with pytest.raises(jq.SecretNotFound):
        jq.sealed_secrets(db, "ada", ["TOKEN", "OTHER"])
    assert jq.sealed_secrets(db, "bob", []) == {}
    db.dispose()
    for f in tmp_path.glob("state.db*"):
        assert value.encode() not in f.read_bytes()


def test_the_command_line(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    env = dict(
        os.environ,
        HOMETIER_DB=f"sqlite:///{tmp_path / 'cli.db'}",
        HOMETIER_HOMES=str(tmp_path / "homes"),
        HOMETIER_SECRET_KEY=key,
    )

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hometier.cli.main", *args],
            env=env, input=stdin, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    done = cli("jobs", "secret", "set", "ada", "TOKEN", stdin="v4lue-from-stdin\n")
    assert done.returncode == 0, done.stderr
    done = cli("--json", "jobs", "add", "ada", "nightly", "r/x.ipynb", "--schedule", "@daily",
               "--param", "day=monday", "--param", "n=3", "--secret", "TOKEN")  # fmt: skip
    assert done.returncode == 0, done.stderr
    added = json.loads(done.stdout)
    assert added["secrets"] == ["TOKEN"] and added["schedule"] == "0 0 * * *"
    bad = cli("jobs", "add", "ada", "x", "x.ipynb", "--schedule", "* * * * *")
    assert bad.returncode == 2 and "more often than" in bad.stderr
    done = cli("--json", "jobs", "run", str(added["id"]))
    assert done.returncode == 0 and json.loads(done.stdout)["state"] == "queued"
    events = cli("--json", "jobs", "events", "ada").stdout
    assert "secret-set" in events and "run-now" in events and "v4lue" not in events
    assert b"v4lue-from-stdin" not in (tmp_path / "cli.db").read_bytes()

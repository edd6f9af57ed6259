"""Jobs end to end: a real JupyterHub (named servers, jupyterhub-idle-culler with an 6 s
timeout), real single-user servers with ipykernel, SeaweedFS S3 as the repository and a
real ``hometier serve`` whose scheduler runs the jobs.

Every run here goes through the whole path: lease, restore, a server (reused or started
as ``job-…`` with a minted token), a kernel over the websocket, the output written into
the home as its owner, cleanup, the run's record.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.conftest_jobs import (
    CULL_TIMEOUT,
    make_job,
    notebook,
    outputs_text,
    run_now,
    start_jobs_world,
    wait_run,
)
from e2e.conftest_service import archive
from e2e.dashboard_fixtures import browser_fixture  # noqa: F401 - the `browser` fixture
from fixtures.service import Service

pytestmark = [pytest.mark.hub, pytest.mark.slow]

SECRET = "s3cr3t-Value-that-must-never-leak-7f3a9c"


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, s3_server: object) -> Iterator[Service]:
    import uuid

    store = s3_server.url(f"t-jobs-{uuid.uuid4().hex}")  # type: ignore[attr-defined]
    service = start_jobs_world(tmp_path_factory.mktemp("jobs"), store=store)
    try:
        yield service
    finally:
        service.close()


@pytest.fixture(scope="module")
def responses() -> list[str]:
    """Every API answer of the module, for the final grep for the secret."""
    return []


def _call(svc: Service, responses: list[str], method: str, path: str, token: str, body=None):
    status, doc = svc.call(method, path, token, body)
    responses.append(json.dumps(doc))
    return status, doc


def _servers(svc: Service, user: str) -> dict:
    return svc.hub.user(user).get("servers", {})


def test_job_of_an_archived_home_runs_and_its_output_lands_in_the_restored_home(
    svc: Service, responses: list[str]
) -> None:
    user = "ada"
    svc.hub.create_users(user)
    home = svc.homes / user
    (home / "reports").mkdir(parents=True)
    (home / "reports" / "daily.ipynb").write_bytes(
        notebook(
            "import os\nprint('day is', day, 'n is', n)",
            "print('token:', os.environ['API_TOKEN'])",
            "open('secret-length.txt', 'w').write(str(len(os.environ['API_TOKEN'])))",
            "print('cwd', os.getcwd())",
            parameters="day = 'monday'\nn = 1",
        )
    )
    (home / "keep.txt").write_text("mine\n")
    archive(svc, user)
    assert not (home / "reports").exists()
    token = svc.user_token(user)
    status, doc = _call(svc, responses, "PUT", "/api/secrets/API_TOKEN", token, {"value": SECRET})
    assert status == 200, doc
    job = make_job(
        svc, token, name="daily", path="reports/daily.ipynb", timezone="Europe/Paris",
        parameters={"day": "tuesday", "n": 2}, secrets=["API_TOKEN"], timeout=120, keep=2,
    )  # fmt: skip
    responses.append(json.dumps(job))
    run = run_now(svc, token, job["id"])
    done = wait_run(svc, token, job["id"], run["id"])
    responses.append(json.dumps(done))
    assert done["state"] == "succeeded", done["reason"]
    # The home came back, the output is next to the source, dated, the parameters won.
    assert (home / "keep.txt").read_text() == "mine\n"
    out = home / done["output_path"]
    assert out.parent == home / "reports" and out.name.startswith("daily.") and out.is_file()
    text = outputs_text(out.read_bytes())
    assert "day is tuesday n is 2" in text
    assert "token: ***" in text and SECRET not in out.read_text()
    assert f"cwd {home / 'reports'}" in text  # the kernel started in the notebook's folder
    # The secret reached the kernel's environment (its length was written by the cell).
    assert (home / "reports" / "secret-length.txt").read_text() == str(len(SECRET))
    # Only what the run started was stopped: its job- server is gone, its lease released.
    assert not [n for n in _servers(svc, user) if n.startswith("job-")]
    assert done["server"].startswith("job-")
    status, leases = svc.call("GET", f"/api/homes/{user}/leases", token)
    assert status == 200 and leases["leases"] == []
    # Its token was revoked: the user holds no token minted for a job any more.
    _, tokens = svc.hub.request("GET", f"/users/{user}/tokens")
    assert not [t for t in tokens["api_tokens"] if "hometier job" in (t.get("note") or "")]


def test_job_reuses_the_running_server_and_leaves_it_running(
    svc: Service, responses: list[str]
) -> None:
    user = "bob"
    svc.hub.start_server(user)
    home = svc.homes / user
    (home / "nb.ipynb").write_bytes(notebook("x = 6 * 7\nprint(x)"))
    token = svc.user_token(user)
    job = make_job(svc, token, name="reuse", path="nb.ipynb", timeout=60)
    done = wait_run(svc, token, job["id"], run_now(svc, token, job["id"])["id"])
    responses.append(json.dumps(done))
    assert done["state"] == "succeeded", done
    assert done["server"] == ""
    assert "" in _servers(svc, user), "the user's own server must keep running"
    assert "42" in outputs_text((home / done["output_path"]).read_bytes())
    svc.hub.stop_server(user)


def test_the_idle_culler_does_not_interrupt_a_run(svc: Service, responses: list[str]) -> None:
    """A run more than twice as long as the culler's timeout, on a server it started; a
    second user's idle server, started at the same time, is culled meanwhile (so the
    culler does work: this test could fail)."""
    user, idle = "cyd", "idle-control"
    svc.hub.create_users(user, idle)
    home = svc.homes / user
    home.mkdir(parents=True, exist_ok=True)
    (home / "slow.py").write_text(
        "import time\nfor i in range(3):\n    time.sleep(5)\n    print('tick', i, flush=True)\n"
    )
    token = svc.user_token(user)
    job = make_job(svc, token, name="slow", path="slow.py", timeout=120, server="new")
    run = run_now(svc, token, job["id"])
    svc.hub.start_server(idle)
    done = wait_run(svc, token, job["id"], run["id"])
    assert done["state"] == "succeeded", done
    log = (home / done["output_path"]).read_text()
    assert "tick 2" in log
    deadline = time.monotonic() + 3 * CULL_TIMEOUT
    while "" in _servers(svc, idle) and time.monotonic() < deadline:
        time.sleep(1)
    assert "" not in _servers(svc, idle), "the culler never culled the idle control server"


def test_failures_are_clean_retried_and_told(svc: Service, responses: list[str]) -> None:
    user = "dee"
    svc.hub.start_server(user)  # all three share it (faster than three spawns)
    home = svc.homes / user
    (home / "dies.ipynb").write_bytes(notebook("print('before')", "import os\nos._exit(1)"))
    (home / "slow.ipynb").write_bytes(notebook("import time\ntime.sleep(120)"))
    # 3 MB in 3.6 s: under the server's own IOPub rate limit (1 MB/s), which would
    # otherwise drop it before hometier sees it; over hometier's MAX_OUTPUT (2 MB).
    loud = "import time\nfor i in range(30):\n    print('x' * 100_000, flush=True)\n    time.sleep(0.12)"
    (home / "loud.ipynb").write_bytes(notebook(loud))
    (home / "raises.ipynb").write_bytes(notebook("print('first')", "1 / 0", "print('never')"))
    token = svc.user_token(user)
    jobs = {
        "dies": make_job(svc, token, name="dies", path="dies.ipynb", retries=1, retry_delay=1),
        "slow": make_job(svc, token, name="slow", path="slow.ipynb", timeout=10),
        "loud": make_job(svc, token, name="loud", path="loud.ipynb"),
        "raises": make_job(svc, token, name="raises", path="raises.ipynb"),
    }
    runs = {k: run_now(svc, token, j["id"]) for k, j in jobs.items()}
    done = {k: wait_run(svc, token, jobs[k]["id"], r["id"]) for k, r in runs.items()}
    for d in done.values():
        responses.append(json.dumps(d))
        assert d["state"] == "failed", d
        assert "reference" in d["reason"]
    assert "kernel died" in done["dies"]["reason"]
    assert "timed out after" in done["slow"]["reason"]
    assert "output grew past" in done["loud"]["reason"]
    assert "ZeroDivisionError" in done["raises"]["reason"]
    # The failed notebook is written with its traceback: a user's first question.
    written = outputs_text((home / done["raises"]["output_path"]).read_bytes())
    assert "first" in written and "ZeroDivisionError" in written and "never" not in written
    # "dies" had one retry: a second attempt ran and failed the same way.
    _, listing = svc.call("GET", f"/api/jobs/{jobs['dies']['id']}/runs", token)
    attempts = sorted((r["attempt"], r["trigger"], r["state"]) for r in listing["runs"])
    deadline = time.monotonic() + 60
    while attempts[-1][2] in ("queued", "running") or len(attempts) < 2:
        assert time.monotonic() < deadline, attempts
        time.sleep(0.5)
        _, listing = svc.call("GET", f"/api/jobs/{jobs['dies']['id']}/runs", token)
        attempts = sorted((r["attempt"], r["trigger"], r["state"]) for r in listing["runs"])
    assert attempts == [(1, "manual", "failed"), (2, "retry", "failed")]
    # The owner is told: the event log holds the failures (the notifier's fallback).
    events = svc.cli("--json", "jobs", "events", user)
    assert events.returncode == 0, events.stderr
    told = [e for e in json.loads(events.stdout) if e["detail"].get("action") == "failed"]
    assert len(told) >= 5
    svc.hub.stop_server(user)  # (the culler may have stopped it already while it idled)


def test_hostile_input_is_refused_with_a_clear_error(svc: Service, responses: list[str]) -> None:
    user, other = "eve", "fay"
    svc.hub.create_users(user, other)
    home, victim = svc.homes / user, svc.homes / other
    home.mkdir(parents=True, exist_ok=True)
    victim.mkdir(parents=True, exist_ok=True)
    (victim / "private.ipynb").write_bytes(notebook("print('private of fay')"))
    (home / "ok.ipynb").write_bytes(notebook("print(1)"))
    os.symlink(victim / "private.ipynb", home / "evil.ipynb")
    os.symlink(victim, home / "fay-link")
    token, other_token = svc.user_token(user), svc.user_token(other)

    def refused(doc: dict, status: int, words: str) -> None:
        doc = {"name": "x", "schedule": "0 3 * * *", "path": "ok.ipynb", **doc}
        got, answer = _call(svc, responses, "POST", "/api/jobs", token, doc)
        assert got == status, (doc, answer)
        assert words in answer["error"], answer

    for cron in ("* * * * * * *", "0 3 * *", "61 * * * *", "*/0 * * * *", "; rm -rf /", "x" * 500):
        refused({"schedule": cron}, 400, "schedule")
    refused({"schedule": "* * * * *"}, 400, "more often than")
    refused({"timezone": "../../etc/passwd"}, 400, "time zone")
    refused({"path": "../fay/private.ipynb"}, 400, "'..'")
    refused({"path": "/home/fay/private.ipynb"}, 400, "relative")
    refused({"path": "evil.ipynb"}, 400, "symbolic link")
    refused({"path": "fay-link/private.ipynb"}, 400, "symbolic link")
    refused({"path": "ok.sh"}, 400, ".ipynb")
    refused({"parameters": {"__import__('os')": 1}}, 400, "variable name")
    refused({"secrets": ["NOPE"]}, 404, "NOPE")
    refused({"user": other}, 403, "may not")
    # fay's job is invisible to eve, and eve cannot run it.
    theirs = make_job(svc, other_token, name="mine", path="private.ipynb")
    got, _ = _call(svc, responses, "GET", f"/api/jobs/{theirs['id']}", token)
    assert got == 404
    got, _ = _call(svc, responses, "POST", f"/api/jobs/{theirs['id']}/run", token, {})
    assert got == 404
    # A path made a symlink after the job was accepted is refused at run time.
    job = make_job(svc, token, name="swapped", path="ok.ipynb")
    (home / "ok.ipynb").unlink()
    os.symlink(victim / "private.ipynb", home / "ok.ipynb")
    done = wait_run(svc, token, job["id"], run_now(svc, token, job["id"])["id"])
    responses.append(json.dumps(done))
    assert done["state"] == "failed" and "symbolic link" in done["reason"], done
    assert not list(home.glob("ok.*.ipynb")) and not list(victim.glob("private.*.ipynb"))


def test_the_jobs_page_in_a_browser(svc: Service, browser: object) -> None:
    """ada signs in through the Hub, sees her job and its run, adds a job and a secret
    through the forms, pauses a job; a bad schedule comes back as a message."""
    from playwright.sync_api import expect

    base = f"{svc.hub.url}/services/hometier"
    context = browser.new_context()  # type: ignore[attr-defined]
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto(f"{base}/jobs")
    page.wait_for_selector("#username_input")
    page.fill("#username_input", "ada")
    page.fill("#password_input", "any password")
    page.click("#login_submit")
    page.wait_for_url(f"{base}/jobs")
    expect(page.locator("#jobs")).to_contain_text("daily")
    expect(page.locator("#jobs .run-succeeded")).to_have_count(1)
    form = page.locator("#new-job")
    form.locator("[name=name]").fill("from the browser")
    form.locator("[name=path]").fill("reports/daily.ipynb")
    form.locator("[name=schedule]").fill("15 4 * * 1-5")
    form.locator("[name=timezone]").fill("America/New_York")
    form.locator("[name=parameters]").fill('{"day": "friday"}')
    form.locator("button").click()
    expect(page.locator(".flash")).to_contain_text("Job 'from the browser' added")
    expect(page.locator("#jobs")).to_contain_text("15 4 * * 1-5")
    form = page.locator("#new-job")
    form.locator("[name=name]").fill("too often")
    form.locator("[name=path]").fill("reports/daily.ipynb")
    form.locator("[name=schedule]").fill("* * * * *")
    form.locator("button").click()
    expect(page.locator(".flash-error")).to_contain_text("more often than")
    secret = page.locator("#new-secret")
    secret.locator("[name=name]").fill("BROWSER_SECRET")
    secret.locator("[name=value]").fill(SECRET + "-browser")
    secret.locator("button").click()
    expect(page.locator(".flash")).to_contain_text("Secret BROWSER_SECRET stored (sealed)")
    assert SECRET not in page.content()
    row = page.locator("#jobs tr", has_text="from the browser")
    row.locator("button:text('Pause')").click()
    expect(page.locator("#jobs tr", has_text="from the browser")).to_contain_text("paused")
    # A form posted without the page's XSRF token is refused and changes nothing.
    resp = context.request.post(f"{base}/jobs", form={"action": "pause-all"})
    assert resp.status == 403
    context.close()


def test_no_secret_anywhere(svc: Service, responses: list[str]) -> None:
    """Runs last: the secret of the first test is in no API answer, no log, no file of
    the database and no file of any home."""
    assert responses, "the other tests recorded no answers"
    for text in responses:
        assert SECRET not in text
    places: list[Path] = [svc.root / "service.log", svc.hub.log_path]
    places += [p for p in svc.root.glob("state.db*")]
    places += [p for p in svc.homes.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(places) > 5
    needle = SECRET.encode()
    for path in places:
        assert needle not in path.read_bytes(), f"the secret is in {path}"
    token = svc.user_token("ada")
    status, doc = svc.call("GET", "/api/secrets", token)
    names = [s["name"] for s in doc["secrets"]]
    assert status == 200 and names == ["API_TOKEN", "BROWSER_SECRET"]
    assert SECRET not in json.dumps(doc)
    # The dashboard's Jobs page lists the job, its runs and the secret's name only.
    status, page = svc.call("GET", "/jobs", token, raw=True)
    assert status == 200, page[:500]
    assert b"daily" in page and b"API_TOKEN" in page and b"succeeded" in page
    assert needle not in page
    status, page = svc.call("GET", "/jobs?user=bob", token, raw=True)
    assert status == 403

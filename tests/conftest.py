"""Fixtures shared by every suite, and the rule that CI allows no skips.

Real parts are started once per session and only when a test asks for them:

- ``s3_server`` (session): a SeaweedFS ``weed mini`` on 127.0.0.1 (``S3Server``); while it
  runs, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_ENDPOINT_URL``/``AWS_REGION``
  point at it (``AWS_ENDPOINT_URL_S3`` and session tokens are unset), restored afterwards.
- ``s3_url``: ``s3://hometier/t-<uuid>``, a fresh prefix per test (restarts the server
  first if a fault test left it stopped).
- ``store_url``: each of ``memory://<uuid>``, ``file://<tmp_path>/repo`` and an
  ``s3_url`` (ids ``memory``, ``file``, ``s3``; the last is marked ``s3``).
- ``pg_server`` (session): a throwaway PostgreSQL (``PgServer``).
- ``pg_url``: ``postgresql+psycopg://postgres@127.0.0.1:PORT/<fresh empty database>``.

A test that needs a missing part skips with the reason; with ``CI=true`` every skip is
reported as a failure instead (like restic's ``RESTIC_TEST_DISALLOW_SKIP``), so CI
cannot go green by not testing. ``@pytest.mark.root`` skips unless uid 0. Tests that use
the S3 or PostgreSQL fixtures get the ``s3``/``postgres`` markers automatically, so
``-m "not s3 and not postgres"`` runs without servers.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fixtures.servers import (
    PgServer,
    S3Server,
    ServerUnavailable,
    start_pg_server,
    start_s3_server,
)

IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")

# Most suites run hometier without a JupyterHub: they say so, as an operator of such a
# deployment would (c.Archiver.use_hub = False). The tests of the Hub-less refusal unset
# it; the suites with a real Hub configure its API, which is used either way.
os.environ.setdefault("HOMETIER_USE_HUB", "0")

# Variables that would point an S3 client elsewhere or sign with foreign credentials.
_S3_ENV_CLEARED = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_REGION",
)


# --- the rules ---------------------------------------------------------------------


def pytest_report_header(config: pytest.Config) -> str:
    if IN_CI:
        return "hometier: CI=true, so every skipped test is reported as a failure"
    return "hometier: tests whose servers are missing skip (with CI=true they fail)"


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_sessionstart(session: pytest.Session) -> None:
    # `timeout`, CI runners and IDEs end a run with SIGTERM, which by default kills the
    # interpreter without running fixture teardown, leaving weed and postgres behind.
    # As an interrupt, the session fixtures stop their servers first.
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _stop_on_sigterm)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & {"s3_server", "s3_url"}:
            item.add_marker(pytest.mark.s3)
        if names & {"pg_server", "pg_url"}:
            item.add_marker(pytest.mark.postgres)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.skip("needs root (uid 0): owners, device nodes and mounts")


def _skip_reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, lineno, message = longrepr
        return f"{str(message).removeprefix('Skipped: ')} ({path}:{lineno})"
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true allows no skips, and this test skipped: {_skip_reason(report.longrepr)}"
        )
    return report


# A module-level pytest.skip()/importorskip() skips a whole file at collection. Failing
# the collection would stop the session before any test ran, so these are collected
# here and fail the run at its end instead.
_skipped_collections: list[str] = []


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if IN_CI and report.skipped:
        _skipped_collections.append(f"{report.nodeid}: {_skip_reason(report.longrepr)}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _env_leaks:
        terminalreporter.section("tests that leaked environment variables", red=True)
        for line in _env_leaks:
            terminalreporter.line(line, red=True)
    if _skipped_collections:
        terminalreporter.section("skipped at collection, which CI=true does not allow", red=True)
        for line in _skipped_collections:
            terminalreporter.line(line, red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if (_skipped_collections or _env_leaks) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- environment leaks ---------------------------------------------------------------

_WATCHED_ENV = ("AWS_", "HOMETIER_", "JUPYTERHUB_")
_SESSION_ENV: dict[str, set[str | None]] = {}
"""Values session fixtures give on purpose (the S3 server's AWS_* variables, and what
they were before, put back at the session's end)."""
_SESSION_NOW: dict[str, str | None] = {}
"""The value each of those variables has while the session fixture holds it."""
_env_leaks: list[str] = []


def _watched_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_WATCHED_ENV)}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    # A test (or a module fixture's teardown) that leaves AWS_ENDPOINT_URL pointing at a
    # server it stopped fails every later test that talks to S3, far from the cause.
    # The environment is put back and the leak reported against the test that made it.
    before = _watched_env()
    result = yield
    after = _watched_env()
    leaked = sorted(
        k
        for k in before.keys() | after.keys()
        if before.get(k) != after.get(k) and after.get(k) not in _SESSION_ENV.get(k, ())
    )
    if leaked:
        for k in leaked:
            value = _SESSION_NOW[k] if k in _SESSION_NOW else before.get(k)
            if value is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = value
        _env_leaks.append(f"{item.nodeid}: changed {', '.join(leaked)} and did not restore it")
    return result


# --- S3 ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the session, with the ``AWS_*`` variables set."""
    try:
        server = start_s3_server()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    env = server.env()
    saved = {name: os.environ.get(name) for name in (*env, *_S3_ENV_CLEARED)}
    os.environ.update(env)
    for name in _S3_ENV_CLEARED:
        os.environ.pop(name, None)
    for name in saved:
        _SESSION_ENV.setdefault(name, set()).update({os.environ.get(name), saved[name]})
        _SESSION_NOW[name] = os.environ.get(name)
    try:
        yield server
    finally:
        for name, value in saved.items():
            _SESSION_NOW[name] = value
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.close()


@pytest.fixture
def s3_url(s3_server: S3Server) -> str:
    """``s3://BUCKET/t-<uuid>``: a prefix no other test uses."""
    if not s3_server.running:
        s3_server.start_s3()  # a fault test stopped it and did not start it again
    return s3_server.url(f"t-{uuid.uuid4().hex}")


@pytest.fixture(
    params=["memory", "file", pytest.param("s3", marks=pytest.mark.s3)],
    ids=["memory", "file", "s3"],
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store URL of each kind; S3 only starts when this param runs."""
    kind = request.param
    if kind == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if kind == "file":
        return f"file://{tmp_path}/repo"
    url: str = request.getfixturevalue("s3_url")
    return url


# --- PostgreSQL --------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One throwaway PostgreSQL cluster for the session."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[test]'")
    try:
        server = start_pg_server()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """SQLAlchemy URL of a new empty database, dropped (with force) after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)

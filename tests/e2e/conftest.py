"""Fixtures of the end-to-end suite: a real JupyterHub and a ``Lifecycle`` that reads it.

- ``hub`` (session): a real JupyterHub (``fixtures.hub.start_hub``) with configurable-http-
  proxy from npm, DummyAuthenticator and SimpleLocalProcessSpawner, homes under
  ``hub.homes/{username}``. Tokens: ``hub.service_token`` (the ``hometier`` service:
  exactly ``list:users``, ``read:users:activity``, ``read:servers``), ``hub.admin_token``
  (admin, for the tests), and ``hub.extra_tokens["no-scopes"]`` (a service with no role)
  and ``hub.extra_tokens["no-read-servers"]`` (``list:users`` and ``read:users:activity``
  only: a plausible operator mistake). Skips when jupyterhub, jupyter_server or the proxy
  is missing (CI=true makes that a failure; ``scripts/test`` installs them).
- ``clock``: a settable ``fixtures.hub.Clock`` that starts at the real now (the Hub's
  ``last_activity`` times are real); ``clock.advance(days=40)`` makes everything look 40
  days old.
- ``make_lifecycle(homes, hub_client)``: a ``Lifecycle`` on a fresh SQLite database and a
  ``file://`` repository in ``tmp_path``, homes under ``homes``, the ``clock`` above.

Every test marked ``hub`` (the whole suite) is also ``slow``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fixtures.hub import Clock, Hub, start_hub
from fixtures.servers import ServerUnavailable
from hometier.lifecycle.activity import HubClient
from hometier.lifecycle.context import Lifecycle
from hometier.lifecycle.homes import HomeLayout
from hometier.lifecycle.policy import Policy
from hometier.repo import Repository
from hometier.state import open_database
from hometier.store import open_store

EXTRA_SERVICES = {
    "no-scopes": [],
    "no-read-servers": ["list:users", "read:users:activity"],
}


def pytest_configure(config: pytest.Config) -> None:
    # filterwarnings=error turns an unknown marker into an error; pyproject.toml should
    # list it beside the others.
    config.addinivalue_line("markers", "hub: needs a real JupyterHub (and its proxy)")


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """One real JupyterHub for the suite; stopped (with its proxy and servers) at the end."""
    try:
        server = start_hub(tmp_path_factory.mktemp("hub-homes"), extra_services=EXTRA_SERVICES)
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_lifecycle(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., Lifecycle]]:
    """``make_lifecycle(homes, hub_client)``: a Lifecycle on SQLite and a file:// repo."""
    made: list[Lifecycle] = []

    def make(homes: Path, hub_client: HubClient | None) -> Lifecycle:
        n = len(made)
        db = open_database(f"sqlite:///{tmp_path / f'state-{n}.db'}")
        lc = Lifecycle(
            db=db,
            repo=Repository.open_or_create(open_store(f"file://{tmp_path / f'repo-{n}'}"))[0],
            layout=HomeLayout(homes),
            policy=Policy(inactive_after=dt.timedelta(days=30)),
            clock=clock,
            hub=hub_client,
            workers=2,
            pack_size=4 * 1024 * 1024,
        )
        made.append(lc)
        return lc

    try:
        yield make
    finally:
        for lc in made:
            lc.db.dispose()

"""A PostgreSQL server that accepts connections and never answers (a hung host, a
black-holed route behind a load balancer) must not hold the archiver or a login for
minutes: connecting gives up after the engine's connect timeout with the error the
service turns into a 503 ("the state database is unreachable").

The "server" is a socket on 127.0.0.1 that listens and never speaks, which is what a
client sees of a hung PostgreSQL before its startup message is answered.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from hometier.state.db import make_engine


@pytest.fixture
def silent_server() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.slow
def test_a_hung_database_fails_within_the_default_connect_timeout(silent_server: int) -> None:
    engine = make_engine(f"postgresql://hometier@127.0.0.1:{silent_server}/hometier")
    started = time.monotonic()
    with pytest.raises(OperationalError, match="timeout"), engine.connect() as conn:
        conn.execute(text("select 1"))
    took = time.monotonic() - started
    engine.dispose()
    # The default is 10 s; without it libpq waits for the operating system (minutes).
    assert 9 <= took < 30, took


def test_a_connect_timeout_in_the_url_wins(silent_server: int) -> None:
    engine = make_engine(
        f"postgresql://hometier@127.0.0.1:{silent_server}/hometier?connect_timeout=2"
    )
    started = time.monotonic()
    with pytest.raises(OperationalError), engine.connect() as conn:
        conn.execute(text("select 1"))
    took = time.monotonic() - started
    engine.dispose()
    assert took < 8, took

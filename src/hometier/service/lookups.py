"""Home rows for request handlers, read many at a time when many ask at once.

When a class logs in, hundreds of ``POST …/restore`` arrive within a second, and each
must read its home's row (unknown users get a 404; what the restore costs decides whether
it may overtake). One statement per request queued them behind the database pool and the
API threads: the storm's last logins waited seconds to be *accepted*. ``HomeLookup``
sends the first request's statement at once and gathers the names that arrive while it
runs into the next statement (``WHERE user IN (…)``, at most ``BATCH`` names), so a
lone request waits no longer than before and 500 at once cost a handful of statements.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any

from hometier.state import queries
from hometier.state.db import Database

BATCH = 500
"""Names in one statement (bind parameters stay well under every backend's limit)."""


class HomeLookup:
    """``await lookup.get(user)``: the home's row, or ``HomeNotFound``; a database error
    of the batch's statement is raised to every request of the batch."""

    def __init__(self, db: Database, executor: Executor) -> None:
        self.db = db
        self.executor = executor
        self._waiting: dict[str, list[asyncio.Future[Any]]] = {}
        self._draining = False
        self.statements = 0
        """How many statements were sent (the tests and the metrics read it)."""

    async def get(self, user: str) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._waiting.setdefault(user, []).append(fut)
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                names = list(self._waiting)[:BATCH]
                batch = {u: self._waiting.pop(u) for u in names}
                self.statements += 1
                try:
                    rows = await loop.run_in_executor(
                        self.executor, queries.get_homes, self.db, names
                    )
                except Exception as exc:  # noqa: BLE001 - every waiting request answers it
                    for futs in batch.values():
                        for fut in futs:
                            if not fut.done():
                                fut.set_exception(exc)
                    continue
                for user, futs in batch.items():
                    home = rows.get(user)
                    for fut in futs:
                        if fut.done():
                            continue  # the client went away
                        if home is None:
                            fut.set_exception(queries.HomeNotFound(user))
                        else:
                            fut.set_result(home)
        finally:
            self._draining = False

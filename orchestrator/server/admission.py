"""Group commit of accepted jobs: one ledger transaction for all the jobs accepted in one turn
of the event loop, each request answered only once its job is committed.

A transaction costs far more than the rows in it, so under a burst of submissions recording each
job on its own set the pace. Nothing acknowledged can be lost: a 201 is sent after the commit,
and a job whose request is still waiting when the server dies was never acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from orchestrator.server.ledger import Admitted, Store

logger = logging.getLogger(__name__)


Pending = tuple[Admitted, Callable[[], None], "asyncio.Future[None]"]


class GroupCommit:
    def __init__(self, store: Store):
        self.store = store
        self._pending: list[Pending] = []

    async def record(self, admitted: Admitted, then: Callable[[], None]) -> None:
        """Return once the job is committed (with the others of this loop turn); `then` runs
        right after the commit, even if the request that sent the job is gone by then."""
        done = asyncio.get_running_loop().create_future()
        if not self._pending:  # the first of this turn: commit after the turn's other requests
            asyncio.get_running_loop().call_soon(self._commit)
        self._pending.append((admitted, then, done))
        await done

    def _commit(self) -> None:
        group, self._pending = self._pending, []
        try:
            self.store.insert_admitted([admitted for admitted, _, _ in group])
        except Exception:  # one bad row must not refuse the others: each on its own
            logger.warning("recording %d accepted jobs together failed; recording them one by one", len(group))
            for pending in group:
                self._commit_one(pending)
            return
        for pending in group:
            _committed(pending)

    def _commit_one(self, pending: Pending) -> None:
        admitted, _, done = pending
        try:
            self.store.insert_admitted([admitted])
        except Exception as exc:  # noqa: BLE001 - handed to the request that sent the job
            if not done.done():
                done.set_exception(exc)
            return
        _committed(pending)


def _committed(pending: Pending) -> None:
    _, then, done = pending
    try:
        then()
    except Exception as exc:  # noqa: BLE001 - recorded, but what follows failed: say so to its request
        logger.exception("a job was recorded but could not be sent; it is sent when the server restarts")
        if not done.done():
            done.set_exception(exc)
        return
    if not done.done():
        done.set_result(None)

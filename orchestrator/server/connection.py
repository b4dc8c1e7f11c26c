"""The engine's link to the Dask scheduler, kept up through scheduler restarts and outages.

Dask's client reconnects by itself for `distributed.comm.timeouts.connect`, then gives up and
closes. Either way it cancels every future it had, and a new scheduler (or one that dropped
us) knows neither our worker plugin nor our topic subscriptions. The link notices each new
connection (a new scheduler comm), has the engine attach to it and send again what was lost,
and replaces a client that gave up by a new one to the same address, for as long as it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from distributed import Client

from orchestrator.server.prompt_sends import SEND_INTERVAL_S

logger = logging.getLogger(__name__)

POLL_S = 0.25  # how often the client's state is looked at: an attribute read, nothing sent
RETRY_S = 1.0  # pause after a failed attach or reconnect before the next try

ClientFactory = Callable[[], Awaitable[Client]]
Attach = Callable[[Client], Awaitable[None]]
Regained = Callable[[], Awaitable[None]]


class SchedulerLink:
    """The current client, whether it is usable, and what to do when a connection is made."""

    def __init__(self, client: Client, reconnect: ClientFactory | None = None):
        self.client = client
        self.address: str = client.scheduler.address
        self._reconnect = reconnect or self._new_client
        self._online = asyncio.Event()
        self._comm: object | None = None  # the scheduler comm we last attached to
        self._attach: Attach | None = None
        self._regained: Regained | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._regain_due = False  # a reconnection whose lost work is not sent again yet

    @property
    def online(self) -> bool:
        """Connected and attached: while False, a call to the scheduler would only wait out
        Dask's connect timeout, so callers skip it or wait for `wait_online`."""
        client = self.client  # Dask's own state first: it knows of a loss before the watcher looks
        return self._online.is_set() and client.status == "running" and client.scheduler_comm is self._comm

    async def wait_online(self) -> None:
        await self._online.wait()

    async def start(self, attach: Attach, regained: Regained) -> None:
        """Attach to the first connection now; later ones are found by the watcher.

        `attach` tells a scheduler about us; `regained` runs after every reconnection.
        """
        self._attach, self._regained = attach, regained
        await self._attach_to(self._current_comm())
        self._task = asyncio.ensure_future(self._watch())

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self._check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep watching: the next look tries again
                logger.warning("the Dask scheduler at %s is not usable yet: %s", self.address, exc)
                await asyncio.sleep(RETRY_S)

    async def _check(self) -> None:
        comm = self._current_comm()
        if comm is None or comm is not self._comm:
            await self._follow(comm)
        if self._regain_due and self.online and self._regained is not None:
            await self._regained()  # idempotent: retried on the next look if it fails
            self._regain_due = False

    async def _follow(self, comm: object | None) -> None:
        """The connection changed: note the loss, get a client again if Dask's gave up, and
        attach to a new connection."""
        if self._online.is_set():
            self._online.clear()
            logger.warning("lost the connection to the Dask scheduler at %s; work is sent again "
                           "once it is back", self.address)
        if comm is None and self.client.status == "closed" and not self._closing:
            comm = await self._replace_client()
        if comm is not None:
            self._regain_due = True
            await self._attach_to(comm)
            logger.warning("connected to the Dask scheduler at %s again", self.address)

    def _current_comm(self) -> object | None:
        """A new object on every (re)connection, so a reconnection between looks is seen too."""
        return self.client.scheduler_comm if self.client.status == "running" else None

    async def _attach_to(self, comm: object | None) -> None:
        if hasattr(comm, "interval"):  # Dask's client batches sends for 10 ms: see prompt_sends
            comm.interval = SEND_INTERVAL_S  # type: ignore[union-attr]
        if self._attach is not None:
            await self._attach(self.client)
        self._comm = comm
        self._online.set()

    async def _replace_client(self) -> object | None:
        """Dask's client gave up waiting for its scheduler: a new one tries again."""
        try:
            client = await self._reconnect()
        except (OSError, asyncio.TimeoutError) as exc:
            logger.info("the Dask scheduler at %s is still unreachable: %s", self.address, exc)
            return None
        old, self.client = self.client, client
        with contextlib.suppress(Exception):
            await old.close()
        return self._current_comm()

    async def _new_client(self) -> Client:
        """With the same certificates as the client it replaces (a TLS scheduler wants them)."""
        return await Client(self.address, security=self.client.security, asynchronous=True)

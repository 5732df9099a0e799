"""`LeaseWaits`: the waiting lease requests of this API process, watched together.

A queued `POST /leases` waits on the event loop, holding no thread. One poller reads the
state of every waiting request of this process in one query per tick, so a hundred
waiters cost what one does, and other requests (heartbeats above all) are still served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from orchestrator.lease_service import WAIT_POLL_S, LeaseService
from orchestrator.leases import LeaseOutcome, LeaseStatus

logger = logging.getLogger(__name__)

T = TypeVar("T")
ADMISSION_THREADS = 4

# How often a waiter checks whether its caller hung up.
DISCONNECT_CHECK_S = 0.5


class LeaseWaits:
    def __init__(self, leases: LeaseService) -> None:
        self.leases = leases
        self._waiting: dict[str, asyncio.Future[LeaseOutcome]] = {}
        self._poller: asyncio.Task[None] | None = None
        # Admission decisions queue on one database lock: a few threads serve them as fast
        # as many would, and requests piling up there leave the shared thread pool to the
        # rest of the API (heartbeats above all).
        self._limiter = anyio.CapacityLimiter(ADMISSION_THREADS)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run an admission call (`begin`, `give_up`, `cancel`, a look) on its own threads."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def wait(
        self, token: str, deadline: float, hung_up: Callable[[], Awaitable[bool]]
    ) -> LeaseOutcome:
        """Until the request is granted or ends, its deadline (monotonic) passes, or the
        caller hangs up; then the final outcome."""
        future: asyncio.Future[LeaseOutcome] = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    step = min(remaining, DISCONNECT_CHECK_S)
                    return await asyncio.wait_for(asyncio.shield(future), step)
                except TimeoutError:
                    if await hung_up():
                        # Nobody would heartbeat a lease granted now: give the place up.
                        return await self.run(self.leases.cancel, token)
        finally:
            self._waiting.pop(token, None)
        return await self.run(self.leases.give_up, token)

    async def _poll(self) -> None:
        while self._waiting:
            await asyncio.sleep(WAIT_POLL_S)
            try:
                await self._look()
            except Exception:
                # One failed look (the database away) must not end the watch of every waiter.
                logger.warning(
                    "lease waits: a look failed",
                    exc_info=True,
                    extra={"event": "lease_wait_poll_failed"},
                )

    async def _look(self) -> None:
        tokens = [t for t, f in self._waiting.items() if not f.done()]
        if not tokens:
            return
        for lease in await self.run(self.leases.store.get_leases, tokens):
            future = self._waiting.get(lease.token)
            if future is None or future.done() or lease.status is LeaseStatus.WAITING:
                continue
            if lease.status is LeaseStatus.ACTIVE:
                future.set_result(LeaseOutcome(lease))
            else:  # timed out by the sweep: let the waiter say why
                future.set_result(await self.run(self.leases.give_up, lease.token))

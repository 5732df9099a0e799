"""`LeaseWaits`: the waiting lease requests of this API process, watched together.

A queued `POST /leases` waits on the event loop, holding no thread. One poller reads the
state of every waiting request of this process in one query per tick, so a hundred
waiters cost what one does, and other requests (heartbeats above all) are still served.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from fastapi.concurrency import run_in_threadpool

from orchestrator.lease_service import WAIT_POLL_S, LeaseService
from orchestrator.leases import LeaseOutcome, LeaseStatus

# How often a waiter checks whether its caller hung up.
DISCONNECT_CHECK_S = 0.5


class LeaseWaits:
    def __init__(self, leases: LeaseService) -> None:
        self.leases = leases
        self._waiting: dict[str, asyncio.Future[LeaseOutcome]] = {}
        self._poller: asyncio.Task[None] | None = None

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
                        break
        finally:
            self._waiting.pop(token, None)
        return await run_in_threadpool(self.leases.give_up, token)

    async def _poll(self) -> None:
        while self._waiting:
            await asyncio.sleep(WAIT_POLL_S)
            tokens = [t for t, f in self._waiting.items() if not f.done()]
            if not tokens:
                continue
            found = await run_in_threadpool(self.leases.store.get_leases, tokens)
            for lease in found:
                future = self._waiting.get(lease.token)
                if future is None or future.done() or lease.status is LeaseStatus.WAITING:
                    continue
                if lease.status is LeaseStatus.ACTIVE:
                    future.set_result(LeaseOutcome(lease))
                else:  # timed out by the sweep: let the waiter say why
                    future.set_result(await run_in_threadpool(self.leases.give_up, lease.token))

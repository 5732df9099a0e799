"""Waiting lease requests hold no server thread: many of them queued must not keep the
API from serving others (a holder's heartbeat above all, or its lease would expire)."""

from __future__ import annotations

import threading
import time
from typing import Any

from orchestrator.gpu import SimulatedProbe
from tests.integration.backends import Backend
from tests.integration.harness import System


def test_many_waiting_requests__do_not_starve_heartbeats(backend_factory: Any) -> None:
    backend: Backend = backend_factory(node_name="n1", lease_sweep_interval_s=0.1)
    system = System(backend)
    try:
        system.store.report_node(
            "n1", SimulatedProbe([24576]).read(), system.services.clock.now(), 90
        )
        holder = system.client.post("/leases", json={"agent": "holder", "est_vram_mb": 20000})
        assert holder.status_code == 201, holder.text
        token = holder.json()["token"]

        answers: list[int] = []
        lock = threading.Lock()

        def wait_for_room() -> None:
            response = system.client.post(
                "/leases", json={"agent": "queued", "est_vram_mb": 20000, "wait_s": 3}
            )
            with lock:
                answers.append(response.status_code)

        # More waiters than the server's thread pool (40 threads) has room for.
        threads = [threading.Thread(target=wait_for_room) for _ in range(50)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # let them queue

        started = time.monotonic()
        beat = system.client.post(f"/leases/{token}/heartbeat", json={})
        took = time.monotonic() - started
        for t in threads:
            t.join(10)

        assert beat.status_code == 200, beat.text
        assert took < 1.5, f"a heartbeat took {took:.2f}s behind 50 waiting requests"
        assert answers.count(409) == 50  # none fitted: all timed out, none granted
        waiting = system.client.get("/leases?status=waiting").json()["leases"]
        assert waiting == []
    finally:
        system.close()

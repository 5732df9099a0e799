"""Reading jobs: one, a filtered page at a time, and the audit trail."""

from __future__ import annotations

from tests.integration.harness import System


def test_list__filters_and_pages_through_everything(system: System) -> None:
    echo_ids = [system.submit(type="echo", payload={"i": i}) for i in range(7)]
    other = system.submit(type="sleep")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"type": "echo", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = system.client.get("/jobs", params=params).json()
        seen += [j["id"] for j in page["jobs"]]
        assert len(page["jobs"]) <= 3
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(echo_ids))  # newest first, each once
    assert other not in seen


def test_list__by_status(system: System) -> None:
    keep = system.submit(type="echo")
    gone = system.submit(type="echo")
    system.client.post(f"/jobs/{gone}/cancel")
    cancelled = system.client.get("/jobs", params={"status": "cancelled"}).json()["jobs"]
    pending = system.client.get("/jobs", params={"status": "pending"}).json()["jobs"]
    assert [j["id"] for j in cancelled] == [gone]
    assert [j["id"] for j in pending] == [keep]


def test_list__page_size_is_capped(backend_factory: object) -> None:
    system = System(backend_factory(max_page_size=5))  # type: ignore[operator]
    try:
        for _ in range(7):
            system.submit(type="echo")
        page = system.client.get("/jobs", params={"limit": 100}).json()
        assert len(page["jobs"]) == 5
        assert page["next_cursor"]
    finally:
        system.close()


def test_events__trail_has_times_actors_and_details(system: System) -> None:
    system.start_worker()
    job_id = system.submit(type="echo", priority="high")
    system.wait_status(job_id)
    events = system.client.get(f"/jobs/{job_id}/events").json()["events"]
    submitted, started, completed = events
    assert submitted["detail"] == {"priority": "high"}
    assert submitted["actor"] == "anonymous"
    assert started["status"] == "running" and started["attempt"] == 1
    assert completed["status"] == "done" and completed["actor"] == started["actor"]
    assert submitted["at"] <= started["at"] <= completed["at"]

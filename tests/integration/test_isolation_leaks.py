"""What one owner may learn of another's work, on both backends (follow-up of issue 6's
review): GPU state, explain, workers and leases show a non-admin only its own jobs' and
leases' identities; a job's lease is its worker's; quotas follow the authenticated owner;
the rate limit counts only valid submits and preloads; and every GET route, walked by
another submitter, never echoes alice's job id or lease token."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from orchestrator.api.security import route_access
from orchestrator.auth import Role
from orchestrator.errors import StoreUnavailable
from orchestrator.fleet import WorkerRegistration, WorkerStatus
from orchestrator.gpu import SimulatedProbe
from orchestrator.leases import LeaseRequest
from tests.integration.harness import System
from tests.integration.test_isolation import Caller
from tests.integration.test_security_matrix import add_token

SETTINGS: dict[str, Any] = {"node_name": "n1", "lease_sweep_interval_s": 0.05}
JOB = {"type": "record", "payload": {"x": 1}}
GHOST_JOB = "00000000-0000-4000-8000-000000000000"
GHOST_TOKEN = "0" * 32
Tenants = tuple[System, Caller, Caller, Caller]


@pytest.fixture
def tenants(backend_factory: Callable[..., Any]) -> Iterator[Tenants]:
    system = System(backend_factory(**SETTINGS))
    try:
        alice = Caller(system, add_token(system, Role.SUBMITTER, "alice"))
        bob = Caller(system, add_token(system, Role.SUBMITTER, "bob"))
        admin = Caller(system, add_token(system, Role.ADMIN, "ops"))
        yield system, alice, bob, admin
    finally:
        system.close()


def one_card(system: System, mb: int = 24576) -> None:
    reading = SimulatedProbe([mb]).read()
    system.store.report_node("n1", reading, system.services.clock.now(), 90.0)


def lease(caller: Caller, est: int, **body: Any) -> dict[str, Any]:
    response = caller.post("/leases", {"agent": "trainer", "est_vram_mb": est, "ttl_s": 30, **body})
    assert response.status_code == 201, response.text
    taken: dict[str, Any] = response.json()
    return taken


def job_lease(system: System, job_id: str, owner: str, est: int = 1000) -> str:
    """The lease a worker takes for the job (through the store, as workers do)."""
    ask = LeaseRequest(agent=owner, owner=owner, est_vram_mb=est, ttl_s=30, job_id=job_id)
    outcome = system.services.leases.begin(ask)
    assert outcome.lease is not None and outcome.granted, outcome
    return outcome.lease.token


# -- GPU state, explain, workers ------------------------------------------------------------


def test_gpu_state__a_non_admin_sees_only_its_own_leases(tenants: Tenants) -> None:
    system, alice, bob, admin = tenants
    one_card(system)
    alices = lease(alice, 1000)
    bobs = lease(bob, 2000)

    (card,) = bob.get("/gpu_state").json()["gpus"]
    assert [x["token"] for x in card["leases"]] == [bobs["token"]]
    assert card["other_owners_leases"] == 1
    assert card["leased_mb"] == 3000  # others' still count
    (card,) = admin.get("/gpu_state").json()["gpus"]
    assert {x["token"] for x in card["leases"]} == {alices["token"], bobs["token"]}
    assert card["other_owners_leases"] == 0
    # The dashboard is an admin's view.
    (card,) = admin.get("/dashboard/data").json()["gpus"]["gpus"]
    assert len(card["leases"]) == 2


def test_explain__other_owners_holders_are_redacted(tenants: Tenants) -> None:
    system, alice, bob, admin = tenants
    one_card(system)
    bobs_job = bob.submit(delay_s=3600)
    bobs = {"token": job_lease(system, bobs_job, "bob", est=20000)}  # as its worker takes it
    job_id = alice.submit(gpu={"est_vram_mb": 10000})

    answer = alice.get(f"/jobs/{job_id}/explain")
    assert answer.status_code == 200, answer.text
    (capacity,) = [r for r in answer.json()["reasons"] if r["code"] == "gpu_capacity"]
    assert capacity["holders_total"] == 1
    (holder,) = capacity["holders"]
    assert (holder["token"], holder["job_id"], holder["owner"]) == (None, None, "another owner")
    assert holder["est_vram_mb"] == 20000
    for secret in (bobs["token"], bobs["token"][:8], bobs_job, "bob"):
        assert secret not in answer.text, secret

    (capacity,) = [
        r
        for r in admin.get(f"/jobs/{job_id}/explain").json()["reasons"]
        if r["code"] == "gpu_capacity"
    ]
    assert capacity["holders"][0]["token"] == bobs["token"]
    assert capacity["holders"][0]["job_id"] == bobs_job


def test_workers__a_non_admin_sees_only_its_own_running_jobs(tenants: Tenants) -> None:
    system, alice, bob, admin = tenants
    alices = alice.submit(delay_s=3600)
    bobs = bob.submit(delay_s=3600)
    now = system.services.clock.now()
    system.store.register_worker(WorkerRegistration("w-1", "n1", None, None, ["record"], 2), now)
    system.store.heartbeat_worker("w-1", WorkerStatus.RUNNING, [alices, bobs], now)

    def current(caller: Caller) -> list[str]:
        (worker,) = caller.get("/workers").json()["workers"]
        jobs: list[str] = worker["current_jobs"]
        return jobs

    assert current(alice) == [alices]
    assert current(bob) == [bobs]
    assert current(admin) == [alices, bobs]


# -- leases ------------------------------------------------------------------------------------


def test_request_lease__naming_a_job_is_for_admins_only(tenants: Tenants) -> None:
    system, alice, bob, admin = tenants
    one_card(system)
    alices = alice.submit(delay_s=3600)
    before = system.snapshot()
    response = bob.post("/leases", {"agent": "x", "est_vram_mb": 1000, "job_id": alices})
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "forbidden"
    ghost = bob.post("/leases", {"agent": "x", "est_vram_mb": 1000, "job_id": GHOST_JOB})
    assert response.text == ghost.text  # says nothing about whose job it is, or whether it is
    # Its own job too: a job's lease is its worker's, which the owner could not release.
    own = alice.post("/leases", {"agent": "x", "est_vram_mb": 1000, "job_id": alices})
    assert own.status_code == 403, own.text
    assert system.snapshot() == before
    assert lease(admin, 1000, job_id=alices)["job_id"] == alices


def test_job_lease__only_an_admin_may_heartbeat_or_release_it(tenants: Tenants) -> None:
    system, alice, _, admin = tenants
    one_card(system)
    job_id = alice.submit(delay_s=3600)
    token = job_lease(system, job_id, "alice")
    assert alice.get(f"/leases/{token}").status_code == 200  # readable by its owner
    for action in ("heartbeat", "release"):
        response = alice.post(f"/leases/{token}/{action}")
        assert response.status_code == 409, response.text
        body = response.json()
        assert body["details"]["reason"] == "job_lease" and "worker" in body["message"]
    assert system.store.get_lease(token).status.value == "active"  # type: ignore[union-attr]
    assert admin.post(f"/leases/{token}/heartbeat").status_code == 200
    assert admin.post(f"/leases/{token}/release").json()["status"] == "released"


def test_quotas__follow_the_owner_not_the_agent_name(tenants: Tenants) -> None:
    system, alice, bob, admin = tenants
    one_card(system)
    policy = {"quotas": {"alice": {"max_leases": 1}, "bob/batch": {"max_leases": 1}}}
    assert admin.post("/policy", policy).status_code == 200

    lease(alice, 1000, agent="a")
    renamed = alice.post("/leases", {"agent": "another-name", "est_vram_mb": 1000})
    assert renamed.status_code == 409 and renamed.json()["reason"] == "quota_leases"
    # Bob calling his agent "alice" neither spends alice's quota nor is bound by it.
    lease(bob, 1000, agent="alice")
    lease(bob, 1000, agent="alice")
    # An owner/agent entry limits that agent of that owner only.
    lease(bob, 1000, agent="batch")
    again = bob.post("/leases", {"agent": "batch", "est_vram_mb": 1000})
    assert again.status_code == 409 and again.json()["reason"] == "quota_leases"
    lease(admin, 1000, agent="batch")


# -- the submit rate limit ---------------------------------------------------------------------


def test_rate_limit__rejected_submits_cost_nothing_and_preloads_count(
    backend_factory: Callable[..., Any],
) -> None:
    system = System(
        backend_factory(submit_rate_per_s=0.001, submit_burst=3, max_batch_size=3, **SETTINGS)
    )
    try:
        alice = Caller(system, add_token(system, Role.SUBMITTER, "alice"))
        for _ in range(5):  # too large: 422, and no budget spent
            response = alice.post("/jobs/submit_batch", {"jobs": [JOB] * 4})
            assert response.status_code == 422, response.text
        bad = alice.post("/jobs/submit", {"type": "record", "payload": {}, "max_attempts": 0})
        assert bad.status_code == 422, bad.text
        queued = alice.post("/models/preload", {"models": ["m-1", "m-2"]})
        assert queued.status_code == 202, queued.text
        assert len(queued.json()["queued"]) == 2
        alice.submit()  # the third of the burst
        refused = alice.post("/models/preload", {"models": ["m-3"]})
        assert refused.status_code == 429, refused.text
        assert alice.post("/jobs/submit", JOB).status_code == 429
    finally:
        system.close()


# -- nothing of alice's in any GET answer to bob ----------------------------------------------


def test_every_get_route__never_shows_another_owners_job_or_lease(tenants: Tenants) -> None:
    system, alice, bob, _ = tenants
    one_card(system)
    job_id = alice.submit(gpu={"est_vram_mb": 1000}, delay_s=3600)
    taken = lease(alice, 2000)
    token = job_lease(system, job_id, "alice")
    now = system.services.clock.now()
    system.store.register_worker(WorkerRegistration("w-1", "n1", None, None, ["record"], 2), now)
    system.store.heartbeat_worker("w-1", WorkerStatus.RUNNING, [job_id], now)
    secrets = (job_id, taken["token"], token)
    fill = {"job_id": job_id, "token": taken["token"], "name": "default", "node": "n1"}
    ghosts = {job_id: GHOST_JOB, taken["token"]: GHOST_TOKEN}

    def concrete(path: str, values: dict[str, str]) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), "x"), path)

    checked = []
    for method, path in sorted(route_access(system.client.app)):  # type: ignore[arg-type]
        if method != "GET":
            continue
        url = concrete(path, fill)
        response = bob.get(url)
        assert response.status_code < 500, (url, response.text)
        if response.status_code == 404:
            # It may echo the id bob sent, but must answer exactly as for an id that does
            # not exist: nothing tells bob alice's job or lease is there.
            ghost_url = concrete(path, {**fill, "job_id": GHOST_JOB, "token": GHOST_TOKEN})
            body = response.text
            for real, ghost in ghosts.items():
                body = body.replace(real, ghost)
            assert body == bob.get(ghost_url).text, url
        else:
            for secret in secrets:
                assert secret not in response.text, f"GET {url} ({response.status_code}) shows it"
        checked.append(url)
    assert f"/jobs/{job_id}/explain" in checked and f"/leases/{taken['token']}" in checked
    assert "/gpu_state" in checked and "/workers" in checked


# -- the open API answers only this machine ---------------------------------------------------


def test_open_api__refuses_foreign_hosts_and_cross_site_writes(system: System) -> None:
    job_id = system.submit(type="record", payload={}, delay_s=3600)
    for host in ("127.0.0.1:8014", "localhost", "LOCALHOST:1", "[::1]:8014", "127.0.0.2"):
        response = system.client.get("/jobs", headers={"host": host})
        assert response.status_code == 200, (host, response.text)
    before = system.snapshot()
    for host in ("evil.example", "127.evil.example:8014", "10.0.0.5:8014", "0.0.0.0"):
        response = system.client.get(f"/jobs/{job_id}", headers={"host": host})
        assert response.status_code == 403, (host, response.text)
        assert response.json()["error"] == "forbidden_host"
        assert job_id not in response.text

    # A page of another site posting a "simple" request (text/plain: no CORS preflight).
    for origin in ("http://evil.example", "null", "http://127.evil.example:8014"):
        response = system.client.post(
            f"/jobs/{job_id}/cancel",
            content=b"x",
            headers={"content-type": "text/plain", "origin": origin},
        )
        assert response.status_code == 403, (origin, response.text)
        assert response.json()["error"] == "forbidden_origin"
    assert system.snapshot() == before
    assert system.job(job_id)["status"] == "pending"
    # Reads with an Origin, and writes from this machine's pages, go through.
    assert system.client.get("/jobs", headers={"origin": "http://evil.example"}).status_code == 200
    local = system.client.post(
        f"/jobs/{job_id}/cancel", headers={"origin": "http://localhost:8014"}
    )
    assert local.json()["status"] == "cancelled"


def test_open_api__the_default_allowed_hosts_are_loopback_only(
    backend_factory: Callable[..., Any],
) -> None:
    system = System(backend_factory(allowed_hosts="localhost,127.0.0.1,::1"))
    try:
        assert system.client.get("/jobs").status_code == 403  # Host: testserver
        assert system.client.get("/jobs", headers={"host": "127.0.0.1"}).status_code == 200
        assert system.client.get("/health").status_code == 403  # every route
    finally:
        system.close()


def test_open_api__with_tokens_the_bearer_token_is_the_guard(tenants: Tenants) -> None:
    system, alice, _, _ = tenants
    job_id = alice.submit(delay_s=3600)
    headers = {**alice.headers, "host": "orchestrator.example", "origin": "https://ui.example"}
    response = system.client.post(f"/jobs/{job_id}/cancel", headers=headers)
    assert response.json()["status"] == "cancelled"


def _database_down(kind: str) -> Callable[..., Any]:
    def fail(*_args: Any, **_kwargs: Any) -> Any:
        if kind == "store":
            raise StoreUnavailable("database error: down")
        # What the driver raises: the store turns it into StoreUnavailable.
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("(2003) can't connect"))

    return fail


@pytest.mark.parametrize("kind", ["store", "driver"])
def test_open_api__a_database_outage_is_a_503_not_a_500(
    system: System, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    auth = system.services.auth
    auth._enabled_checked = None  # the guard looks the tokens up on this request
    if kind == "store":
        monkeypatch.setattr(auth.store, "count_tokens", _database_down(kind))
    else:
        monkeypatch.setattr(system.store.engine, "connect", _database_down(kind))
    response = system.client.get("/jobs", headers={"host": "127.0.0.1"})
    assert response.status_code == 503, response.text
    error = response.json()
    assert error["error"] == "database_unavailable", error
    assert error["message"].startswith("database error: "), error

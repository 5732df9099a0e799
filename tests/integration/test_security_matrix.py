"""The role matrix (issue 6): every route of the app, walked with no token, a wrong token, a
revoked token and each role, on both backends; and docs/security.md saying the same as the
code, route for route.

Allowed means "not 401 or 403": the requests carry no valid body, so an allowed call may
well answer 404 or 422. Refused means exactly 401 (who are you?) or 403 (not you).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.api.app import create_app
from orchestrator.api.security import Access, route_access
from orchestrator.auth import Role, new_token
from orchestrator.wiring import build_services
from tests.integration.backends import Backend, migrated, sqlite_backend
from tests.integration.harness import System

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
ROW = re.compile(r"^\| `([A-Z]+)` \| `([^`]+)` \| (.+?) \|$")
SAMPLE = {
    "job_id": "00000000-0000-4000-8000-000000000000",
    "token": "0" * 32,
    "name": "no-such-pool",
}


@dataclass
class Tokens:
    by_role: dict[Role, str]
    revoked: str


def add_token(system: System, role: Role, owner: str) -> str:
    secret, token = new_token(role, owner, system.services.clock.now())
    system.store.add_token(token)
    return secret


def issue_tokens(system: System) -> Tokens:
    """A token of each role, and a revoked admin token (made before any request, so no
    replica has it cached)."""
    by_role = {role: add_token(system, role, f"{role.value}-owner") for role in Role}
    revoked = add_token(system, Role.ADMIN, "gone")
    (record,) = [t for t in system.store.list_tokens() if t.owner == "gone"]
    system.store.revoke_token(record.id, system.services.clock.now())
    return Tokens(by_role, revoked)


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


def call(system: System, method: str, path: str, token: str | None) -> Any:
    concrete = re.sub(r"\{(\w+)\}", lambda m: SAMPLE.get(m.group(1), "x"), path)
    kwargs: dict[str, Any] = {"headers": bearer(token)}
    if method in ("POST", "PATCH", "PUT"):
        kwargs["json"] = {}
    return system.client.request(method, concrete, **kwargs)


def routes(system: System) -> dict[tuple[str, str], Access]:
    found = route_access(system.client.app)  # type: ignore[arg-type]
    undeclared = sorted(k for k, v in found.items() if v is None)
    assert not undeclared, f"routes with no (or several) require(...): {undeclared}"
    return {k: v for k, v in found.items() if v is not None}


def is_open(access: Access) -> bool:
    return access.describe().startswith("open")


@pytest.fixture
def secured(system: System) -> Iterator[tuple[System, Tokens]]:
    yield system, issue_tokens(system)


def test_role_matrix__every_route_with_every_kind_of_caller(
    secured: tuple[System, Tokens],
) -> None:
    system, tokens = secured
    wrong: list[str] = []
    for (method, path), access in sorted(routes(system).items()):
        callers: list[tuple[str, str | None, set[int] | None]] = [
            ("no token", None, {401}),
            ("a wrong token", "orch_000000000000_not-a-token", {401}),
            ("a revoked token", tokens.revoked, {401}),
        ]
        for role, token in tokens.by_role.items():
            callers.append((role.value, token, None if role in access.roles else {403}))
        for who, token, refused in callers:
            if is_open(access):
                refused = None
            response = call(system, method, path, token)
            status = response.status_code
            if refused is None and status in (401, 403):
                wrong.append(f"{method} {path} as {who}: {status} (should be allowed)")
            elif refused is not None and status not in refused:
                wrong.append(f"{method} {path} as {who}: {status} (should be {refused})")
            elif refused is not None and status == 401:
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert response.json()["error"] == "unauthenticated"
            elif refused is not None:
                assert response.json()["error"] == "forbidden", response.text
    assert not wrong, "\n".join(wrong)


@pytest.fixture
def quiet(backend: Backend) -> Iterator[tuple[System, Tokens]]:
    """Tokens on a system without the engine, whose loops write as they run: a snapshot of
    contents then changes only by what a request writes."""
    system = System(backend, run_engine=False)
    try:
        yield system, issue_tokens(system)
    finally:
        system.close()


def test_role_matrix__refusals_write_nothing(quiet: tuple[System, Tokens]) -> None:
    system, tokens = quiet
    # Contents, not counts: a refused token's `last_used_at` must not change either.
    before = system.snapshot(contents=True)
    job = {"type": "record", "payload": {"x": 1}}
    for token in (None, "orch_bad", tokens.revoked, tokens.by_role[Role.WORKER]):
        response = system.client.post("/jobs/submit", json=job, headers=bearer(token))
        assert response.status_code in (401, 403), response.text
        batch = {"jobs": [job, job]}
        response = system.client.post("/jobs/submit_batch", json=batch, headers=bearer(token))
        assert response.status_code in (401, 403), response.text
    response = system.client.post(
        "/pools",
        json={"name": "p1", "job_types": ["record"], "desired": 1},
        headers=bearer(tokens.by_role[Role.SUBMITTER]),
    )
    assert response.status_code == 403
    assert system.snapshot(contents=True) == before
    assert system.store.list_pools(system.services.clock.now()) == []
    assert all(t.last_used_at is None for t in system.store.list_tokens())


def test_metrics__open_by_default_even_with_auth_on(secured: tuple[System, Tokens]) -> None:
    system, _ = secured
    assert system.client.get("/metrics").status_code == 200
    assert system.client.get("/health").status_code == 200
    assert system.client.get("/").status_code == 200  # the dashboard page itself


def test_metrics__a_setting_asks_for_a_token(backend_factory: Callable[..., Any]) -> None:
    system = System(backend_factory(metrics_require_token=True))
    try:
        worker = add_token(system, Role.WORKER, "prometheus")
        assert system.client.get("/metrics").status_code == 401
        assert system.client.get("/metrics", headers=bearer(worker)).status_code == 200
    finally:
        system.close()


def test_open_api__no_tokens_means_every_route_as_admin(system: System) -> None:
    """With no token anywhere (what every other test runs with), nothing asks for one."""
    for (method, path), _ in sorted(routes(system).items()):
        status = call(system, method, path, None).status_code
        assert status not in (401, 403), f"{method} {path}: {status}"


# -- the documented matrix ----------------------------------------------------------------


def documented() -> dict[tuple[str, str], str]:
    text = DOC.read_text()
    table = text.split("<!-- role-matrix:begin -->")[1].split("<!-- role-matrix:end -->")[0]
    rows = [ROW.match(line.strip()) for line in table.splitlines()]
    return {(m.group(1), m.group(2)): m.group(3).strip() for m in rows if m}


def test_security_doc__lists_every_route_with_its_roles(tmp_path: Path) -> None:
    with sqlite_backend(tmp_path) as backend:
        services = build_services(
            backend.settings, store=migrated(backend), streams=backend.streams()
        )
        try:
            code = route_access(create_app(services, run_engine=False))
        finally:
            services.close()
    undeclared = sorted(f"{m} {p}" for (m, p), a in code.items() if a is None)
    assert not undeclared, f"declare require(...) on: {undeclared}"
    expected = {k: a.describe() for k, a in code.items() if a is not None}
    doc = documented()
    problems = [
        f"| `{m}` | `{p}` | {roles} |   <- docs/security.md has: {doc.get((m, p), 'nothing')}"
        for (m, p), roles in sorted(expected.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        if doc.get((m, p)) != roles
    ]
    problems += [
        f"docs/security.md lists {m} {p}, which no route has"
        for m, p in doc.keys() - expected.keys()
    ]
    assert not problems, "the role matrix in docs/security.md is stale:\n" + "\n".join(problems)

"""The real `orchestrator` command with tokens (issue 6), on both backends: `tokens create |
list | revoke` straight on the database, `serve` refusing a public address with no tokens,
and the CLI's one-line answers to 401 and 403."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.integration.processes import Processes, backend_env, processes

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "mariadb"])
def p(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Processes]:
    with ExitStack() as stack:
        env = {
            "ORCH_DATA_DIR": str(tmp_path / "var"),
            "ORCH_LOG_LEVEL": "WARNING",
            # Revocation is seen at the next request (the default bound is 5 s).
            "ORCH_AUTH_CACHE_TTL_S": "0",
        }
        env = backend_env(request.param, tmp_path, stack, env)
        with processes(env, tmp_path) as procs:
            procs.env.pop("ORCH_API_TOKEN", None)
            assert procs.run("db", "upgrade").returncode == 0
            yield procs


def one_error_line(result: object) -> str:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == 1, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_serve__refuses_a_public_address_without_tokens(p: Processes) -> None:
    result = p.run("serve", "--host", "0.0.0.0", timeout=60)
    assert result.returncode != 0
    assert "refusing to serve on 0.0.0.0 with no API tokens" in result.stderr
    assert "ORCH_ALLOW_OPEN_API" in result.stderr
    assert "Traceback" not in result.stderr


def test_tokens__the_open_apis_owner_name_is_reserved(p: Processes) -> None:
    for command in ("create", "hash"):
        result = p.run("tokens", command, "--role", "admin", "--owner", "anonymous")
        assert "reserved" in one_error_line(result), result.stderr
    assert "no tokens" in p.run("tokens", "list").stdout  # and the API still runs open


def test_tokens__create_list_revoke_and_the_api_enforces_them(p: Processes) -> None:
    assert "no tokens" in p.run("tokens", "list").stdout
    made = p.run("tokens", "create", "--role", "admin", "--owner", "ops", "--json")
    assert made.returncode == 0, made.stderr
    admin = json.loads(made.stdout)
    made = p.run("tokens", "create", "--role", "submitter", "--owner", "team-a", "--json")
    submitter = json.loads(made.stdout)
    assert admin["token"].startswith(f"orch_{admin['id']}_")

    listing = p.run("tokens", "list", "--json")
    assert admin["token"] not in listing.stdout and submitter["token"] not in listing.stdout
    rows = {t["id"]: t for t in json.loads(listing.stdout)}
    assert rows[admin["id"]]["role"] == "admin" and rows[submitter["id"]]["owner"] == "team-a"
    assert all("token" not in row and "token_hash" not in row for row in rows.values())

    server = p.start("serve", "--no-engine")
    p.wait_healthy(server)
    response = p.http.get("/jobs")
    assert response.status_code == 401 and response.headers["www-authenticate"]

    line = one_error_line(p.run("leader"))
    assert "401" in line and "ORCH_API_TOKEN" in line
    p.env["ORCH_API_TOKEN"] = submitter["token"]
    assert p.run("leader").returncode == 0
    line = one_error_line(p.run("reclaim"))
    assert "403" in line and "needs: admin" in line
    p.env["ORCH_API_TOKEN"] = admin["token"]
    assert p.run("reclaim").returncode == 0

    revoked = p.run("tokens", "revoke", submitter["id"], "--json")
    assert json.loads(revoked.stdout)[0]["revoked_at"]
    auth = {"Authorization": f"Bearer {submitter['token']}"}
    assert p.http.get("/jobs", headers=auth).status_code == 401
    listed = {t["id"]: t for t in json.loads(p.run("tokens", "list", "--json").stdout)}
    assert listed[submitter["id"]]["last_used_at"]  # it was used before it was revoked
    assert one_error_line(p.run("tokens", "revoke", "nope")) == "error: no token nope"

"""Tokens, the authenticator's cache and revocation bound, the submit rate limit, and the
refusal to serve open on a public address: with a fake clock, no sleeps."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.auth import (
    ApiToken,
    Authenticator,
    OpenApiRefused,
    Role,
    check_exposure,
    hash_token,
    is_loopback,
    new_token,
    parse_token_hashes,
)
from orchestrator.clock import FakeClock
from orchestrator.errors import Forbidden, InvalidRequest, RateLimited, Unauthenticated
from orchestrator.rate_limit import SubmitRateLimit
from orchestrator.settings import Settings
from orchestrator.store import SqlStore


class CountingStore:
    """The real SQLite store, counting the authenticator's lookups."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.store, name)


def _auth(store: SqlStore, clock: FakeClock, tmp_path: Path, **settings: Any) -> Authenticator:
    return Authenticator(store, Settings(data_dir=tmp_path, **settings), clock)


def _add(store: SqlStore, clock: FakeClock, role: Role = Role.SUBMITTER, owner: str = "a") -> str:
    secret, token = new_token(role, owner, clock.now())
    store.add_token(token)
    return secret


def test_new_token__only_its_hash_is_stored(store: SqlStore, clock: FakeClock) -> None:
    secret = _add(store, clock, Role.ADMIN, "ops")
    (stored,) = store.list_tokens()
    assert stored.token_hash == hash_token(secret) != secret
    assert secret.startswith(f"orch_{stored.id}_")
    assert (stored.role, stored.owner, stored.revoked_at) == (Role.ADMIN, "ops", None)


def test_authenticate__open_while_no_token_exists(
    store: SqlStore, clock: FakeClock, tmp_path: Path
) -> None:
    auth = _auth(store, clock, tmp_path)
    principal = auth.authenticate(None)
    assert (principal.owner, principal.role, principal.token_id) == ("anonymous", Role.ADMIN, None)


def test_authenticate__a_token_turns_auth_on_within_the_ttl(
    store: SqlStore, clock: FakeClock, tmp_path: Path
) -> None:
    auth = _auth(store, clock, tmp_path, auth_cache_ttl_s=5)
    assert auth.authenticate(None).owner == "anonymous"
    secret = _add(store, clock)
    clock.advance(5)
    with pytest.raises(Unauthenticated):
        auth.authenticate(None)
    with pytest.raises(Unauthenticated):
        auth.authenticate("orch_wrong")
    assert auth.authenticate(secret).owner == "a"


def test_authenticate__stays_on_when_every_token_is_revoked(
    store: SqlStore, clock: FakeClock, tmp_path: Path
) -> None:
    secret = _add(store, clock)
    (token,) = store.list_tokens()
    store.revoke_token(token.id, clock.now())
    auth = _auth(store, clock, tmp_path)
    for bearer in (None, secret):
        with pytest.raises(Unauthenticated):
            auth.authenticate(bearer)


def test_authenticate__cached_for_the_ttl_then_revocation_holds(
    store: SqlStore, clock: FakeClock, tmp_path: Path
) -> None:
    secret = _add(store, clock)
    counting = CountingStore(store)
    auth = Authenticator(counting, Settings(data_dir=tmp_path, auth_cache_ttl_s=5), clock)  # type: ignore[arg-type]
    auth.authenticate(secret)
    lookups = counting.calls.count("find_token")
    for _ in range(20):
        auth.authenticate(secret)
    assert counting.calls.count("find_token") == lookups, "a cached token costs no query"

    store.revoke_token(store.list_tokens()[0].id, clock.now())
    clock.advance(4.9)
    auth.authenticate(secret)  # within the documented bound it may still pass
    clock.advance(0.1)
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        auth.authenticate(secret)


def test_authenticate__last_used_is_written_at_most_once_a_minute(
    store: SqlStore, clock: FakeClock, tmp_path: Path
) -> None:
    secret = _add(store, clock)
    counting = CountingStore(store)
    auth = Authenticator(counting, Settings(data_dir=tmp_path, auth_cache_ttl_s=0), clock)  # type: ignore[arg-type]
    for _ in range(10):
        auth.authenticate(secret)
        clock.advance(1)
    assert counting.calls.count("touch_tokens") == 1
    assert store.list_tokens()[0].last_used_at == datetime(2026, 1, 1, 12, 0, 0)
    clock.advance(60)
    auth.authenticate(secret)
    assert counting.calls.count("touch_tokens") == 2


def test_authenticate__a_refused_role_writes_no_last_used(
    store: SqlStore, clock: FakeClock, tmp_path: Path
) -> None:
    secret = _add(store, clock, Role.WORKER)
    auth = _auth(store, clock, tmp_path)

    def admins_only(principal: Any) -> None:
        raise Forbidden("admins only")

    with pytest.raises(Forbidden):
        auth.authenticate(secret, admins_only)
    assert store.list_tokens()[0].last_used_at is None
    auth.authenticate(secret, lambda principal: None)
    assert store.list_tokens()[0].last_used_at is not None


def test_authenticate_cached__answers_from_memory_or_defers_without_touching_the_store(
    store: SqlStore, clock: FakeClock, tmp_path: Path
) -> None:
    # The API's dependency runs this on the event loop: None means "ask `authenticate` on
    # a thread", and must have looked nothing up and written nothing.
    counting = CountingStore(store)
    auth = Authenticator(counting, Settings(data_dir=tmp_path, auth_cache_ttl_s=5), clock)  # type: ignore[arg-type]
    assert auth.authenticate_cached(None) is None  # open or not: not checked yet
    assert auth.authenticate(None).owner == "anonymous"
    assert auth.authenticate_cached(None) == auth.authenticate(None)  # open, within the ttl
    secret = _add(store, clock)
    clock.advance(5)
    assert auth.authenticate_cached(secret) is None  # the open answer went stale
    with pytest.raises(Unauthenticated):
        auth.authenticate(None)
    with pytest.raises(Unauthenticated):
        auth.authenticate_cached(None)  # on now, and known to be: refused in memory
    assert auth.authenticate_cached(secret) is None  # its token not looked up yet
    assert counting.calls.count("touch_tokens") == 0
    first = auth.authenticate(secret)
    assert counting.calls.count("touch_tokens") == 1
    calls = len(counting.calls)
    assert auth.authenticate_cached(secret) == first  # cached, its last use just written
    assert len(counting.calls) == calls

    with pytest.raises(Forbidden):  # the role check runs in memory too, writing nothing
        auth.authenticate_cached(secret, lambda principal: _raise(Forbidden("no")))
    clock.advance(61)  # a last use to record (and a stale cache entry): defer to a thread
    assert auth.authenticate_cached(secret) is None
    assert len(counting.calls) == calls
    store.revoke_token(store.list_tokens()[0].id, clock.now())
    with pytest.raises(Unauthenticated):
        auth.authenticate(secret)
    with pytest.raises(Unauthenticated, match="unknown or revoked"):
        auth.authenticate_cached(secret)  # the revocation, once seen, is cached too


def _raise(exc: Exception) -> None:
    raise exc


def test_new_token__the_anonymous_owner_is_reserved(clock: FakeClock) -> None:
    with pytest.raises(InvalidRequest, match="reserved"):
        new_token(Role.ADMIN, "anonymous", clock.now())
    with pytest.raises(ValueError, match="reserved"):
        parse_token_hashes(f"{'a' * 64}:admin:anonymous")


def test_configured_hashes__authenticate_without_the_database(
    store: SqlStore, clock: FakeClock, tmp_path: Path
) -> None:
    secret, token = new_token(Role.WORKER, "node-7", clock.now())
    entry = f"{token.token_hash}:worker:node-7"
    auth = _auth(store, clock, tmp_path, api_token_hashes=f" {entry} ,")
    principal = auth.authenticate(secret)
    assert (principal.owner, principal.role) == ("node-7", Role.WORKER)
    with pytest.raises(Unauthenticated):
        auth.authenticate(None)  # auth is on though the database has no token
    assert store.list_tokens() == []


@pytest.mark.parametrize(
    "value", ["abc:admin:ops", f"{'0' * 64}:root:ops", f"{'0' * 64}:admin:", f"{'g' * 64}:admin:x"]
)
def test_configured_hashes__malformed_entries_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="ORCH_API_TOKEN_HASHES"):
        parse_token_hashes(value)


# -- the submit rate limit ------------------------------------------------------------------


def test_rate_limit__burst_then_refill(clock: FakeClock) -> None:
    limit = SubmitRateLimit(rate_per_s=10, burst=20, clock=clock)
    limit.take("a", 20)
    with pytest.raises(RateLimited) as caught:
        limit.take("a", 5)
    assert caught.value.details["retry_after_s"] == 1  # 0.5 s rounded up
    limit.take("b", 20)  # each owner has its own bucket
    clock.advance(0.5)
    limit.take("a", 5)
    with pytest.raises(RateLimited):
        limit.take("a", 1)


def test_rate_limit__retry_after_rounds_up_whole_seconds(clock: FakeClock) -> None:
    limit = SubmitRateLimit(rate_per_s=2, burst=10, clock=clock)
    limit.take("a", 10)
    with pytest.raises(RateLimited) as caught:
        limit.take("a", 5)
    assert caught.value.details["retry_after_s"] == 3  # 2.5 s


def test_rate_limit__a_refused_take_counts_nothing(clock: FakeClock) -> None:
    limit = SubmitRateLimit(rate_per_s=1, burst=10, clock=clock)
    limit.take("a", 6)
    with pytest.raises(RateLimited):
        limit.take("a", 5)
    limit.take("a", 4)


def test_rate_limit__a_batch_costs_its_full_size(clock: FakeClock) -> None:
    limit = SubmitRateLimit(rate_per_s=100, burst=50, clock=clock)
    limit.take("a", 50)
    with pytest.raises(RateLimited):
        limit.take("a", 50)
    clock.advance(0.1)  # 10 back: not enough for 50
    with pytest.raises(RateLimited, match=r"retry in 0\.40s"):  # 40 more at 100/s
        limit.take("a", 50)
    clock.advance(0.4)
    limit.take("a", 50)
    with pytest.raises(RateLimited):
        limit.take("a", 1)


def test_settings__the_burst_must_hold_the_largest_batch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"submit_burst .* at least max_batch_size"):
        Settings(data_dir=tmp_path, submit_burst=10, max_batch_size=11)
    Settings(data_dir=tmp_path, submit_burst=11, max_batch_size=11)
    Settings(data_dir=tmp_path, submit_burst=0, submit_rate_per_s=0, max_batch_size=11)


def test_rate_limit__zero_is_off(clock: FakeClock) -> None:
    limit = SubmitRateLimit(rate_per_s=0, burst=0, clock=clock)
    for _ in range(100):
        limit.take("a", 1_000_000)


def test_rate_limit__defaults_let_the_benchmark_through(clock: FakeClock) -> None:
    settings = Settings()
    limit = SubmitRateLimit(settings.submit_rate_per_s, settings.submit_burst, clock)
    for _ in range(20):  # 20,000 jobs in batches of 1,000, at once
        limit.take("bench", 1000)
    for _ in range(30):  # then 1,500 single submits a second, for 30 s
        clock.advance(1)
        for _ in range(1500):
            limit.take("bench", 1)


# -- serving open ---------------------------------------------------------------------------


def test_check_exposure__public_address_without_tokens_is_refused(
    store: SqlStore, clock: FakeClock, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, host="0.0.0.0")
    with pytest.raises(OpenApiRefused, match="ORCH_ALLOW_OPEN_API"):
        check_exposure(settings, Authenticator(store, settings, clock))
    _add(store, clock, Role.ADMIN)
    check_exposure(settings, Authenticator(store, settings, clock))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("myhost", False),
        ("127.evil.example", False),
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "myhost", "127.evil.example"])
def test_check_exposure__every_non_loopback_host_is_refused(
    host: str, store: SqlStore, clock: FakeClock, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, host=host)
    with pytest.raises(OpenApiRefused):
        check_exposure(settings, Authenticator(store, settings, clock))


def test_check_exposure__loopback_runs_open_and_says_so_once(
    store: SqlStore, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path, host="127.0.0.1")
    with caplog.at_level(logging.WARNING, logger="orchestrator.auth"):
        check_exposure(settings, Authenticator(store, settings, clock))
    assert [r.event for r in caplog.records] == ["api_open"]  # type: ignore[attr-defined]


def test_check_exposure__the_override_serves_open_with_a_warning(
    store: SqlStore, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path, host="10.1.2.3", allow_open_api=True)
    with caplog.at_level(logging.WARNING, logger="orchestrator.auth"):
        check_exposure(settings, Authenticator(store, settings, clock))
    assert [r.event for r in caplog.records] == ["api_open_public"]  # type: ignore[attr-defined]


def test_api_token_record__is_frozen() -> None:
    token = ApiToken("x", "h", Role.ADMIN, "o", datetime(2026, 1, 1))
    with pytest.raises(AttributeError):
        token.owner = "other"  # type: ignore[misc]


def test_up__refuses_a_public_address_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator import up

    started: list[str] = []
    monkeypatch.setattr(up, "_check_port_free", lambda settings: None)
    monkeypatch.setattr(up, "EmbeddedRedis", lambda *a: started.append("redis"))
    monkeypatch.setattr(up.migrate, "upgrade", lambda *a: started.append("migrations"))
    monkeypatch.setattr(up, "LocalPool", lambda *a: started.append("workers"))
    settings = Settings(data_dir=tmp_path, host="0.0.0.0")
    with pytest.raises(OpenApiRefused):
        up.up(settings, workers=1, concurrency=1)
    assert started == []

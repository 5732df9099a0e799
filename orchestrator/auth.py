"""Bearer tokens, roles and owners: who is calling (docs/security.md).

A token is `orch_<id>_<secret>`: the id is public (what `tokens list` shows and `tokens
revoke` takes), the secret is 32 random bytes. Only the token's sha256 is stored. A slow,
salted hash (bcrypt, argon2) protects *guessable* passwords; a 256-bit random secret cannot
be guessed or brute-forced from its hash, so one fast sha256 is as safe and lets a request be
checked with one indexed lookup.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from orchestrator.clock import Clock
from orchestrator.errors import InvalidRequest, OrchestratorError, Unauthenticated

if TYPE_CHECKING:
    from orchestrator.settings import Settings

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "orch_"
ANONYMOUS = "anonymous"
# last_used_at is a hint for operators ("is this token still in use?"), not an audit log:
# writing it at most this often per token keeps a write off nearly every request.
TOUCH_EVERY = timedelta(seconds=60)
# Unknown tokens are remembered too (so a client stuck on a wrong token costs no query per
# request); past this many entries the cache starts again, so junk tokens cannot fill memory.
CACHE_MAX = 10_000
OWNER_MAX = 128


class Role(StrEnum):
    """What a token may do. Admin may call everything; the others, what their routes name."""

    SUBMITTER = "submitter"  # submit, read and cancel its own jobs; lease GPUs for itself
    WORKER = "worker"  # GPU nodes and agents: leases, reading GPUs, pools and models
    ADMIN = "admin"  # operators: everything, every owner's jobs and leases


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    owner: str
    role: Role
    token_id: str | None = None  # None: the API runs open (no tokens configured)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def sees_owner(self) -> str | None:
        """The owner whose jobs and leases it may see; None: every owner's (an admin)."""
        return None if self.is_admin else self.owner


OPEN_PRINCIPAL = Principal(owner=ANONYMOUS, role=Role.ADMIN)


@dataclass(frozen=True)
class ApiToken:
    id: str
    token_hash: str
    role: Role
    owner: str
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class TokenStore(Protocol):
    def add_token(self, token: ApiToken) -> None: ...

    def find_token(self, token_hash: str) -> ApiToken | None: ...

    def list_tokens(self) -> list[ApiToken]: ...

    def count_tokens(self) -> int:
        """Tokens ever created, revoked ones included."""
        ...

    def revoke_token(self, token_id: str, now: datetime) -> ApiToken:
        """Raises `NotFound` for an unknown id."""
        ...

    def touch_tokens(self, token_ids: list[str], now: datetime) -> None: ...


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_owner(owner: str) -> str:
    if not owner or len(owner) > OWNER_MAX or not owner.isprintable() or owner != owner.strip():
        raise InvalidRequest(f"an owner is 1 to {OWNER_MAX} printable characters, no edge spaces")
    if owner == ANONYMOUS:
        # The open API's caller: a token for it would be indistinguishable from open mode in
        # job rows, events and quotas.
        raise InvalidRequest(f"the owner name {ANONYMOUS!r} is reserved for the open API")
    return owner


def new_token(role: Role, owner: str, now: datetime) -> tuple[str, ApiToken]:
    """A fresh token (shown once) and its record (what is stored)."""
    token_id = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    return token, ApiToken(token_id, hash_token(token), role, check_owner(owner), now)


def parse_token_hashes(value: str) -> dict[str, ApiToken]:
    """ORCH_API_TOKEN_HASHES: `sha256hex:role:owner` entries, comma-separated."""
    found: dict[str, ApiToken] = {}
    for entry in filter(None, (e.strip() for e in value.split(","))):
        digest, _, rest = entry.partition(":")
        role, _, owner = rest.partition(":")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise ValueError(f"ORCH_API_TOKEN_HASHES: {digest[:12]!r}... is not a sha256 hex")
        if role not in Role.__members__.values():
            raise ValueError(f"ORCH_API_TOKEN_HASHES: unknown role {role!r}")
        try:
            check_owner(owner)
        except InvalidRequest as exc:
            raise ValueError(f"ORCH_API_TOKEN_HASHES: {exc.message}") from None
        found[digest.lower()] = ApiToken(
            f"env-{digest[:8].lower()}", digest.lower(), Role(role), owner, datetime.min
        )
    return found


class Authenticator:
    """Turns a bearer token into a `Principal`, with a short cache in front of the store.

    Tokens are revoked in the database (`orchestrator tokens revoke`), so a revoked token
    stops working on every replica within `auth_cache_ttl_s`. Authentication is on as soon as any
    token exists (in settings or ever created in the database) and stays on: revoking the
    last token does not open the API.
    """

    def __init__(self, store: TokenStore, settings: Settings, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.ttl = timedelta(seconds=settings.auth_cache_ttl_s)
        self.configured = parse_token_hashes(settings.api_token_hashes)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[ApiToken | None, datetime]] = {}
        self._touched: dict[str, datetime] = {}
        self._enabled = bool(self.configured)
        self._enabled_checked: datetime | None = None

    def enabled(self) -> bool:
        """Whether any token exists, so callers must present one."""
        known = self.enabled_cached()
        if known is not None:
            return known
        now = self.clock.now()
        exists = self.store.count_tokens() > 0
        with self._lock:
            self._enabled = self._enabled or exists
            self._enabled_checked = now
        return self._enabled

    def enabled_cached(self) -> bool | None:
        """`enabled()` while it needs no lookup (on, or checked within the ttl); else None."""
        if self._enabled:
            return True
        now = self.clock.now()
        with self._lock:
            if self._enabled_checked is not None and now - self._enabled_checked < self.ttl:
                return self._enabled
        return None

    def authenticate(
        self, bearer: str | None, check: Callable[[Principal], None] | None = None
    ) -> Principal:
        """The caller of a request with this bearer token (None: no Authorization header).
        Raises `Unauthenticated`. `check` (the route's role check) runs before the token's
        use is recorded, so a refused request (403) writes nothing."""
        principal = self._authenticate(bearer, check, offline=False)
        assert principal is not None
        return principal

    def authenticate_cached(
        self, bearer: str | None, check: Callable[[Principal], None] | None = None
    ) -> Principal | None:
        """`authenticate`, when it can answer from memory (no lookup, no write due); None
        when it would need the store (call `authenticate` then, off the event loop). It
        raises as `authenticate` would, and a None has recorded nothing."""
        return self._authenticate(bearer, check, offline=True)

    def _authenticate(
        self, bearer: str | None, check: Callable[[Principal], None] | None, *, offline: bool
    ) -> Principal | None:
        enabled = self.enabled_cached() if offline else self.enabled()
        if enabled is None:
            return None
        if not enabled:
            if check is not None:
                check(OPEN_PRINCIPAL)
            return OPEN_PRINCIPAL
        if not bearer:
            raise Unauthenticated("this API needs a bearer token (Authorization: Bearer ...)")
        digest = hash_token(bearer)
        if offline:
            cached = self._cached(digest)
            if cached is None:
                return None
            token = cached[0]
        else:
            token = self._lookup(digest)
        if token is None:
            raise Unauthenticated("the bearer token is unknown or revoked")
        principal = Principal(owner=token.owner, role=token.role, token_id=token.id)
        if check is not None:
            check(principal)
        if offline:
            if self._touch_due(token, self.clock.now()):
                return None
        else:
            self._touch(token)
        return principal

    def _cached(self, digest: str) -> tuple[ApiToken | None] | None:
        """What `_lookup` answers, while it needs no query: (token or None,); else None."""
        configured = self.configured.get(digest)
        if configured is not None:
            return (configured,)
        now = self.clock.now()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and now - cached[1] < self.ttl:
            token = cached[0]
            return (None if token is None or token.revoked_at is not None else token,)
        return None

    def _lookup(self, digest: str) -> ApiToken | None:
        cached = self._cached(digest)
        if cached is not None:
            return cached[0]
        now = self.clock.now()
        token = self.store.find_token(digest)
        with self._lock:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[digest] = (token, now)
        return None if token is None or token.revoked_at is not None else token

    def _touch_due(self, token: ApiToken, now: datetime) -> bool:
        """Whether `_touch` would write this token's last use (the caller holds no lock)."""
        if token.id.startswith("env-"):
            return False  # configured tokens have no row
        with self._lock:
            last = self._touched.get(token.id) or token.last_used_at
        return last is None or now - last >= TOUCH_EVERY

    def _touch(self, token: ApiToken) -> None:
        if token.id.startswith("env-"):
            return  # configured tokens have no row
        now = self.clock.now()
        with self._lock:
            last = self._touched.get(token.id) or token.last_used_at
            due = last is None or now - last >= TOUCH_EVERY
            if due:
                self._touched[token.id] = now
        if due:
            self.store.touch_tokens([token.id], now)


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the API on this machine: `localhost`, or an IP
    address in 127.0.0.0/8 or ::1 (brackets allowed). A name like `127.evil.example` is not,
    nor are the wildcards `0.0.0.0`, `::` and `""`."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpenApiRefused(OrchestratorError):
    code = "open_api_refused"


def check_exposure(settings: Settings, auth: Authenticator) -> None:
    """At `serve`: refuse to run open (no tokens) on an address other machines reach,
    unless ORCH_ALLOW_OPEN_API says so; say once that a loopback API runs open."""
    if auth.enabled():
        return
    if is_loopback(settings.host):
        logger.warning(
            "no API tokens exist: the API on %s runs open (every caller acts as an admin); "
            "`orchestrator tokens create` turns authentication on",
            settings.host,
            extra={"event": "api_open"},
        )
        return
    if settings.allow_open_api:
        logger.warning(
            "ORCH_ALLOW_OPEN_API is set: the API on %s takes requests from anyone, as admin",
            settings.host,
            extra={"event": "api_open_public"},
        )
        return
    raise OpenApiRefused(
        f"refusing to serve on {settings.host} with no API tokens: anyone who reaches it could "
        "submit jobs, read results and change pools. Create one with `orchestrator tokens "
        "create --role admin --owner ops`, bind to 127.0.0.1, or set ORCH_ALLOW_OPEN_API=true "
        "(dangerous)"
    )

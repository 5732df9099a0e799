"""CLI commands for API tokens: `tokens create|list|revoke|hash`.

They talk to the database directly (ORCH_DATABASE_URL), not to the API: the first admin
token has to be made before any token exists to call the API with, and whoever can reach
the database can read every job anyway.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.auth import ApiToken, Role, check_owner, new_token
from orchestrator.cli_support import UsageError, for_each, json_flag, show, table, when
from orchestrator.clock import SystemClock
from orchestrator.settings import Settings
from orchestrator.store import SqlStore


def add_commands(sub: Any) -> None:
    """Add `tokens` to the `orchestrator` parser (see `cli_ops.add_commands`)."""
    tokens = sub.add_parser("tokens", help="API tokens: create, list, revoke (in the database)")
    actions = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    roles = [r.value for r in Role]

    create = actions.add_parser("create", help="make a token; it is printed once, never stored")
    create.add_argument("--role", required=True, choices=roles)
    create.add_argument("--owner", required=True, help="the team or agent it acts for")
    json_flag(create)
    create.set_defaults(handler=_create)

    listing = actions.add_parser("list", help="every token: id, role, owner, use (no secrets)")
    json_flag(listing)
    listing.set_defaults(handler=_list)

    revoke = actions.add_parser("revoke", help="revoke tokens by id (see `tokens list`)")
    revoke.add_argument("token_ids", nargs="+", metavar="ID")
    json_flag(revoke)
    revoke.set_defaults(handler=_revoke)

    hashed = actions.add_parser(
        "hash", help="make a token for ORCH_API_TOKEN_HASHES (nothing is written)"
    )
    hashed.add_argument("--role", required=True, choices=roles)
    hashed.add_argument("--owner", required=True)
    json_flag(hashed)
    hashed.set_defaults(handler=_hash)


@contextmanager
def _store(settings: Settings) -> Iterator[SqlStore]:
    from orchestrator import migrate
    from orchestrator.wiring import build_store

    store = build_store(settings)
    try:
        migrate.check_at_head(store.engine)
        yield store
    finally:
        store.close()


def _view(token: ApiToken) -> dict[str, Any]:
    def stamp(value: Any) -> str | None:
        return None if value is None else value.isoformat() + "+00:00"

    return {
        "id": token.id,
        "role": token.role.value,
        "owner": token.owner,
        "created_at": stamp(token.created_at),
        "revoked_at": stamp(token.revoked_at),
        "last_used_at": stamp(token.last_used_at),
    }


def _create(args: argparse.Namespace, settings: Settings) -> int:
    secret, token = new_token(Role(args.role), args.owner, SystemClock().now())
    with _store(settings) as store:
        store.add_token(token)
    if args.json:
        return show({**_view(token), "token": secret})
    print(secret)
    print(
        f"token {token.id}: role {token.role.value}, owner {token.owner}. It is shown only "
        "now: give it to its user as ORCH_API_TOKEN."
    )
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    with _store(settings) as store:
        tokens = store.list_tokens()
    if args.json:
        return show([_view(t) for t in tokens])
    if not tokens:
        print("no tokens: the API runs open (loopback only); `orchestrator tokens create`")
        return 0
    rows = [
        (
            t.id,
            t.role.value,
            t.owner,
            when(_view(t)["created_at"]),
            when(_view(t)["last_used_at"]),
            when(_view(t)["revoked_at"]) or "active",
        )
        for t in tokens
    ]
    print(table(rows, ["ID", "ROLE", "OWNER", "CREATED", "LAST USED", "REVOKED"]))
    return 0


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    now = SystemClock().now()
    with _store(settings) as store:
        revoked, refused = for_each(args.token_ids, lambda i: store.revoke_token(i, now))
    if args.json:
        show([_view(t) for t in revoked])
    else:
        for t in revoked:
            print(f"{t.id}: revoked (API replicas refuse it within ORCH_AUTH_CACHE_TTL_S)")
    return 1 if refused else 0


def _hash(args: argparse.Namespace, settings: Settings) -> int:
    if "," in check_owner(args.owner):
        raise UsageError("an owner in ORCH_API_TOKEN_HASHES cannot hold a comma")
    secret, token = new_token(Role(args.role), args.owner, SystemClock().now())
    entry = f"{token.token_hash}:{token.role.value}:{token.owner}"
    if args.json:
        return show({"token": secret, "entry": entry})
    print(secret)
    print(f"add to ORCH_API_TOKEN_HASHES (comma-separated) on every replica: {entry}")
    return 0

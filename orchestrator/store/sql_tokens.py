"""`SqlTokens`: the API tokens' table (only hashes of the tokens, never the tokens)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from orchestrator.auth import ApiToken, Role
from orchestrator.errors import Conflict, NotFound
from orchestrator.store.sql_base import SqlBase
from orchestrator.store.tables import api_tokens


class TokenNotFound(NotFound):
    code = "token_not_found"


def _token(row: Mapping[Any, Any]) -> ApiToken:
    return ApiToken(
        id=row["id"],
        token_hash=row["token_hash"],
        role=Role(row["role"]),
        owner=row["owner"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )


class SqlTokens(SqlBase):
    def add_token(self, token: ApiToken) -> None:
        try:
            with self._tx(write=True) as conn:
                conn.execute(
                    api_tokens.insert().values(
                        id=token.id,
                        token_hash=token.token_hash,
                        role=token.role.value,
                        owner=token.owner,
                        created_at=token.created_at,
                    )
                )
        except sa.exc.IntegrityError as exc:  # a random 64-bit id collided: vanishingly rare
            raise Conflict(f"token id {token.id} exists; create it again") from exc

    def find_token(self, token_hash: str) -> ApiToken | None:
        query = sa.select(api_tokens).where(api_tokens.c.token_hash == token_hash)
        with self._tx(write=False) as conn:
            row = conn.execute(query).first()
        return _token(row._mapping) if row else None

    def list_tokens(self) -> list[ApiToken]:
        query = sa.select(api_tokens).order_by(api_tokens.c.created_at, api_tokens.c.id)
        with self._tx(write=False) as conn:
            return [_token(r._mapping) for r in conn.execute(query)]

    def count_tokens(self) -> int:
        """Every token ever created, revoked ones too: revoking the last token must not
        open the API."""
        query = sa.select(sa.func.count()).select_from(api_tokens)
        with self._tx(write=False) as conn:
            return int(conn.execute(query).scalar() or 0)

    def revoke_token(self, token_id: str, now: datetime) -> ApiToken:
        """Revoke it (idempotent: a revoked token keeps its first revocation time)."""
        with self._tx(write=True) as conn:
            conn.execute(
                api_tokens.update()
                .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = conn.execute(sa.select(api_tokens).where(api_tokens.c.id == token_id)).first()
        if row is None:
            raise TokenNotFound(f"no token {token_id}", token_id=token_id)
        return _token(row._mapping)

    def touch_tokens(self, token_ids: Sequence[str], now: datetime) -> None:
        if not token_ids:
            return
        with self._tx(write=True) as conn:
            conn.execute(
                api_tokens.update()
                .where(api_tokens.c.id.in_(list(token_ids)))
                .values(last_used_at=now)
            )

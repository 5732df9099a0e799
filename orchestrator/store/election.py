"""Leader election: one engine at a time runs the background loops (DESIGN invariant 5).

On MariaDB the leader holds `GET_LOCK('gpu_orchestrator_leader')` on a dedicated connection,
checked on every tick: if that connection dies, so does the lock, at once, on both sides.
On SQLite (one machine) the leader holds an expiring lease on a row, renewed every tick.
Either way each new leadership takes the next epoch, a fencing number. Every leader action
is a conditional update, so a brief overlap during failover harms nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orchestrator.errors import StoreUnavailable
from orchestrator.store import dialect
from orchestrator.store.tables import leader

logger = logging.getLogger(__name__)

ROW = "leader"
DEFAULT_LOCK = "gpu_orchestrator_leader"


@dataclass(frozen=True)
class Leadership:
    """The leadership as recorded in the database."""

    leader_id: str | None
    epoch: int
    since: datetime | None
    expires_at: datetime | None


class Election(Protocol):
    instance_id: str

    def check(self, now: datetime) -> bool:
        """Keep or try to take the leadership; True while this instance leads."""
        ...

    @property
    def leading(self) -> bool: ...

    def current(self) -> Leadership: ...

    def someone_leads(self, now: datetime) -> bool:
        """Whether any instance holds the leadership now (for readiness)."""
        ...

    def resign(self, now: datetime) -> None:
        """Give the leadership up (on shutdown), so a standby takes it at once."""
        ...


class _RowElection:
    def __init__(self, engine: Engine, instance_id: str, ttl_s: float) -> None:
        self.engine = engine
        self.instance_id = instance_id
        self.ttl = timedelta(seconds=ttl_s)
        self._epoch: int | None = None

    @property
    def leading(self) -> bool:
        return self._epoch is not None

    def current(self) -> Leadership:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(leader).where(leader.c.name == ROW)).one()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreUnavailable(f"database error: {exc.orig or exc}") from exc
        return Leadership(row.leader_id, row.epoch, row.since, row.expires_at)

    def someone_leads(self, now: datetime) -> bool:
        current = self.current()
        return current.expires_at is not None and current.expires_at >= now

    def _take(self, conn: Connection, now: datetime, *, only_if_expired: bool) -> bool:
        """Record this instance as leader with the next epoch."""
        query = leader.update().where(leader.c.name == ROW)
        if only_if_expired:
            query = query.where(sa.or_(leader.c.expires_at.is_(None), leader.c.expires_at < now))
        taken = conn.execute(
            query.values(
                leader_id=self.instance_id,
                epoch=leader.c.epoch + 1,
                since=now,
                expires_at=now + self.ttl,
            )
        ).rowcount
        if taken != 1:
            return False
        self._epoch = int(
            conn.execute(sa.select(leader.c.epoch).where(leader.c.name == ROW)).scalar_one()
        )
        logger.info(
            "%s leads, epoch %d", self.instance_id, self._epoch, extra={"event": "leader_elected"}
        )
        return True

    def _renew(self, conn: Connection, now: datetime) -> bool:
        """Extend our lease; False if another instance took over since."""
        return (
            conn.execute(
                leader.update()
                .where(
                    leader.c.name == ROW,
                    leader.c.leader_id == self.instance_id,
                    leader.c.epoch == self._epoch,
                )
                .values(expires_at=now + self.ttl)
            ).rowcount
            == 1
        )

    def _lost(self, why: str) -> None:
        if self._epoch is not None:
            logger.warning(
                "%s no longer leads (epoch %d): %s",
                self.instance_id,
                self._epoch,
                why,
                extra={"event": "leadership_lost"},
            )
        self._epoch = None


class LeaseElection(_RowElection):
    """SQLite: an expiring lease on the leadership row."""

    def check(self, now: datetime) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execution_options(**{dialect.WRITE_OPTION: True})
                with conn.begin():
                    if self.leading:
                        if not self._renew(conn, now):
                            self._lost("the lease was taken over")
                    else:
                        self._take(conn, now, only_if_expired=True)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            self._lost(f"database error: {exc.orig or exc}")
        return self.leading

    def resign(self, now: datetime) -> None:
        if not self.leading:
            return
        with self.engine.begin() as conn:
            conn.execute(
                leader.update()
                .where(leader.c.name == ROW, leader.c.leader_id == self.instance_id)
                .values(expires_at=now)
            )
        self._lost("resigned")


class LockElection(_RowElection):
    """MariaDB: GET_LOCK on a dedicated connection, checked on every tick."""

    def __init__(
        self, engine: Engine, instance_id: str, ttl_s: float, lock_name: str = DEFAULT_LOCK
    ) -> None:
        super().__init__(engine, instance_id, ttl_s)
        self.lock_name = lock_name
        self._conn: Connection | None = None

    def someone_leads(self, now: datetime) -> bool:
        """The lock itself says, not the row: a leader busy in a long step renews it late."""
        try:
            with self.engine.connect() as conn:
                holder = conn.execute(
                    sa.text("SELECT IS_USED_LOCK(:name)"), {"name": self.lock_name}
                ).scalar()
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise StoreUnavailable(f"database error: {exc.orig or exc}") from exc
        return holder is not None

    def _connection(self) -> Connection:
        if self._conn is None:
            # Outside any transaction: the lock belongs to the session, not to a transaction.
            self._conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    def check(self, now: datetime) -> bool:
        try:
            conn = self._connection()
            if self.leading:
                held = conn.execute(
                    sa.text("SELECT IS_USED_LOCK(:name) = CONNECTION_ID()"),
                    {"name": self.lock_name},
                ).scalar()
                if held != 1:
                    self._lost("the lock is no longer ours")
                elif not self._renew(conn, now):
                    # Someone else leads by the row (another lock name?): step aside for good
                    # rather than take the row back on the next tick.
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": self.lock_name})
                    self._lost("another instance recorded a newer leadership")
            elif (
                conn.execute(
                    sa.text("SELECT GET_LOCK(:name, 0)"), {"name": self.lock_name}
                ).scalar()
                == 1
            ):
                self._take(conn, now, only_if_expired=False)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            # The lock lived on that connection: it is gone with it.
            self._lost(f"database connection lost: {exc.orig or exc}")
            self._close()
        return self.leading

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except sa.exc.SQLAlchemyError:
                logger.debug("closing a dead leader connection failed", exc_info=True)
            self._conn = None

    def resign(self, now: datetime) -> None:
        if self._conn is not None and self.leading:
            try:
                self._conn.execute(
                    leader.update()
                    .where(
                        leader.c.name == ROW,
                        leader.c.leader_id == self.instance_id,
                        leader.c.epoch == self._epoch,
                    )
                    .values(expires_at=now)
                )
                self._conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": self.lock_name})
            except sa.exc.SQLAlchemyError:
                logger.debug("releasing the leader lock failed", exc_info=True)
        self._lost("resigned")
        self._close()


def create_election(
    engine: Engine, instance_id: str, ttl_s: float, lock_name: str = DEFAULT_LOCK
) -> Election:
    if dialect.is_sqlite(engine):
        return LeaseElection(engine, instance_id, ttl_s)
    return LockElection(engine, instance_id, ttl_s, lock_name)

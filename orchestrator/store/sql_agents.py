"""The agents and model evictions side of `SqlStore` (see `orchestrator.agents`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from orchestrator.agents import Agent, Eviction, ModelUser
from orchestrator.errors import Conflict, NotFound
from orchestrator.fleet import LIVE_WORKER_STATUSES
from orchestrator.jobs import ACTIVE_STATUSES
from orchestrator.leases import LeaseStatus
from orchestrator.store.codec import loads
from orchestrator.store.sql_gpus import SqlGpus
from orchestrator.store.sql_models import _once_more_on_duplicate
from orchestrator.store.tables import agents, jobs, leases, model_evictions, warm_models, workers


class SqlAgents(SqlGpus):
    # -- agents ---------------------------------------------------------------------------

    def register_agent(self, agent: Agent, *, take_over: bool = False) -> Agent:
        """Insert or replace the agent; a re-registration keeps its first `registered_at`.
        An agent registered by another owner is a `Conflict` unless `take_over` (admins)."""
        values = {
            "version": agent.version,
            "capabilities": json.dumps(agent.capabilities),
            "requires_models": json.dumps(agent.requires_models),
            "owner": agent.owner,
            "updated_at": agent.updated_at,
        }

        def run() -> Agent:
            with self._tx(write=True) as conn:
                where = agents.c.name == agent.name
                row = conn.execute(sa.select(agents.c.owner).where(where).with_for_update())
                held_by = row.scalar()
                if held_by is not None and held_by != agent.owner and not take_over:
                    raise Conflict(
                        f"agent {agent.name} is registered by another owner",
                        agent=agent.name,
                    )
                if not conn.execute(agents.update().where(where).values(**values)).rowcount:
                    conn.execute(
                        agents.insert().values(
                            name=agent.name, registered_at=agent.registered_at, **values
                        )
                    )
                return _agent_of(conn.execute(sa.select(agents).where(where)).one()._mapping)

        return _once_more_on_duplicate(run)

    def get_agent(self, name: str) -> Agent | None:
        with self._tx(write=False) as conn:
            row = conn.execute(sa.select(agents).where(agents.c.name == name)).first()
        return None if row is None else _agent_of(row._mapping)

    def list_agents(self) -> list[Agent]:
        with self._tx(write=False) as conn:
            rows = conn.execute(sa.select(agents).order_by(agents.c.name))
            return [_agent_of(r._mapping) for r in rows]

    # -- evictions ------------------------------------------------------------------------

    def evict_model(
        self, model_id: str, node: str | None, now: datetime, actor: str, live_after: datetime
    ) -> Eviction:
        """Evict `model_id` from `node` (or every node where it is warm), unless a live lease
        or an active job uses it there (then nothing is written and the users are returned).
        A warm record whose worker is gone is removed at once; otherwise an eviction row
        tells its worker to unload the model. `NotFound` when it is not warm there."""
        with self._tx(write=True) as conn:
            # The admission lock: no lease for the model can be granted between our check
            # and the eviction row that blocks new ones (sql_leases checks the row under it).
            self._lock_policy(conn)
            query = sa.select(warm_models).where(warm_models.c.model_id == model_id)
            if node is not None:
                query = query.where(warm_models.c.node == node)
            warm = [r._mapping for r in conn.execute(query)]
            if not warm:
                where = f" on node {node}" if node else ""
                raise NotFound(f"model {model_id} is not warm{where}", model_id=model_id, node=node)
            nodes = {str(r["node"]) for r in warm}
            users = _lease_users(conn, model_id, nodes, now) + _job_users(conn, model_id, nodes)
            if users:
                return Eviction(model_id, users=users)
            live = _live_workers(conn, [r["worker_id"] for r in warm], live_after)
            result = Eviction(model_id)
            for r in sorted(warm, key=lambda r: str(r["node"])):
                if r["worker_id"] in live:
                    conn.execute(model_evictions.delete().where(*_evicting(r["node"], model_id)))
                    conn.execute(
                        model_evictions.insert().values(
                            node=r["node"],
                            model_id=model_id,
                            requested_at=now,
                            requested_by=actor[:128],
                        )
                    )
                    result.evicting.append(r["node"])
                else:  # nobody holds it in memory any more: only the record is left
                    conn.execute(
                        warm_models.delete().where(
                            warm_models.c.node == r["node"], warm_models.c.model_id == model_id
                        )
                    )
                    # An earlier eviction row for it would outlive the record otherwise.
                    conn.execute(model_evictions.delete().where(*_evicting(r["node"], model_id)))
                    result.evicted.append(r["node"])
            return result

    def pending_evictions(self, node: str) -> list[str]:
        """The models to unload on `node`."""
        with self._tx(write=False) as conn:
            rows = conn.execute(
                sa.select(model_evictions.c.model_id).where(model_evictions.c.node == node)
            )
            return sorted(str(m) for m in rows.scalars())

    def finish_eviction(self, node: str, model_id: str, *, not_held_by: str | None = None) -> bool:
        """The model is unloaded on `node`: its warm record and eviction row go. With
        `not_held_by` (a worker that does not hold the model), only when no other worker's
        warm record is there: then that worker carries the eviction out itself. Returns
        whether the eviction row went."""
        with self._tx(write=True) as conn:
            warm = (warm_models.c.node == node, warm_models.c.model_id == model_id)
            if not_held_by is not None:
                holder = conn.execute(sa.select(warm_models.c.worker_id).where(*warm)).first()
                if holder is not None and holder.worker_id not in (None, not_held_by):
                    return False
            conn.execute(warm_models.delete().where(*warm))
            return bool(
                conn.execute(model_evictions.delete().where(*_evicting(node, model_id))).rowcount
            )


def model_evicting(conn: Connection, model_id: str, node: str | None) -> bool:
    """Whether `model_id` is being evicted from `node` (any node, when None). An eviction
    counts only while the model's warm record on that node exists: a row left behind by a
    worker that went away must not block the model there for ever."""
    query = (
        sa.select(model_evictions.c.node)
        .select_from(
            model_evictions.join(
                warm_models,
                sa.and_(
                    warm_models.c.node == model_evictions.c.node,
                    warm_models.c.model_id == model_evictions.c.model_id,
                ),
            )
        )
        .where(model_evictions.c.model_id == model_id)
    )
    if node is not None:
        query = query.where(model_evictions.c.node == node)
    return conn.execute(query.limit(1)).first() is not None


def evicting_pairs(conn: Connection) -> set[tuple[str, str]]:
    """The (node, model) pairs with a pending eviction and a warm record (as
    `model_evicting`), for placements decided in bulk."""
    rows = conn.execute(
        sa.select(model_evictions.c.node, model_evictions.c.model_id).select_from(
            model_evictions.join(
                warm_models,
                sa.and_(
                    warm_models.c.node == model_evictions.c.node,
                    warm_models.c.model_id == model_evictions.c.model_id,
                ),
            )
        )
    )
    return {(str(r.node), str(r.model_id)) for r in rows}


def _evicting(node: str, model_id: str) -> tuple[Any, Any]:
    return (model_evictions.c.node == node, model_evictions.c.model_id == model_id)


def _lease_users(
    conn: Connection, model_id: str, nodes: set[str], now: datetime
) -> list[ModelUser]:
    rows = conn.execute(
        sa.select(leases.c.token, leases.c.node, leases.c.agent).where(
            leases.c.model_id == model_id,
            leases.c.status == LeaseStatus.ACTIVE.value,
            leases.c.expires_at >= now,
            leases.c.node.in_(nodes),
        )
    )
    return [ModelUser("lease", r.token, r.node, r.agent) for r in rows]


def _job_users(conn: Connection, model_id: str, nodes: set[str]) -> list[ModelUser]:
    """Claimed or running jobs for the model on those nodes (or on a node not known)."""
    rows = conn.execute(
        sa.select(jobs.c.id, jobs.c.gpu, jobs.c.owner, workers.c.node)
        .select_from(jobs.outerjoin(workers, workers.c.id == jobs.c.worker_id))
        .where(jobs.c.status.in_(ACTIVE_STATUSES), jobs.c.gpu.is_not(None))
    )
    users = []
    for r in rows:
        gpu = loads(r.gpu) or {}
        if gpu.get("model_id") == model_id and (r.node is None or r.node in nodes):
            users.append(ModelUser("job", r.id, r.node, r.owner))
    return users


def _live_workers(conn: Connection, ids: list[Any], live_after: datetime) -> set[str]:
    wanted = [i for i in ids if i is not None]
    if not wanted:
        return set()
    rows = conn.execute(
        sa.select(workers.c.id).where(
            workers.c.id.in_(wanted),
            workers.c.status.in_(LIVE_WORKER_STATUSES),
            workers.c.heartbeat_at >= live_after,
        )
    )
    return {str(i) for i in rows.scalars()}


def _agent_of(row: Mapping[Any, Any]) -> Agent:
    return Agent(
        name=row["name"],
        version=row["version"],
        capabilities=list(json.loads(row["capabilities"])),
        requires_models=list(json.loads(row["requires_models"])),
        owner=row["owner"],
        registered_at=row["registered_at"],
        updated_at=row["updated_at"],
    )

"""Admission: which lease requests get which devices (DESIGN invariant 6).

Pure functions over a snapshot (devices, active leases, waiting requests, the policy), so
the rules are tested without a database; `SqlGpus` takes the snapshot and applies the
result inside one serialised transaction.

The rules:
- A device takes a request of `est_vram_mb` when both hold after the grant:
  leased VRAM on it <= its total - headroom, and what its leases may still allocate
  (`Lease.outstanding_mb`) <= its measured free memory - headroom. The first is the
  capacity bound; the second keeps out memory used outside any lease.
- Only fresh (reported within `stale_s`), healthy devices are leased. When only degraded
  devices could have taken it, the answer is `gpu_degraded` (a 503).
- `gpu_count > 1` is a gang: that many devices on one node, all or nothing.
- Among the devices that fit, the fullest is used first (best fit), keeping large holes
  for large requests.
- Per-agent quotas (`max_vram_mb`, `max_leases`) over the agent's active leases.
- Waiting requests are served in policy order: priority band (critical first), raised one
  band per `ageing_s` waited, then first come first served. A request that does not fit
  holds back everything after it that could use the same node(s): no later or smaller
  request overtakes it, so nothing starves.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from orchestrator.gpu import HEALTH_OK, Device
from orchestrator.leases import (
    AdmissionPolicy,
    Denial,
    DenyReason,
    Lease,
    LeaseRequest,
    LeaseStatus,
)

ANY_NODE = "*"
# A request that does not fit for these reasons holds back the queue behind it.
CAPACITY_REASONS = frozenset(
    {DenyReason.INSUFFICIENT_VRAM, DenyReason.GANG_UNAVAILABLE, DenyReason.GPU_DEGRADED}
)


@dataclass(frozen=True)
class Limits:
    """Admission settings that are not policy: the headroom and device freshness."""

    headroom_mb: int
    stale_s: float


@dataclass(frozen=True)
class Placement:
    node: str
    devices: tuple[int, ...]


@dataclass
class _DeviceBook:
    device: Device
    leased_mb: int = 0
    outstanding_mb: int = 0
    # (expires_at, est_vram_mb, outstanding) of each active lease on it, for wait estimates.
    holds: list[tuple[datetime | None, int, int]] = field(default_factory=list)

    def free_mb(self, headroom_mb: int, leased_mb: int | None = None, outstanding: int = -1) -> int:
        leased = self.leased_mb if leased_mb is None else leased_mb
        owed = self.outstanding_mb if outstanding < 0 else outstanding
        by_capacity = self.device.memory_total_mb - headroom_mb - leased
        by_measure = self.device.memory_total_mb - self.device.memory_used_mb - headroom_mb - owed
        return min(by_capacity, by_measure)


def rank(
    lease: Lease, policy: AdmissionPolicy, now: datetime
) -> tuple[int, datetime, datetime, str]:
    """Sort key of a waiting request: effective band (aged), then arrival."""
    waited = max(0.0, (now - lease.queued_at).total_seconds())
    band = max(0, int(lease.priority) - int(waited // policy.ageing_s))
    return (band, lease.queued_at, lease.created_at, lease.token)


class Book:
    """The allocation of every usable device, updated as grants are made."""

    def __init__(
        self,
        devices: Iterable[Device],
        active: Iterable[Lease],
        policy: AdmissionPolicy,
        limits: Limits,
        now: datetime,
    ) -> None:
        self.policy = policy
        self.limits = limits
        self.now = now
        fresh_after = now - timedelta(seconds=limits.stale_s)
        self._books: dict[tuple[str, int], _DeviceBook] = {
            d.key: _DeviceBook(d) for d in devices if d.reported_at >= fresh_after
        }
        self._agent_vram: dict[str, int] = {}
        self._agent_leases: dict[str, list[Lease]] = {}
        for lease in active:
            self.add(lease)

    def add(self, lease: Lease) -> None:
        """Count an active lease (one just granted, or one found active)."""
        self._agent_vram[lease.agent] = self._agent_vram.get(
            lease.agent, 0
        ) + lease.est_vram_mb * len(lease.devices)
        self._agent_leases.setdefault(lease.agent, []).append(lease)
        if lease.node is None:
            return
        for index in lease.devices:
            book = self._books.get((lease.node, index))
            if book is not None:
                book.leased_mb += lease.est_vram_mb
                book.outstanding_mb += lease.outstanding_mb()
                book.holds.append((lease.expires_at, lease.est_vram_mb, lease.outstanding_mb()))

    def devices(self) -> list[tuple[Device, int]]:
        """Every usable device with the VRAM it can still lease."""
        return [(b.device, b.free_mb(self.limits.headroom_mb)) for b in self._books.values()]

    def place(
        self, request: LeaseRequest | Lease, excluded: Collection[str] = ()
    ) -> Placement | Denial:
        """Where `request` fits now, or why it does not; nodes in `excluded` are held for
        requests queued ahead (`ANY_NODE`: all of them)."""
        quota = self._check_quota(request)
        if quota is not None:
            return quota
        known = self._nodes(request.node)
        if not known:
            where = f" on node {request.node}" if request.node else ""
            return Denial(DenyReason.NO_GPUS, f"no GPU is reporting{where}")
        count, need = request.gpu_count, request.est_vram_mb
        headroom = self.limits.headroom_mb
        if not any(
            sum(1 for b in books if b.device.memory_total_mb - headroom >= need) >= count
            for books in known.values()
        ):
            return Denial(
                DenyReason.EXCEEDS_CAPACITY,
                f"no node has {count} device(s) with {need} MB to lease (capacity less "
                f"{headroom} MB headroom)",
                final=True,
            )
        nodes = (
            {}
            if ANY_NODE in excluded
            else {name: books for name, books in known.items() if name not in excluded}
        )
        if not nodes:
            return Denial(
                DenyReason.QUEUED_AHEAD,
                "requests queued ahead of this one in policy order are served first",
                self._estimate_wait_ms(request, known),
            )
        best: tuple[int, str, list[_DeviceBook]] | None = None
        degraded_fits = False
        for node, books in nodes.items():
            fitting = sorted(
                (b for b in books if b.free_mb(headroom) >= need),
                key=lambda b: (b.free_mb(headroom), b.device.index),
            )
            healthy = [b for b in fitting if b.device.health == HEALTH_OK]
            if len(healthy) >= count:
                chosen = healthy[:count]
                slack = sum(b.free_mb(headroom) - need for b in chosen)
                if best is None or (slack, node) < (best[0], best[1]):
                    best = (slack, node, chosen)
            elif len(fitting) >= count:
                degraded_fits = True
        if best is not None:
            return Placement(best[1], tuple(sorted(b.device.index for b in best[2])))
        if degraded_fits:
            reasons = sorted(
                {
                    f"{b.device.node}/{b.device.index}: {b.device.error or 'degraded'}"
                    for books in nodes.values()
                    for b in books
                    if b.device.health != HEALTH_OK
                }
            )
            return Denial(
                DenyReason.GPU_DEGRADED,
                "the devices with room are degraded: " + "; ".join(reasons),
            )
        wait = self._estimate_wait_ms(request, nodes)
        if count > 1:
            return Denial(
                DenyReason.GANG_UNAVAILABLE,
                f"no node has {count} devices with {need} MB free each",
                wait,
            )
        return Denial(DenyReason.INSUFFICIENT_VRAM, f"no device has {need} MB free", wait)

    def possible_nodes(self, request: LeaseRequest | Lease) -> set[str]:
        """The nodes that could hold the request once free (by capacity alone)."""
        need = request.est_vram_mb + self.limits.headroom_mb
        return {
            name
            for name, books in self._nodes(request.node).items()
            if sum(1 for b in books if b.device.memory_total_mb >= need) >= request.gpu_count
        }

    def _nodes(self, node: str | None) -> dict[str, list[_DeviceBook]]:
        nodes: dict[str, list[_DeviceBook]] = {}
        for (name, _), book in self._books.items():
            if node is None or name == node:
                nodes.setdefault(name, []).append(book)
        return nodes

    def _check_quota(self, request: LeaseRequest | Lease) -> Denial | None:
        quota = self.policy.quota_of(request.agent)
        held = self._agent_leases.get(request.agent, [])
        soonest = self._soonest_expiry_ms(held)
        if quota.max_leases is not None and len(held) + 1 > quota.max_leases:
            return Denial(
                DenyReason.QUOTA_LEASES,
                f"agent {request.agent} holds {len(held)} lease(s); its quota is "
                f"{quota.max_leases}",
                soonest,
                final=quota.max_leases == 0,
            )
        asked = request.est_vram_mb * request.gpu_count
        used = self._agent_vram.get(request.agent, 0)
        if quota.max_vram_mb is not None and used + asked > quota.max_vram_mb:
            return Denial(
                DenyReason.QUOTA_VRAM,
                f"agent {request.agent} holds {used} MB; {asked} MB more is over its quota "
                f"of {quota.max_vram_mb} MB",
                soonest if asked <= quota.max_vram_mb else None,
                final=asked > quota.max_vram_mb,
            )
        return None

    def _soonest_expiry_ms(self, leases: Sequence[Lease]) -> int | None:
        times = [lease.expires_at for lease in leases if lease.expires_at is not None]
        if not times:
            return None
        return max(0, int((min(times) - self.now).total_seconds() * 1000))

    def _estimate_wait_ms(
        self, request: LeaseRequest | Lease, nodes: dict[str, list[_DeviceBook]]
    ) -> int | None:
        """When enough would free if today's leases ended at their expiry: a rough bound
        (leases are often released early, and new ones may come first)."""
        best: datetime | None = None
        headroom = self.limits.headroom_mb
        for books in nodes.values():
            expiries = sorted({t for b in books for t, _, _ in b.holds if t is not None})
            for moment in expiries:
                fits = 0
                for b in books:
                    if b.device.health != HEALTH_OK:
                        continue
                    leased = sum(mb for t, mb, _ in b.holds if t is None or t > moment)
                    owed = sum(o for t, _, o in b.holds if t is None or t > moment)
                    if b.free_mb(headroom, leased, owed) >= request.est_vram_mb:
                        fits += 1
                if fits >= request.gpu_count:
                    best = moment if best is None else min(best, moment)
                    break
        if best is None:
            return None
        return max(0, int((best - self.now).total_seconds() * 1000))


@dataclass
class Pass:
    """The result of serving the queue: who is granted where, and why the others are not."""

    granted: dict[str, Placement] = field(default_factory=dict)
    denied: dict[str, Denial] = field(default_factory=dict)
    # Active leases found past their expiry (and marked expired) before serving.
    expired: list[Lease] = field(default_factory=list)


def serve_queue(book: Book, waiting: Sequence[Lease], policy: AdmissionPolicy) -> Pass:
    """Grant waiting requests in policy order (see the module docstring); `book` is
    updated with every grant. A request behind one that does not fit is denied
    `queued_ahead` on the nodes that one could use."""
    result = Pass()
    blocked: set[str] = set()
    for lease in sorted(waiting, key=lambda w: rank(w, policy, book.now)):
        outcome = book.place(lease, blocked)
        if isinstance(outcome, Placement):
            result.granted[lease.token] = outcome
            book.add(_as_active(lease, outcome))
            continue
        result.denied[lease.token] = outcome
        if outcome.reason in CAPACITY_REASONS:
            # It holds back the nodes it could ever use: not an idle node too small for it.
            blocked.update(book.possible_nodes(lease))
    return result


def _as_active(lease: Lease, placement: Placement) -> Lease:
    return replace(lease, status=LeaseStatus.ACTIVE, node=placement.node, devices=placement.devices)

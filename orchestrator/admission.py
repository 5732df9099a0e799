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
  devices could have taken it, the answer is `gpu_degraded` (a 503). Quarantined devices
  are left out of the fit altogether: `gpu_quarantined` (a 503) only when no device that is
  not quarantined could ever hold it (by capacity); otherwise the request waits for room
  like any other. A request's `avoid` devices are used last.
- A request for a model being evicted on a node (`POST /models/evict`) gets no lease
  there (`model_evicting`), whether it is new or granted later from the queue.
- `gpu_count > 1` is a gang: that many devices on one node, all or nothing.
- Among the devices that fit, the fullest is used first (best fit), keeping large holes
  for large requests.
- Per-owner quotas (`max_vram_mb`, `max_leases`) over the owner's active leases, and
  optional per-agent ones (`owner/agent` keys) over that agent's leases of that owner.
- Waiting requests are served in policy order (`orchestrator.queue_order`): by default
  priority band (critical first), raised one band per `ageing_s` waited, then first come
  first served; `fifo`, `shortest_first` and `fair_share` change that order. A request
  that does not fit holds back everything after it that could use the same node(s): no
  later or smaller request overtakes it, so nothing starves.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from orchestrator.gpu import HEALTH_OK, Device
from orchestrator.leases import (
    AdmissionPolicy,
    Denial,
    DenyReason,
    Lease,
    LeaseRequest,
    LeaseStatus,
    Quota,
    agent_quota_key,
)
from orchestrator.queue_order import Turns, static_key

ANY_NODE = "*"
# A request that does not fit for these reasons holds back the queue behind it.
CAPACITY_REASONS = frozenset(
    {
        DenyReason.INSUFFICIENT_VRAM,
        DenyReason.GANG_UNAVAILABLE,
        DenyReason.GPU_DEGRADED,
        DenyReason.GPU_QUARANTINED,
    }
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


def rank(lease: Lease, policy: AdmissionPolicy, now: datetime) -> tuple[Any, ...]:
    """Sort key of a waiting request under `policy.order` (except `fair_share`, whose order
    depends on usage: see `orchestrator.queue_order`)."""
    return static_key(lease, policy, now)


class Book:
    """The allocation of every usable device, updated as grants are made."""

    def __init__(
        self,
        devices: Iterable[Device],
        active: Iterable[Lease],
        policy: AdmissionPolicy,
        limits: Limits,
        now: datetime,
        evicting: Collection[tuple[str, str]] = (),
    ) -> None:
        self.policy = policy
        self.limits = limits
        self.now = now
        # (node, model) pairs being evicted: no lease for that model on that node.
        self.evicting = frozenset(evicting)
        fresh_after = now - timedelta(seconds=limits.stale_s)
        self._books: dict[tuple[str, int], _DeviceBook] = {
            d.key: _DeviceBook(d) for d in devices if d.reported_at >= fresh_after
        }
        # What each quota key holds: the owner's name, and `owner/agent`.
        self._held_vram: dict[str, int] = {}
        self._held_leases: dict[str, list[Lease]] = {}
        for lease in active:
            self.add(lease)

    def add(self, lease: Lease) -> None:
        """Count an active lease (one just granted, or one found active)."""
        for key in (lease.owner, agent_quota_key(lease.owner, lease.agent)):
            self._held_vram[key] = self._held_vram.get(key, 0) + lease.est_vram_mb * len(
                lease.devices
            )
            self._held_leases.setdefault(key, []).append(lease)
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
        if not any(
            sum(1 for b in books if _leasable_by_capacity(b, need, headroom)) >= count
            for books in known.values()
        ):
            # Only quarantined devices could ever hold it. When a usable one could (once
            # free), it waits like any request without room instead (below).
            held = sorted(
                f"{b.device.node}/{b.device.index}: quarantined ({b.device.quarantine_reason})"
                for books in known.values()
                for b in books
                if b.device.quarantined and b.device.memory_total_mb - headroom >= need
            )
            return Denial(
                DenyReason.GPU_QUARANTINED,
                "only quarantined devices could hold it, until an admin clears them: "
                + "; ".join(held),
            )
        nodes = (
            {}
            if ANY_NODE in excluded
            else {name: books for name, books in known.items() if name not in excluded}
        )
        model = request.model_id
        if model is not None and self.evicting and nodes:
            there = sorted(name for name in nodes if (name, model) in self.evicting)
            nodes = {name: books for name, books in nodes.items() if name not in there}
            if not nodes:
                return Denial(
                    DenyReason.MODEL_EVICTING,
                    f"model {model} is being evicted on node {', '.join(there)}",
                )
        if not nodes:
            return Denial(
                DenyReason.QUEUED_AHEAD,
                "requests queued ahead of this one in policy order are served first",
                self._estimate_wait_ms(request, known),
            )
        best: tuple[int, int, str, list[_DeviceBook]] | None = None
        degraded_fits = False
        avoid = set(request.avoid)  # an OOM retry: other devices first, if they fit
        for node, books in nodes.items():
            # Quarantined devices are no candidates at all: one idle quarantined card must
            # not turn a wait for a busy healthy one into a 503.
            fitting = sorted(
                (b for b in books if not b.device.quarantined and b.free_mb(headroom) >= need),
                key=lambda b: (b.free_mb(headroom), b.device.index),
            )
            healthy = sorted(
                (b for b in fitting if _usable(b.device)), key=lambda b: b.device.key in avoid
            )
            if len(healthy) >= count:
                chosen = healthy[:count]
                slack = sum(b.free_mb(headroom) - need for b in chosen)
                avoided = sum(b.device.key in avoid for b in chosen)
                if best is None or (avoided, slack, node) < best[:3]:
                    best = (avoided, slack, node, chosen)
            elif len(fitting) >= count:
                degraded_fits = True
        if best is not None:
            return Placement(best[2], tuple(sorted(b.device.index for b in best[3])))
        if degraded_fits:
            unusable = [b.device for books in nodes.values() for b in books]
            reasons = sorted(
                f"{d.node}/{d.index}: {d.error or 'degraded'}"
                for d in unusable
                if not _usable(d) and not d.quarantined
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
        """The nodes that could hold the request once free (by capacity alone, on devices
        that are not quarantined: a request only a quarantined device could hold holds
        nothing back)."""
        need, headroom = request.est_vram_mb, self.limits.headroom_mb
        return {
            name
            for name, books in self._nodes(request.node).items()
            if sum(1 for b in books if _leasable_by_capacity(b, need, headroom))
            >= request.gpu_count
        }

    def _nodes(self, node: str | None) -> dict[str, list[_DeviceBook]]:
        nodes: dict[str, list[_DeviceBook]] = {}
        for (name, _), book in self._books.items():
            if node is None or name == node:
                nodes.setdefault(name, []).append(book)
        return nodes

    def _check_quota(self, request: LeaseRequest | Lease) -> Denial | None:
        """The owner's quota (the authenticated identity: free-text agent names cannot spend
        or dodge it), then its agent's, if the policy lists `owner/agent`."""
        owner, agent = request.owner, request.agent
        denial = self._check_one(request, owner, f"owner {owner}", self.policy.quota_of(owner))
        agent_quota = self.policy.agent_quota_of(owner, agent)
        if denial is None and agent_quota is not None:
            key = agent_quota_key(owner, agent)
            denial = self._check_one(request, key, f"agent {key}", agent_quota)
        return denial

    def _check_one(
        self, request: LeaseRequest | Lease, key: str, who: str, quota: Quota
    ) -> Denial | None:
        held = self._held_leases.get(key, [])
        soonest = self._soonest_expiry_ms(held)
        if quota.max_leases is not None and len(held) + 1 > quota.max_leases:
            return Denial(
                DenyReason.QUOTA_LEASES,
                f"{who} holds {len(held)} lease(s); its quota is {quota.max_leases}",
                soonest,
                final=quota.max_leases == 0,
                quota_key=key,
            )
        asked = request.est_vram_mb * request.gpu_count
        used = self._held_vram.get(key, 0)
        if quota.max_vram_mb is not None and used + asked > quota.max_vram_mb:
            return Denial(
                DenyReason.QUOTA_VRAM,
                f"{who} holds {used} MB; {asked} MB more is over its quota "
                f"of {quota.max_vram_mb} MB",
                soonest if asked <= quota.max_vram_mb else None,
                final=asked > quota.max_vram_mb,
                quota_key=key,
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
                    if not _usable(b.device):
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


def serve_queue(
    book: Book,
    waiting: Sequence[Lease],
    policy: AdmissionPolicy,
    usage: Mapping[str, float] | None = None,
) -> Pass:
    """Grant waiting requests in policy order (see the module docstring); `book` is
    updated with every grant. A request behind one that does not fit is denied
    `queued_ahead` on the nodes that one could use. `usage`: each owner's decayed
    GPU-seconds (`queue_order.decayed_usage`), for `fair_share`."""
    result = Pass()
    blocked: set[str] = set()
    turns = Turns(waiting, policy, book.now, usage)
    for lease in turns:
        outcome = book.place(lease, blocked)
        if isinstance(outcome, Placement):
            result.granted[lease.token] = outcome
            book.add(_as_active(lease, outcome))
            turns.charge(lease, len(outcome.devices))
            continue
        result.denied[lease.token] = outcome
        if outcome.reason in CAPACITY_REASONS:
            # It holds back the nodes it could ever use: not an idle node too small for it.
            blocked.update(book.possible_nodes(lease))
    return result


def _leasable_by_capacity(book: _DeviceBook, need: int, headroom: int) -> bool:
    """Not quarantined and large enough for `need` once free."""
    return not book.device.quarantined and book.device.memory_total_mb - headroom >= need


def _usable(device: Device) -> bool:
    """Healthy and not quarantined (orchestrator/gpu_health.py): may take new leases."""
    return device.health == HEALTH_OK and not device.quarantined


def _as_active(lease: Lease, placement: Placement) -> Lease:
    return replace(lease, status=LeaseStatus.ACTIVE, node=placement.node, devices=placement.devices)

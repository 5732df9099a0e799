"""The GPU side of explain: SAFE_MODE, the lease a job waits for and who holds the
capacity, quotas, fair share, quarantined devices, a lease that can never fit.

Admission itself answers: the job's lease request (its waiting one, or the one its next
claim makes) is placed on a `Book` of the devices and active leases, as the sweep would.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from orchestrator.admission import Book, Limits, Placement
from orchestrator.explain.reasons import ExplainInputs, Reason, iso
from orchestrator.gpu import Device
from orchestrator.jobs import Job
from orchestrator.leases import DenyReason, Lease, LeaseStatus, QueueOrder
from orchestrator.queue_order import Turns, band_of

# How many leases holding the capacity an answer names (the count is always given).
MAX_HOLDERS = 10
# How a non-admin's answer names a lease or a turn of someone else.
ANOTHER_OWNER = "another owner"


# -- GPUs ------------------------------------------------------------------------------------


def gpu_reasons(inputs: ExplainInputs) -> list[Reason]:
    job = inputs.job
    assert job.gpu is not None
    if inputs.safe_mode:
        return [
            Reason(
                "safe_mode",
                "SAFE_MODE is on: no GPU lease is granted until an operator turns it off",
                blocking=True,
            )
        ]
    reasons: list[Reason] = []
    usable = [d for d in inputs.devices if not d.quarantined]
    quarantined = [
        d for d in inputs.devices if d.quarantined and _could_hold(d, job, inputs.limits)
    ]
    if quarantined:
        # Blocking when no node has enough devices that are not quarantined and could hold
        # it (by capacity): then only an admin's clear lets it run.
        holders: dict[str, int] = {}
        for d in usable:
            if _could_hold(d, job, inputs.limits):
                holders[d.node] = holders.get(d.node, 0) + 1
        only_quarantined = all(n < job.gpu.gpu_count for n in holders.values())
        reasons.append(
            Reason(
                "device_quarantined",
                "device(s) that could hold it are quarantined until an admin clears them: "
                + "; ".join(f"{d.node}/{d.index} ({d.quarantine_reason})" for d in quarantined),
                blocking=only_quarantined,
                details={"devices": [f"{d.node}/{d.index}" for d in quarantined]},
            )
        )
    waiting = next((lease for lease in inputs.leases if lease.status is LeaseStatus.WAITING), None)
    request = waiting or _hypothetical(job, inputs.now)
    book = Book(usable, inputs.active, inputs.policy, inputs.limits, inputs.now)
    outcome = book.place(request)
    if waiting is not None:
        reasons.append(_lease_queue(inputs, waiting))
    if isinstance(outcome, Placement):
        if waiting is None:
            reasons.append(
                Reason(
                    "gpu_available",
                    f"a device has {job.gpu.est_vram_mb} MB free now "
                    f"({outcome.node}/{','.join(map(str, outcome.devices))})",
                    details={"node": outcome.node, "devices": list(outcome.devices)},
                )
            )
        return reasons
    reason = outcome.reason
    if reason is DenyReason.EXCEEDS_CAPACITY:
        reasons.append(
            Reason(
                "exceeds_capacity",
                f"its lease can never be granted: {outcome.message}",
                blocking=True,
                details={"est_vram_mb": job.gpu.est_vram_mb, "gpu_count": job.gpu.gpu_count},
            )
        )
    elif reason is DenyReason.NO_GPUS:
        reasons.append(Reason("no_gpus", outcome.message, blocking=True))
    elif reason in (DenyReason.QUOTA_VRAM, DenyReason.QUOTA_LEASES):
        key = outcome.quota_key or request.owner
        quota = inputs.policy.quotas.get(key, inputs.policy.default_quota)
        reasons.append(
            Reason(
                "quota",
                outcome.message,
                blocking=outcome.final,
                details={
                    "owner": request.owner,
                    "agent": request.agent,
                    "quota": key,
                    "limit": reason.value,
                    "max_vram_mb": quota.max_vram_mb,
                    "max_leases": quota.max_leases,
                },
            )
        )
    elif reason is DenyReason.GPU_DEGRADED:
        reasons.append(Reason("gpu_degraded", outcome.message))
    else:
        reasons.append(_holders(inputs, request, outcome.message, outcome.estimated_wait_ms))
    return reasons


def _hypothetical(job: Job, now: datetime) -> Lease:
    """The lease request its next claim makes (on any node: a worker anywhere may take it)."""
    assert job.gpu is not None
    return Lease(
        token="",
        agent=job.owner,
        owner=job.owner,
        status=LeaseStatus.WAITING,
        est_vram_mb=job.gpu.est_vram_mb,
        gpu_count=job.gpu.gpu_count,
        priority=job.priority,
        ttl_s=0.0,
        queued_at=job.created_at,
        created_at=now,
        model_id=job.gpu.model_id,
        job_id=job.id,
    )


def _could_hold(device: Device, job: Job, limits: Limits) -> bool:
    assert job.gpu is not None
    return device.memory_total_mb - limits.headroom_mb >= job.gpu.est_vram_mb


def _holders(inputs: ExplainInputs, request: Lease, why: str, wait_ms: int | None) -> Reason:
    """The active leases on the devices the job could use: what holds its capacity."""
    job = inputs.job
    fit = {
        d.key
        for d in inputs.devices
        if not d.quarantined
        and _could_hold(d, job, inputs.limits)
        and (request.node is None or d.node == request.node)
    }
    holders = [
        lease
        for lease in inputs.active
        if lease.node is not None and any((lease.node, i) in fit for i in lease.devices)
    ]
    shown = [_holder(inputs, h) for h in holders[:MAX_HOLDERS]]
    named = ", ".join(
        (f"{h['token'][:8]} " if h["token"] else "")
        + f"({h['owner']}{'/' + h['agent'] if h['agent'] else ''}, {h['est_vram_mb']} MB on "
        f"{h['node']}/{','.join(map(str, h['devices']))})"
        for h in shown
    )
    message = f"no room for its lease now: {why}"
    if holders:
        message += f"; held by {len(holders)} active lease(s): {named}"
    return Reason(
        "gpu_capacity",
        message,
        details={"estimated_wait_ms": wait_ms, "holders": shown, "holders_total": len(holders)},
    )


def _holder(inputs: ExplainInputs, h: Lease) -> dict[str, Any]:
    """One lease holding capacity; another owner's, for a non-admin, without what identifies
    it (token, job id, owner and agent names): only where and how much."""
    mine = inputs.sees_all or h.owner == inputs.job.owner
    return {
        "token": h.token if mine else None,
        "owner": h.owner if mine else ANOTHER_OWNER,
        "agent": h.agent if mine else None,
        "job_id": h.job_id if mine else None,
        "node": h.node,
        "devices": list(h.devices),
        "est_vram_mb": h.est_vram_mb,
        "expires_at": iso(h.expires_at),
    }


def _lease_queue(inputs: ExplainInputs, mine: Lease) -> Reason:
    """Its waiting lease request, and the requests served before it in policy order."""
    policy, now = inputs.policy, inputs.now
    others = [w for w in inputs.waiting if w.token != mine.token]
    order = list(Turns([*others, mine], policy, now, inputs.usage))
    ahead = [
        w
        for w in order[: order.index(mine)]
        if mine.node is None or w.node is None or w.node == mine.node
    ]
    details: dict[str, Any] = {
        "lease": mine.token,
        "node": mine.node,
        "queued_at": iso(mine.queued_at),
        "ahead": len(ahead),
        "order": policy.order.value,
    }
    message = (
        f"its lease request {mine.token[:8]} waits on node {mine.node or 'any'}: "
        f"{len(ahead)} request(s) ahead of it in {policy.order.value} order"
    )
    if policy.order is QueueOrder.FAIR_SHARE and inputs.usage is not None:
        band = band_of(mine, policy, now)
        fair = policy.fair_share
        favoured = sorted(
            {w.owner for w in ahead if w.owner != mine.owner and band_of(w, policy, now) == band}
        )
        own = inputs.usage.get(mine.owner, 0.0) / fair.share_of(mine.owner)
        used = {o: inputs.usage.get(o, 0.0) / fair.share_of(o) for o in favoured}
        if not inputs.sees_all:
            # A non-admin learns how far behind it is, not who the others are.
            ranked = sorted(used.values())
            used = {f"{ANOTHER_OWNER} {n}": u for n, u in enumerate(ranked, 1)}
        details["fair_share"] = {
            "owner": mine.owner,
            "normalised_usage": round(own, 3),
            "ahead_owners": {o: round(u, 3) for o, u in used.items()},
        }
        if favoured:
            message += (
                f"; fair share: owner {mine.owner} used {own:.0f} GPU-s per share, more than "
                + ", ".join(f"{o} ({u:.0f})" for o, u in used.items())
            )
    return Reason("lease_waiting", message, details=details)

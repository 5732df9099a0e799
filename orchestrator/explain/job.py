"""Why a job is not running yet, in plain words: `explain(ExplainInputs) -> Explanation`.

The job's own state (finished, running, claimed), its time (a delay, a retry backoff), its
place in its type's queue, its workers and its model; the GPU reasons are in
`orchestrator.explain.gpu`.
"""

from __future__ import annotations

from orchestrator.explain.gpu import gpu_reasons
from orchestrator.explain.reasons import ExplainInputs, Explanation, Reason, iso
from orchestrator.jobs import Job, JobStatus, Priority
from orchestrator.leases import LeaseStatus
from orchestrator.models import ModelPlacement


def explain(inputs: ExplainInputs) -> Explanation:
    """Every reason that applies to the job now, the blocking ones deciding `runnable`."""
    job = inputs.job
    if job.is_terminal:
        return _finished(job)
    if job.status is JobStatus.RUNNING:
        notes = [_running(job)]
        if job.cancel_requested:
            notes.append(Reason("cancel_requested", "it was asked to cancel and stops soon"))
        return _answer(job, notes, runnable=True)
    reasons: list[Reason] = []
    if job.cancel_requested:
        reasons.append(Reason("cancel_requested", "it was asked to cancel", blocking=True))
    due = job.available_at <= inputs.now
    if not due:
        reasons.append(_delay(inputs))
    if inputs.live_workers == 0:
        reasons.append(
            Reason(
                "no_worker",
                f"no live worker serves job type {job.type}: start one "
                f"(`orchestrator worker --types {job.type}`) or a pool for it",
                blocking=True,
                details={"type": job.type},
            )
        )
    if job.gpu is not None:
        reasons += gpu_reasons(inputs)
        if inputs.model is not None and job.gpu.model_id:
            reasons.append(_model(inputs, job.gpu.model_id, inputs.model))
    if job.status is JobStatus.CLAIMED:
        reasons.insert(0, _claimed(job))
    elif due:
        reasons.insert(0, _position(inputs))
    runnable = not any(r.blocking for r in reasons)
    return _answer(job, reasons, runnable=runnable)


# -- the job's own state -------------------------------------------------------------------


def _finished(job: Job) -> Explanation:
    what = {
        JobStatus.DONE: "it finished successfully",
        JobStatus.DEAD_LETTER: f"it failed every attempt and was dead-lettered: {job.error}",
        JobStatus.CANCELLED: "it was cancelled",
    }[job.status]
    reason = Reason("finished", what, details={"finished_at": iso(job.finished_at)})
    return Explanation(job.id, job.status.value, False, [reason], f"Not waiting: {what}.")


def _running(job: Job) -> Reason:
    return Reason(
        "running",
        f"it runs on worker {job.worker_id} (attempt {job.attempts} of {job.max_attempts})",
        details={"worker_id": job.worker_id, "started_at": iso(job.started_at)},
    )


def _claimed(job: Job) -> Reason:
    return Reason(
        "claimed",
        f"worker {job.worker_id} claimed it and is getting its GPU lease",
        details={"worker_id": job.worker_id},
    )


def _delay(inputs: ExplainInputs) -> Reason:
    job, until = inputs.job, inputs.job.available_at
    wait_s = round((until - inputs.now).total_seconds(), 3)
    details = {"until": iso(until), "wait_s": wait_s}
    if job.status is JobStatus.FAILED:
        return Reason(
            "retry_backoff",
            f"attempt {job.attempts} failed ({job.error}); it is retried at {iso(until)}",
            blocking=True,
            details={**details, "attempts": job.attempts, "max_attempts": job.max_attempts},
        )
    given_back = next(iter(inputs.leases), None)
    if given_back is not None and given_back.status is LeaseStatus.TIMED_OUT:
        return Reason(
            "lease_retry",
            f"no GPU lease came in time ({given_back.reason}); it is offered again at {iso(until)}",
            blocking=True,
            details={**details, "lease": given_back.token},
        )
    return Reason("delayed", f"it was submitted to run at {iso(until)}", True, details)


def _position(inputs: ExplainInputs) -> Reason:
    job, place = inputs.job, inputs.place
    if not place.published:
        return Reason(
            "unpublished",
            "it is due; the scheduler publishes it on its next tick",
            details={"priority": job.priority.label},
        )
    ahead = {p.label: place.ahead.get(p, 0) for p in Priority if p <= job.priority}
    total = sum(ahead.values())
    where = ", ".join(f"{n} {band}" for band, n in ahead.items() if n) or "none"
    at_least = "at least " if place.capped else ""
    return Reason(
        "queue_position",
        f"{at_least}{total} job(s) of type {job.type} are ahead of it in band "
        f"{job.priority.label} or more urgent ones ({where})",
        details={
            "priority": job.priority.label,
            "ahead": total,
            "ahead_by_band": ahead,
            "ahead_capped": place.capped,
        },
    )


def _model(inputs: ExplainInputs, model_id: str, placement: ModelPlacement) -> Reason:
    """Where its model is warm: a worker elsewhere leaves the job to a warm node for a
    while (model affinity), and a cold model is loaded first by whoever takes it."""
    details = {
        "model_id": model_id,
        "warm_on": sorted(placement.warm_on),
        "serving": sorted(placement.serving),
    }
    if placement.serving:
        return Reason(
            "model_warm",
            f"model {model_id} is warm on {', '.join(sorted(placement.serving))}, where a "
            f"worker for it runs; other workers leave it to them for up to "
            f"{inputs.model_affinity_s:g}s after it is due",
            details=details,
        )
    if placement.warm_on:
        return Reason(
            "model_not_served",
            f"model {model_id} is warm on {', '.join(sorted(placement.warm_on))}, but no live "
            f"worker for type {inputs.job.type} runs there: a worker elsewhere loads it first",
            details=details,
        )
    return Reason(
        "model_cold",
        f"model {model_id} is warm on no node: the worker that takes it loads it first",
        details=details,
    )


# -- the answer ------------------------------------------------------------------------------


def _answer(job: Job, reasons: list[Reason], *, runnable: bool) -> Explanation:
    if job.status is JobStatus.RUNNING:
        summary = f"Running: {reasons[0].message}."
    elif runnable:
        summary = f"Waiting for its turn: {reasons[0].message}." if reasons else "Waiting."
    else:
        blockers = [r.message for r in reasons if r.blocking]
        summary = "Not running yet: " + "; ".join(blockers) + "."
    return Explanation(job.id, job.status.value, runnable, reasons, summary)

"""`scripts/bench`: run every measurement (or a chosen few), print a table, write JSON."""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import ablation, e2e, failover, latency, leases, memory, peers, reclaim, store_calls
from bench.stats import median

MEASUREMENTS = ["e2e", "peers", "latency", "leases", "reclaim", "failover", "memory"]
# Not in a default run (minutes more): pass --only scaling / --only ablation / store_calls.
EXTRA = ["scaling", "ablation", "store_calls"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000, help="end-to-end jobs (20,000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=128,
        help="handler threads per worker (128; the product's default is 4, see docs/benchmarks.md)",
    )
    parser.add_argument("--runs", type=int, default=3, help="end-to-end runs; median (3)")
    parser.add_argument(
        "--quick", action="store_true", help="small counts everywhere, one run, no peers"
    )
    parser.add_argument(
        "--only",
        type=lambda s: s.split(","),
        default=MEASUREMENTS,
        help=f"some of {','.join(MEASUREMENTS + EXTRA)}",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip Celery and Dramatiq")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(MEASUREMENTS) - set(EXTRA)
    if unknown:
        parser.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    if args.quick:
        args.runs = 1
        args.no_peers = True
    return args


def plan(args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    q = args.quick
    steps: dict[str, Callable[[], Any]] = {
        "e2e": lambda: [
            e2e.run(args.jobs, args.workers, args.concurrency) for _ in range(args.runs)
        ],
        "peers": lambda: {
            p: [peers.run(p, args.jobs, args.workers) for _ in range(args.runs)]
            for p in ("dramatiq", "celery")
        },
        "latency": lambda: latency.run(100 if q else 1000, 20 if q else 200),
        "leases": lambda: leases.run(50 if q else 500),
        "reclaim": lambda: reclaim.run(1000 if q else 10_000),
        "failover": lambda: failover.run(1 if q else 3),
        "scaling": lambda: scaling(args),
        "ablation": lambda: ablation.run(1000 if q else 5000, args.concurrency),
        "store_calls": lambda: store_calls.run(100 if q else 500),
        "memory": lambda: memory.run(1000 if q else 50_000, args.workers, args.concurrency),
    }
    if args.no_peers:
        steps.pop("peers")
    return {name: step for name, step in steps.items() if name in args.only}


def scaling(args: argparse.Namespace) -> dict[str, Any]:
    """How throughput grows with worker processes, and with the queue's depth (all jobs
    queued before the workers start; the cost of a deep table and stream)."""
    jobs = 1000 if args.quick else 5000
    by_workers = {n: e2e.run(jobs, n, args.concurrency)["jobs_per_s"] for n in (1, 2, 4)}
    depths = (1000,) if args.quick else (1000, 10_000, 100_000)
    by_depth = {d: e2e.run_queued(d, args.workers, args.concurrency)["jobs_per_s"] for d in depths}
    return {"jobs": jobs, "jobs_per_s_by_workers": by_workers, "jobs_per_s_by_queued": by_depth}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    figures: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} python {platform.python_version()}",
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    for name, step in plan(args).items():
        t = time.monotonic()
        print(f"... {name}", flush=True)
        figures[name] = step()
        figures.setdefault("elapsed_s", {})[name] = round(time.monotonic() - t, 1)
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def table(f: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    ours = None
    if "e2e" in f:
        runs = f["e2e"]
        ours = median([r["jobs_per_s"] for r in runs])
        once = all(r["audit"]["exactly_once"] for r in runs)
        rows.append(
            (
                f"end to end, {runs[0]['jobs']} jobs, {runs[0]['workers']} workers",
                f"{ours:.0f} jobs/s (runs: {', '.join(str(r['jobs_per_s']) for r in runs)}); "
                f"exactly once: {'yes' if once else 'NO'}",
            )
        )
    for peer, runs in f.get("peers", {}).items():
        theirs = median([r["jobs_per_s"] for r in runs])
        ratio = f"; ours / {peer} = {ours / theirs:.2f}x" if ours else ""
        rows.append((f"{peer}, same jobs and workers", f"{theirs:.0f} jobs/s{ratio}"))
    if "latency" in f:
        s, c, i = f["latency"]["submit"]["single"], f["latency"]["submit"]["concurrent"], None
        i = f["latency"]["idle"]
        cm = f["latency"]["commit"]
        rows.append(("MariaDB 1-row commit", f"p50 {cm['p50_ms']} ms, p99 {cm['p99_ms']} ms"))
        rows.append(("submit latency, 1 client", f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms"))
        sdk = f["latency"]["submit"]["sdk"]
        rows.append(
            ("submit latency, through httpx", f"p50 {sdk['p50_ms']} ms, p99 {sdk['p99_ms']} ms")
        )
        rows.append(
            (
                f"submits, {c['clients']} clients",
                f"{c['submits_per_s']:.0f}/s; p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms",
            )
        )
        rows.append(
            ("idle latency (submit to done)", f"p50 {i['p50_ms']} ms, p99 {i['p99_ms']} ms")
        )
    if "leases" in f:
        lease = f["leases"]
        rows.append(("lease round trip", f"p50 {lease['p50_ms']} ms, p99 {lease['p99_ms']} ms"))
    if "reclaim" in f:
        r = f["reclaim"]
        rows.append((f"reclaim {r['jobs']} stale jobs", f"{r['seconds']} s (one pass)"))
    if "failover" in f:
        fo = f["failover"]
        rows.append(("failover (SIGKILL leader)", f"median {fo['median_s']} s {fo['trials_s']}"))
    if "memory" in f:
        m = f["memory"]
        rows.append(
            (
                f"worker RSS over {m['jobs']} jobs",
                f"{m['rss_mb_before']} -> {m['rss_mb_after']} MB (max +{m['max_growth_mb']} MB)",
            )
        )
    if "scaling" in f:
        sc = f["scaling"]
        for n, rate in sc["jobs_per_s_by_workers"].items():
            rows.append((f"end to end, {sc['jobs']} jobs, {n} workers", f"{rate:.0f} jobs/s"))
        for d, rate in sc["jobs_per_s_by_queued"].items():
            rows.append((f"drain {d} queued jobs", f"{rate:.0f} jobs/s"))
    for r in f.get("ablation", []):
        rows.append(
            (
                f"in-process worker, {r['mode']} commits",
                f"{r['jobs_per_s']:.0f} jobs/s; {r['statements_per_job']} statements, "
                f"{r['commits_per_job']} commits per job",
            )
        )
    for call, c in f.get("store_calls", {}).items():
        rows.append(
            (
                f"store call {call}",
                f"p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms; "
                f"{c['statements_per_call']} statements, {c['round_trips_per_call']} round trips",
            )
        )
    width = max(len(k) for k, _ in rows) if rows else 0
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)

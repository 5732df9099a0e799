"""Failover: SIGKILL the leading `orchestrator serve`, time until the standby leads. The
trial itself is scripts/measure-failover's, run here on the benchmark's own database."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from types import ModuleType
from typing import Any

from bench.env import ROOT, bench_env
from bench.stats import median


def _measure_failover() -> ModuleType:
    path = ROOT / "scripts" / "measure-failover"
    loader = importlib.machinery.SourceFileLoader("measure_failover", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def run(trials: int) -> dict[str, Any]:
    measure = _measure_failover()
    with bench_env("failover") as env:
        figures = [measure.trial(env.env, env.workdir) for _ in range(trials)]
    return {"trials_s": [round(f, 3) for f in figures], "median_s": round(median(figures), 3)}

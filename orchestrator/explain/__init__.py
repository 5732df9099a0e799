"""Explain: why a job is not running yet, in plain words.

Pure: `explain(ExplainInputs)` reasons over what `orchestrator.insight.InsightService`
gathered (store queries, settings, the admission policy), so every case is tested with
fakes. Each reason has a stable `code`, a `message` for people and details for programs;
docs/api.md lists them.
"""

from __future__ import annotations

from orchestrator.explain.job import explain
from orchestrator.explain.reasons import ExplainInputs, Explanation, Reason

__all__ = ["ExplainInputs", "Explanation", "Reason", "explain"]

"""The storage boundary."""

from __future__ import annotations

from orchestrator.store.base import JobPage, Outcome, Store, Submitted
from orchestrator.store.sql import SqlStore

__all__ = ["JobPage", "Outcome", "SqlStore", "Store", "Submitted"]

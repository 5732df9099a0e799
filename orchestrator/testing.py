"""Fakes shipped with the package, so tests (ours and users') can swap the real pieces."""

from __future__ import annotations

from datetime import datetime

from orchestrator.store.election import Leadership


class FakeElection:
    """An election this instance always wins (or never, with `leading=False`)."""

    def __init__(self, instance_id: str = "fake-leader", *, leading: bool = True) -> None:
        self.instance_id = instance_id
        self._wins = leading
        self._leading = False
        self._since: datetime | None = None

    @property
    def leading(self) -> bool:
        return self._leading

    def check(self, now: datetime) -> bool:
        if self._wins and not self._leading:
            self._since = now
        self._leading = self._wins
        return self._leading

    def current(self) -> Leadership:
        return Leadership(self.instance_id if self._leading else None, 1, self._since, None)

    def someone_leads(self, now: datetime) -> bool:
        return self._leading

    def resign(self, now: datetime) -> None:
        self._leading = False

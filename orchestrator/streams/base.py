"""The delivery boundary: the engine, the API and workers talk to `Streams`, never to Redis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from orchestrator.jobs import Dispatch, Priority


@dataclass(frozen=True)
class Delivery:
    """One message read from a job stream, to be acked once its outcome is committed."""

    stream: str
    entry_id: str
    dispatch: Dispatch


class Streams(Protocol):
    def publish(self, dispatches: Sequence[Dispatch]) -> None:
        """Append one message per dispatch to its type's stream (one round trip)."""
        ...

    def ensure_groups(self, job_types: Sequence[str]) -> None:
        """Create the consumer groups (and streams) if missing."""
        ...

    def read(
        self, consumer: str, job_types: Sequence[str], count: int, block_ms: int
    ) -> list[Delivery]:
        """New messages for `consumer`, up to `count` per stream, most urgent band first."""
        ...

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Acknowledge and delete handled messages (one round trip)."""
        ...

    def touch(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        """Reset the idle time of messages this consumer holds but has not started yet, so
        the reclaimer does not take them from a live worker."""
        ...

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Put read-but-unstarted messages back at the end of their streams."""
        ...

    def dead_letter(self, dispatch: Dispatch, error: str) -> None:
        """Copy a dead job to its type's DLQ stream."""
        ...

    def job_streams(self) -> list[tuple[str, str, Priority]]:
        """Every job stream there is: (key, job type, band)."""
        ...

    def autoclaim(
        self, stream: str, job_type: str, consumer: str, min_idle_ms: int
    ) -> tuple[list[Delivery], int]:
        """Take over every pending message idle for `min_idle_ms`, to the end of the pending
        list; also acks entries deleted while pending. Returns the deliveries and how many
        deleted entries were acked."""
        ...

    def pending_counts(self) -> dict[str, int]:
        """Entries delivered but not yet acked, by job stream (streams with a group only)."""
        ...

    def stream_of(self, dispatch: Dispatch) -> str:
        """The stream a dispatch is published on."""
        ...

    def dispatches_in(self, stream: str) -> set[tuple[str, int]]:
        """(job id, attempt) of every message a stream holds (undelivered or pending)."""
        ...

    def prune_consumers(self, job_type: str, idle_ms: int) -> int:
        """Remove consumers with nothing pending that have been idle for `idle_ms`."""
        ...

    def epoch(self) -> str:
        """This Redis's epoch token, set by the first publish or check after it started empty
        (new, restarted without persistence, flushed)."""
        ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...

"""`RedisStreams`: job delivery over Redis Streams and consumer groups."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from orchestrator.errors import StreamsUnavailable
from orchestrator.ids import new_token
from orchestrator.jobs import Dispatch, Priority
from orchestrator.streams.base import Delivery
from orchestrator.streams.keys import STREAM_ROOT, Keys

logger = logging.getLogger(__name__)

# A blocking read on several job types can wait on one group only; it waits this long on
# each in turn, so that no type waits long behind another.
MULTI_TYPE_BLOCK_MS = 100
AUTOCLAIM_BATCH = 500
RANGE_BATCH = 1000


class RedisStreams:
    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()
        self._rotation = 0

    @classmethod
    def from_url(cls, url: str, prefix: str = "") -> RedisStreams:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=30,
            health_check_interval=30,
        )
        return cls(client, Keys(prefix))

    def close(self) -> None:
        self.client.close()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise StreamsUnavailable(f"redis error: {exc}") from exc

    def ping(self) -> bool:
        with self._guard():
            return bool(self.client.ping())

    # -- producing ------------------------------------------------------------------------

    def publish(self, dispatches: Sequence[Dispatch]) -> None:
        if not dispatches:
            return
        with self._guard():
            pipe = self.client.pipeline(transaction=False)
            # Stamp the epoch as a publisher too: an engine that finds the stamp knows these
            # messages reached this Redis, and so republishes nothing on a fresh start.
            pipe.set(self.keys.redis_epoch(), new_token(), nx=True)
            for d in dispatches:
                pipe.xadd(self.keys.stream(d.type, d.priority), _fields(d))
            pipe.execute()

    def dead_letter(self, dispatch: Dispatch, error: str) -> None:
        fields: dict[Any, Any] = {
            **_fields(dispatch),
            "error": error[:4000],
            "at": str(time.time()),
        }
        with self._guard():
            self.client.xadd(self.keys.dlq(dispatch.type), fields)

    def epoch(self) -> str:
        with self._guard():
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.keys.redis_epoch(), new_token(), nx=True)
            pipe.get(self.keys.redis_epoch())
            _, current = pipe.execute()
        return str(current)

    # -- consuming ------------------------------------------------------------------------

    def ensure_groups(self, job_types: Sequence[str]) -> None:
        with self._guard():
            for job_type in job_types:
                for stream, _ in self.keys.streams(job_type):
                    try:
                        # From id 0: messages published before any worker existed count too.
                        self.client.xgroup_create(
                            stream, self.keys.group(job_type), id="0", mkstream=True
                        )
                    except redis.ResponseError as exc:
                        if "BUSYGROUP" not in str(exc):
                            raise

    def read(
        self, consumer: str, job_types: Sequence[str], count: int, block_ms: int
    ) -> list[Delivery]:
        with self._guard():
            try:
                deliveries = self._read_now(consumer, job_types, count)
                if deliveries or block_ms <= 0:
                    return deliveries
                return self._read_blocking(consumer, job_types, count, block_ms)
            except redis.ResponseError as exc:
                if not _missing_group(exc):
                    raise
                # Redis lost the group (restart, FLUSHALL): make it again and read next time.
                logger.warning(
                    "consumer group missing; recreating it", extra={"event": "group_recreated"}
                )
                self.ensure_groups(job_types)
                return []

    def _streams_of(self, job_type: str) -> dict[Any, Any]:
        streams: dict[Any, Any] = {}
        for stream, _ in self.keys.streams(job_type):
            streams[stream] = ">"
        return streams

    def _read_now(self, consumer: str, job_types: Sequence[str], count: int) -> list[Delivery]:
        pipe = self.client.pipeline(transaction=False)
        for job_type in job_types:
            pipe.xreadgroup(
                self.keys.group(job_type), consumer, self._streams_of(job_type), count=count
            )
        replies = pipe.execute()
        return self._deliveries(replies)

    def _read_blocking(
        self, consumer: str, job_types: Sequence[str], count: int, block_ms: int
    ) -> list[Delivery]:
        if len(job_types) > 1:
            block_ms = min(block_ms, MULTI_TYPE_BLOCK_MS)
        self._rotation = (self._rotation + 1) % len(job_types)
        job_type = job_types[self._rotation]
        reply = self.client.xreadgroup(
            self.keys.group(job_type),
            consumer,
            self._streams_of(job_type),
            count=count,
            block=block_ms,
        )
        return self._deliveries([reply])

    def _deliveries(self, replies: list[Any]) -> list[Delivery]:
        deliveries = []
        malformed: list[tuple[str, str, str]] = []
        for reply in replies:
            for stream, entries in reply or []:
                parsed = self.keys.parse_stream(stream)
                assert parsed is not None, stream
                job_type, band = parsed
                for entry_id, fields in entries:
                    if not fields:  # an entry deleted while pending; the reclaimer handles it
                        continue
                    try:
                        dispatch = Dispatch(
                            str(fields["job_id"]), job_type, band, int(fields["attempt"])
                        )
                    except (KeyError, ValueError):
                        malformed.append((stream, job_type, entry_id))
                        continue
                    deliveries.append(Delivery(stream, entry_id, dispatch))
        if malformed:
            # Not ours (written by something else): drop it, keep the rest of the batch.
            logger.error(
                "dropping %d malformed stream entries: %s",
                len(malformed),
                [m[2] for m in malformed],
                extra={"event": "malformed_entry"},
            )
            pipe = self.client.pipeline(transaction=False)
            for stream, job_type, entry_id in malformed:
                pipe.xack(stream, self.keys.group(job_type), entry_id)
                pipe.xdel(stream, entry_id)
            pipe.execute()
        deliveries.sort(key=lambda d: d.dispatch.priority)
        return deliveries

    # -- recovery -------------------------------------------------------------------------

    def job_streams(self) -> list[tuple[str, str, Priority]]:
        found = []
        root = f"{self.keys.prefix}{STREAM_ROOT}"
        with self._guard():
            for key in self.client.scan_iter(match=f"{root}*", count=1000, _type="stream"):
                parsed = self.keys.parse_stream(key)
                if parsed is not None:
                    found.append((key, *parsed))
        return sorted(found)

    def autoclaim(
        self, stream: str, job_type: str, consumer: str, min_idle_ms: int
    ) -> tuple[list[Delivery], int]:
        group = self.keys.group(job_type)
        claimed: list[Delivery] = []
        deleted = 0
        cursor = "0-0"
        with self._guard():
            while True:
                try:
                    reply = self.client.xautoclaim(
                        stream, group, consumer, min_idle_ms, start_id=cursor, count=AUTOCLAIM_BATCH
                    )
                except redis.ResponseError as exc:
                    if not _missing_group(exc):
                        raise
                    return claimed, deleted  # no group yet: no consumer, nothing pending
                cursor, entries = reply[0], reply[1]
                claimed += self._deliveries([[[stream, [e for e in entries if e[1]]]]])
                gone = list(reply[2]) if len(reply) > 2 else []
                if any(not fields for _, fields in entries):
                    # Redis 6.2 names no deleted entries: find them among our pending ones.
                    gone += self._deleted_pending(stream, group, consumer)
                if gone:
                    self.client.xack(stream, group, *gone)
                    deleted += len(gone)
                if cursor in ("0-0", b"0-0"):
                    return claimed, deleted

    def _deleted_pending(self, stream: str, group: str, consumer: str) -> list[str]:
        pending: Any = self.client.xpending_range(
            stream, group, min="-", max="+", count=AUTOCLAIM_BATCH, consumername=consumer
        )
        return [
            p["message_id"]
            for p in pending
            if not self.client.xrange(stream, p["message_id"], p["message_id"])
        ]

    def pending_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for stream, job_type, _ in self.job_streams():
            with self._guard():
                try:
                    summary: Any = self.client.xpending(stream, self.keys.group(job_type))
                except redis.ResponseError as exc:
                    if not _missing_group(exc):
                        raise
                    continue
            counts[stream] = int(summary["pending"])
        return counts

    def stream_of(self, dispatch: Dispatch) -> str:
        return self.keys.stream(dispatch.type, dispatch.priority)

    def dispatches_in(self, stream: str) -> set[tuple[str, int]]:
        found: set[tuple[str, int]] = set()
        start = "-"
        with self._guard():
            while True:
                entries: Any = self.client.xrange(stream, min=start, max="+", count=RANGE_BATCH)
                for _, fields in entries:
                    if fields and str(fields.get("attempt", "")).isdigit():
                        found.add((fields.get("job_id"), int(fields["attempt"])))
                if len(entries) < RANGE_BATCH:
                    return found
                start = f"({entries[-1][0]}"  # exclusive: after the last one seen

    def prune_consumers(self, job_type: str, idle_ms: int) -> int:
        pruned = 0
        group = self.keys.group(job_type)
        with self._guard():
            for stream, _ in self.keys.streams(job_type):
                try:
                    consumers = self.client.xinfo_consumers(stream, group)
                except redis.ResponseError:
                    continue  # no such stream or group
                for c in consumers:
                    # Only a consumer with nothing pending: its messages were claimed first.
                    if c["pending"] == 0 and c["idle"] >= idle_ms:
                        self.client.xgroup_delconsumer(stream, group, c["name"])
                        pruned += 1
        return pruned

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        by_stream: dict[str, tuple[str, list[str]]] = {}
        for d in deliveries:
            by_stream.setdefault(d.stream, (self.keys.group(d.dispatch.type), []))[1].append(
                d.entry_id
            )
        with self._guard():
            pipe = self.client.pipeline(transaction=False)
            for stream, (group, entry_ids) in by_stream.items():
                pipe.xack(stream, group, *entry_ids)
                # Acked entries are deleted, so a stream holds only undelivered and pending ones.
                pipe.xdel(stream, *entry_ids)
            pipe.execute()

    def touch(self, consumer: str, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        with self._guard():
            pipe = self.client.pipeline(transaction=False)
            for d in deliveries:
                pipe.xclaim(
                    d.stream,
                    self.keys.group(d.dispatch.type),
                    consumer,
                    0,
                    [d.entry_id],
                    justid=True,
                )
            pipe.execute()

    def requeue(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        with self._guard():
            pipe = self.client.pipeline(transaction=True)
            for d in deliveries:
                pipe.xadd(d.stream, _fields(d.dispatch))
                pipe.xack(d.stream, self.keys.group(d.dispatch.type), d.entry_id)
                pipe.xdel(d.stream, d.entry_id)
            pipe.execute()


def _fields(dispatch: Dispatch) -> dict[Any, Any]:
    return {"job_id": dispatch.job_id, "attempt": str(dispatch.attempt)}


def _missing_group(exc: redis.ResponseError) -> bool:
    """Redis says NOGROUP when the group or its stream is gone; fakeredis says the key must
    exist when the stream is gone."""
    message = str(exc)
    return "NOGROUP" in message or "requires the key to exist" in message

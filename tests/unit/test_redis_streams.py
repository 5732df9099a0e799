"""`RedisStreams` on fakeredis: publish, read, ack, requeue, group recovery, DLQ, epoch."""

from __future__ import annotations

from typing import cast

import fakeredis
import pytest

from orchestrator.jobs import Dispatch, Priority
from orchestrator.streams import Delivery, Keys, RedisStreams

T = "inference_jobs"
GROUP = "cg:inference_jobs"
NORMAL_STREAM = "stream:orchestrator:inference_jobs"
CRITICAL_STREAM = "stream:orchestrator:inference_jobs:critical"
LOW_STREAM = "stream:orchestrator:inference_jobs:low"


def dispatch(job_id: str, priority: Priority = Priority.NORMAL, attempt: int = 1) -> Dispatch:
    return Dispatch(job_id, T, priority, attempt)


def read_all(
    streams: RedisStreams, consumer: str = "c1", types: list[str] | None = None
) -> list[Delivery]:
    return streams.read(consumer, types or [T], count=100, block_ms=0)


def entries(client: fakeredis.FakeRedis, stream: str) -> list[dict[str, str]]:
    """The fields of every entry of a stream, oldest first."""
    return [fields for _, fields in cast(list[tuple[str, dict[str, str]]], client.xrange(stream))]


def pending_count(client: fakeredis.FakeRedis, stream: str, group: str = GROUP) -> int:
    return int(client.xpending(stream, group)["pending"])


def test_publish__puts_each_dispatch_on_its_band_stream(
    streams: RedisStreams, redis_client: fakeredis.FakeRedis
) -> None:
    streams.publish(
        [
            dispatch("job-n1"),
            dispatch("job-c1", Priority.CRITICAL),
            dispatch("job-n2", attempt=3),
            dispatch("job-l1", Priority.LOW),
        ]
    )
    assert redis_client.xlen(NORMAL_STREAM) == 2
    assert redis_client.xlen(CRITICAL_STREAM) == 1
    assert redis_client.xlen(LOW_STREAM) == 1
    assert redis_client.xlen("stream:orchestrator:inference_jobs:high") == 0
    assert entries(redis_client, NORMAL_STREAM) == [
        {"job_id": "job-n1", "attempt": "1"},
        {"job_id": "job-n2", "attempt": "3"},
    ]


def test_publish__nothing_to_publish_writes_nothing(
    streams: RedisStreams, redis_client: fakeredis.FakeRedis
) -> None:
    streams.publish([])
    assert redis_client.keys("*") == []


def test_publish__prefix_applies_to_stream_names(redis_client: fakeredis.FakeRedis) -> None:
    RedisStreams(redis_client, Keys("ci:")).publish([dispatch("job-1")])
    assert redis_client.xlen(f"ci:{NORMAL_STREAM}") == 1
    assert redis_client.xlen(NORMAL_STREAM) == 0


def test_read__returns_most_urgent_band_first_with_dispatch_fields(
    streams: RedisStreams,
) -> None:
    streams.ensure_groups([T])
    streams.publish(
        [
            dispatch("job-low", Priority.LOW),
            dispatch("job-normal", attempt=2),
            dispatch("job-high", Priority.HIGH),
            dispatch("job-critical", Priority.CRITICAL),
        ]
    )
    deliveries = read_all(streams)
    assert [d.dispatch for d in deliveries] == [
        Dispatch("job-critical", T, Priority.CRITICAL, 1),
        Dispatch("job-high", T, Priority.HIGH, 1),
        Dispatch("job-normal", T, Priority.NORMAL, 2),
        Dispatch("job-low", T, Priority.LOW, 1),
    ]
    assert [d.stream for d in deliveries] == [
        CRITICAL_STREAM,
        "stream:orchestrator:inference_jobs:high",
        NORMAL_STREAM,
        LOW_STREAM,
    ]
    assert all(d.entry_id for d in deliveries)


def test_read__messages_published_before_the_group_existed_are_delivered(
    streams: RedisStreams,
) -> None:
    streams.publish([dispatch("early")])
    streams.ensure_groups([T])
    assert [d.dispatch.job_id for d in read_all(streams)] == ["early"]


def test_read__each_message_goes_to_one_consumer_once(streams: RedisStreams) -> None:
    streams.ensure_groups([T])
    streams.publish([dispatch("job-1"), dispatch("job-2")])
    first = streams.read("c1", [T], count=1, block_ms=0)
    second = streams.read("c2", [T], count=10, block_ms=0)
    assert [d.dispatch.job_id for d in first] == ["job-1"]
    assert [d.dispatch.job_id for d in second] == ["job-2"]
    assert read_all(streams, "c3") == []


def test_read__several_job_types_at_once(streams: RedisStreams) -> None:
    streams.ensure_groups([T, "preloads"])
    streams.publish([dispatch("inf-1"), Dispatch("pre-1", "preloads", Priority.CRITICAL, 1)])
    deliveries = read_all(streams, types=[T, "preloads"])
    assert [(d.dispatch.job_id, d.dispatch.type) for d in deliveries] == [
        ("pre-1", "preloads"),
        ("inf-1", T),
    ]


def test_ack__removes_entries_from_stream_and_pending_list(
    streams: RedisStreams, redis_client: fakeredis.FakeRedis
) -> None:
    streams.ensure_groups([T])
    streams.publish([dispatch("job-1"), dispatch("job-2"), dispatch("job-3", Priority.CRITICAL)])
    deliveries = read_all(streams)
    assert pending_count(redis_client, NORMAL_STREAM) == 2
    assert pending_count(redis_client, CRITICAL_STREAM) == 1

    streams.ack(deliveries[:2])  # the critical one and job-1

    assert redis_client.xlen(CRITICAL_STREAM) == 0
    assert pending_count(redis_client, CRITICAL_STREAM) == 0
    assert [f["job_id"] for f in entries(redis_client, NORMAL_STREAM)] == ["job-2"]
    assert pending_count(redis_client, NORMAL_STREAM) == 1


def test_requeue__message_is_delivered_again_to_another_consumer(
    streams: RedisStreams, redis_client: fakeredis.FakeRedis
) -> None:
    streams.ensure_groups([T])
    streams.publish([dispatch("job-1", Priority.HIGH, attempt=2)])
    [delivery] = read_all(streams, "c1")

    streams.requeue([delivery])

    stream = "stream:orchestrator:inference_jobs:high"
    assert pending_count(redis_client, stream) == 0
    assert redis_client.xlen(stream) == 1
    [again] = read_all(streams, "c2")
    assert again.dispatch == delivery.dispatch
    assert again.entry_id != delivery.entry_id
    assert again.stream == stream


def test_read__destroyed_group_is_recreated_instead_of_raising(
    streams: RedisStreams, redis_client: fakeredis.FakeRedis
) -> None:
    streams.ensure_groups([T])
    streams.publish([dispatch("job-1")])
    for stream, _ in Keys().streams(T):
        redis_client.xgroup_destroy(stream, GROUP)

    assert read_all(streams) == []

    assert [g["name"] for g in redis_client.xinfo_groups(NORMAL_STREAM)] == [GROUP]
    # The new group starts from id 0, so the message already in the stream is not lost.
    assert [d.dispatch.job_id for d in read_all(streams)] == ["job-1"]


# fakeredis 2.40 answers XREADGROUP on a missing stream key with "ERR The XGROUP subcommand
# requires the key to exist" where Redis answers "NOGROUP No such key ...": both must recover.
def test_read__missing_group_after_flushall_is_recreated_instead_of_raising(
    streams: RedisStreams, redis_client: fakeredis.FakeRedis
) -> None:
    streams.ensure_groups([T])
    streams.publish([dispatch("lost")])
    redis_client.flushall()

    assert read_all(streams) == []

    assert [g["name"] for g in redis_client.xinfo_groups(NORMAL_STREAM)] == [GROUP]
    streams.publish([dispatch("after-flush")])
    assert [d.dispatch.job_id for d in read_all(streams)] == ["after-flush"]


def test_read__before_any_group_exists_creates_groups(
    streams: RedisStreams, redis_client: fakeredis.FakeRedis
) -> None:
    assert read_all(streams) == []
    for stream, _ in Keys().streams(T):
        assert [g["name"] for g in redis_client.xinfo_groups(stream)] == [GROUP]


def test_ensure_groups__is_idempotent(
    streams: RedisStreams, redis_client: fakeredis.FakeRedis
) -> None:
    streams.ensure_groups([T])
    streams.ensure_groups([T])
    assert len(redis_client.xinfo_groups(NORMAL_STREAM)) == 1


def test_dead_letter__writes_to_the_dlq_stream(
    streams: RedisStreams, redis_client: fakeredis.FakeRedis
) -> None:
    streams.dead_letter(dispatch("job-9", attempt=3), "RuntimeError: out of memory")
    [fields] = entries(redis_client, "stream:orchestrator:inference_jobs:dlq")
    assert fields["job_id"] == "job-9"
    assert fields["attempt"] == "3"
    assert fields["error"] == "RuntimeError: out of memory"
    assert float(fields["at"]) > 0
    assert redis_client.xlen(NORMAL_STREAM) == 0


def test_dead_letter__long_error_is_truncated(
    streams: RedisStreams, redis_client: fakeredis.FakeRedis
) -> None:
    streams.dead_letter(dispatch("job-9"), "x" * 10_000)
    [fields] = entries(redis_client, "stream:orchestrator:inference_jobs:dlq")
    assert len(fields["error"]) == 4000


def test_epoch__set_once_and_then_stable(streams: RedisStreams) -> None:
    token = streams.epoch()
    assert len(token) == 32
    assert streams.epoch() == token


def test_epoch__flushed_redis_gets_a_new_epoch(
    streams: RedisStreams, redis_client: fakeredis.FakeRedis
) -> None:
    before = streams.epoch()
    redis_client.flushall()
    after = streams.epoch()
    assert after != before


def test_epoch__publish_stamps_it_first(
    streams: RedisStreams, redis_client: fakeredis.FakeRedis
) -> None:
    streams.publish([dispatch("job-1")])
    stamped = redis_client.get("orchestrator:redis_epoch")
    assert stamped is not None
    assert streams.epoch() == stamped
    streams.publish([dispatch("job-2")])
    assert redis_client.get("orchestrator:redis_epoch") == stamped


def test_epoch__key_carries_the_prefix(redis_client: fakeredis.FakeRedis) -> None:
    token = RedisStreams(redis_client, Keys("ci:")).epoch()
    assert redis_client.get("ci:orchestrator:redis_epoch") == token
    assert redis_client.get("orchestrator:redis_epoch") is None


@pytest.mark.parametrize("prefix", ["", "ci:"])
def test_ping__answers_true(redis_client: fakeredis.FakeRedis, prefix: str) -> None:
    assert RedisStreams(redis_client, Keys(prefix)).ping() is True

"""The job vocabulary: backoff, request hashing, priority bands."""

from __future__ import annotations

import random

import pytest

from orchestrator.jobs import JOB_TYPE_PATTERN, Priority, request_hash, retry_delay_s


class _TopOfRange(random.Random):
    """An rng whose jitter is always the top of the range, to read the ceiling exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


class _BottomOfRange(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


@pytest.mark.parametrize("seed", [0, 1, 42, 1234])
def test_retry_delay_s__stays_within_upper_half_of_ceiling(seed: int) -> None:
    rng = random.Random(seed)
    base_s, max_s = 1.5, 60.0
    for attempt in range(1, 12):
        ceiling = min(max_s, base_s * 2 ** (attempt - 1))
        for _ in range(50):
            delay = retry_delay_s(attempt, base_s, max_s, rng)
            assert 0.5 * ceiling <= delay <= ceiling, (attempt, delay)


def test_retry_delay_s__ceiling_doubles_per_attempt_then_caps_at_max() -> None:
    top = _TopOfRange(0)
    ceilings = [retry_delay_s(attempt, 1.0, 30.0, top) for attempt in range(1, 9)]
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_retry_delay_s__floor_is_half_the_ceiling() -> None:
    bottom = _BottomOfRange(0)
    floors = [retry_delay_s(attempt, 2.0, 10.0, bottom) for attempt in range(1, 6)]
    assert floors == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_retry_delay_s__later_attempts_never_wait_less_than_earlier_ones() -> None:
    rng = random.Random(7)
    # Each band [c/2, c] starts where the previous one ends, so draws never go down.
    delays = [retry_delay_s(attempt, 1.0, 1000.0, rng) for attempt in range(1, 11)]
    assert delays == sorted(delays)
    assert delays[-1] >= 256.0  # 2**9 / 2: exponential, not linear


def test_retry_delay_s__attempt_zero_uses_base() -> None:
    assert retry_delay_s(0, 3.0, 100.0, _TopOfRange(0)) == 3.0


def test_retry_delay_s__same_seed_gives_same_delays() -> None:
    first = [retry_delay_s(n, 1.0, 100.0, random.Random(99)) for n in range(1, 6)]
    second = [retry_delay_s(n, 1.0, 100.0, random.Random(99)) for n in range(1, 6)]
    assert first == second


def test_request_hash__independent_of_key_order() -> None:
    one = {"type": "preloads", "payload": {"model": "m", "gpus": [0, 1]}, "priority": "high"}
    two = {"priority": "high", "payload": {"gpus": [0, 1], "model": "m"}, "type": "preloads"}
    assert request_hash(one) == request_hash(two)


def test_request_hash__differs_for_different_bodies() -> None:
    base = {"type": "preloads", "payload": {"model": "m"}}
    assert request_hash(base) != request_hash({"type": "preloads", "payload": {"model": "n"}})
    assert request_hash(base) != request_hash({**base, "priority": "low"})
    # List order is meaningful, unlike key order.
    assert request_hash({"x": [1, 2]}) != request_hash({"x": [2, 1]})


def test_request_hash__is_a_sha256_hex_digest() -> None:
    digest = request_hash({"a": 1})
    assert len(digest) == 64
    assert int(digest, 16) >= 0


@pytest.mark.parametrize("priority", list(Priority))
def test_priority__label_round_trips_through_from_label(priority: Priority) -> None:
    assert Priority.from_label(priority.label) is priority


def test_priority__labels_are_lowercase_names() -> None:
    assert [p.label for p in Priority] == ["critical", "high", "normal", "low"]
    assert Priority.from_label("HIGH") is Priority.HIGH


def test_priority__lower_value_is_more_urgent() -> None:
    assert sorted([Priority.LOW, Priority.CRITICAL, Priority.NORMAL, Priority.HIGH]) == [
        Priority.CRITICAL,
        Priority.HIGH,
        Priority.NORMAL,
        Priority.LOW,
    ]


def test_priority__unknown_label_raises_key_error() -> None:
    with pytest.raises(KeyError):
        Priority.from_label("urgent")


@pytest.mark.parametrize("job_type", ["inference_jobs", "preloads", "a", "t2"])
def test_job_type_pattern__accepts_lowercase_identifiers(job_type: str) -> None:
    assert JOB_TYPE_PATTERN.match(job_type)


@pytest.mark.parametrize("job_type", ["", "Inference", "2fast", "a:b", "a-b", "a" * 65])
def test_job_type_pattern__rejects_other_names(job_type: str) -> None:
    assert not JOB_TYPE_PATTERN.match(job_type)

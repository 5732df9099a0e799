"""Identifiers: UUIDv7 job ids and fencing tokens."""

from __future__ import annotations

import types
import uuid

import pytest

from orchestrator import ids


def test_new_job_id__is_uuid_version_7_with_rfc_variant() -> None:
    for _ in range(100):
        value = uuid.UUID(ids.new_job_id())
        assert value.version == 7
        assert value.variant == uuid.RFC_4122


def test_new_job_id__is_canonical_lowercase_text() -> None:
    job_id = ids.new_job_id()
    assert len(job_id) == 36
    assert job_id == str(uuid.UUID(job_id))


def test_new_job_id__leading_48_bits_are_unix_milliseconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ms = 1_767_268_800_123  # 2026-01-01T12:00:00.123Z
    monkeypatch.setattr(ids, "time", types.SimpleNamespace(time_ns=lambda: ms * 1_000_000 + 999))
    assert uuid.UUID(ids.new_job_id()).int >> 80 == ms


def test_new_job_id__ids_from_later_milliseconds_sort_after_earlier_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now_ms = [1_767_268_800_000]
    monkeypatch.setattr(ids, "time", types.SimpleNamespace(time_ns=lambda: now_ms[0] * 1_000_000))
    generated = []
    for _ in range(200):
        generated.append(ids.new_job_id())
        now_ms[0] += 1
    assert sorted(generated) == generated
    assert len(set(generated)) == len(generated)


def test_new_job_id__ids_within_one_millisecond_are_distinct(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        ids, "time", types.SimpleNamespace(time_ns=lambda: 1_767_268_800_000_000_000)
    )
    generated = {ids.new_job_id() for _ in range(1000)}
    assert len(generated) == 1000


def test_new_token__is_32_lowercase_hex_chars() -> None:
    token = ids.new_token()
    assert len(token) == 32
    assert set(token) <= set("0123456789abcdef")


def test_new_token__is_unique() -> None:
    tokens = {ids.new_token() for _ in range(1000)}
    assert len(tokens) == 1000

"""Redis key and group names, which other programs depend on."""

from __future__ import annotations

import pytest

from orchestrator.jobs import Priority
from orchestrator.streams import Keys


def test_stream__normal_band_is_the_bare_type_stream() -> None:
    assert Keys().stream("inference_jobs") == "stream:orchestrator:inference_jobs"
    assert Keys().stream("preloads", Priority.NORMAL) == "stream:orchestrator:preloads"


@pytest.mark.parametrize(
    ("priority", "suffix"),
    [(Priority.CRITICAL, ":critical"), (Priority.HIGH, ":high"), (Priority.LOW, ":low")],
)
def test_stream__other_bands_carry_their_label(priority: Priority, suffix: str) -> None:
    assert (
        Keys().stream("inference_jobs", priority) == f"stream:orchestrator:inference_jobs{suffix}"
    )


def test_streams__lists_every_band_most_urgent_first() -> None:
    assert Keys().streams("t") == [
        ("stream:orchestrator:t:critical", Priority.CRITICAL),
        ("stream:orchestrator:t:high", Priority.HIGH),
        ("stream:orchestrator:t", Priority.NORMAL),
        ("stream:orchestrator:t:low", Priority.LOW),
    ]


def test_dlq__is_the_type_stream_with_dlq_suffix() -> None:
    assert Keys().dlq("inference_jobs") == "stream:orchestrator:inference_jobs:dlq"


def test_group__is_cg_and_type() -> None:
    assert Keys.group("preloads") == "cg:preloads"
    assert Keys("ignored:").group("preloads") == "cg:preloads"


def test_prefix__applies_to_every_key_but_not_the_group() -> None:
    keys = Keys("test1:")
    assert keys.stream("t") == "test1:stream:orchestrator:t"
    assert keys.stream("t", Priority.HIGH) == "test1:stream:orchestrator:t:high"
    assert keys.dlq("t") == "test1:stream:orchestrator:t:dlq"
    assert keys.redis_epoch() == "test1:orchestrator:redis_epoch"
    assert all(name.startswith("test1:") for name, _ in keys.streams("t"))
    assert keys.group("t") == "cg:t"


def test_redis_epoch__without_prefix() -> None:
    assert Keys().redis_epoch() == "orchestrator:redis_epoch"

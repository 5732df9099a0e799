"""The operator's input limits (settings), checked where a request enters a service.

The request schemas (`orchestrator.api.schemas`, ...) hold the absolute bounds: what the
columns can store and the stream key rules, published in the OpenAPI schema. The settings
here can only narrow them, so they are read at run time and checked by the services. A
setting past what is storable, or one that contradicts another, is refused at start (the
settings' field bounds and `Settings._limits_consistent`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from orchestrator.errors import InvalidRequest
from orchestrator.models import PRELOAD_JOB_TYPE

if TYPE_CHECKING:
    from orchestrator.settings import Settings

# The longest anything may be scheduled ahead, whatever ORCH_MAX_DELAY_S says (ten years).
MAX_DELAY_S = 3660 * 86400.0

# The most jobs one submit_batch may hold, whatever ORCH_MAX_BATCH_SIZE says: the request
# schema's bound, checked before any job in it is validated.
MAX_BATCH_SIZE = 100_000

# Job types the product submits itself: always allowed, whatever ORCH_JOB_TYPE_PATTERN says.
BUILTIN_JOB_TYPES = frozenset({PRELOAD_JOB_TYPE})


def compile_job_type_pattern(pattern: str) -> re.Pattern[str]:
    """ORCH_JOB_TYPE_PATTERN compiled; a ValueError that says why when it is unusable. The
    stream key rules (`JOB_TYPE_PATTERN`) apply as well, so the setting can only narrow them."""
    if not pattern:
        raise ValueError("job_type_pattern is empty")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"job_type_pattern is not a regular expression: {exc}") from None


class InputLimits:
    """The limits of one deployment's settings, as checks that raise `InvalidRequest`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.job_type_pattern = compile_job_type_pattern(settings.job_type_pattern)

    def check_job_types(self, types: Iterable[str], field: str = "type") -> None:
        """Each type matches ORCH_JOB_TYPE_PATTERN (the schema already enforced the stream
        key rules, so a type that passes both is a safe stream name)."""
        for job_type in types:
            if job_type in BUILTIN_JOB_TYPES:
                continue
            if not self.job_type_pattern.fullmatch(job_type):
                raise InvalidRequest(
                    f"{field} {job_type!r} does not match the job type pattern "
                    f"{self.settings.job_type_pattern}",
                    limit="job_type_pattern",
                )

    def check_idempotency_key(self, key: str | None) -> None:
        limit = self.settings.max_idempotency_key_length
        if key is not None and len(key) > limit:
            raise InvalidRequest(
                f"idempotency_key is {len(key)} characters; the limit is {limit}",
                limit="max_idempotency_key_length",
            )

    def check_schedule(self, available_at: datetime, now: datetime) -> None:
        """A job runs within ORCH_MAX_DELAY_S of its submit (run_at or delay_s)."""
        limit = self.settings.max_delay_s
        if available_at - now > timedelta(seconds=limit):
            raise InvalidRequest(
                f"the job would wait more than {limit:g} s (run_at or delay_s)",
                limit="max_delay_s",
            )

    def check_names(self, **names: str | None) -> None:
        """Agent, operation and node names are at most ORCH_MAX_NAME_LENGTH characters, with
        no control characters: they go into logs, metrics labels and the CLI's tables, where
        a newline or NUL would forge or cut a line."""
        limit = self.settings.max_name_length
        for field, value in names.items():
            if value is None:
                continue
            if len(value) > limit:
                raise InvalidRequest(
                    f"{field} is {len(value)} characters; the limit is {limit}",
                    limit="max_name_length",
                )
            if any(unicodedata.category(c) == "Cc" for c in value):
                raise InvalidRequest(f"{field} holds a control character", limit="printable")

    def check_preload_count(self, count: int) -> None:
        limit = self.settings.max_preload_models
        if count > limit:
            raise InvalidRequest(
                f"a preload names at most {limit} models", limit="max_preload_models"
            )

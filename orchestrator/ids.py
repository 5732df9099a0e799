"""Identifiers: time-ordered, so new rows land at the end of the primary-key index."""

from __future__ import annotations

import os
import time
import uuid


def new_job_id() -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def new_token() -> str:
    """An unguessable token (a claim's fencing token, a worker id suffix)."""
    return os.urandom(16).hex()

"""The delivery boundary."""

from __future__ import annotations

from orchestrator.streams.base import Delivery, Streams
from orchestrator.streams.keys import Keys
from orchestrator.streams.redis_streams import RedisStreams

__all__ = ["Delivery", "Keys", "RedisStreams", "Streams"]

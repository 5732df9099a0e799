"""The worker runtime: handlers, their context, and the worker loop."""

from __future__ import annotations

from workers.context import GpuFault, GpuOutOfMemory, JobCancelled, JobContext, JobTimeout
from workers.registry import HandlerRegistry, handler

__all__ = [
    "GpuFault",
    "GpuOutOfMemory",
    "HandlerRegistry",
    "JobCancelled",
    "JobContext",
    "JobTimeout",
    "handler",
]

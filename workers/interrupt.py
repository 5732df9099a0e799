"""Stopping a handler's thread from outside, as Dramatiq's time limits do.

CPython can raise an exception asynchronously in another thread. It lands at the next
bytecode, so pure-Python handlers stop at once; one blocked in C code (a CUDA call, a
socket read without a timeout) stops when that call returns. Handlers that can block
should also watch `ctx.cancelled`.
"""

from __future__ import annotations

import ctypes

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc


def raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Raise `exc_type` in the thread; True if that thread exists."""
    return int(_set_async_exc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))) == 1


def clear_in_thread(thread_id: int) -> None:
    """Withdraw an exception raised by `raise_in_thread` that has not landed yet."""
    _set_async_exc(ctypes.c_ulong(thread_id), None)

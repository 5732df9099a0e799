"""Child processes that must not outlive their parent."""

from __future__ import annotations

import ctypes
import logging
import signal

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Linux: have the kernel send `sig` to this process when its parent dies, so a pool
    worker or an embedded Redis does not outlive an `orchestrator up` killed with SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
    except (OSError, AttributeError):
        logger.debug("prctl(PR_SET_PDEATHSIG) is not available here")

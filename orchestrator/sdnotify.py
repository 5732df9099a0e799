"""A tiny sd_notify client: tell systemd that this process is ready, stopping, and alive.

systemd gives a `Type=notify` service the address of a unix datagram socket in
`NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace), and, when the unit sets
`WatchdogSec=`, the timeout in `WATCHDOG_USEC`. The process sends newline-separated
`KEY=value` assignments there: `READY=1` once it serves, `STOPPING=1` when it begins to
stop, `STATUS=...` for `systemctl status`, and `WATCHDOG=1` at least once per timeout, or
systemd kills and restarts it.

A `Watchdog` thread sends `WATCHDOG=1` every half timeout, but only while a liveness check
passes (the serve process's event loop answers, a worker's monitor heartbeats, a node
supervisor's loop turns): a process that is alive but hung stops feeding, and systemd
restarts it. Without `NOTIFY_SOCKET` (not under systemd) everything here does nothing.

No dependency: libsystemd's protocol is one datagram per message. See sd_notify(3).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, MutableMapping
from types import FrameType

logger = logging.getLogger(__name__)

SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"

# How often a Watchdog asks whether the process is ready yet (READY=1 goes out this late).
READY_POLL_S = 0.1

Check = Callable[[], bool]
_Handler = Callable[[int, FrameType | None], object]


class Notifier:
    """Sends notifications to systemd; every method is a no-op when `address` is None.

    Sending never raises: systemd gone (a unit stopped under us, a test) is logged once."""

    def __init__(self, address: str | None, *, watchdog_s: float | None = None) -> None:
        if address is not None and not address.startswith(("/", "@")):
            # e.g. systemd 254's `vsock:CID:PORT`, for VMs: not one we speak.
            logger.warning(
                "NOTIFY_SOCKET %r is not a unix socket: not notifying systemd",
                address,
                extra={"event": "sd_notify_unsupported"},
            )
            address = None
        self.address = address
        self.watchdog_s = watchdog_s if address is not None else None
        self.is_stopping = False
        self._failed = False
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @classmethod
    def from_env(
        cls, environ: MutableMapping[str, str] | None = None, *, ignore: bool = False
    ) -> Notifier:
        """The notifier systemd set up for this process, if any.

        The variables are removed from the environment, so that child processes (a node
        supervisor's workers, a handler's subprocesses) do not speak for the unit: systemd
        takes notifications from the main process only and logs every other one.
        `ignore`: remove them without using them (this process is not the unit's main one).
        """
        env = os.environ if environ is None else environ
        address = env.pop(SOCKET_ENV, None)
        usec = env.pop(WATCHDOG_USEC_ENV, None)
        pid = env.pop(WATCHDOG_PID_ENV, None)
        if ignore or not address:
            return cls(None)
        return cls(address, watchdog_s=_watchdog_s(usec, pid))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` assignments in one datagram; True when it was sent."""
        if self._sock is None or self.address is None:
            return False
        # The protocol is line-based: a newline inside a value would start a new assignment.
        data = "\n".join(" ".join(a.splitlines()) for a in assignments).encode()
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._sock.sendto(data, target)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                logger.warning(
                    "cannot notify systemd at %s (%s)",
                    self.address,
                    exc,
                    extra={"event": "sd_notify_failed"},
                )
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """The process begins to stop: systemd stops watching it (the watchdog) and gives it
        `TimeoutStopSec` to exit."""
        self.is_stopping = True
        return self.notify("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stale_after(self, period_s: float) -> float:
        """How old the last turn of a loop that turns every `period_s` may be before it
        counts as hung: half the watchdog timeout, and never less than three turns."""
        return max((self.watchdog_s or 0.0) / 2, 3 * period_s)

    def stopping_on_signals(self, *signums: int) -> None:
        """Send STOPPING=1 when one of `signums` arrives, then run the handler installed
        before (call this after the process installed its own)."""
        if not self.enabled:
            return
        for signum in signums:
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue  # default or ignored: the process does not handle it, nor do we

            def on_signal(num: int, frame: FrameType | None, previous: _Handler = previous) -> None:
                self.stopping(f"stopping (signal {num})")
                previous(num, frame)

            signal.signal(signum, on_signal)

    def watch(
        self,
        alive: Check,
        *,
        ready: Check | None = None,
        status: str | None = None,
        describe: Callable[[], str] | None = None,
    ) -> Watchdog:
        """Start a `Watchdog` (see there); a no-op one when systemd is not listening."""
        watchdog = Watchdog(self, alive, ready=ready, status=status, describe=describe)
        watchdog.start()
        return watchdog

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """A thread that, once `ready()` (READY=1, with `status`), sends WATCHDOG=1 every half
    watchdog timeout while `alive()` says the process works, and stops at STOPPING.

    A failing (or raising) check skips the ping: after `WatchdogSec` without one, systemd
    kills the process (`WatchdogSignal`, SIGABRT) and `Restart=` starts it again. A check
    that passes again resumes the pings. `describe`, if given, is sent as STATUS= whenever
    it changes, at each ping. Without `ready`, READY=1 is the caller's to send."""

    def __init__(
        self,
        notifier: Notifier,
        alive: Check,
        *,
        ready: Check | None = None,
        status: str | None = None,
        describe: Callable[[], str] | None = None,
    ) -> None:
        self.notifier = notifier
        self.interval_s = notifier.watchdog_s / 2 if notifier.watchdog_s else None
        self._alive = alive
        self._ready = ready
        self._status = status
        self._describe = describe
        self._described: str | None = None
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.notifier.enabled or (self._ready is None and self.interval_s is None):
            return
        self._thread = threading.Thread(target=self.run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self) -> None:
        if self._ready is not None:
            while not _passes(self._ready, "readiness"):
                if self._stop.wait(READY_POLL_S):
                    return
            self.notifier.ready(self._status)
        if self.interval_s is None:
            return  # no WatchdogSec=: READY=1 was all systemd wanted
        while not self._stop.wait(self.interval_s):
            if self.notifier.is_stopping:
                return  # systemd no longer watches a stopping service
            self.beat()

    def beat(self) -> bool:
        """One turn: ping if the process is alive; True when it pinged."""
        if not _passes(self._alive, "liveness"):
            if not self._failing:
                self._failing = True
                logger.error(
                    "liveness check failed: not feeding systemd's watchdog (it restarts the "
                    "process after WatchdogSec unless the check passes again)",
                    extra={"event": "watchdog_starved"},
                )
            return False
        if self._failing:
            self._failing = False
            logger.warning(
                "liveness check passes again: feeding the watchdog",
                extra={"event": "watchdog_fed_again"},
            )
        self.notifier.watchdog()
        if self._describe is not None:
            text = self._describe()
            if text != self._described:
                self._described = text
                self.notifier.status(text)
        return True


def recent(
    stamp: Callable[[], float | None],
    within_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Check:
    """A liveness check: True while `stamp()`, the monotonic time a loop records at each
    turn, is at most `within_s` old (False before the first turn)."""

    def check() -> bool:
        at = stamp()
        return at is not None and clock() - at <= within_s

    return check


def all_of(*checks: Check) -> Check:
    return lambda: all(check() for check in checks)


class LoopProbe:
    """The liveness of an asyncio event loop, asked from another thread: each call posts a
    callback to the loop and says whether the one posted by the previous call has run, so
    a loop blocked for a whole interval between two calls fails the check."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._answered = threading.Event()
        self._answered.set()

    def __call__(self) -> bool:
        alive = self._answered.is_set()
        self._answered.clear()
        try:
            self._loop.call_soon_threadsafe(self._answered.set)
        except RuntimeError:  # the loop is closed
            return False
        return alive


def _passes(check: Check, what: str) -> bool:
    try:
        return bool(check())
    except Exception:
        logger.exception("%s check raised", what, extra={"event": "watchdog_check_failed"})
        return False


def _status(text: str | None) -> list[str]:
    return [f"STATUS={text}"] if text else []


def _watchdog_s(usec: str | None, pid: str | None) -> float | None:
    """The watchdog timeout, when systemd set one for this very process."""
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec or "0")
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None

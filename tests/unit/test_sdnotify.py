"""orchestrator.sdnotify: notifications arrive on a real unix datagram socket, as systemd's
would receive them; the watchdog is fed only while the liveness check passes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from orchestrator.ids import new_token
from orchestrator.sdnotify import LoopProbe, Notifier, Watchdog, all_of, recent


class Listener:
    """The systemd end of NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address  # as systemd writes it into NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def recv(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def recv_until(self, line: str, timeout: float = 5.0) -> list[str]:
        """Messages up to and including the first that holds `line`."""
        seen = []
        while True:
            seen.append(self.recv(timeout))
            if line in seen[-1].split("\n"):
                return seen

    def pending(self) -> list[str]:
        """Every message that has arrived and not been read."""
        self.sock.setblocking(False)
        messages = []
        try:
            while True:
                messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return messages


@pytest.fixture
def listener() -> Iterator[Listener]:
    # A short folder of its own: a socket path must fit in 108 bytes, and tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="sdn-") as folder:
        sock = Listener(str(Path(folder) / "notify"))
        yield sock
        sock.sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    sock = Listener(f"@orchestrator-test-{new_token()[:12]}")
    yield sock
    sock.sock.close()


def notifier_for(listener: Listener, watchdog_usec: int | None = None) -> Notifier:
    env = {"NOTIFY_SOCKET": listener.address}
    if watchdog_usec is not None:
        env |= {"WATCHDOG_USEC": str(watchdog_usec), "WATCHDOG_PID": str(os.getpid())}
    return Notifier.from_env(env)


# -- the messages -----------------------------------------------------------------------------


def test_notifier__ready_status_and_stopping_arrive_on_a_socket_path(listener: Listener) -> None:
    notifier = notifier_for(listener)
    try:
        assert notifier.enabled
        assert notifier.ready("serving")
        assert listener.recv() == "READY=1\nSTATUS=serving"
        assert notifier.status("two\nlines")  # a newline would start a new assignment
        assert listener.recv() == "STATUS=two lines"
        assert not notifier.is_stopping
        assert notifier.stopping()
        assert listener.recv() == "STOPPING=1"
        assert notifier.is_stopping
        assert notifier.watchdog()
        assert listener.recv() == "WATCHDOG=1"
    finally:
        notifier.close()


def test_notifier__abstract_socket_address(abstract_listener: Listener) -> None:
    notifier = notifier_for(abstract_listener)
    try:
        assert notifier.ready()
        assert abstract_listener.recv() == "READY=1"
    finally:
        notifier.close()


def test_from_env__takes_the_variables_out_of_the_environment(listener: Listener) -> None:
    env = {
        "NOTIFY_SOCKET": listener.address,
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
        "OTHER": "kept",
    }
    notifier = Notifier.from_env(env)
    try:
        assert env == {"OTHER": "kept"}  # so child processes do not speak for the unit
        assert notifier.watchdog_s == 30.0
    finally:
        notifier.close()


def test_from_env__ignore_drops_the_variables_and_does_nothing(listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "30000000"}
    notifier = Notifier.from_env(env, ignore=True)
    assert env == {}
    assert not notifier.enabled
    assert not notifier.ready()
    assert listener.pending() == []


def test_from_env__a_watchdog_meant_for_another_process_is_not_ours(listener: Listener) -> None:
    env = {
        "NOTIFY_SOCKET": listener.address,
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid() + 1),
    }
    notifier = Notifier.from_env(env)
    try:
        assert notifier.enabled and notifier.watchdog_s is None
    finally:
        notifier.close()


@pytest.mark.parametrize("usec", ["0", "", "soon"])
def test_from_env__no_usable_watchdog_timeout(listener: Listener, usec: str) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": usec})
    try:
        assert notifier.watchdog_s is None
    finally:
        notifier.close()


def test_no_notify_socket__everything_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    watchdog = notifier.watch(lambda: True, ready=lambda: True)
    assert watchdog._thread is None  # no thread to feed nobody
    watchdog.stop()
    before = signal.getsignal(signal.SIGUSR1)
    notifier.stopping_on_signals(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) is before  # installs nothing


def test_notifier__an_address_that_is_not_a_unix_socket_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "sd_notify_unsupported" in [getattr(r, "event", None) for r in caplog.records]


def test_notifier__systemd_gone__sending_fails_quietly_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with tempfile.TemporaryDirectory(prefix="sdn-") as folder:
        notifier = Notifier(str(Path(folder) / "nobody"))
        try:
            assert not notifier.ready()
            assert not notifier.watchdog()
        finally:
            notifier.close()
    failures = [r for r in caplog.records if getattr(r, "event", None) == "sd_notify_failed"]
    assert len(failures) == 1


def test_stopping_on_signals__stopping_goes_out_then_the_process_handler_runs(
    listener: Listener,
) -> None:
    notifier = notifier_for(listener)
    handled: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        handled.append(signum)

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        notifier.stopping_on_signals(signal.SIGUSR1)
        signal.raise_signal(signal.SIGUSR1)
        assert listener.recv() == f"STOPPING=1\nSTATUS=stopping (signal {int(signal.SIGUSR1)})"
        assert handled == [signal.SIGUSR1]
        assert notifier.is_stopping
    finally:
        signal.signal(signal.SIGUSR1, previous)
        notifier.close()


def test_stale_after__half_the_watchdog_timeout_but_at_least_three_turns(
    listener: Listener,
) -> None:
    notifier = notifier_for(listener, watchdog_usec=60_000_000)
    try:
        assert notifier.stale_after(2.0) == 30.0
        assert notifier.stale_after(20.0) == 60.0
    finally:
        notifier.close()


# -- liveness checks --------------------------------------------------------------------------


def test_recent__fresh_stale_and_never_turned() -> None:
    now = [100.0]
    stamp: list[float | None] = [None]
    check = recent(lambda: stamp[0], 5.0, clock=lambda: now[0])
    assert not check()  # no turn yet
    stamp[0] = 98.0
    assert check()
    now[0] = 103.0
    assert check()
    now[0] = 103.5
    assert not check()


def test_all_of__every_check_must_pass() -> None:
    assert all_of(lambda: True, lambda: True)()
    assert not all_of(lambda: True, lambda: False)()


def test_loop_probe__a_loop_that_runs_answers_a_blocked_one_does_not() -> None:
    loop = asyncio.new_event_loop()
    try:
        probe = LoopProbe(loop)
        assert probe()  # nothing asked yet
        assert not probe()  # the loop has not run since: as if it were blocked
        loop.run_until_complete(asyncio.sleep(0))  # it turns: runs the posted callback
        assert probe()
    finally:
        loop.close()
    assert not probe()  # a closed loop never answers


def test_loop_probe__a_running_loop_in_another_thread() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        probe = LoopProbe(loop)
        for _ in range(3):
            assert probe()
            answered = threading.Event()
            loop.call_soon_threadsafe(answered.set)  # after the probe's own callback
            assert answered.wait(5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


# -- the watchdog -----------------------------------------------------------------------------


def test_watchdog_beat__fed_only_while_alive(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = notifier_for(listener, watchdog_usec=1_000_000)
    alive = [True]
    watchdog = Watchdog(notifier, lambda: alive[0])
    try:
        assert watchdog.interval_s == 0.5  # half the timeout
        assert watchdog.beat()
        assert listener.recv() == "WATCHDOG=1"
        alive[0] = False
        assert not watchdog.beat()
        assert not watchdog.beat()
        assert listener.pending() == []  # a hung process stops feeding
        alive[0] = True
        assert watchdog.beat()
        assert listener.recv() == "WATCHDOG=1"
    finally:
        notifier.close()
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("watchdog_starved") == 1  # once per failure, not once per turn
    assert events.count("watchdog_fed_again") == 1


def test_watchdog_beat__a_check_that_raises_counts_as_failed(listener: Listener) -> None:
    notifier = notifier_for(listener, watchdog_usec=1_000_000)

    def broken() -> bool:
        raise RuntimeError("boom")

    try:
        assert not Watchdog(notifier, broken).beat()
        assert listener.pending() == []
    finally:
        notifier.close()


def test_watchdog_beat__describe_sends_status_when_it_changes(listener: Listener) -> None:
    notifier = notifier_for(listener, watchdog_usec=1_000_000)
    text = ["standby"]
    watchdog = Watchdog(notifier, lambda: True, describe=lambda: text[0])
    try:
        watchdog.beat()
        watchdog.beat()
        text[0] = "leader"
        watchdog.beat()
        assert listener.pending() == [
            "WATCHDOG=1",
            "STATUS=standby",
            "WATCHDOG=1",
            "WATCHDOG=1",
            "STATUS=leader",
        ]
    finally:
        notifier.close()


class Gate:
    """A liveness check the test opens and closes, counting the calls made while closed."""

    def __init__(self) -> None:
        self.open = True
        self.closed_calls = 0
        self.called = threading.Condition()

    def __call__(self) -> bool:
        with self.called:
            if not self.open:
                self.closed_calls += 1
            self.called.notify_all()
            return self.open

    def wait_closed_calls(self, n: int) -> None:
        with self.called:
            assert self.called.wait_for(lambda: self.closed_calls >= n, timeout=5)


def test_watchdog_thread__ready_then_pings_which_stop_when_the_check_fails(
    listener: Listener,
) -> None:
    notifier = notifier_for(listener, watchdog_usec=20_000)  # a ping every 10 ms
    ready = threading.Event()
    gate = Gate()
    watchdog = notifier.watch(gate, ready=ready.is_set, status="serving")
    try:
        assert listener.pending() == []  # not ready yet: nothing, not even a ping
        ready.set()
        assert listener.recv() == "READY=1\nSTATUS=serving"
        assert listener.recv() == "WATCHDOG=1"
        assert listener.recv() == "WATCHDOG=1"
        with gate.called:
            gate.open = False
        gate.wait_closed_calls(1)  # every ping of an earlier, passing check was sent before it
        listener.pending()
        gate.wait_closed_calls(3)
        assert listener.pending() == []
        with gate.called:
            gate.open = True
        assert listener.recv() == "WATCHDOG=1"  # alive again: fed again
    finally:
        watchdog.stop()
        notifier.close()
    assert watchdog._thread is None


def test_watchdog_thread__ends_at_stopping(listener: Listener) -> None:
    notifier = notifier_for(listener, watchdog_usec=20_000)
    watchdog = notifier.watch(lambda: True)
    try:
        assert listener.recv() == "WATCHDOG=1"  # no `ready`: READY=1 is the caller's
        notifier.stopping()
        thread = watchdog._thread
        assert thread is not None
        thread.join(5)
        assert not thread.is_alive()  # systemd no longer watches a stopping service
        messages = listener.pending()
        assert "STOPPING=1" in messages
        assert messages[messages.index("STOPPING=1") + 1 :].count("WATCHDOG=1") <= 1
    finally:
        watchdog.stop()
        notifier.close()


def test_watchdog_thread__ready_only_without_a_watchdog_timeout(listener: Listener) -> None:
    notifier = notifier_for(listener)  # Type=notify without WatchdogSec=
    watchdog = notifier.watch(lambda: True, ready=lambda: True, status="up")
    try:
        assert listener.recv() == "READY=1\nSTATUS=up"
        thread = watchdog._thread
        assert thread is not None
        thread.join(5)
        assert not thread.is_alive()
        assert listener.pending() == []
    finally:
        watchdog.stop()
        notifier.close()


def test_watchdog_thread__stopped_before_ready_sends_nothing(listener: Listener) -> None:
    notifier = notifier_for(listener, watchdog_usec=20_000)
    watchdog = notifier.watch(lambda: True, ready=lambda: False)
    watchdog.stop()
    notifier.close()
    assert listener.pending() == []


def test_stopping_on_signals__a_signal_the_process_does_not_handle_is_left_alone(
    listener: Listener,
) -> None:
    notifier = notifier_for(listener)
    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        notifier.stopping_on_signals(signal.SIGUSR2)
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR2, previous)
        notifier.close()

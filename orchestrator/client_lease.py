"""What `with gpu_lease(...)` holds: the `GpuLease`, and the thread that heartbeats it."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import httpx

from orchestrator.client_errors import ApiError, Unreachable

logger = logging.getLogger(__name__)

# Heartbeat answers that mean the lease is gone for good: expired, unknown, released.
_LEASE_GONE_STATUSES = frozenset({404, 408, 409})


class LeaseHolder(Protocol):
    """The side of the client a heartbeater needs."""

    timeout: float

    def _heartbeat(self, lease: GpuLease, timeout: httpx.Timeout) -> None: ...


@dataclass(eq=False)
class GpuLease:
    """A GPU lease held inside `with gpu_lease(...)`.

    `devices` are the device indices on `node` (NVML's order); `cpu` is True for the CPU
    lease a `fallback="cpu"` gives when the orchestrator does not answer (no devices, no
    token). `lost` turns True when a heartbeat finds the lease gone (expired, unknown or
    released by someone else): the VRAM is no longer reserved for this block.
    """

    token: str | None
    node: str | None
    devices: list[int]
    expires_at: datetime | None = None
    cpu: bool = False
    lost: bool = False
    info: dict[str, Any] = field(default_factory=dict, repr=False)  # the API's whole lease
    peak_vram_mb: int | None = None
    used_vram_mb: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def short_token(self) -> str:
        """The token's first characters, for logs (the whole token lets anyone release it)."""
        return (self.token or "cpu")[:8]

    @property
    def cuda_visible_devices(self) -> str:
        """The devices as CUDA_VISIBLE_DEVICES wants them: "0,1"; "" (no GPU) for CPU."""
        return ",".join(str(d) for d in self.devices)

    def env(self) -> dict[str, str]:
        """Environment variables that confine a child process to this lease's devices.

        CUDA numbers devices fastest first unless told otherwise; the lease's indices are
        NVML's, which follow the PCI bus, so the order is pinned to match.

        >>> subprocess.run(cmd, env={**os.environ, **lease.env()})
        """
        return {
            "CUDA_VISIBLE_DEVICES": self.cuda_visible_devices,
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        }

    def report_vram(self, mb: int) -> None:
        """Report the VRAM in use now (MB per device). The latest value goes with each
        following heartbeat (`used_vram_mb`, so admission counts what is really used) and
        the peak with the release (`peak_vram_mb`)."""
        if mb < 0:
            raise ValueError("report_vram: mb must be >= 0")
        with self._lock:
            self.used_vram_mb = mb
            self.peak_vram_mb = mb if self.peak_vram_mb is None else max(self.peak_vram_mb, mb)

    @classmethod
    def of(cls, body: dict[str, Any]) -> GpuLease:
        """A lease from the API's JSON."""
        return cls(
            token=str(body["token"]),
            node=body.get("node"),
            devices=[int(d) for d in body.get("devices") or []],
            expires_at=parse_time(body.get("expires_at")),
            info=body,
        )

    @classmethod
    def cpu_only(cls) -> GpuLease:
        """The lease a CPU fallback yields: no devices, nothing held on the orchestrator."""
        return cls(token=None, node=None, devices=[], cpu=True)

    def _renewed(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.expires_at = parse_time(body.get("expires_at")) or self.expires_at
            self.info = body


class Heartbeater:
    """Renews one lease every `interval` seconds until stopped or the lease is gone."""

    def __init__(
        self, client: LeaseHolder, lease: GpuLease, interval: float, connect: float
    ) -> None:
        self.client = client
        self.lease = lease
        self.interval = interval
        # An answer later than the next beat is no use: the next beat will ask again.
        self.timeout = httpx.Timeout(min(client.timeout, max(interval, 1.0)), connect=connect)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lease-heartbeat-{lease.short_token}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout.read or self.interval + 1.0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._beat():
                return

    def _beat(self) -> bool:
        """One heartbeat; False when the lease is gone and beating is over."""
        lease = self.lease
        try:
            self.client._heartbeat(lease, self.timeout)
        except ApiError as exc:
            if exc.status in _LEASE_GONE_STATUSES:
                lease.lost = True
                logger.warning(
                    "lease %s is lost (%s): its VRAM is no longer reserved for this block",
                    lease.short_token,
                    exc,
                    extra={"event": "lease_lost", "lease": lease.short_token, "status": exc.status},
                )
                return False
            self._missed(exc)
        except Unreachable as exc:
            self._missed(exc)
        except Exception as exc:  # never let the thread die silently with the lease held
            logger.exception(
                "lease %s: heartbeat crashed",
                lease.short_token,
                extra={"event": "lease_heartbeat_crashed", "lease": lease.short_token},
            )
            self._missed(exc)
        return True

    def _missed(self, exc: Exception) -> None:
        # A missed beat is retried at the next one; the ttl allows two misses in a row.
        logger.warning(
            "lease %s: heartbeat failed (%s); retrying in %.1fs",
            self.lease.short_token,
            exc,
            self.interval,
            extra={"event": "lease_heartbeat_failed", "lease": self.lease.short_token},
        )


def cpu_fallback(agent: str, why: str) -> GpuLease:
    logger.warning(
        "no GPU lease for %s (%s): running on CPU",
        agent,
        why,
        extra={"event": "lease_cpu_fallback", "agent": agent},
    )
    return GpuLease.cpu_only()


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None

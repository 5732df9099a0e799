"""`NvmlProbe`: this node's GPUs through NVML (the `pynvml` module of nvidia-ml-py).

NVML is a C library loaded at run time: it may be missing (no driver), refuse to start, or
stop answering mid-run (a GPU fell off the bus, the driver was reloaded). The probe turns all
of that into readings: `open` gives None when NVML cannot start, and `read` never raises. A
failed read marks devices degraded (`error` set), so admission stops leasing them, and NVML
is started again on the next read.

The probe calls only the module it was given (`nvml`), exceptions included, so a fake module
(`orchestrator.testing.FakeNvml`) stands in for pynvml in tests.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

from orchestrator.gpu import DeviceReading, NodeReading, detect_mps

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024

# Errors that mean NVML as a whole is gone, whichever call raised them: every later call
# would fail too, so the probe stops, marks all devices degraded and starts NVML again.
# A lost GPU usually means the node needs a reset (Xid 79), so it counts here as well.
_FATAL_ERROR_NAMES = (
    "NVMLError_Uninitialized",
    "NVMLError_DriverNotLoaded",
    "NVMLError_LibraryNotFound",
    "NVMLError_LibRmVersionMismatch",
    "NVMLError_GpuIsLost",
)


class _NvmlDown(Exception):
    """NVML failed as a whole during a read (internal: `read` turns it into a reading)."""


class NvmlProbe:
    """A `GpuProbe` over NVML. Make one with `open`; `read` never raises.

    Memory is reported in MiB ("MB" in the rest of the code, as nvidia-smi does): total
    rounded down and used rounded up, so free memory is never overstated. Fields a device
    does not support (power on some boards, temperature under vGPU) are None.
    """

    def __init__(self, nvml: ModuleType, *, mps_pipe_dir: Path | None = None) -> None:
        """Wrap a module whose `nvmlInit()` has already succeeded (`open` does that)."""
        self._nvml = nvml
        self.mps_pipe_dir = mps_pipe_dir
        # The module's own exception class: a fake module raises its own, not pynvml's.
        self._error: type[Exception] = nvml.NVMLError
        self._fatal: tuple[type[BaseException], ...] = tuple(
            cls
            for cls in (getattr(nvml, name, None) for name in _FATAL_ERROR_NAMES)
            if isinstance(cls, type) and issubclass(cls, BaseException)
        )
        self._lock = threading.Lock()
        # True while we hold one nvmlInit: NVML counts inits, and a shutdown we do not owe
        # would release someone else's in this process.
        self._initialized = True
        self._closed = False
        self._down: str | None = None  # why NVML failed as a whole; None while it answers
        self._last: dict[int, DeviceReading] = {}  # last good reading of each device
        self._unsupported: set[tuple[int, str]] = set()  # logged once each
        self._failing: set[int] = set()  # devices whose memory read fails (warned once)
        self._driver_version = self._read_driver_version()

    @classmethod
    def open(
        cls, nvml: ModuleType | None = None, *, mps_pipe_dir: Path | None = None
    ) -> NvmlProbe | None:
        """A probe when NVML starts and sees at least one device, else None (logged once).

        `nvml` replaces the `pynvml` module (tests pass `FakeNvml`). Never raises.
        """
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                _log_unavailable(f"the pynvml module does not import ({exc})")
                return None
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError mostly; ctypes may raise others, and we never do
            _log_unavailable(f"nvmlInit failed: {_describe(exc)}")
            return None
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as exc:
            _shutdown(nvml)
            _log_unavailable(f"nvmlDeviceGetCount failed: {_describe(exc)}")
            return None
        if count <= 0:
            _shutdown(nvml)
            _log_unavailable("NVML sees no GPU on this node")
            return None
        try:
            probe = cls(nvml, mps_pipe_dir=mps_pipe_dir)
        except Exception as exc:  # a module without NVMLError is no NVML we can use
            _shutdown(nvml)
            _log_unavailable(f"the NVML module is unusable: {_describe(exc)}")
            return None
        logger.info(
            "NVML started: %d GPU(s), driver %s",
            count,
            probe._driver_version or "unknown",
            extra={"event": "nvml_started", "gpu_count": count},
        )
        return probe

    def read(self) -> NodeReading:
        """The devices now; a failure is reported in the reading, never raised."""
        enabled, mps = detect_mps(self.mps_pipe_dir)
        with self._lock:
            if self._closed:
                return self._failed_reading("the NVML probe is closed", enabled, mps)
            try:
                if not self._initialized and not self._restart():
                    return self._failed_reading(self._down or "NVML is down", enabled, mps)
                devices = self._read_devices()
            except _NvmlDown as down:
                self._lose(str(down))
                return self._failed_reading(str(down), enabled, mps)
            except Exception as exc:  # a bug or a ctypes surprise must not stop reporting
                logger.exception("NVML read failed", extra={"event": "nvml_read_failed"})
                self._lose(f"NVML read failed: {_describe(exc)}")
                return self._failed_reading(self._down or "NVML read failed", enabled, mps)
            if self._down is not None:
                logger.info(
                    "NVML answers again: %d GPU(s)",
                    len(devices),
                    extra={"event": "nvml_recovered", "gpu_count": len(devices)},
                )
                self._down = None
            return NodeReading(
                "nvml",
                devices,
                nvml_supported=True,
                mps_enabled=enabled,
                mps=mps,
                driver_version=self._driver_version,
            )

    def close(self) -> None:
        """Release NVML (nvmlShutdown); later reads report the probe closed."""
        with self._lock:
            if self._initialized:
                _shutdown(self._nvml)
            self._initialized = False
            self._closed = True

    # Reading.

    def _read_devices(self) -> list[DeviceReading]:
        try:
            count = int(self._nvml.nvmlDeviceGetCount())
        except self._error as exc:
            raise _NvmlDown(f"nvmlDeviceGetCount failed: {_describe(exc)}") from exc
        if count <= 0 and self._last:
            # Devices do not leave a running node quietly: keep the ones we knew, degraded.
            raise _NvmlDown(f"NVML now sees no GPU (it saw {len(self._last)})")
        devices = [self._read_device(index) for index in range(count)]
        self._last = {
            d.index: d if d.error is None else self._last.get(d.index, d) for d in devices
        }
        return devices

    def _read_device(self, index: int) -> DeviceReading:
        nvml = self._nvml
        last = self._last.get(index)
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            total_mb = int(memory.total) // _MIB
            used_mb = math.ceil(int(memory.used) / _MIB)
        except self._error as exc:
            self._raise_if_fatal(exc)
            why = f"memory read failed: {_describe(exc)}"
            if index not in self._failing:
                self._failing.add(index)
                logger.warning(
                    "GPU %d: %s",
                    index,
                    why,
                    extra={"event": "nvml_device_read_failed", "gpu_index": index},
                )
            return _degraded(index, last, why)
        if index in self._failing:
            self._failing.discard(index)
            logger.info(
                "GPU %d: memory reads again",
                index,
                extra={"event": "nvml_device_recovered", "gpu_index": index},
            )
        name = self._optional(index, "name", nvml.nvmlDeviceGetName, handle)
        uuid = self._optional(index, "uuid", nvml.nvmlDeviceGetUUID, handle)
        utilization = self._optional(
            index, "utilization", nvml.nvmlDeviceGetUtilizationRates, handle
        )
        temperature = self._optional(
            index,
            "temperature",
            nvml.nvmlDeviceGetTemperature,
            handle,
            nvml.NVML_TEMPERATURE_GPU,
        )
        power_mw = self._optional(index, "power", nvml.nvmlDeviceGetPowerUsage, handle)
        return DeviceReading(
            index=index,
            name=_text(name) if name is not None else _last_name(index, last),
            memory_total_mb=total_mb,
            memory_used_mb=min(used_mb, total_mb),
            uuid=_text(uuid) if uuid is not None else (last.uuid if last else None),
            utilization_gpu_pct=float(utilization.gpu) if utilization is not None else None,
            temperature_c=float(temperature) if temperature is not None else None,
            power_draw_w=float(power_mw) / 1000.0 if power_mw is not None else None,
        )

    def _optional(self, index: int, what: str, call: Callable[..., Any], *args: Any) -> Any:
        """The call's result, or None when it fails (not supported, or any NVML error)."""
        try:
            return call(*args)
        except self._error as exc:
            self._raise_if_fatal(exc)
            if (index, what) not in self._unsupported:
                self._unsupported.add((index, what))
                logger.debug(
                    "GPU %d: no %s reading: %s",
                    index,
                    what,
                    _describe(exc),
                    extra={"event": "nvml_field_unavailable", "gpu_index": index, "field": what},
                )
            return None

    def _raise_if_fatal(self, exc: BaseException) -> None:
        if isinstance(exc, self._fatal):
            raise _NvmlDown(f"NVML failed: {_describe(exc)}") from exc

    def _read_driver_version(self) -> str | None:
        try:
            return _text(self._nvml.nvmlSystemGetDriverVersion())
        except self._error as exc:
            logger.debug(
                "NVML driver version unavailable: %s",
                _describe(exc),
                extra={"event": "nvml_field_unavailable", "field": "driver_version"},
            )
            return None

    # Failure and recovery.

    def _lose(self, why: str) -> None:
        """NVML failed as a whole: release it, so the next read starts it afresh."""
        if self._down is None:
            logger.warning(
                "NVML stopped answering (%s): its GPUs are degraded until it recovers",
                why,
                extra={"event": "nvml_lost", "error": why},
            )
        self._down = why
        if self._initialized:
            _shutdown(self._nvml)
            self._initialized = False

    def _restart(self) -> bool:
        try:
            self._nvml.nvmlInit()
        except Exception as exc:
            # Logged at debug: one warning went out when NVML was lost, and this repeats
            # on every read until it recovers.
            self._down = f"NVML is down: nvmlInit failed: {_describe(exc)}"
            logger.debug(
                "NVML restart failed: %s", _describe(exc), extra={"event": "nvml_restart_failed"}
            )
            return False
        self._initialized = True
        self._driver_version = self._read_driver_version()
        return True

    def _failed_reading(self, why: str, mps_enabled: bool, mps: dict[str, Any]) -> NodeReading:
        # The live figures of a device we cannot read are unknown now; its memory figures
        # stay as last seen, and `error` keeps admission off it.
        devices = [
            replace(
                device,
                utilization_gpu_pct=None,
                temperature_c=None,
                power_draw_w=None,
                error=why,
            )
            for _, device in sorted(self._last.items())
        ]
        return NodeReading(
            "nvml",
            devices,
            nvml_supported=True,
            mps_enabled=mps_enabled,
            mps=mps,
            driver_version=self._driver_version,
            error=why,
        )


def _degraded(index: int, last: DeviceReading | None, why: str) -> DeviceReading:
    """A device whose memory could not be read: its last good figures (or 0), and `error`."""
    return DeviceReading(
        index=index,
        name=_last_name(index, last),
        memory_total_mb=last.memory_total_mb if last else 0,
        memory_used_mb=last.memory_used_mb if last else 0,
        uuid=last.uuid if last else None,
        error=why,
    )


def _last_name(index: int, last: DeviceReading | None) -> str:
    return last.name if last is not None else f"GPU {index}"


def _text(value: object) -> str:
    """pynvml returns str from most calls, but bytes from old releases (and from
    nvmlDeviceGetUUID even in 13.x)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _describe(exc: BaseException) -> str:
    """`NVMLError_NotSupported: Not Supported`, for logs and `error` fields."""
    try:
        text = str(exc)
    except Exception:  # pynvml's __str__ asks the library, which may be gone
        text = repr(getattr(exc, "value", None))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _shutdown(nvml: ModuleType) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception as exc:
        # Shutting down a library that already failed is expected to fail too.
        logger.debug(
            "nvmlShutdown failed: %s", _describe(exc), extra={"event": "nvml_shutdown_failed"}
        )


def _log_unavailable(why: str) -> None:
    logger.info("NVML not available: %s", why, extra={"event": "nvml_unavailable", "why": why})

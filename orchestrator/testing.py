"""Fakes shipped with the package, so tests (ours and users') can swap the real pieces."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import ClassVar, cast

from orchestrator.store.election import Leadership


class FakeElection:
    """An election this instance always wins (or never, with `leading=False`)."""

    def __init__(self, instance_id: str = "fake-leader", *, leading: bool = True) -> None:
        self.instance_id = instance_id
        self._wins = leading
        self._leading = False
        self._since: datetime | None = None

    @property
    def leading(self) -> bool:
        return self._leading

    def check(self, now: datetime) -> bool:
        if self._wins and not self._leading:
            self._since = now
        self._leading = self._wins
        return self._leading

    def current(self) -> Leadership:
        return Leadership(self.instance_id if self._leading else None, 1, self._since, None)

    def someone_leads(self, now: datetime) -> bool:
        return self._leading

    def resign(self, now: datetime) -> None:
        self._leading = False


# NVML: a stand-in for the `pynvml` module, for `orchestrator.nvml.NvmlProbe`.

# pynvml's error codes and messages (13.x), for those FakeNvml emulates.
_NVML_ERRORS: dict[str, tuple[int, str]] = {
    "Uninitialized": (1, "Uninitialized"),
    "InvalidArgument": (2, "Invalid Argument"),
    "NotSupported": (3, "Not Supported"),
    "NoPermission": (4, "Insufficient Permissions"),
    "AlreadyInitialized": (5, "Already Initialized"),
    "NotFound": (6, "Not Found"),
    "DriverNotLoaded": (9, "Driver Not Loaded"),
    "Timeout": (10, "Timeout"),
    "LibraryNotFound": (12, "NVML Shared Library Not Found"),
    "FunctionNotFound": (13, "Function Not Found"),
    "GpuIsLost": (15, "GPU is lost"),
    "ResetRequired": (16, "GPU requires restart"),
    "LibRmVersionMismatch": (18, "RM has detected an NVML/RM version mismatch."),
    "Unknown": (999, "Unknown Error"),
}
_NVML_MESSAGES = dict(_NVML_ERRORS.values())
_NVML_UNKNOWN = _NVML_ERRORS["Unknown"][0]
_NVML_GPU_IS_LOST = _NVML_ERRORS["GpuIsLost"][0]


class FakeNvmlError(Exception):
    """`FakeNvml.NVMLError`: as in pynvml, `FakeNvmlError(code)` is an instance of the
    subclass for that code (`FakeNvml.NVMLError_NotSupported` for 3), with `.value` the code.
    """

    code: ClassVar[int] = _NVML_UNKNOWN
    value: int

    def __new__(cls, value: int | None = None) -> FakeNvmlError:
        if cls is FakeNvmlError:
            code = value if value is not None else cls.code
            cls = FAKE_NVML_ERRORS.get(_NVML_ERROR_NAMES.get(code, ""), cls)
        else:
            code = cls.code
        error = Exception.__new__(cls)
        error.value = code
        return error

    def __init__(self, value: int | None = None) -> None:
        super().__init__(self.value)

    def __str__(self) -> str:
        return _NVML_MESSAGES.get(self.value, f"NVML Error with code {self.value}")


_NVML_ERROR_NAMES = {code: f"NVMLError_{name}" for name, (code, _) in _NVML_ERRORS.items()}
FAKE_NVML_ERRORS: dict[str, type[FakeNvmlError]] = {
    f"NVMLError_{name}": cast(
        "type[FakeNvmlError]",
        type(f"NVMLError_{name}", (FakeNvmlError,), {"code": code, "__module__": __name__}),
    )
    for name, (code, _) in _NVML_ERRORS.items()
}


@dataclass
class FakeGpu:
    """One device of `FakeNvml`. Change its fields between reads; None: not supported."""

    name: str = "NVIDIA H100 80GB HBM3"
    memory_total_mb: int = 81559
    memory_used_mb: int = 0
    utilization: int | None = 0
    temperature_c: int | None = 35
    power_w: float | None = 70.0
    uuid: str | None = None  # None: GPU-fake-<index>


@dataclass(frozen=True)
class FakeNvmlHandle:
    index: int


@dataclass(frozen=True)
class FakeNvmlMemory:
    """nvmlDeviceGetMemoryInfo's answer: bytes."""

    total: int
    free: int
    used: int


@dataclass(frozen=True)
class FakeNvmlUtilization:
    """nvmlDeviceGetUtilizationRates's answer: percent."""

    gpu: int
    memory: int


class FakeNvml(ModuleType):
    """The subset of `pynvml` that `NvmlProbe` uses, with the same names, and failures on call.

    A module (pass it where `pynvml` goes: `NvmlProbe.open(fake)`, `build_probe(settings,
    nvml=fake)`). It keeps pynvml's rules: calls before `nvmlInit` raise Uninitialized, inits
    are counted, errors are `fake.NVMLError` subclasses (`fake.NVMLError_NotSupported`, ...)
    that `fake.NVMLError(code)` maps to. Strings come back as pynvml 13.x gives them (str,
    but bytes from nvmlDeviceGetUUID); `legacy_bytes=True` gives bytes everywhere, as old
    pynvml did.

    Failures: `init_error` (nvmlInit raises that code), `fail(call, error, index=...)` (one
    call raises, for one device or all), `lose_gpu()` / `recover()` (every call, nvmlInit
    included, raises GpuIsLost from now on / works again). A `FakeGpu` field set to None is
    not supported; change fields between reads to change what the next read sees.

    >>> from orchestrator.nvml import NvmlProbe
    >>> fake = FakeNvml([FakeGpu("NVIDIA L4", memory_total_mb=23034, power_w=None)])
    >>> probe = NvmlProbe.open(fake)
    >>> device = probe.read().devices[0]
    >>> device.memory_total_mb, device.power_draw_w
    (23034, None)
    >>> fake.gpus[0].temperature_c = 95
    >>> probe.read().devices[0].temperature_c
    95.0
    >>> fake.fail("nvmlDeviceGetMemoryInfo", fake.NVML_ERROR_UNKNOWN, index=0)
    >>> probe.read().devices[0].error
    'memory read failed: NVMLError_Unknown: Unknown Error'
    >>> fake.heal()
    >>> fake.lose_gpu()
    >>> probe.read().error
    'nvmlDeviceGetCount failed: NVMLError_GpuIsLost: GPU is lost'
    >>> fake.recover()
    >>> probe.read().error is None
    True
    """

    NVML_SUCCESS = 0
    NVML_TEMPERATURE_GPU = 0
    NVML_ERROR_UNINITIALIZED = 1
    NVML_ERROR_INVALID_ARGUMENT = 2
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_NOT_FOUND = 6
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_TIMEOUT = 10
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_ERROR_RESET_REQUIRED = 16
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
    NVML_ERROR_UNKNOWN = 999
    NVMLError = FakeNvmlError

    def __init__(
        self,
        gpus: Sequence[FakeGpu] = (),
        *,
        driver_version: str = "580.82.07",
        init_error: int | None = None,
        legacy_bytes: bool = False,
    ) -> None:
        super().__init__("pynvml", "A fake pynvml (orchestrator.testing.FakeNvml).")
        for name, error_class in FAKE_NVML_ERRORS.items():
            setattr(self, name, error_class)
        self.gpus = list(gpus)
        self.driver_version = driver_version
        self.init_error = init_error
        self.legacy_bytes = legacy_bytes
        self.lost: int | None = None
        self.init_count = 0  # successful nvmlInit calls
        self.shutdown_count = 0  # successful nvmlShutdown calls
        self._refs = 0
        self._failures: dict[tuple[str, int | None], int] = {}

    # Failure injection.

    @property
    def initialized(self) -> bool:
        """Whether an nvmlInit is outstanding (not yet matched by an nvmlShutdown)."""
        return self._refs > 0

    def fail(
        self,
        call: str,
        error: int | type[FakeNvmlError] = _NVML_UNKNOWN,
        *,
        index: int | None = None,
    ) -> None:
        """Make `call` (e.g. "nvmlDeviceGetPowerUsage") raise `error` (a code or an error
        class), for the device at `index` or, with None, for every device."""
        code = error if isinstance(error, int) else error.code
        self._failures[(call, index)] = code

    def heal(self, call: str | None = None, *, index: int | None = None) -> None:
        """Undo `fail` for `call` (and `index`), or with no call every failure."""
        if call is None:
            self._failures.clear()
        else:
            self._failures.pop((call, index), None)

    def lose_gpu(self, error: int = _NVML_GPU_IS_LOST) -> None:
        """From now on every call raises `error` (GpuIsLost), nvmlInit included (but not
        nvmlShutdown, which releases what it can)."""
        self.lost = error

    def recover(self) -> None:
        """Undo `lose_gpu`: calls work again (after a new nvmlInit, as with real NVML)."""
        self.lost = None

    # The pynvml API.

    def nvmlInit(self) -> None:
        self._check("nvmlInit", needs_init=False)
        if self.init_error is not None:
            raise FakeNvmlError(self.init_error)
        self._refs += 1
        self.init_count += 1

    def nvmlShutdown(self) -> None:
        self._check("nvmlShutdown", ignore_lost=True)
        self._refs -= 1
        self.shutdown_count += 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        self._check("nvmlSystemGetDriverVersion")
        return self._text(self.driver_version)

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeNvmlHandle:
        self._check("nvmlDeviceGetHandleByIndex", index)
        if not 0 <= index < len(self.gpus):
            raise FakeNvmlError(self.NVML_ERROR_INVALID_ARGUMENT)
        return FakeNvmlHandle(index)

    def nvmlDeviceGetName(self, handle: FakeNvmlHandle) -> str | bytes:
        return self._text(self._gpu("nvmlDeviceGetName", handle).name)

    def nvmlDeviceGetUUID(self, handle: FakeNvmlHandle) -> bytes:
        gpu = self._gpu("nvmlDeviceGetUUID", handle)
        # pynvml 13.x decodes most strings but not this one.
        return (gpu.uuid or f"GPU-fake-{handle.index}").encode()

    def nvmlDeviceGetMemoryInfo(
        self, handle: FakeNvmlHandle, version: int | None = None
    ) -> FakeNvmlMemory:
        gpu = self._gpu("nvmlDeviceGetMemoryInfo", handle)
        total, used = gpu.memory_total_mb * 1024 * 1024, gpu.memory_used_mb * 1024 * 1024
        return FakeNvmlMemory(total=total, free=max(total - used, 0), used=used)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeNvmlHandle) -> FakeNvmlUtilization:
        gpu = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        return FakeNvmlUtilization(gpu=int(self._supported(gpu.utilization)), memory=0)

    def nvmlDeviceGetTemperature(self, handle: FakeNvmlHandle, sensor: int) -> int:
        gpu = self._gpu("nvmlDeviceGetTemperature", handle)
        if sensor != self.NVML_TEMPERATURE_GPU:
            raise FakeNvmlError(self.NVML_ERROR_INVALID_ARGUMENT)
        return int(self._supported(gpu.temperature_c))

    def nvmlDeviceGetPowerUsage(self, handle: FakeNvmlHandle) -> int:
        """Milliwatts, as NVML reports them."""
        gpu = self._gpu("nvmlDeviceGetPowerUsage", handle)
        return round(self._supported(gpu.power_w) * 1000)

    # Helpers.

    def _check(
        self,
        call: str,
        index: int | None = None,
        *,
        needs_init: bool = True,
        ignore_lost: bool = False,
    ) -> None:
        if self.lost is not None and not ignore_lost:
            raise FakeNvmlError(self.lost)
        if needs_init and self._refs <= 0:
            raise FakeNvmlError(self.NVML_ERROR_UNINITIALIZED)
        code = self._failures.get((call, index), self._failures.get((call, None)))
        if code is not None:
            raise FakeNvmlError(code)

    def _gpu(self, call: str, handle: FakeNvmlHandle) -> FakeGpu:
        self._check(call, handle.index)
        if not 0 <= handle.index < len(self.gpus):
            raise FakeNvmlError(self.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[handle.index]

    def _supported(self, value: float | None) -> float:
        if value is None:
            raise FakeNvmlError(self.NVML_ERROR_NOT_SUPPORTED)
        return value

    def _text(self, value: str) -> str | bytes:
        return value.encode() if self.legacy_bytes else value

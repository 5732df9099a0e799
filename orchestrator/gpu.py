"""GPU telemetry: what a node's devices are and how they are doing.

A `GpuProbe` reads the devices of this node: `NvmlProbe` through NVML (the `pynvml` module
of nvidia-ml-py), `SimulatedProbe` from a setting (for laptops, CI and demos), `NoGpuProbe`
when there are none (everything still works, on CPU). `build_probe` picks one from settings
and never fails: without NVML or a GPU it degrades to the simulated devices, or to none.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from orchestrator.errors import InvalidRequest
from orchestrator.settings import Settings

logger = logging.getLogger(__name__)

HEALTH_OK = "ok"
HEALTH_DEGRADED = "degraded"


@dataclass(frozen=True)
class DeviceReading:
    """One device as a probe read it. `error` set: a read failed (the device is degraded)."""

    index: int
    name: str
    memory_total_mb: int
    memory_used_mb: int
    uuid: str | None = None
    utilization_gpu_pct: float | None = None
    temperature_c: float | None = None
    power_draw_w: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class NodeReading:
    """Everything a probe saw of this node."""

    source: str  # nvml | simulated | none
    devices: list[DeviceReading]
    nvml_supported: bool
    mps_enabled: bool = False
    mps: dict[str, Any] = field(default_factory=dict)
    driver_version: str | None = None
    error: str | None = None  # the probe itself failed (e.g. NVML stopped answering)


@dataclass(frozen=True)
class Device:
    """A device as stored: the last reading of one node's device, judged for admission."""

    node: str
    index: int
    name: str
    memory_total_mb: int
    memory_used_mb: int
    source: str
    health: str
    reported_at: datetime
    uuid: str | None = None
    utilization_gpu_pct: float | None = None
    temperature_c: float | None = None
    power_draw_w: float | None = None
    error: str | None = None
    # Set while an admin has not cleared the device's quarantine (orchestrator/gpu_health.py).
    quarantined_since: datetime | None = None
    quarantine_reason: str | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.node, self.index)

    @property
    def quarantined(self) -> bool:
        return self.quarantined_since is not None


@dataclass(frozen=True)
class Node:
    """A node as stored: what its last report said beyond the devices."""

    name: str
    nvml_supported: bool
    mps_enabled: bool
    mps: dict[str, Any]
    driver_version: str | None
    error: str | None
    reported_at: datetime


def health_of(reading: DeviceReading, temp_limit_c: float) -> tuple[str, str | None]:
    """(health, why): degraded when its reads failed or it runs over the temperature limit."""
    if reading.error:
        return HEALTH_DEGRADED, reading.error
    if reading.temperature_c is not None and reading.temperature_c > temp_limit_c:
        return (
            HEALTH_DEGRADED,
            f"temperature {reading.temperature_c:g} C is over the limit of {temp_limit_c:g} C",
        )
    return HEALTH_OK, None


class GpuProbe(Protocol):
    def read(self) -> NodeReading:
        """The devices now. Never raises: a failure is reported in the reading."""
        ...

    def close(self) -> None: ...


class NoGpuProbe:
    """A node without GPUs."""

    def __init__(self, mps_pipe_dir: Path | None = None, why: str | None = None) -> None:
        self.mps_pipe_dir = mps_pipe_dir
        self.why = why

    def read(self) -> NodeReading:
        enabled, mps = detect_mps(self.mps_pipe_dir)
        return NodeReading(
            "none", [], nvml_supported=False, mps_enabled=enabled, mps=mps, error=self.why
        )

    def close(self) -> None:
        pass


SIMULATE_PATTERN = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


def parse_simulated(spec: str) -> list[int]:
    """Device sizes in MB from `2x24576` or `24576,16384` (or both: `2x24576,16384`)."""
    sizes: list[int] = []
    for part in spec.split(","):
        if not part.strip():
            continue
        match = SIMULATE_PATTERN.match(part)
        if match:
            count, size = int(match.group(1)), int(match.group(2))
        elif part.strip().isdecimal():  # isdigit() takes "²", which int() refuses
            count, size = 1, int(part)
        else:
            raise InvalidRequest(
                f"ORCH_GPU_SIMULATE: {part.strip()!r} is not 'COUNTxMB' or 'MB' "
                "(e.g. '2x24576' or '24576,16384')"
            )
        if size <= 0 or count <= 0 or count > 64:
            raise InvalidRequest(f"ORCH_GPU_SIMULATE: {part.strip()!r} is out of range")
        sizes.extend([size] * count)
    return sizes


class SimulatedProbe:
    """Devices from a setting: full capacity, nothing used, always healthy."""

    def __init__(self, sizes_mb: list[int], mps_pipe_dir: Path | None = None) -> None:
        self.sizes_mb = sizes_mb
        self.mps_pipe_dir = mps_pipe_dir

    def read(self) -> NodeReading:
        enabled, mps = detect_mps(self.mps_pipe_dir)
        devices = [
            DeviceReading(
                index=i,
                name=f"Simulated GPU {size // 1024} GB",
                memory_total_mb=size,
                memory_used_mb=0,
                uuid=f"SIM-{i}",
                utilization_gpu_pct=0.0,
                temperature_c=None,
                power_draw_w=None,
            )
            for i, size in enumerate(self.sizes_mb)
        ]
        return NodeReading("simulated", devices, nvml_supported=False, mps_enabled=enabled, mps=mps)

    def close(self) -> None:
        pass


def detect_mps(pipe_dir: Path | None) -> tuple[bool, dict[str, Any]]:
    """MPS counts as on when its pipe directory exists or `nvidia-cuda-mps-control` runs."""
    try:
        pipe = pipe_dir is not None and pipe_dir.is_dir()
    except OSError:  # e.g. EACCES on a parent: probes promise never to raise
        pipe = False
    daemon = _mps_daemon_running()
    info: dict[str, Any] = {
        "pipe_directory": str(pipe_dir) if pipe_dir is not None else None,
        "pipe_directory_exists": pipe,
        "control_daemon_running": daemon,
    }
    return pipe or daemon, info


def _mps_daemon_running() -> bool:
    if shutil.which("pgrep") is None:
        return False
    try:
        found = subprocess.run(
            ["pgrep", "-x", "nvidia-cuda-mps-control"],
            capture_output=True,
            timeout=2,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return found.returncode == 0


def build_probe(settings: Settings, nvml: ModuleType | None = None) -> GpuProbe:
    """The probe the settings ask for; `nvml` replaces the `pynvml` module (tests)."""
    backend = settings.gpu_backend
    pipe = settings.mps_pipe_dir
    if backend in ("auto", "nvml"):
        from orchestrator.nvml import NvmlProbe

        probe = NvmlProbe.open(nvml, mps_pipe_dir=pipe)
        if probe is not None:
            return probe
        if backend == "nvml":
            return NoGpuProbe(pipe, why="NVML is not available on this node")
    if backend in ("auto", "simulated") and settings.gpu_simulate:
        return SimulatedProbe(parse_simulated(settings.gpu_simulate), pipe)
    return NoGpuProbe(pipe)

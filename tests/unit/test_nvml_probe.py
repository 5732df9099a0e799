"""NvmlProbe over FakeNvml (and once over the real pynvml), and how build_probe picks a probe."""

from __future__ import annotations

import doctest
import importlib
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator import gpu as gpu_module
from orchestrator import testing
from orchestrator.errors import InvalidRequest
from orchestrator.gpu import (
    HEALTH_DEGRADED,
    HEALTH_OK,
    DeviceReading,
    NoGpuProbe,
    SimulatedProbe,
    build_probe,
    detect_mps,
    health_of,
    parse_simulated,
)
from orchestrator.nvml import NvmlProbe
from orchestrator.settings import Settings
from orchestrator.testing import FakeGpu, FakeNvml, FakeNvmlMemory

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def no_mps_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    """MPS is judged by the pipe directory alone, whatever runs on this machine."""
    monkeypatch.setattr(gpu_module, "_mps_daemon_running", lambda: False)


def two_gpus() -> FakeNvml:
    return FakeNvml(
        [
            FakeGpu(
                "NVIDIA H100 80GB HBM3",
                memory_total_mb=81559,
                memory_used_mb=1024,
                utilization=37,
                temperature_c=41,
                power_w=123.456,
                uuid="GPU-aaaa",
            ),
            FakeGpu(
                "NVIDIA L4",
                memory_total_mb=23034,
                memory_used_mb=0,
                utilization=0,
                temperature_c=30,
                power_w=16.5,
                uuid="GPU-bbbb",
            ),
        ],
        driver_version="580.82.07",
    )


def open_probe(fake: FakeNvml, mps_pipe_dir: Path | None = None) -> NvmlProbe:
    probe = NvmlProbe.open(fake, mps_pipe_dir=mps_pipe_dir)
    assert probe is not None
    return probe


# Readings.


def test_read__reports_devices_in_mb_and_watts() -> None:
    probe = open_probe(two_gpus())

    reading = probe.read()

    assert reading.source == "nvml"
    assert reading.nvml_supported is True
    assert reading.error is None
    assert reading.driver_version == "580.82.07"
    assert reading.devices == [
        DeviceReading(
            index=0,
            name="NVIDIA H100 80GB HBM3",
            memory_total_mb=81559,
            memory_used_mb=1024,
            uuid="GPU-aaaa",
            utilization_gpu_pct=37.0,
            temperature_c=41.0,
            power_draw_w=123.456,
        ),
        DeviceReading(
            index=1,
            name="NVIDIA L4",
            memory_total_mb=23034,
            memory_used_mb=0,
            uuid="GPU-bbbb",
            utilization_gpu_pct=0.0,
            temperature_c=30.0,
            power_draw_w=16.5,
        ),
    ]


def test_read__memory_total_rounds_down_and_used_up(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNvml([FakeGpu()])
    # Bytes that are not whole MiB: free memory must never be overstated.
    odd = FakeNvmlMemory(total=1000 * MIB + MIB - 1, free=0, used=10 * MIB + 1)
    monkeypatch.setattr(fake, "nvmlDeviceGetMemoryInfo", lambda handle, version=None: odd)
    device = open_probe(fake).read().devices[0]

    assert (device.memory_total_mb, device.memory_used_mb) == (1000, 11)


def test_read__bytes_from_old_pynvml_are_decoded() -> None:
    fake = FakeNvml([FakeGpu("Tesla T4", uuid="GPU-t4")], legacy_bytes=True)
    assert isinstance(call_on_first_gpu(fake, "nvmlDeviceGetName"), bytes)

    reading = open_probe(fake).read()

    assert reading.devices[0].name == "Tesla T4"
    assert reading.devices[0].uuid == "GPU-t4"
    assert reading.driver_version == "580.82.07"


def test_read__uuid_bytes_of_pynvml_13_are_decoded() -> None:
    fake = FakeNvml([FakeGpu(uuid="GPU-1234")])
    # As in nvidia-ml-py 13.x: names are str, UUIDs still bytes.
    assert isinstance(call_on_first_gpu(fake, "nvmlDeviceGetName"), str)
    assert isinstance(call_on_first_gpu(fake, "nvmlDeviceGetUUID"), bytes)

    assert open_probe(fake).read().devices[0].uuid == "GPU-1234"


def call_on_first_gpu(fake: FakeNvml, call: str) -> Any:
    fake.nvmlInit()
    try:
        return getattr(fake, call)(fake.nvmlDeviceGetHandleByIndex(0))
    finally:
        fake.nvmlShutdown()


def test_read__power_not_supported_is_none() -> None:
    fake = FakeNvml([FakeGpu(power_w=None)])

    device = open_probe(fake).read().devices[0]

    assert device.power_draw_w is None
    assert device.error is None
    assert device.temperature_c == 35.0


def test_read__temperature_and_utilization_not_supported_are_none() -> None:
    fake = FakeNvml([FakeGpu(temperature_c=None, utilization=None)])

    device = open_probe(fake).read().devices[0]

    assert (device.temperature_c, device.utilization_gpu_pct) == (None, None)
    assert device.error is None
    assert health_of(device, 90.0) == (HEALTH_OK, None)


def test_read__optional_field_error_is_none_for_that_device_only() -> None:
    fake = two_gpus()
    fake.fail("nvmlDeviceGetPowerUsage", fake.NVMLError_NoPermission, index=1)

    devices = open_probe(fake).read().devices

    assert devices[0].power_draw_w == 123.456
    assert devices[1].power_draw_w is None
    assert devices[1].error is None


def test_read__driver_version_error_is_none() -> None:
    fake = two_gpus()
    fake.fail("nvmlSystemGetDriverVersion", fake.NVML_ERROR_NOT_SUPPORTED)

    reading = open_probe(fake).read()

    assert reading.driver_version is None
    assert reading.error is None
    assert len(reading.devices) == 2


def test_read__changes_between_reads_show() -> None:
    fake = two_gpus()
    probe = open_probe(fake)
    probe.read()

    fake.gpus[0].temperature_c = 93
    fake.gpus[0].memory_used_mb = 40000
    device = probe.read().devices[0]

    assert (device.temperature_c, device.memory_used_mb) == (93.0, 40000)
    assert health_of(device, 90.0)[0] == HEALTH_DEGRADED


def test_read__reports_mps_from_the_pipe_dir(tmp_path: Path) -> None:
    pipe = tmp_path / "nvidia-mps"
    pipe.mkdir()

    reading = open_probe(two_gpus(), mps_pipe_dir=pipe).read()

    assert reading.mps_enabled is True
    assert reading.mps["pipe_directory"] == str(pipe)


# A device that cannot be read.


def test_read__memory_failure_degrades_device_with_last_good_figures() -> None:
    fake = two_gpus()
    probe = open_probe(fake)
    probe.read()
    fake.gpus[0].memory_used_mb = 5000  # not seen: the read fails
    fake.fail("nvmlDeviceGetMemoryInfo", fake.NVML_ERROR_UNKNOWN, index=0)

    reading = probe.read()

    broken, other = reading.devices
    assert reading.error is None
    assert broken.error == "memory read failed: NVMLError_Unknown: Unknown Error"
    assert (broken.memory_total_mb, broken.memory_used_mb) == (81559, 1024)
    assert (broken.name, broken.uuid) == ("NVIDIA H100 80GB HBM3", "GPU-aaaa")
    assert health_of(broken, 90.0) == (HEALTH_DEGRADED, broken.error)
    assert other.error is None


def test_read__memory_failure_before_any_good_read_gives_zero() -> None:
    fake = two_gpus()
    fake.fail("nvmlDeviceGetMemoryInfo", fake.NVML_ERROR_TIMEOUT, index=1)

    broken = open_probe(fake).read().devices[1]

    assert broken.error is not None and "Timeout" in broken.error
    assert (broken.memory_total_mb, broken.memory_used_mb) == (0, 0)
    assert broken.name == "GPU 1"


def test_read__device_recovers_when_memory_reads_again() -> None:
    fake = two_gpus()
    probe = open_probe(fake)
    fake.fail("nvmlDeviceGetMemoryInfo", fake.NVML_ERROR_UNKNOWN, index=0)
    assert probe.read().devices[0].error is not None

    fake.heal()
    fake.gpus[0].memory_used_mb = 2048
    device = probe.read().devices[0]

    assert device.error is None
    assert device.memory_used_mb == 2048


# NVML failing as a whole.


def test_read__gpu_lost_degrades_every_device_then_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = two_gpus()
    probe = open_probe(fake)
    before = probe.read()
    fake.lose_gpu()

    with caplog.at_level(logging.WARNING, logger="orchestrator.nvml"):
        lost = probe.read()
        still_lost = probe.read()

    assert lost.error == "nvmlDeviceGetCount failed: NVMLError_GpuIsLost: GPU is lost"
    assert [d.index for d in lost.devices] == [0, 1]
    assert all(d.error == lost.error for d in lost.devices)
    assert [d.memory_total_mb for d in lost.devices] == [81559, 23034]
    assert all(d.temperature_c is None and d.power_draw_w is None for d in lost.devices)
    assert still_lost.error is not None and "nvmlInit failed" in still_lost.error
    assert len(still_lost.devices) == 2
    assert [r.getMessage() for r in caplog.records].count(
        f"NVML stopped answering ({lost.error}): its GPUs are degraded until it recovers"
    ) == 1

    fake.recover()
    recovered = probe.read()

    assert recovered.error is None
    assert recovered.devices == before.devices
    # One init outstanding: the lost one was shut down, the new one is held.
    assert fake.init_count - fake.shutdown_count == 1


def test_read__fatal_error_in_one_device_call_fails_the_node() -> None:
    fake = two_gpus()
    probe = open_probe(fake)
    probe.read()
    fake.fail("nvmlDeviceGetTemperature", fake.NVMLError_GpuIsLost, index=1)

    reading = probe.read()

    assert reading.error == "NVML failed: NVMLError_GpuIsLost: GPU is lost"
    assert all(d.error == reading.error for d in reading.devices)
    assert not fake.initialized  # released, to start afresh

    fake.heal()
    assert probe.read().error is None


def test_read__device_count_failure_fails_the_node_then_recovers() -> None:
    fake = two_gpus()
    probe = open_probe(fake)
    probe.read()
    fake.fail("nvmlDeviceGetCount", fake.NVML_ERROR_UNKNOWN)

    failed = probe.read()
    fake.heal()
    recovered = probe.read()

    assert failed.error == "nvmlDeviceGetCount failed: NVMLError_Unknown: Unknown Error"
    assert all(d.error for d in failed.devices)
    assert recovered.error is None
    assert fake.init_count == 2


def test_read__uninitialized_mid_run_starts_nvml_again() -> None:
    fake = two_gpus()
    probe = open_probe(fake)
    fake.nvmlShutdown()  # someone else in this process released our init

    failed = probe.read()
    recovered = probe.read()

    assert failed.error is not None and "Uninitialized" in failed.error
    assert recovered.error is None
    assert fake.initialized


def test_read__driver_not_loaded_on_restart_keeps_the_node_degraded() -> None:
    fake = two_gpus()
    probe = open_probe(fake)
    probe.read()
    fake.lose_gpu(fake.NVML_ERROR_DRIVER_NOT_LOADED)

    readings = [probe.read() for _ in range(3)]

    assert all(r.error and "DriverNotLoaded" in r.error for r in readings)
    assert all(len(r.devices) == 2 and all(d.error for d in r.devices) for r in readings)
    assert fake.init_count == 1


def test_read__no_devices_after_restart_keeps_known_ones_degraded() -> None:
    fake = two_gpus()
    probe = open_probe(fake)
    probe.read()
    fake.gpus.clear()

    reading = probe.read()

    assert reading.error == "NVML now sees no GPU (it saw 2)"
    assert [d.index for d in reading.devices] == [0, 1]
    assert all(d.error for d in reading.devices)


def test_read__unexpected_exception_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = two_gpus()
    probe = open_probe(fake)

    def broken() -> int:
        raise RuntimeError("ctypes went wrong")

    monkeypatch.setattr(fake, "nvmlDeviceGetCount", broken)
    reading = probe.read()

    assert reading.error == "NVML read failed: RuntimeError: ctypes went wrong"


# open and close.


def test_open__init_failure_gives_none(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNvml([FakeGpu()], init_error=FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED)

    with caplog.at_level(logging.INFO, logger="orchestrator.nvml"):
        assert NvmlProbe.open(fake) is None

    assert [r.getMessage() for r in caplog.records] == [
        "NVML not available: nvmlInit failed: NVMLError_DriverNotLoaded: Driver Not Loaded"
    ]
    assert caplog.records[0].levelno == logging.INFO


def test_open__zero_devices_gives_none_and_releases_nvml() -> None:
    fake = FakeNvml([])

    assert NvmlProbe.open(fake) is None
    assert fake.init_count == 1
    assert not fake.initialized


def test_open__device_count_failure_gives_none() -> None:
    fake = two_gpus()
    fake.fail("nvmlDeviceGetCount", fake.NVML_ERROR_UNKNOWN)

    assert NvmlProbe.open(fake) is None
    assert not fake.initialized


def test_open__pynvml_missing_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail

    assert NvmlProbe.open() is None


def test_open__real_pynvml_without_a_driver_gives_none() -> None:
    pynvml = importlib.import_module("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is present here: nvmlInit succeeds")

    assert NvmlProbe.open() is None


def test_read__real_pynvml_with_a_driver() -> None:
    pynvml = importlib.import_module("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no NVIDIA driver here ({exc})")
    try:
        count = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    probe = NvmlProbe.open()
    assert probe is not None
    try:
        reading = probe.read()
    finally:
        probe.close()

    assert reading.error is None
    assert len(reading.devices) == count
    assert all(d.error is None and d.memory_total_mb > 0 for d in reading.devices)
    assert all(d.uuid and d.uuid.startswith(("GPU-", "MIG-")) for d in reading.devices)


def test_close__shuts_nvml_down_and_later_reads_say_closed() -> None:
    fake = two_gpus()
    probe = open_probe(fake)
    probe.read()

    probe.close()
    reading = probe.read()

    assert not fake.initialized
    assert fake.shutdown_count == 1
    assert reading.error == "the NVML probe is closed"
    assert fake.init_count == 1


def test_close__ignores_nvml_errors() -> None:
    fake = two_gpus()
    probe = open_probe(fake)
    fake.fail("nvmlShutdown", fake.NVML_ERROR_UNKNOWN)

    probe.close()

    assert fake.shutdown_count == 0


def test_close__after_nvml_was_lost_shuts_down_only_once() -> None:
    fake = two_gpus()
    probe = open_probe(fake)
    fake.nvmlInit()  # another user of NVML in this process: its init must survive us
    fake.lose_gpu()
    probe.read()

    probe.close()

    assert fake.shutdown_count == 1
    assert fake.initialized


# build_probe.


def test_build_probe__nvml_when_it_works(tmp_path: Path) -> None:
    probe = build_probe(Settings(data_dir=tmp_path, gpu_simulate="2x24576"), nvml=two_gpus())

    assert isinstance(probe, NvmlProbe)
    assert probe.read().source == "nvml"


def test_build_probe__init_failure_falls_back_to_simulated(tmp_path: Path) -> None:
    fake = FakeNvml([FakeGpu()], init_error=FakeNvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    probe = build_probe(Settings(data_dir=tmp_path, gpu_simulate="2x24576"), nvml=fake)

    assert isinstance(probe, SimulatedProbe)
    reading = probe.read()
    assert reading.source == "simulated"
    assert [d.memory_total_mb for d in reading.devices] == [24576, 24576]


def test_build_probe__zero_devices_without_simulate_gives_no_gpu(tmp_path: Path) -> None:
    probe = build_probe(Settings(data_dir=tmp_path), nvml=FakeNvml([]))

    assert isinstance(probe, NoGpuProbe)
    reading = probe.read()
    assert (reading.source, reading.devices, reading.error) == ("none", [], None)


def test_build_probe__backend_none_ignores_nvml(tmp_path: Path) -> None:
    fake = two_gpus()

    probe = build_probe(Settings(data_dir=tmp_path, gpu_backend="none"), nvml=fake)

    assert isinstance(probe, NoGpuProbe)
    assert fake.init_count == 0


def test_build_probe__backend_simulated_ignores_nvml(tmp_path: Path) -> None:
    fake = two_gpus()
    settings = Settings(data_dir=tmp_path, gpu_backend="simulated", gpu_simulate="16384")

    probe = build_probe(settings, nvml=fake)

    assert isinstance(probe, SimulatedProbe)
    assert fake.init_count == 0


def test_build_probe__backend_nvml_without_nvml_gives_no_gpu_with_reason(tmp_path: Path) -> None:
    fake = FakeNvml(init_error=FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED)
    settings = Settings(data_dir=tmp_path, gpu_backend="nvml", gpu_simulate="2x24576")

    probe = build_probe(settings, nvml=fake)

    assert isinstance(probe, NoGpuProbe)
    assert probe.read().error == "NVML is not available on this node"


# health_of, parse_simulated, detect_mps.


def test_health_of__over_the_temperature_limit_is_degraded() -> None:
    hot = DeviceReading(0, "GPU", 1000, 0, temperature_c=91.5)

    assert health_of(hot, 90.0) == (
        HEALTH_DEGRADED,
        "temperature 91.5 C is over the limit of 90 C",
    )


def test_health_of__at_the_limit_or_unknown_is_ok() -> None:
    assert health_of(DeviceReading(0, "GPU", 1000, 0, temperature_c=90.0), 90.0) == (
        HEALTH_OK,
        None,
    )
    assert health_of(DeviceReading(0, "GPU", 1000, 0), 90.0) == (HEALTH_OK, None)


def test_health_of__read_error_is_degraded() -> None:
    broken = DeviceReading(0, "GPU", 1000, 0, temperature_c=40.0, error="memory read failed")

    assert health_of(broken, 90.0) == (HEALTH_DEGRADED, "memory read failed")


@pytest.mark.parametrize(
    ("spec", "sizes"),
    [
        ("2x24576", [24576, 24576]),
        ("24576,16384", [24576, 16384]),
        ("2x24576,16384", [24576, 24576, 16384]),
        (" 1 x 8192 , ", [8192]),
        ("", []),
    ],
)
def test_parse_simulated__good_specs(spec: str, sizes: list[int]) -> None:
    assert parse_simulated(spec) == sizes


@pytest.mark.parametrize("spec", ["abc", "2x", "x100", "0x100", "2x0", "65x1", "-1", "1.5", "²"])
def test_parse_simulated__bad_specs_are_invalid(spec: str) -> None:
    with pytest.raises(InvalidRequest, match="ORCH_GPU_SIMULATE"):
        parse_simulated(spec)


def test_detect_mps__pipe_dir_present(tmp_path: Path) -> None:
    enabled, info = detect_mps(tmp_path)

    assert enabled is True
    assert info == {
        "pipe_directory": str(tmp_path),
        "pipe_directory_exists": True,
        "control_daemon_running": False,
    }


def test_detect_mps__pipe_dir_absent(tmp_path: Path) -> None:
    enabled, info = detect_mps(tmp_path / "missing")

    assert enabled is False
    assert info["pipe_directory_exists"] is False


def test_detect_mps__control_daemon_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_module, "_mps_daemon_running", lambda: True)

    enabled, info = detect_mps(None)

    assert enabled is True
    assert info["pipe_directory"] is None
    assert info["control_daemon_running"] is True


# FakeNvml itself: it must behave as pynvml does where the probe relies on it.


def test_fake_nvml__error_codes_map_to_subclasses() -> None:
    fake = FakeNvml()

    error = fake.NVMLError(fake.NVML_ERROR_NOT_SUPPORTED)

    assert isinstance(error, fake.NVMLError_NotSupported)
    assert isinstance(fake.NVMLError_GpuIsLost(), fake.NVMLError)
    assert (error.value, str(error)) == (3, "Not Supported")
    assert str(fake.NVMLError(12345)) == "NVML Error with code 12345"


def test_fake_nvml__calls_before_init_are_uninitialized() -> None:
    fake = FakeNvml([FakeGpu()])

    with pytest.raises(fake.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()


def test_fake_nvml__docstring_example_runs() -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(FakeNvml, "FakeNvml", module=testing):
        runner.run(test)

    assert runner.tries > 0
    assert runner.failures == 0

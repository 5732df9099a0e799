"""`GpuReporter`: a thread that reports this node's GPUs to the database.

Worker processes run one (their node's devices are what their jobs lease), and so does
`orchestrator serve` when its host has devices (agents on that host lease them through the
API). Admission only uses devices reported within `gpu_stale_s`, so a node that stops
reporting stops getting leases.
"""

from __future__ import annotations

import logging
import threading

from orchestrator.clock import Clock
from orchestrator.errors import Unavailable
from orchestrator.gpu import GpuProbe, NodeReading
from orchestrator.gpu_health import FaultKind, FaultRules, GpuFault
from orchestrator.settings import Settings
from orchestrator.store import Store

logger = logging.getLogger(__name__)


class GpuReporter:
    def __init__(self, store: Store, probe: GpuProbe, settings: Settings, clock: Clock) -> None:
        self.store = store
        self.probe = probe
        self.settings = settings
        self.clock = clock
        self.node = settings.resolved_node_name()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def report_once(self) -> NodeReading:
        """Read the devices and store the reading; raises `Unavailable` if the database
        does not answer. A process that sees no GPUs stores nothing: on a GPU node another
        process (with NVML) reports them, and must not be contradicted."""
        reading = self.probe.read()
        if reading.source != "none":
            limit = self.settings.gpu_temp_limit_c
            self.store.report_node(self.node, reading, self.clock.now(), limit)
            self._count_faults(reading)
        return reading

    def _count_faults(self, reading: NodeReading) -> None:
        """A device NVML could not read counts a fault (enough of them quarantine it)."""
        rules = FaultRules.of(self.settings)
        for d in reading.devices:
            if d.error is None:
                continue
            fault = GpuFault(self.node, d.index, FaultKind.NVML, d.error)
            quarantine = self.store.record_gpu_fault(fault, self.clock.now(), rules)
            if quarantine is not None:
                logger.error(
                    "GPU %s/%d quarantined: %s",
                    self.node,
                    d.index,
                    quarantine.reason,
                    extra={"event": "gpu_quarantined"},
                )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.report_once()
                if self._failing:
                    logger.info("GPU reports resumed", extra={"event": "gpu_report_resumed"})
                self._failing = False
            except Unavailable as exc:
                if not self._failing:  # once per outage
                    logger.error(
                        "cannot report GPUs: %s", exc, extra={"event": "gpu_report_failed"}
                    )
                self._failing = True
            except Exception:
                logger.exception("GPU report failed", extra={"event": "gpu_report_error"})
            self._stop.wait(self.settings.gpu_report_interval_s)

    def start(self) -> NodeReading:
        """Report once now (so the devices are known before the first job), then keep
        reporting in the background. Returns the first reading."""
        try:
            reading = self.report_once()
        except Unavailable as exc:
            logger.error("cannot report GPUs: %s", exc, extra={"event": "gpu_report_failed"})
            self._failing = True
            reading = self.probe.read()
        self._describe(reading)
        self._thread = threading.Thread(target=self._run, name="gpu-reporter", daemon=True)
        self._thread.start()
        return reading

    def _describe(self, reading: NodeReading) -> None:
        if reading.devices:
            sizes = ", ".join(
                f"{d.index}: {d.name} {d.memory_total_mb} MB" for d in reading.devices
            )
            logger.info(
                "node %s: %d GPU(s) (%s): %s",
                self.node,
                len(reading.devices),
                reading.source,
                sizes,
                extra={"event": "gpus_found"},
            )
        else:
            why = f" ({reading.error})" if reading.error else ""
            logger.info(
                "node %s: no GPUs%s; GPU jobs and leases will not run here",
                self.node,
                why,
                extra={"event": "no_gpus"},
            )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.probe.close()

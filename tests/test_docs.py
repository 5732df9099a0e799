"""Documentation that must not drift from the code."""

from __future__ import annotations

from pathlib import Path

from orchestrator.configdoc import BEGIN, END, render
from orchestrator.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_doc__matches_the_settings_class() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert BEGIN in doc and END in doc
    assert doc == render(doc), "docs/configuration.md is stale: run scripts/gen-config-docs"
    for name in Settings.model_fields:
        assert f"`ORCH_{name.upper()}`" in doc


def test_configuration_doc__render_replaces_a_stale_table() -> None:
    stale = f"intro\n{BEGIN}\n| old |\n{END}\noutro\n"
    rendered = render(stale)
    assert "| old |" not in rendered
    assert "`ORCH_DATABASE_URL`" in rendered
    assert rendered.startswith("intro\n") and rendered.endswith("outro\n")


def test_metrics_doc__lists_every_metric() -> None:
    from orchestrator.metrics import Metrics, StateCollector
    from workers.metrics import WorkerMetrics

    class NoState:
        def queue_depths(self) -> list[object]:
            return []

        def pending_counts(self) -> dict[str, int]:
            return {}

        def list_leases(self) -> list[object]:
            return []

        def list_devices(self) -> list[object]:
            return []

        def list_workers(self, **_: object) -> list[object]:
            return []

        def list_pools(self, *_: object) -> list[object]:
            return []

        def usage_by_owner_type(self) -> list[object]:
            return []

    families = [*Metrics().registry.collect()]
    families += StateCollector(NoState(), NoState(), lambda: False).collect()  # type: ignore[arg-type]
    families += WorkerMetrics().registry.collect()
    doc = (ROOT / "docs" / "metrics.md").read_text()
    assert len(families) >= 7
    for family in families:
        # A counter family is exposed with the _total suffix.
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"`{name}`" in doc, f"{name} is not in docs/metrics.md"

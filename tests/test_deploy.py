"""deploy/: the systemd units pass `systemd-analyze verify`, keep the settings the
runbook relies on, start real `orchestrator` subcommands, and the example environment
files name real settings only."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.cli import build_parser
from orchestrator.settings import Settings
from workers.pool import stop_deadline_s

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
SERVICES = sorted(UNITS.glob("*.service"))
ENV_EXAMPLES = sorted(DEPLOY.glob("*.env.example"))
TARGET = "gpu-orchestrator.target"
# The instance each template is checked as.
INSTANCE = "inference_jobs"
# Variables of the example files that are not settings: the units pass them as arguments.
UNIT_VARIABLES = {"HANDLER_MODULES", "WORKER_ARGS", "PYTHONPATH"}

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(path: Path) -> Unit:
    """A unit file's sections, each a list of (key, value) in order (keys may repeat)."""
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        assert current is not None, f"{path.name}: {line!r} is outside any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not KEY=value"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert found, f"no {key}= in [{section}]"
    return found[-1]


def words(unit: Unit, section: str, key: str) -> set[str]:
    return {word for v in values(unit, section, key) for word in v.split()}


def seconds(text: str) -> float:
    """A systemd time span of the forms these units use: `90`, `90s`, `2min`."""
    match = re.fullmatch(r"(\d+)\s*(s|sec|min)?", text)
    assert match, f"unexpected time span {text!r}"
    return float(match[1]) * (60 if match[2] == "min" else 1)


def env_assignments(path: Path) -> dict[str, str]:
    """The KEY=value lines of an EnvironmentFile= (comments and blank lines skipped)."""
    found = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, val = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"{path.name}: {line!r}"
        # systemd takes a `#` after a value as part of the value.
        assert " #" not in val, f"{path.name}: a comment after a value: {line!r}"
        found[key] = val.strip("'\"")
    return found


SETTINGS = {f"ORCH_{name.upper()}" for name in Settings.model_fields}


# -- systemd-analyze verify ---------------------------------------------------------------------


def _executable(unit: Unit) -> str:
    return shlex.split(value(unit, "Service", "ExecStart"))[0]


@pytest.fixture(scope="module")
def analyze() -> str:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd to run this)")
    return binary


@pytest.fixture
def fake_root(tmp_path: Path, analyze: str) -> Iterator[Path]:
    """A file system root with the host's own system units (for the targets ours name),
    ours in /etc/systemd/system, and a stand-in for the `orchestrator` they start: verify
    checks that every command exists and is executable."""
    system = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    if system is None:
        pytest.skip("no system unit folder on this host for systemd-analyze to start from")
    root = tmp_path / "root"
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS.iterdir():
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    commands = {_executable(parse_unit(service)) for service in SERVICES}
    for command in commands:
        stand_in = root / command.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    # Can it run here at all (some containers lack what it needs)? Try a unit known good.
    (root / "etc/systemd/system/probe.service").write_text(
        f"[Service]\nType=oneshot\nExecStart={min(commands)} --help\n"
    )
    probe = _verify(analyze, root, ["probe.service"])
    if probe.returncode != 0 or probe.stderr.strip():
        pytest.skip(f"systemd-analyze verify cannot run here: {probe.stderr.strip()[:300]}")
    (root / "etc/systemd/system/probe.service").unlink()
    yield root


def _verify(analyze: str, root: Path, units: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze, "verify", f"--root={root}", "--man=no", *units],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _unit_names() -> list[str]:
    names = []
    for unit in sorted(UNITS.iterdir()):
        name = unit.name
        names.append(name.replace("@.", f"@{INSTANCE}.") if "@." in name else name)
    return names


def test_units__pass_systemd_analyze_verify(analyze: str, fake_root: Path) -> None:
    result = _verify(analyze, fake_root, _unit_names())
    ours = [unit.name.split("@")[0] for unit in UNITS.iterdir()]
    complaints = [line for line in result.stderr.splitlines() if any(name in line for name in ours)]
    assert result.returncode == 0 and not complaints, result.stderr


def test_verify__would_catch_a_broken_unit(analyze: str, fake_root: Path) -> None:
    """The check above means something here: verify reports an unknown key and a missing
    command (with exit status 0 for the first, so the test reads stderr too)."""
    unit = fake_root / "etc/systemd/system/orchestrator.service"
    text = unit.read_text().replace("Type=notify", "Type=notify\nWatchdogSecs=60")
    unit.write_text(text.replace("/opt/", "/nowhere/"))
    result = _verify(analyze, fake_root, ["orchestrator.service"])
    assert "WatchdogSecs" in result.stderr
    assert result.returncode != 0 and "/nowhere/" in result.stderr


# -- what the units must say --------------------------------------------------------------------


def test_deploy__has_the_units_the_runbook_names() -> None:
    names = {unit.name for unit in UNITS.iterdir()}
    assert names == {
        "orchestrator.service",
        "orchestrator-worker@.service",
        "orchestrator-node.service",
        TARGET,
    }
    runbook = (ROOT / "docs" / "operations.md").read_text()
    for name in [*names, "orchestrator.env.example", "worker.env.example"]:
        assert name in runbook, f"docs/operations.md does not mention {name}"


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_service__notify_watchdog_restart_and_ordering(path: Path) -> None:
    unit = parse_unit(path)
    assert value(unit, "Service", "Type") == "notify"
    assert value(unit, "Service", "NotifyAccess") == "main"
    assert seconds(value(unit, "Service", "WatchdogSec")) >= 30
    assert value(unit, "Service", "Restart") == "always"
    assert seconds(value(unit, "Service", "RestartSec")) > 0
    assert value(unit, "Service", "KillSignal") == "SIGTERM"
    assert {"network-online.target"} <= words(unit, "Unit", "After")
    assert {"network-online.target"} <= words(unit, "Unit", "Wants")
    assert TARGET in words(unit, "Unit", "Before")
    assert TARGET in words(unit, "Unit", "PartOf")
    assert TARGET in words(unit, "Install", "WantedBy")


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_service__hardened_and_a_user_of_its_own(path: Path) -> None:
    unit = parse_unit(path)
    assert value(unit, "Service", "User") == "orchestrator"
    assert value(unit, "Service", "NoNewPrivileges") == "yes"
    assert value(unit, "Service", "ProtectSystem") == "strict"
    assert value(unit, "Service", "ProtectHome") == "yes"
    assert value(unit, "Service", "StateDirectory") == "gpu-orchestrator"
    assert "video" in words(unit, "Service", "SupplementaryGroups")  # /dev/nvidia*
    # Any of these would close /dev/nvidia* to NVML and CUDA.
    for closes_devices in ("PrivateDevices", "ProtectClock", "DeviceAllow", "DevicePolicy"):
        assert not values(unit, "Service", closes_devices), closes_devices
    # The settings file is required: without it a unit would run on a local SQLite file.
    assert "/etc/gpu-orchestrator/orchestrator.env" in values(unit, "Service", "EnvironmentFile")


def test_server__private_tmp_and_no_migration_at_start() -> None:
    unit = parse_unit(UNITS / "orchestrator.service")
    assert value(unit, "Service", "PrivateTmp") == "yes"
    # Migrations are a step of the upgrade, once, not of every replica's start.
    assert not any("db" in v for v in values(unit, "Service", "ExecStartPre"))
    assert {"mariadb.service", "redis-server.service"} <= words(unit, "Unit", "After")
    # uvicorn's graceful shutdown (10 s) and the engine's stop (5 s), with room to spare.
    assert seconds(value(unit, "Service", "TimeoutStopSec")) >= 20


@pytest.mark.parametrize(
    "name", ["orchestrator-worker@.service", "orchestrator-node.service"], ids=str
)
def test_worker_units__stop_timeout_covers_the_drain(name: str) -> None:
    unit = parse_unit(UNITS / name)
    # SIGTERM to the main process only: a worker signalled twice gives its jobs back now.
    assert value(unit, "Service", "KillMode") == "mixed"
    needed = stop_deadline_s(Settings().shutdown_grace_s)
    assert seconds(value(unit, "Service", "TimeoutStopSec")) >= needed + 15
    # A database that stops answering slows a heartbeat turn (30 s per call) but must not
    # starve the watchdog: the stale limit is half the timeout.
    assert seconds(value(unit, "Service", "WatchdogSec")) / 2 >= 4 * 30


def _exec_argv(unit: Unit, env: dict[str, str]) -> list[str]:
    """ExecStart as systemd would run it: `${VAR}` replaced within a word, `$VAR` alone
    split into words (the forms systemd.service(5) describes)."""
    argv: list[str] = []
    for word in shlex.split(value(unit, "Service", "ExecStart")):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            argv += env.get(whole[1], "").split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m[1], ""), word))
    return argv


def _unit_env(unit: Unit, instance: str) -> dict[str, str]:
    env = {}
    for assignment in values(unit, "Service", "Environment"):
        for part in shlex.split(assignment):
            key, _, val = part.partition("=")
            env[key] = val.replace("%i", instance)
    return env


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
@pytest.mark.parametrize("handler_modules", ["", "my_handlers,more_handlers"])
def test_service__exec_start_is_a_real_orchestrator_command(
    path: Path, handler_modules: str
) -> None:
    unit = parse_unit(path)
    env = {**_unit_env(unit, INSTANCE), "HANDLER_MODULES": handler_modules}
    argv = _exec_argv(unit, env)
    assert Path(argv[0]).name == "orchestrator"
    args = build_parser().parse_args(argv[1:])  # exits (SystemExit) on a bad command line
    assert args.command in {"serve", "worker", "node"}
    if args.command != "serve":
        assert args.imports == [m for m in handler_modules.split(",") if m]
    if args.command == "worker":
        assert args.types == [INSTANCE]  # the instance name is the job type by default


def test_worker_env_example__its_arguments_parse() -> None:
    unit = parse_unit(UNITS / "orchestrator-worker@.service")
    instance = env_assignments(DEPLOY / "worker.env.example")
    argv = _exec_argv(unit, {**_unit_env(unit, INSTANCE), **instance})
    args = build_parser().parse_args(argv[1:])
    assert args.command == "worker" and args.types == ["inference_jobs", "preloads"]
    assert "worker-%i.env" in " ".join(values(unit, "Service", "EnvironmentFile"))


def test_node_unit__runs_the_supervisor() -> None:
    unit = parse_unit(UNITS / "orchestrator-node.service")
    assert _exec_argv(unit, {})[1] == "node"


def test_target__wanted_by_the_boot() -> None:
    unit = parse_unit(UNITS / TARGET)
    assert "multi-user.target" in words(unit, "Install", "WantedBy")


# -- the example environment files --------------------------------------------------------------


@pytest.mark.parametrize("path", ENV_EXAMPLES, ids=lambda p: p.name)
def test_env_example__every_orch_variable_is_a_setting(path: Path) -> None:
    named = set(re.findall(r"\bORCH_[A-Z0-9_]+", path.read_text()))
    assert named, "no settings at all?"
    assert named <= SETTINGS, f"not settings: {sorted(named - SETTINGS)}"
    others = {k for k in env_assignments(path) if not k.startswith("ORCH_")}
    assert others <= UNIT_VARIABLES, f"unknown variables: {sorted(others - UNIT_VARIABLES)}"


def test_units__every_orch_variable_they_mention_is_a_setting() -> None:
    named = {
        v for unit in UNITS.iterdir() for v in re.findall(r"\bORCH_[A-Z0-9_]+", unit.read_text())
    }
    assert named <= SETTINGS, f"not settings: {sorted(named - SETTINGS)}"


@pytest.mark.parametrize("path", ENV_EXAMPLES, ids=lambda p: p.name)
def test_env_example__its_values_are_valid_settings(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("ORCH_"):
            monkeypatch.delenv(key)
    # An instance's file is read after the host's, and overrides it.
    assignments = env_assignments(DEPLOY / "orchestrator.env.example") | env_assignments(path)
    for key, val in assignments.items():
        if key.startswith("ORCH_"):
            monkeypatch.setenv(key, val)
    settings = Settings()
    assert settings.database_url.startswith("mysql+pymysql://")
    assert settings.redis_url.startswith("redis://")
    assert settings.gpu_backend == "nvml" and settings.log_json


def test_env_example__names_what_production_needs() -> None:
    assignments = env_assignments(DEPLOY / "orchestrator.env.example")
    for key in (
        "ORCH_DATABASE_URL",
        "ORCH_REDIS_URL",
        "ORCH_NODE_NAME",
        "ORCH_HOST",
        "ORCH_LEADER_LOCK",
        "ORCH_GPU_BACKEND",
        "ORCH_LOG_JSON",
        "ORCH_SHUTDOWN_GRACE_S",
        "HANDLER_MODULES",
    ):
        assert key in assignments, key
    # The units' stop timeout is sized for this grace period.
    assert float(assignments["ORCH_SHUTDOWN_GRACE_S"]) == Settings().shutdown_grace_s

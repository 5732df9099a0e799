"""The log formatters: a line about a job carries its id and attempt, in text and JSON."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import pytest

from orchestrator.logconfig import JsonFormatter, TextFormatter, configure_logging

JOB = "0123456789abcdef0123456789abcdef"


def record(msg: str, *args: Any, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.makeLogRecord(
        {
            "name": "workers.runtime",
            "levelno": logging.WARNING,
            "levelname": "WARNING",
            "msg": msg,
            "args": args,
            "exc_info": exc_info,
        }
    )
    rec.__dict__.update(extra)
    return rec


def text(rec: logging.LogRecord) -> str:
    line = TextFormatter().format(rec)
    assert " WARNING workers.runtime: " in line
    return line.split(": ", 1)[1]


def test_text__job_id_and_attempt_appended_when_the_message_lacks_them() -> None:
    rec = record("a job stopped", event="x", job_id=JOB, attempt=2)
    assert text(rec) == f"a job stopped [job {JOB} attempt 2]"


def test_text__unknown_attempt_is_left_out_not_shown_as_a_guess() -> None:
    rec = record("lease %s expired", "ab12", event="lease_expired", job_id=JOB)
    assert text(rec) == f"lease ab12 expired [job {JOB}]"
    none = record("lease expired", job_id=JOB, attempt=None)
    assert text(none) == f"lease expired [job {JOB}]"


def test_text__only_the_attempt_when_the_message_names_the_job() -> None:
    rec = record("job %s: cancel requested", JOB, event="cancel_seen", job_id=JOB, attempt=3)
    assert text(rec) == f"job {JOB}: cancel requested [attempt 3]"


def test_text__nothing_appended_when_the_message_says_both() -> None:
    rec = record("job %s attempt %d started", JOB, 12, job_id=JOB, attempt=12)
    assert text(rec) == f"job {JOB} attempt 12 started"
    # "attempt 1" is not found inside "attempt 12".
    one = record("job %s attempt %d started", JOB, 12, job_id=JOB, attempt=1)
    assert text(one) == f"job {JOB} attempt 12 started [attempt 1]"


def test_text__lines_about_no_job_are_unchanged() -> None:
    assert text(record("worker w1 stopped", event="worker_stopped")) == "worker w1 stopped"
    assert text(record("no job", job_id=None, attempt=1)) == "no job"


def test_text__suffix_goes_before_the_traceback() -> None:
    line = TextFormatter().format(record("failed", exc=True, job_id=JOB, attempt=1))
    first, rest = line.split("\n", 1)
    assert first.endswith(f"failed [job {JOB} attempt 1]")
    assert rest.startswith("Traceback") and "ValueError: boom" in rest


def test_json__has_every_context_field() -> None:
    rec = record(
        "pool %s: desired %d -> %d",
        "gpu",
        1,
        2,
        event="pool_resized",
        job_id=JOB,
        attempt=2,
        pool="gpu",
        desired=2,
        reason="demand",
    )
    line = json.loads(JsonFormatter().format(rec))
    assert line["msg"] == "pool gpu: desired 1 -> 2"
    assert (line["level"], line["logger"]) == ("warning", "workers.runtime")
    assert line["ts"].endswith("+00:00")
    ctx = {k: line[k] for k in ("event", "job_id", "attempt", "pool", "desired", "reason")}
    assert ctx == {
        "event": "pool_resized",
        "job_id": JOB,
        "attempt": 2,
        "pool": "gpu",
        "desired": 2,
        "reason": "demand",
    }
    # The common fields first, in a fixed order: lines are easy to read by eye too.
    assert list(line)[:7] == ["ts", "level", "logger", "msg", "event", "job_id", "attempt"]
    # Nothing of the LogRecord's own machinery leaks in.
    assert not {"args", "msg_args", "levelno", "pathname", "thread", "color_message"} & set(line)


def test_json__without_job_context_and_with_an_exception() -> None:
    line = json.loads(JsonFormatter().format(record("oops", exc=True, event="slot_error")))
    assert "job_id" not in line and "attempt" not in line
    assert line["event"] == "slot_error"
    assert "ValueError: boom" in line["exc"]


def test_json__context_cannot_overwrite_the_line_s_own_fields() -> None:
    line = json.loads(JsonFormatter().format(record("real", level="fake", ts="fake")))
    assert line["level"] == "warning" and line["ts"] != "fake"


def test_json__values_that_are_not_json_are_rendered_as_text() -> None:
    line = json.loads(JsonFormatter().format(record("x", path=object, ids={1, 2})))
    assert line["path"] == str(object)
    assert line["ids"] == "{1, 2}"


@pytest.mark.parametrize("json_lines", [False, True])
def test_configure_logging__renders_through_the_chosen_formatter(
    json_lines: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("info", json_lines=json_lines)
        logging.getLogger("t").info(
            "job %s done", JOB, extra={"event": "job_done", "job_id": JOB, "attempt": 1}
        )
        err = capsys.readouterr().err.strip()
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
    if json_lines:
        assert json.loads(err)["attempt"] == 1
    else:
        assert err.endswith(f"job {JOB} done [attempt 1]")

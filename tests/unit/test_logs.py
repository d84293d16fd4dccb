"""Structured JSON logs, and personal data kept out of them."""

from __future__ import annotations

import io
import logging

import orjson

from services.runtime.logs import configure_logging


def lines_logged(level: str, emit) -> list[dict]:
    stream = io.StringIO()
    configure_logging(level, stream)
    try:
        emit(logging.getLogger("leadscore.test"))
    finally:
        configure_logging("WARNING")
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_each_line_is_json_with_the_context_fields():
    [line] = lines_logged(
        "INFO",
        lambda log: log.warning(
            "batch failed",
            extra={"lead_id": "u-42", "message_id": "m-1", "batch": 7, "partition": 3},
        ),
    )
    assert set(line) == {
        "timestamp",
        "level",
        "logger",
        "message",
        "lead_id",
        "message_id",
        "batch",
        "partition",
    }
    assert (line["level"], line["logger"], line["message"]) == (
        "WARNING",
        "leadscore.test",
        "batch failed",
    )
    assert (line["lead_id"], line["batch"], line["partition"]) == ("u-42", 7, 3)
    assert line["timestamp"].endswith("Z")


def test_emails_never_reach_info_lines():
    [line] = lines_logged("INFO", lambda log: log.info("rejected dana@trucking-co.com's event"))
    assert "dana@trucking-co.com" not in orjson.dumps(line).decode()
    assert line["message"] == "rejected [email]'s event"


def test_exceptions_are_redacted_too():
    def emit(log):
        try:
            raise ValueError("bad trait for x@y.example")
        except ValueError:
            log.exception("scoring failed")

    [line] = lines_logged("INFO", emit)
    assert "x@y.example" not in line["exception"] and "[email]" in line["exception"]


def test_level_comes_from_the_setting():
    assert lines_logged("WARNING", lambda log: log.info("quiet")) == []
    assert len(lines_logged("DEBUG", lambda log: log.debug("loud"))) == 1


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_plain_lines_and_a_pipe_gets_json():
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        configure_logging("INFO", stream, log_format="auto")
        logging.getLogger("leadscore.test").info(
            "scored dana@trucking-co.com", extra={"partition": 3}
        )
    configure_logging("WARNING")
    [text] = terminal.getvalue().splitlines()
    assert text.endswith(" INFO    scored [email]  partition=3") and not text.startswith("{")
    assert orjson.loads(pipe.getvalue())["message"] == "scored [email]"


def test_the_setting_overrides_what_the_stream_looks_like():
    terminal = Terminal()
    configure_logging("INFO", terminal, log_format="json")
    logging.getLogger("leadscore.test").info("quiet start")
    configure_logging("WARNING")
    assert orjson.loads(terminal.getvalue())["message"] == "quiet start"


def test_a_group_coordinator_still_starting_is_not_an_error_line():
    def emit(_):
        coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
        coordinator.error(
            "Group Coordinator Request failed: %s",
            "[Error 15] GroupCoordinatorNotAvailableError",
        )
        coordinator.warning("Marking the coordinator dead (node %s)for group %s.", 1, "g")
        coordinator.error("Heartbeat failed: %r", "UnknownMemberIdError")

    lines = lines_logged("INFO", emit)
    assert [(line["level"], line["message"]) for line in lines] == [
        ("INFO", "Marking the coordinator dead (node 1)for group g."),
        ("ERROR", "Heartbeat failed: 'UnknownMemberIdError'"),
    ]

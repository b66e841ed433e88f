"""Structured JSON logs that carry the nameko call id of the worker that wrote them.

Enabled by the `LOGGING` section of services/common/base.yml (the runner applies it); the
`CallIdLogging` dependency tags each worker's records, the filter adds the tag.
"""
from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from nameko.extensions import DependencyProvider

# Monkey-patched by eventlet, threading.local is local to each worker's greenthread.
_current = threading.local()

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "call_id",
                                                    "service", "entrypoint"}


class CallIdLogging(DependencyProvider):
    def worker_setup(self, worker_ctx: Any) -> None:
        _current.call_id = worker_ctx.call_id
        _current.service = worker_ctx.service_name
        _current.entrypoint = worker_ctx.entrypoint.method_name

    def worker_teardown(self, worker_ctx: Any) -> None:
        _current.call_id = _current.entrypoint = _current.service = None


class CallIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.call_id = getattr(_current, "call_id", None)
        record.entrypoint = getattr(_current, "entrypoint", None)
        record.service = getattr(_current, "service", None)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, call id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("service", "call_id", "entrypoint"):
            if getattr(record, key, None):
                entry[key] = getattr(record, key)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)

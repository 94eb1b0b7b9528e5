"""Logging: human-readable lines, or one JSON object per line for log collectors.

``--log-format json`` (or ``log_format = "json"``) formats every record, uvicorn's included, as
one JSON object: ``ts``, ``level``, ``logger``, ``message`` and the record's structured fields.
Each chat completion logs one ``request`` line when it ends (see ``request_fields``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

request_log = logging.getLogger("omniserve.request")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    if isinstance(fields, dict):
        return fields
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        client, method, path, version, status = record.args
        return {"client": client, "method": method, "path": path, "http": version, "status": status}
    return {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The usual line, with structured fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={_text(v)}" for k, v in fields.items() if v is not None)
        return line


def _text(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value)


def formatter(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure(level: str, fmt: LogFormat) -> dict[str, Any]:
    """Sets up the root logger unless it is set up already; returns the ``log_config`` to give
    uvicorn so that its records are formatted the same way."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    # As logging.basicConfig: a process whose logging is set up already keeps it.
    logging.basicConfig(level=level.upper(), handlers=[handler])
    factory = "omniserve.logs.JsonFormatter" if fmt == "json" else "omniserve.logs.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": factory}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": ["default"], "level": level.upper(), "propagate": False},
        },
    }


def log_request(fields: dict[str, Any]) -> None:
    """The one line a chat completion logs when it ends."""
    if request_log.isEnabledFor(logging.INFO):
        request_log.info("request", extra={"fields": fields})

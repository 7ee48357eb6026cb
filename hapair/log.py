"""structlog set-up: stable snake_case event names, console on a TTY, JSON lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "console", "json"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _add_ts(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Wall-clock seconds as a float: lets drills line logs up with client probes."""
    event.setdefault("ts", round(time.time(), 6))
    return event


def configure(level: str = "info", fmt: LogFormat = "auto", **context: Any) -> None:
    """Configure the process-wide logger; ``context`` (cluster, node) goes on every line."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_ts,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    if context:
        structlog.contextvars.bind_contextvars(**context)


def get_logger() -> Any:
    """The hapair logger (a structlog bound logger)."""
    return structlog.get_logger("hapair")

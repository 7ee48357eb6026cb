"""structlog set-up: stable snake_case event names; native journal entries under journald,
otherwise console on a TTY and JSON lines elsewhere."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

from hapair.ops.journald import (
    DEFAULT_SOCKET,
    JournalRenderer,
    JournalSink,
    JournalWriter,
    stderr_is_journal,
)

LogFormat = Literal["auto", "console", "json"]
LogSink = Literal["auto", "stderr", "journald"]

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


def use_journald(sink: LogSink) -> bool:
    """Whether ``sink`` means journal entries: "journald", or "auto" with stderr on the journal."""
    return sink == "journald" or (sink == "auto" and stderr_is_journal())


def configure(
    level: str = "info",
    fmt: LogFormat = "auto",
    *,
    sink: LogSink = "auto",
    journal_socket: str = DEFAULT_SOCKET,
    **context: Any,
) -> None:
    """Configure the process-wide logger; ``context`` (cluster, node) goes on every line.

    ``sink`` "auto" writes native journal entries when ``$JOURNAL_STREAM`` names stderr, and
    ``fmt`` output to stderr otherwise; "journald" and "stderr" force one or the other.
    """
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    factory: Any
    if use_journald(sink):
        # No ts/timestamp: journald stamps every entry itself (and keeps the sender's time).
        processors += [structlog.processors.format_exc_info, JournalRenderer()]
        factory = JournalSink(JournalWriter(journal_socket), fallback=sys.stderr)
    else:
        use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
        renderer: Any = (
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
            if use_console
            else structlog.processors.JSONRenderer(sort_keys=False)
        )
        processors += [
            _add_ts,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ]
        factory = structlog.PrintLoggerFactory(file=sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    if context:
        structlog.contextvars.bind_contextvars(**context)


def get_logger() -> Any:
    """The hapair logger (a structlog bound logger)."""
    return structlog.get_logger("hapair")

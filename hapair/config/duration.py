"""Durations in the config: "20ms", "1.5s", "2m" or a bare number of seconds."""

from __future__ import annotations

import math
import re
from typing import Annotated, Final

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from hapair.config.shown import toml_repr

_UNITS: Final[dict[str, float]] = {"ms": 0.001, "s": 1.0, "m": 60.0}
_PATTERN: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m)?")
_HINT: Final = 'use e.g. "200ms", "1.5s" or a number of seconds'


def parse_duration(value: object) -> float:
    """Return the duration `value` denotes, in seconds; raise ValueError with a readable reason."""
    # bool is an int subclass; `interval = true` is a mistake, not one second.
    shown = toml_repr(value)
    if isinstance(value, bool):
        raise ValueError(f"{shown} is not a duration: {_HINT}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float's range
            raise ValueError(f"{shown} is far too large for a duration") from None
    elif isinstance(value, str):
        match = _PATTERN.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{shown} is not a duration: {_HINT}")
        number, unit = match.groups()
        if unit is None:
            # A unit-less string is ambiguous ("200" could mean ms); fail closed.
            example = number if len(number) <= 12 else "200"
            raise ValueError(f'{shown} has no unit: write e.g. "{example}ms" or "{example}s"')
        seconds = float(number) * _UNITS[unit]
    else:
        raise ValueError(f"{shown} is not a duration: {_HINT}")
    if not math.isfinite(seconds):
        raise ValueError(f"{shown} is not a finite duration")
    if seconds < 0:
        raise ValueError(f"{shown} is negative: a duration must be >= 0")
    return seconds


def _validate(value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise PydanticCustomError("hapair_duration", "{reason}", {"reason": str(exc)}) from None


Duration = Annotated[float, BeforeValidator(_validate)]
"""A config field holding a duration; validated to float seconds."""


def _number(value: float) -> str:
    # Fixed-point, never exponent notation, so the output always parses back.
    return f"{value:.3f}".rstrip("0").rstrip(".")


def format_duration(seconds: float) -> str:
    """Return `seconds` as a short human string that parse_duration reads back: "200ms", "1.2s"."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{_number(seconds * 1000)}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{_number(seconds)}s"

"""How an input value is shown in an error message: as TOML writes it, and never huge."""

from __future__ import annotations

from typing import Final

# Longer values are shortened in messages: a problem line stays one readable line.
_SHOWN_CHARS: Final = 60
_SHOWN_DIGITS: Final = 30


def toml_repr(value: object) -> str:
    """Render an input value the way TOML writes it, for error messages; long ones shortened."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) >= 10**_SHOWN_DIGITS:
        # Estimated from the bit length: str() of a huge int is slow and may be refused.
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, str) and len(value) > _SHOWN_CHARS:
        return f"{value[: _SHOWN_CHARS - 20]!r}... ({len(value)} characters)"
    text = repr(value)
    if len(text) > _SHOWN_CHARS:
        return f"{text[: _SHOWN_CHARS - 20]}... ({type(value).__name__})"
    return text

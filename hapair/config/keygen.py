"""Generate a cluster key: 32 random bytes, base64-encoded."""

from __future__ import annotations

import base64
import secrets
from typing import Final

KEY_BYTES: Final = 32


def generate_key() -> str:
    """Return a new random key as standard base64 (with padding) of 32 bytes."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")

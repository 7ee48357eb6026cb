"""The four roles a node can be in, with their wire codes."""

from __future__ import annotations

import enum


class Role(enum.IntEnum):
    """A node's role. The integer value is the code carried on the wire."""

    INIT = 0
    BACKUP = 1
    MASTER = 2
    FAULT = 3

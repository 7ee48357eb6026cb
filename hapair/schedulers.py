"""The balancing schedulers' names: one type for the configuration, the data planes and the DNS
answerer (a leaf, so the DNS server process imports it without the configuration's model)."""

from __future__ import annotations

from typing import Final, Literal

Scheduler = Literal["rr", "random", "weighted", "source-hash"]
SCHEDULERS: Final[tuple[Scheduler, ...]] = ("rr", "random", "weighted", "source-hash")

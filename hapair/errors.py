"""One root error for hapair, with narrow subclasses callers can catch."""

from __future__ import annotations


class HapairError(Exception):
    """Root of every error hapair raises on purpose."""

    exit_status: int = 1


class ConfigError(HapairError):
    """The configuration is invalid; carries every problem found, each with its dotted path."""

    exit_status = 2

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path}: {msg}" if path else f"  {msg}" for path, msg in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class WireError(HapairError):
    """A heartbeat could not be decoded or authenticated."""


class VipError(HapairError):
    """A virtual address could not be added, removed or announced."""


class RuntimeSetupError(HapairError):
    """The daemon could not start: missing capability, port in use, no such interface..."""


class BalancerError(HapairError):
    """The local balancer's data plane refused a change (the previous one stays in place)."""

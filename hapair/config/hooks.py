"""The ``[[hook]]`` tables: programs run (argv, no shell) on role and backend changes.

```toml
[[hook]]
on = ["master"]                 # or "role", "backend", "backup", "fault", "backend_up", ...
command = ["/usr/local/bin/on-master", "--quick"]
timeout = "10s"
env = { SERVICE = "web" }       # added to PATH and LANG; HAPAIR_* names are hapair's own
```
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import PlainValidator

from hapair.config.duration import Duration
from hapair.config.fields import Argv, Model, duration_between, problem
from hapair.config.shown import toml_repr

#: What a role change to each role is called in ``on`` and in ``HAPAIR_EVENT``.
ROLE_TRIGGERS: Final[tuple[str, ...]] = ("master", "backup", "fault")
BACKEND_TRIGGERS: Final[tuple[str, ...]] = ("backend_up", "backend_down")
#: Group names that stand for several triggers.
TRIGGER_GROUPS: Final[dict[str, tuple[str, ...]]] = {
    "role": ROLE_TRIGGERS,
    "backend": BACKEND_TRIGGERS,
}
ON_NAMES: Final[tuple[str, ...]] = (*TRIGGER_GROUPS, *ROLE_TRIGGERS, *BACKEND_TRIGGERS)

#: Variables hapair sets for every hook; a hook's ``env`` must not shadow them.
RESERVED_PREFIX: Final = "HAPAIR_"
MAX_ENV_ENTRIES: Final = 64
DEFAULT_TIMEOUT: Final = 10.0

_ENV_NAME_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_on(value: object) -> tuple[str, ...]:
    names = ", ".join(f'"{n}"' for n in ON_NAMES)
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise problem(f"must be a non-empty array of event names from {names}")
    seen: list[str] = []
    for index, item in enumerate(items):
        if item not in ON_NAMES:
            raise problem(f"on[{index}] must be one of {names} (got {toml_repr(item)})")
        if item in seen:
            raise problem(f"on[{index}]: {item!r} is listed more than once")
        seen.append(item)
    return tuple(seen)


def _check_env(value: object) -> tuple[tuple[str, str], ...]:
    # Kept as pairs, not a dict: the model is frozen and stays hashable.
    if not isinstance(value, dict):
        raise problem(f'must be a table of NAME = "value" strings (got {toml_repr(value)})')
    if len(value) > MAX_ENV_ENTRIES:
        raise problem(f"at most {MAX_ENV_ENTRIES} variables (got {len(value)})")
    pairs: list[tuple[str, str]] = []
    for name, text in value.items():
        if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
            raise problem(
                f"{toml_repr(name)} is not a variable name (letters, digits, _; no leading digit)"
            )
        if name.upper().startswith(RESERVED_PREFIX):
            raise problem(f"{name}: names starting with {RESERVED_PREFIX} are set by hapair")
        if not isinstance(text, str):
            raise problem(f"{name} must be a string (got {toml_repr(text)})")
        if "\0" in text:
            raise problem(f"{name} must not contain a NUL character")
        pairs.append((name, text))
    return tuple(pairs)


On = Annotated[tuple[str, ...], PlainValidator(_check_on)]
EnvTable = Annotated[tuple[tuple[str, str], ...], PlainValidator(_check_env)]


class Hook(Model):
    """A program run on the listed events, with ``HAPAIR_*`` variables, killed at ``timeout``."""

    on: On
    command: Argv
    timeout: Annotated[Duration, duration_between(0.01, 3600.0)] = DEFAULT_TIMEOUT
    env: EnvTable = ()

    @property
    def triggers(self) -> frozenset[str]:
        """The event names this hook runs on, groups expanded."""
        return frozenset(t for name in self.on for t in TRIGGER_GROUPS.get(name, (name,)))

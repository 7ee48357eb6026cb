"""Shared building blocks of the configuration models: field types, validators, the base model."""

from __future__ import annotations

import re
from collections.abc import Callable
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    ip_address,
    ip_interface,
)
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainValidator,
    Strict,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from hapair.config.duration import format_duration
from hapair.config.shown import toml_repr
from hapair.iptypes import IpAddress, IpInterface

DEFAULT_CONFIG_PATH: Final = Path("/etc/hapair/hapair.toml")
DEFAULT_SECRET_PATH: Final = Path("/etc/hapair/secret")
DEFAULT_STATE_DIR: Final = Path("/run/hapair")

# sun_path is 108 bytes including the terminating NUL (unix(7)).
UNIX_PATH_MAX: Final = 107
NAME_MAX_BYTES: Final = 32
# IFNAMSIZ is 16 including the NUL; the kernel's dev_valid_name() rules.
IFNAME_MAX_BYTES: Final = 15

_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]+")

Problems = list[tuple[str, str]]


def problem(message: str) -> PydanticCustomError:
    """Return a validation error whose message the loader shows as is."""
    return PydanticCustomError("hapair_value", "{message}", {"message": message})


def _check_name(value: object) -> str:
    if not isinstance(value, str):
        raise problem(f"must be a string (got {toml_repr(value)})")
    if not 1 <= len(value.encode()) <= NAME_MAX_BYTES or not _NAME_RE.fullmatch(value):
        raise problem(
            f"must be 1 to {NAME_MAX_BYTES} characters from A-Z a-z 0-9 . _ -"
            f" (got {toml_repr(value)})"
        )
    return value


def _check_ifname(value: object) -> str:
    if not isinstance(value, str):
        raise problem(f"must be an interface name string (got {toml_repr(value)})")
    size = len(value.encode())
    if (
        not 1 <= size <= IFNAME_MAX_BYTES
        or value in {".", ".."}
        or any(c in "/:" or c.isspace() for c in value)
    ):
        raise problem(
            f"{toml_repr(value)} is not a valid interface name: 1 to {IFNAME_MAX_BYTES} bytes,"
            " no '/', ':' or whitespace"
        )
    return value


def _check_abs_path(value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise problem(f"must be a non-empty path string (got {toml_repr(value)})")
    if "\0" in value:
        raise problem("must not contain a NUL character")
    path = Path(value)
    if not path.is_absolute():
        # The daemon's working directory is not something to depend on.
        raise problem(f"must be an absolute path (got {toml_repr(value)})")
    return path


_LIMITED_BROADCAST: Final = IPv4Address("255.255.255.255")


def _not_a_host(address: IpAddress) -> str | None:
    """Why `address` cannot be another host's unicast address, or None if it can be."""
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address == _LIMITED_BROADCAST:
        return "the limited broadcast address"
    if address.is_loopback:
        return "a loopback address (this host itself)"
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return f"an IPv4-mapped IPv6 address: write {address.ipv4_mapped} instead"
    return None


def _parse_host(value: object) -> IpAddress:
    if not isinstance(value, str):
        raise problem(f"must be an IP address string (got {toml_repr(value)})")
    try:
        address = ip_address(value.strip())
    except ValueError:
        raise problem(f"{toml_repr(value)} is not an IPv4 or IPv6 address") from None
    reason = _not_a_host(address)
    if reason is not None:
        raise problem(f"{toml_repr(value)} is not a unicast host address: it is {reason}")
    return address


def _parse_vip(value: object) -> IpInterface:
    hint = 'use e.g. "10.0.0.50/24" or "fd00::50/64"'
    if not isinstance(value, str):
        raise problem(f"must be an address string with prefix: {hint} (got {toml_repr(value)})")
    try:
        iface = ip_interface(value.strip())
    except ValueError:
        raise problem(f"{toml_repr(value)} is not an IP address with prefix: {hint}") from None
    ip = iface.ip
    reason = _not_a_host(ip)
    if reason is not None:
        raise problem(f"{toml_repr(value)} cannot float between nodes: it is {reason}")
    if isinstance(ip, IPv6Address) and ip.is_link_local:
        raise problem(
            f"{toml_repr(value)} is link-local (fe80::/10): valid on one link only and never"
            " routed; use a global or unique-local (fd00::/8) address"
        )
    net = iface.network
    if net.prefixlen == 0:
        raise problem(
            f"{toml_repr(value)}: prefix /0 covers every address (the kernel would add an"
            ' on-link route for all of them): use the subnet\'s own prefix, e.g. "10.0.0.50/24"'
        )
    if (
        isinstance(iface, IPv4Interface)
        and net.prefixlen <= 30
        and ip in {net.network_address, net.broadcast_address}
    ):
        raise problem(f"{toml_repr(value)} is the network or broadcast address of {net}")
    return iface


def int_between(low: int, high: int) -> PlainValidator:
    def check(value: object) -> int:
        # bool is an int subclass; `priority = true` is a mistake.
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise problem(f"must be an integer from {low} to {high} (got {toml_repr(value)})")
        return value

    return PlainValidator(check)


def duration_between(low: float, high: float, *, zero_disables: bool = False) -> AfterValidator:
    def check(value: float) -> float:
        if zero_disables and value == 0:
            return value
        if not low <= value <= high:
            span = f"between {format_duration(low)} and {format_duration(high)}"
            prefix = f"0 (off) or {span}" if zero_disables else span
            raise problem(f"must be {prefix} (got {format_duration(value)})")
        return value

    return AfterValidator(check)


def _check_weight(value: object) -> int | Literal["fault"]:
    if value == "fault":
        return "fault"
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 253:
        return value
    raise problem(
        f'must be an integer from 1 to 253 (subtracted from priority while failing) or "fault"'
        f" (got {toml_repr(value)})"
    )


def _check_argv(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise problem(
            'must be a non-empty array of strings (argv, no shell), e.g. ["/usr/bin/check", "-q"]'
        )
    for index, arg in enumerate(value):
        if not isinstance(arg, str):
            raise problem(f"command[{index}] must be a string (got {toml_repr(arg)})")
        if "\0" in arg:
            raise problem(f"command[{index}] must not contain a NUL character")
    program = value[0]
    if not program.strip():
        raise problem("command[0], the program to run, must not be empty")
    if not program.startswith("/"):
        # The daemon's PATH and working directory are not the shell's: say the full path.
        name = program.rsplit("/", 1)[-1] or program
        raise problem(
            f"command[0] {toml_repr(program)} is not an absolute path: hapair does not search"
            f" PATH; write the program's full path (`command -v {name}` shows it)"
        )
    return tuple(value)


def non_empty(what: str) -> Callable[[tuple[object, ...]], tuple[object, ...]]:
    def check(value: tuple[object, ...]) -> tuple[object, ...]:
        if not value:
            raise problem(f"at least one {what} is required")
        return value

    return check


def unique(value: tuple[IpAddress, ...]) -> tuple[IpAddress, ...]:
    seen: set[IpAddress] = set()
    for address in value:
        if address in seen:
            raise problem(f"{address} is listed more than once")
        seen.add(address)
    return value


Name = Annotated[str, PlainValidator(_check_name)]
IfName = Annotated[str, PlainValidator(_check_ifname)]
AbsPath = Annotated[Path, PlainValidator(_check_abs_path)]
HostAddress = Annotated[IpAddress, PlainValidator(_parse_host)]
VipAddress = Annotated[IpInterface, PlainValidator(_parse_vip)]
Weight = Annotated[int | Literal["fault"], PlainValidator(_check_weight)]
Argv = Annotated[tuple[str, ...], PlainValidator(_check_argv)]
StrictBool = Annotated[bool, Strict()]


class Model(BaseModel):
    """Base of every config model: frozen, unknown keys rejected, cross-field rules collected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def _problems(self) -> Problems:
        """Return cross-field problems as (path relative to this model, message)."""
        return []

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Self:
        problems = self._problems()
        if problems:
            # The loader expands `problems` so each one keeps its own dotted path.
            raise PydanticCustomError(
                "hapair_cross_field",
                "{summary}",
                {"summary": "; ".join(f"{p}: {m}" for p, m in problems), "problems": problems},
            )
        return self


#: ``cluster.peers = "auto"``: the peer is found by discovery (mDNS) instead of configured.
AUTO_PEERS: Final = "auto"


def _auto_or_addresses(value: object, handler: ValidatorFunctionWrapHandler) -> object:
    if value == AUTO_PEERS:
        return AUTO_PEERS
    if isinstance(value, str):
        raise problem(
            f'must be "auto" or an array of addresses, e.g. ["10.0.0.2"] (got {toml_repr(value)})'
        )
    return handler(value)


if TYPE_CHECKING:  # readers see both forms, so each must handle "auto"
    Peers = tuple[IpAddress, ...] | Literal["auto"]
else:  # the list is validated as before (errors keep their paths); "auto" is settled first
    Peers = Annotated[
        tuple[HostAddress, ...],
        AfterValidator(non_empty("peer address")),
        AfterValidator(unique),
        WrapValidator(_auto_or_addresses),
    ]


def parse_endpoint(value: object, hint: str, *, wildcard: bool = False) -> tuple[IpAddress, int]:
    """``ADDRESS:PORT`` or ``[V6]:PORT``; ``wildcard`` admits 0.0.0.0 and :: (a listener)."""
    if not isinstance(value, str) or ":" not in value:
        raise problem(f"must be ADDRESS:PORT: {hint} (got {toml_repr(value)})")
    host, _, port = value.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ip_address(host)
    except ValueError:
        shown = f"{toml_repr(value)}: {toml_repr(host)}"
        raise problem(f"{shown} is not an IP address ({hint})") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise problem(f"{toml_repr(value)}: the port must be 1 to 65535 ({hint})")
    if wildcard and address.is_multicast:
        raise problem(f"{toml_repr(value)} is a multicast address")
    if not wildcard and (address.is_unspecified or address.is_multicast):
        raise problem(f"{toml_repr(value)} is not a unicast host address")
    return address, int(port)

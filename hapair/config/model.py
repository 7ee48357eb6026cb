"""The configuration model: frozen, unknown keys rejected, cross-field rules checked."""

from __future__ import annotations

import re
from collections.abc import Callable
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv6Address,
    IPv6Interface,
    ip_address,
    ip_interface,
)
from pathlib import Path
from typing import Annotated, Final, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    Strict,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from hapair.config.duration import Duration, format_duration

DEFAULT_CONFIG_PATH: Final = Path("/etc/hapair/hapair.toml")
DEFAULT_SECRET_PATH: Final = Path("/etc/hapair/secret")
DEFAULT_STATE_DIR: Final = Path("/run/hapair")

# sun_path is 108 bytes including the terminating NUL (unix(7)).
UNIX_PATH_MAX: Final = 107
NAME_MAX_BYTES: Final = 32
# IFNAMSIZ is 16 including the NUL; the kernel's dev_valid_name() rules.
IFNAME_MAX_BYTES: Final = 15

_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]+")

IpAddress = IPv4Address | IPv6Address
IpInterface = IPv4Interface | IPv6Interface
Problems = list[tuple[str, str]]


def problem(message: str) -> PydanticCustomError:
    """Return a validation error whose message the loader shows as is."""
    return PydanticCustomError("hapair_value", "{message}", {"message": message})


def toml_repr(value: object) -> str:
    """Render an input value the way TOML writes it, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _check_name(value: object) -> str:
    if not isinstance(value, str):
        raise problem(f"must be a string (got {value!r})")
    if not 1 <= len(value.encode()) <= NAME_MAX_BYTES or not _NAME_RE.fullmatch(value):
        raise problem(
            f"must be 1 to {NAME_MAX_BYTES} characters from A-Z a-z 0-9 . _ - (got {value!r})"
        )
    return value


def _check_ifname(value: object) -> str:
    if not isinstance(value, str):
        raise problem(f"must be an interface name string (got {value!r})")
    size = len(value.encode())
    if (
        not 1 <= size <= IFNAME_MAX_BYTES
        or value in {".", ".."}
        or any(c in "/:" or c.isspace() for c in value)
    ):
        raise problem(
            f"{value!r} is not a valid interface name: 1 to {IFNAME_MAX_BYTES} bytes,"
            " no '/', ':' or whitespace"
        )
    return value


def _check_abs_path(value: object) -> Path:
    if not isinstance(value, str) or not value:
        raise problem(f"must be a non-empty path string (got {value!r})")
    if "\0" in value:
        raise problem("must not contain a NUL character")
    path = Path(value)
    if not path.is_absolute():
        # The daemon's working directory is not something to depend on.
        raise problem(f"must be an absolute path (got {value!r})")
    return path


def _parse_host(value: object) -> IpAddress:
    if not isinstance(value, str):
        raise problem(f"must be an IP address string (got {value!r})")
    try:
        address = ip_address(value.strip())
    except ValueError:
        raise problem(f"{value!r} is not an IPv4 or IPv6 address") from None
    if address.is_unspecified or address.is_multicast:
        raise problem(f"{value!r} is not a unicast host address")
    return address


def _parse_vip(value: object) -> IpInterface:
    hint = 'use e.g. "10.0.0.50/24" or "fd00::50/64"'
    if not isinstance(value, str):
        raise problem(f"must be an address string with prefix: {hint} (got {value!r})")
    try:
        iface = ip_interface(value.strip())
    except ValueError:
        raise problem(f"{value!r} is not an IP address with prefix: {hint}") from None
    ip = iface.ip
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise problem(f"{value!r} cannot float between nodes: not a unicast host address")
    net = iface.network
    if (
        isinstance(iface, IPv4Interface)
        and net.prefixlen <= 30
        and ip in {net.network_address, net.broadcast_address}
    ):
        raise problem(f"{value!r} is the network or broadcast address of {net}")
    return iface


def _int_between(low: int, high: int) -> PlainValidator:
    def check(value: object) -> int:
        # bool is an int subclass; `priority = true` is a mistake.
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise problem(f"must be an integer from {low} to {high} (got {toml_repr(value)})")
        return value

    return PlainValidator(check)


def _duration_between(low: float, high: float, *, zero_disables: bool = False) -> AfterValidator:
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
            raise problem(f"command[{index}] must be a string (got {arg!r})")
        if "\0" in arg:
            raise problem(f"command[{index}] must not contain a NUL character")
    if not value[0].strip():
        raise problem("command[0], the program to run, must not be empty")
    return tuple(value)


def _non_empty(what: str) -> Callable[[tuple[object, ...]], tuple[object, ...]]:
    def check(value: tuple[object, ...]) -> tuple[object, ...]:
        if not value:
            raise problem(f"at least one {what} is required")
        return value

    return check


def _unique(value: tuple[IpAddress, ...]) -> tuple[IpAddress, ...]:
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


class _Model(BaseModel):
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


class Node(_Model):
    """This node: its name and base priority (higher wins the election)."""

    name: Name
    priority: Annotated[int, _int_between(1, 254)]


class Cluster(_Model):
    """The pair: shared secret, peer addresses (one per heartbeat link) and heartbeat timing."""

    name: Name
    secret_file: AbsPath = DEFAULT_SECRET_PATH
    peers: Annotated[
        tuple[HostAddress, ...],
        AfterValidator(_non_empty("peer address")),
        AfterValidator(_unique),
    ]
    port: Annotated[int, _int_between(1, 65535)] = 694
    interval: Annotated[Duration, _duration_between(0.01, 10.0)] = 0.2
    # >= 3 keeps the dead interval above 2 x the heartbeat interval, so one lost packet never
    # kills a peer.
    dead_after: Annotated[int, _int_between(3, 100)] = 5
    preempt: StrictBool = True
    preempt_delay: Annotated[Duration, _duration_between(0.0, 3600.0)] = 0.0

    @property
    def dead_interval(self) -> float:
        """Seconds of silence, before skew, after which a peer is declared dead."""
        return self.dead_after * self.interval

    def _problems(self) -> Problems:
        return [
            (f"peers[{index}]", f'{peer} is link-local: add the interface, e.g. "{peer}%eth1"')
            for index, peer in enumerate(self.peers)
            if isinstance(peer, IPv6Address) and peer.is_link_local and not peer.scope_id
        ]


class Vip(_Model):
    """A floating address and the interface it is added to while MASTER."""

    address: VipAddress
    interface: IfName

    @property
    def ip(self) -> IpAddress:
        """The address without its prefix."""
        return self.address.ip


class Garp(_Model):
    """Gratuitous ARP / unsolicited NA announcements after takeover and while MASTER."""

    burst: Annotated[int, _int_between(1, 50)] = 5
    spacing: Annotated[Duration, _duration_between(0.0, 1.0)] = 0.01
    second_burst_delay: Annotated[Duration, _duration_between(0.0, 3600.0)] = 2.0
    refresh: Annotated[Duration, _duration_between(1.0, 3600.0, zero_disables=True)] = 10.0

    @property
    def burst_duration(self) -> float:
        """Seconds from the first to the last announcement of one burst."""
        return (self.burst - 1) * self.spacing

    def _problems(self) -> Problems:
        problems: Problems = []
        length = format_duration(self.burst_duration)
        if 0 < self.second_burst_delay <= self.burst_duration:
            problems.append(
                ("second_burst_delay", f"must be 0 (off) or longer than one burst ({length})")
            )
        if 0 < self.refresh <= self.burst_duration:
            problems.append(("refresh", f"must be 0 (off) or longer than one burst ({length})"))
        return problems


class _TrackBase(_Model):
    """What every health check shares: its weight and its timing with rise/fall hysteresis."""

    weight: Weight
    interval: Annotated[Duration, _duration_between(0.01, 3600.0)] = 1.0
    timeout: Annotated[Duration, _duration_between(0.01, 3600.0)] = 1.0
    rise: Annotated[int, _int_between(1, 100)] = 2
    fall: Annotated[int, _int_between(1, 100)] = 2

    @property
    def forces_fault(self) -> bool:
        """Whether a failing check puts the node in FAULT rather than lowering its priority."""
        return self.weight == "fault"

    def _problems(self) -> Problems:
        if self.timeout > self.interval:
            return [
                (
                    "timeout",
                    f"must not exceed interval ({format_duration(self.interval)}):"
                    " checks would overlap",
                )
            ]
        return []


class InterfaceTrack(_TrackBase):
    """Fails while the interface is down or has no carrier."""

    kind: Literal["interface"]
    interface: IfName


class GatewayTrack(_TrackBase):
    """Fails while the gateway does not answer ARP or ICMP echo."""

    kind: Literal["gateway"]
    address: HostAddress
    method: Literal["arp", "icmp"] = "icmp"
    interface: IfName | None = None

    def _problems(self) -> Problems:
        problems = super()._problems()
        if self.method == "arp" and isinstance(self.address, IPv6Address):
            problems.append(("method", f'ARP is IPv4 only: use "icmp" for {self.address}'))
        elif self.method == "arp" and self.interface is None:
            problems.append(("interface", 'required with method = "arp": ARP asks on one link'))
        if (
            isinstance(self.address, IPv6Address)
            and self.address.is_link_local
            and not self.address.scope_id
            and self.interface is None
        ):
            problems.append(("interface", f"required for the link-local gateway {self.address}"))
        return problems


class CommandTrack(_TrackBase):
    """Fails while the command exits non-zero or runs past its timeout."""

    kind: Literal["command"]
    command: Argv


Track = Annotated[InterfaceTrack | GatewayTrack | CommandTrack, Field(discriminator="kind")]


class Runtime(_Model):
    """Where this instance keeps its state and control socket."""

    state_dir: AbsPath = DEFAULT_STATE_DIR
    control_socket: AbsPath | None = None
    state_file: AbsPath | None = None


class Log(_Model):
    """Log level and output format ("auto": console on a TTY, JSON lines otherwise)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


def _parse_endpoint(value: object) -> tuple[IpAddress, int]:
    hint = 'use "10.0.1.21:8080" or "[fd00::21]:8080"'
    if not isinstance(value, str) or ":" not in value:
        raise problem(f"must be ADDRESS:PORT: {hint} (got {toml_repr(value)})")
    host, _, port = value.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ip_address(host)
    except ValueError:
        raise problem(f"{value!r}: {host!r} is not an IP address ({hint})") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise problem(f"{value!r}: the port must be 1 to 65535 ({hint})")
    if address.is_unspecified or address.is_multicast:
        raise problem(f"{value!r} is not a unicast host address")
    return address, int(port)


def _balancer_kind(value: object) -> Literal["nat"]:
    if value == "nat":
        return "nat"
    if value in ("dr", "proxy", "redirect", "dns"):
        raise problem(f"kind {value!r} is not available in this version yet (available: nat)")
    raise problem(
        f'must be one of "nat", "dr", "proxy", "redirect", "dns" (got {toml_repr(value)})'
    )


Endpoint = Annotated[tuple[IpAddress, int], PlainValidator(_parse_endpoint)]


class BackendCheck(_Model):
    """How backends are probed: tcp connect, http GET, or not at all."""

    kind: Literal["tcp", "http", "none"] = "tcp"
    path: str = "/"
    expect_status: Annotated[int, _int_between(100, 599)] = 200
    body: str | None = None
    interval: Annotated[Duration, _duration_between(0.05, 3600.0)] = 1.0
    timeout: Annotated[Duration, _duration_between(0.01, 3600.0)] = 0.5
    rise: Annotated[int, _int_between(1, 100)] = 2
    fall: Annotated[int, _int_between(1, 100)] = 3

    def _problems(self) -> Problems:
        if self.timeout > self.interval:
            return [("timeout", "must not exceed interval: probes would overlap")]
        return []


class Backend(_Model):
    """One real server."""

    address: Endpoint
    weight: Annotated[int, _int_between(1, 1000)] = 1
    check: BackendCheck | None = None


class Balancer(_Model):
    """The local load balancer run by the pair."""

    kind: Annotated[Literal["nat"], PlainValidator(_balancer_kind)]
    scheduler: Literal["rr", "random", "weighted", "source-hash"] = "rr"
    mode: Literal["hot", "cold"] = "hot"
    listen: Endpoint
    protocol: Literal["tcp", "udp"] = "tcp"
    masquerade: StrictBool = False
    all_down: Literal["keep", "sorry"] = "keep"
    sorry: Endpoint | None = None
    backend: Annotated[tuple[Backend, ...], AfterValidator(_non_empty("[[balancer.backend]]"))]
    check: BackendCheck = Field(default_factory=BackendCheck)

    def _problems(self) -> Problems:
        problems: Problems = []
        if self.all_down == "sorry" and self.sorry is None:
            problems.append(("sorry", 'required when all_down = "sorry" (e.g. "10.0.1.99:80")'))
        seen: dict[tuple[IpAddress, int], int] = {}
        for index, b in enumerate(self.backend):
            if b.address in seen:
                problems.append(
                    (f"backend[{index}].address", f"duplicates backend[{seen[b.address]}]")
                )
            seen.setdefault(b.address, index)
            if b.address[0].version != self.listen[0].version:
                problems.append(
                    (
                        f"backend[{index}].address",
                        f"must be IPv{self.listen[0].version} like listen",
                    )
                )
        return problems


class Config(_Model):
    """A whole validated hapair configuration."""

    node: Node
    cluster: Cluster
    vip: Annotated[tuple[Vip, ...], AfterValidator(_non_empty("[[vip]] table"))]
    garp: Garp = Field(default_factory=Garp)
    track: tuple[Track, ...] = ()
    runtime: Runtime = Field(default_factory=Runtime)
    log: Log = Field(default_factory=Log)
    balancer: Balancer | None = None

    _source: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _take_source(self, info: ValidationInfo) -> Self:
        # The path read comes through the validation context, never from the file itself.
        if isinstance(info.context, dict):
            self._source = str(info.context.get("source", ""))
        return self

    @property
    def source(self) -> str:
        """The path this configuration was read from ("" if built in memory)."""
        return self._source

    @property
    def instance_name(self) -> str:
        """`{cluster}-{node}`: unique per daemon, used to name its runtime files."""
        return f"{self.cluster.name}-{self.node.name}"

    @property
    def control_socket_path(self) -> Path:
        """The control socket: runtime.control_socket or `{state_dir}/{cluster}-{node}.sock`."""
        return self.runtime.control_socket or self.runtime.state_dir / f"{self.instance_name}.sock"

    @property
    def state_file_path(self) -> Path:
        """The state file: runtime.state_file or `{state_dir}/{cluster}-{node}.state`."""
        return self.runtime.state_file or self.runtime.state_dir / f"{self.instance_name}.state"

    @property
    def vip_addresses(self) -> tuple[IpAddress, ...]:
        """Every VIP without its prefix, in file order."""
        return tuple(v.ip for v in self.vip)

    def skew_for(self, priority: int) -> float:
        """Seconds a node of `priority` waits beyond the dead interval; higher waits less."""
        if not 0 <= priority <= 255:
            raise ValueError(f"priority must be 0..255, got {priority}")
        return (256 - priority) / 256 * self.cluster.interval

    def dead_time_for(self, priority: int) -> float:
        """Seconds of peer silence before a node of `priority` declares the peer dead."""
        return self.cluster.dead_interval + self.skew_for(priority)

    @property
    def dead_time(self) -> float:
        """This node's peer-dead detection time: dead_time_for(node.priority)."""
        return self.dead_time_for(self.node.priority)

    def _problems(self) -> Problems:
        problems: Problems = []
        first_seen: dict[IpAddress, int] = {}
        for index, vip in enumerate(self.vip):
            if vip.ip in first_seen:
                problems.append(
                    (f"vip[{index}].address", f"{vip.ip} duplicates vip[{first_seen[vip.ip]}]")
                )
            first_seen.setdefault(vip.ip, index)
        for index, peer in enumerate(self.cluster.peers):
            if peer in first_seen:
                problems.append(
                    (
                        f"cluster.peers[{index}]",
                        f"{peer} is also vip[{first_seen[peer]}]: a peer address must be the"
                        " other node's own address",
                    )
                )
        socket = self.control_socket_path
        where = "runtime.control_socket" if self.runtime.control_socket else "runtime.state_dir"
        if len(bytes(socket)) > UNIX_PATH_MAX:
            problems.append(
                (
                    where,
                    f"control socket path {socket} is {len(bytes(socket))} bytes;"
                    f" a unix socket path must be at most {UNIX_PATH_MAX}",
                )
            )
        if socket == self.state_file_path:
            problems.append(("runtime.state_file", "must differ from the control socket path"))
        if self.balancer is not None and self.balancer.listen[0] not in first_seen:
            problems.append(
                ("balancer.listen", f"{self.balancer.listen[0]} is not one of the VIPs")
            )
        return problems

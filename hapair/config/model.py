"""The configuration model: frozen, unknown keys rejected, cross-field rules checked."""

from __future__ import annotations

import grp
import os
import stat
from ipaddress import IPv4Address, IPv4Interface, IPv6Address
from pathlib import Path
from typing import Annotated, Final, Literal, Self

from pydantic import (
    AfterValidator,
    Field,
    PlainValidator,
    PrivateAttr,
    ValidationInfo,
    model_validator,
)

from hapair.config.balancer import Balancer
from hapair.config.duration import Duration, format_duration
from hapair.config.fields import (
    AUTO_PEERS,
    DEFAULT_SECRET_PATH,
    DEFAULT_STATE_DIR,
    UNIX_PATH_MAX,
    AbsPath,
    Argv,
    HostAddress,
    IfName,
    Model,
    Name,
    Peers,
    Problems,
    StrictBool,
    VipAddress,
    Weight,
    duration_between,
    int_between,
    non_empty,
    parse_endpoint,
    problem,
)
from hapair.config.hooks import Hook
from hapair.config.shown import toml_repr
from hapair.core.timing import dead_interval, dead_time, skew
from hapair.iptypes import IpAddress


class Node(Model):
    """This node: its name and base priority (higher wins the election)."""

    name: Name
    priority: Annotated[int, int_between(1, 254)]


class Cluster(Model):
    """The pair: shared secret, peer addresses (one per heartbeat link) and heartbeat timing."""

    name: Name
    secret_file: AbsPath = DEFAULT_SECRET_PATH
    peers: Peers
    port: Annotated[int, int_between(1, 65535)] = 694
    interval: Annotated[Duration, duration_between(0.01, 10.0)] = 0.2
    # >= 3 keeps the dead interval above 2 x the heartbeat interval, so one lost packet never
    # kills a peer.
    dead_after: Annotated[int, int_between(3, 100)] = 5
    preempt: StrictBool = True
    preempt_delay: Annotated[Duration, duration_between(0.0, 3600.0)] = 0.0

    @property
    def dead_interval(self) -> float:
        """Seconds of silence, before skew, after which a peer is declared dead."""
        return dead_interval(self.interval, self.dead_after)

    @property
    def peers_auto(self) -> bool:
        """True when the peer is found by discovery (``peers = "auto"``)."""
        return self.peers == AUTO_PEERS

    @property
    def peer_addresses(self) -> tuple[IpAddress, ...]:
        """The configured peer addresses (none with ``peers = "auto"``)."""
        return () if isinstance(self.peers, str) else self.peers

    def _problems(self) -> Problems:
        return [
            (f"peers[{index}]", f'{peer} is link-local: add the interface, e.g. "{peer}%eth1"')
            for index, peer in enumerate(self.peer_addresses)
            if isinstance(peer, IPv6Address) and peer.is_link_local and not peer.scope_id
        ]


class Vip(Model):
    """A floating address and the interface it is added to while MASTER."""

    address: VipAddress
    interface: IfName

    @property
    def ip(self) -> IpAddress:
        """The address without its prefix."""
        return self.address.ip


class Garp(Model):
    """Gratuitous ARP / unsolicited NA announcements after takeover and while MASTER."""

    burst: Annotated[int, int_between(1, 50)] = 5
    spacing: Annotated[Duration, duration_between(0.0, 1.0)] = 0.01
    second_burst_delay: Annotated[Duration, duration_between(0.0, 3600.0)] = 2.0
    refresh: Annotated[Duration, duration_between(1.0, 3600.0, zero_disables=True)] = 10.0

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


class _TrackBase(Model):
    """What every health check shares: its weight and its timing with rise/fall hysteresis."""

    weight: Weight
    interval: Annotated[Duration, duration_between(0.01, 3600.0)] = 1.0
    timeout: Annotated[Duration, duration_between(0.01, 3600.0)] = 1.0
    rise: Annotated[int, int_between(1, 100)] = 2
    fall: Annotated[int, int_between(1, 100)] = 2

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


def _check_group(value: object) -> str:
    """A group name or number that exists on this host (the socket is chowned to it)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or "\0" in value:
        raise problem(f"must be a group name or number (got {toml_repr(value)})")
    try:
        if value.isascii() and value.isdigit():
            grp.getgrgid(int(value))
        else:
            grp.getgrnam(value)
    except (KeyError, OverflowError):
        raise problem(f"group {value!r} does not exist on this host (groupadd {value})") from None
    return value


#: Where the durable state (maintenance) lives: the units' StateDirectory=, kept across reboots.
DEFAULT_LIB_DIR: Final = Path("/var/lib/hapair")


def _check_lib_dir(value: Path) -> Path:
    """A directory, or nothing yet (the daemon creates it): never an existing other file."""
    try:
        is_other = value.exists() and not value.is_dir()
    except OSError:  # unreadable from here (not root): the daemon checks it at start
        return value
    if is_other:
        raise problem(f"{value} exists and is not a directory")
    return value


class Runtime(Model):
    """Where this instance keeps its state and control socket."""

    #: Volatile: the control socket and the balancer's generated files (/run, tmpfs).
    state_dir: AbsPath = DEFAULT_STATE_DIR
    #: Durable: the state file (maintenance survives a reboot).
    lib_dir: Annotated[AbsPath, AfterValidator(_check_lib_dir)] = DEFAULT_LIB_DIR
    control_socket: AbsPath | None = None
    state_file: AbsPath | None = None
    #: The read group of the control socket: `hapair status` without root.
    control_group: Annotated[str, PlainValidator(_check_group)] | None = None
    #: The admin group: also `handover`, `maintenance` and `reload` (root always may).
    control_admin_group: Annotated[str, PlainValidator(_check_group)] | None = None
    #: SCHED_RR priority of the heartbeat loop's thread (keepalived's vrrp_rt_priority), so a
    #: busy host cannot keep it waiting for a CPU; 0: left as started (hapair/runtime/sched.py).
    realtime_priority: Annotated[int, int_between(0, 99)] = 0

    def _problems(self) -> Problems:
        try:
            mode = os.stat(self.state_dir).st_mode
        except OSError:
            return []  # missing: created at start; unreadable: run says so
        if not stat.S_ISDIR(mode):
            return [("state_dir", f"{self.state_dir} exists and is not a directory")]
        return []


class Log(Model):
    """Log level and output format ("auto": console on a TTY, JSON lines otherwise)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"
    #: "auto": native journal entries when stderr is the journal ($JOURNAL_STREAM), else stderr.
    sink: Literal["auto", "stderr", "journald"] = "auto"


def _parse_listen(value: object) -> tuple[IpAddress, int]:
    return parse_endpoint(
        value, 'use "127.0.0.1:9650", "0.0.0.0:9650" or "[::]:9650"', wildcard=True
    )


ListenAddress = Annotated[tuple[IpAddress, int], PlainValidator(_parse_listen)]


class MetricsEndpoint(Model):
    """``[metrics]``: Prometheus ``/metrics`` and ``/role`` (200 on MASTER, else 503)."""

    listen: ListenAddress = (IPv4Address("127.0.0.1"), 9650)


class Discovery(Model):
    """``[discovery]``: announce this node as ``_hapair._udp.local.`` (mDNS) on its VIP link."""

    announce: StrictBool = True


def _subnet_edge(peer: IpAddress, vips: tuple[Vip, ...]) -> str | None:
    """Why `peer` is the network or broadcast address of a VIP's subnet, or None."""
    for index, vip in enumerate(vips):
        iface = vip.address
        if not isinstance(iface, IPv4Interface) or iface.network.prefixlen > 30:
            continue
        net = iface.network
        if peer == net.broadcast_address:
            return f"{peer} is the broadcast address of vip[{index}]'s subnet {net}"
        if peer == net.network_address:
            return f"{peer} is the network address of vip[{index}]'s subnet {net}"
    return None


def _check_priority(priority: int) -> None:
    if not 0 <= priority <= 255:
        raise ValueError(f"priority must be 0..255, got {priority}")


class Config(Model):
    """A whole validated hapair configuration."""

    node: Node
    cluster: Cluster
    vip: Annotated[tuple[Vip, ...], AfterValidator(non_empty("[[vip]] table"))]
    garp: Garp = Field(default_factory=Garp)
    track: tuple[Track, ...] = ()
    runtime: Runtime = Field(default_factory=Runtime)
    log: Log = Field(default_factory=Log)
    balancer: Balancer | None = None
    metrics: MetricsEndpoint | None = None
    hook: tuple[Hook, ...] = ()
    discovery: Discovery | None = None

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
        """The state file: runtime.state_file or `{lib_dir}/{cluster}-{node}.state`."""
        return self.runtime.state_file or self.runtime.lib_dir / f"{self.instance_name}.state"

    @property
    def balancer_run_dir(self) -> Path:
        """Generated data-plane files and pid files: `{state_dir}/{cluster}-{node}.balancer`."""
        return self.runtime.state_dir / f"{self.instance_name}.balancer"

    @property
    def vip_addresses(self) -> tuple[IpAddress, ...]:
        """Every VIP without its prefix, in file order."""
        return tuple(v.ip for v in self.vip)

    def skew_for(self, priority: int) -> float:
        """Seconds a node of `priority` waits beyond the dead interval; higher waits less."""
        _check_priority(priority)
        return skew(self.cluster.interval, priority)

    def dead_time_for(self, priority: int) -> float:
        """Seconds of peer silence before a node of `priority` declares the peer dead."""
        _check_priority(priority)
        return dead_time(self.cluster.interval, self.cluster.dead_after, priority)

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
        for index, peer in enumerate(self.cluster.peer_addresses):
            edge = _subnet_edge(peer, self.vip)
            if edge is not None:
                problems.append((f"cluster.peers[{index}]", edge))
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
        if self.cluster.peers_auto and (self.discovery is None or not self.discovery.announce):
            problems.append(
                (
                    "cluster.peers",
                    '"auto" finds the peer by discovery: add [discovery] announce = true',
                )
            )
        if self.balancer is not None and self.balancer.listen[0] not in first_seen:
            problems.append(
                ("balancer.listen", f"{self.balancer.listen[0]} is not one of the VIPs")
            )
        return problems

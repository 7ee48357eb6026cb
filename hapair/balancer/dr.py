"""The `dr` (direct routing) data plane: rewrite the destination MAC of VIP frames to a backend's.

Clients reach the VIP through the node that holds it (they ARP the VIP to that node's MAC). In
the netdev ingress hook of the VIP's interface, hapair's table ``netdev hapair_dr`` takes each
frame addressed to this node's MAC, the VIP and the service port, sets its destination MAC to
the chosen backend's and its source MAC to this node's own, and sends it straight back out of
the same interface. The IP packet is untouched: the backend, which holds the VIP on its
loopback and keeps quiet about it in ARP (``hapair realserver up``), accepts it and answers the
client directly. So replies never pass the dispatcher, and it needs no ``ip_forward``.

Why each piece is there:

- ``ether daddr <own MAC>``: only the VIP holder receives frames for the VIP at its own MAC, so
  the same table can be loaded on both nodes (hot mode) and only the VIP's move switches the
  dispatcher; a standby never touches flooded frames meant for its peer.
- ``ether saddr set <own MAC>``: a frame sent out with the client's source MAC would teach the
  switch that the client sits behind the dispatcher's port, and the backends' replies would be
  delivered here instead of to the client.
- There is no connection tracking at this hook, so every packet picks its backend by itself:
  a flow hash selects one of 256 buckets, and each bucket belongs to one backend
  (``hapair.balancer.buckets``: weighted rendezvous hashing). ``rr``, ``random`` and
  ``weighted`` hash the client address and port (one backend per flow, spread evenly or by
  weight: direct routing cannot count connections), ``source-hash`` hashes the client address
  only (one backend per client). When a backend leaves the pool, only its own buckets move; the
  flows on the others go on undisturbed. The fixed seed gives both nodes the same table, so
  flows survive a failover.

Backend MACs come from the kernel's neighbour table. They are read with ``ip -j`` rather than
pyroute2 because the daemon calls the data plane from inside its asyncio loop, where pyroute2's
synchronous API cannot run its own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from hapair.balancer.buckets import BUCKETS, assign
from hapair.balancer.nft import HASH_SEED, nft_binary, nft_delete_table, nft_load
from hapair.balancer.plane import Member, Pool
from hapair.config.balancer import Balancer
from hapair.errors import BalancerError
from hapair.iptypes import IpAddress
from hapair.schedulers import Scheduler

TABLE: Final = "hapair_dr"
FAMILY: Final = "netdev"
#: How long apply() waits for a backend's MAC it has never seen; once per backend, so a dead
#: backend stalls the daemon's loop at most once.
RESOLVE_TIMEOUT: Final = 1.0
RESOLVE_POLL: Final = 0.02
#: How often supervise() re-reads the MACs (a backend replaced, a NIC swapped), and how soon
#: while a member of the pool still has none.
CHECK_INTERVAL: Final = 5.0
RETRY_INTERVAL: Final = 1.0
IP_TIMEOUT: Final = 5.0
#: A datagram to the discard port makes the kernel resolve the backend's address (ARP or NDP).
DISCARD_PORT: Final = 9
_MAC_RE: Final = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_IFNAME_RE: Final = re.compile(r"[^\s\"'/:]{1,15}")
_NO_LLADDR: Final = frozenset({"FAILED", "INCOMPLETE", "NONE"})


# ---------------------------------------------------------------- rendering (pure) ----------


@dataclass(frozen=True, slots=True)
class DrRule:
    """One VIP:port spread over backend MACs, bucket by bucket."""

    vip: IpAddress
    port: int
    interface: str
    own_mac: str
    owners: tuple[str, ...]  # the backend MAC for each bucket 0 .. len-1
    scheduler: Scheduler = "rr"
    proto: Literal["tcp", "udp"] = "tcp"


def check_mac(mac: str) -> str:
    """``mac`` in lower case if it is a 48-bit Ethernet address; ValueError otherwise."""
    low = mac.strip().lower()
    if not _MAC_RE.fullmatch(low):
        raise ValueError(f"{mac!r} is not an Ethernet MAC address")
    return low


def selector(rule: DrRule) -> str:
    """The flow hash that picks the bucket: per client (``source-hash``) or per flow."""
    family = "ip" if rule.vip.version == 4 else "ip6"
    key = f"{family} saddr"
    if rule.scheduler != "source-hash":
        key += f" . {rule.proto} sport"
    return f"jhash {key} mod {len(rule.owners)} seed {HASH_SEED:#x}"


def map_entries(owners: Sequence[str]) -> str:
    """``0-3 : mac1, 4 : mac2, ...``: runs of buckets with the same owner as ranges."""
    parts: list[str] = []
    start = 0
    for k in range(1, len(owners) + 1):
        if k == len(owners) or owners[k] != owners[start]:
            first = str(start) if k - 1 == start else f"{start}-{k - 1}"
            parts.append(f"{first} : {owners[start]}")
            start = k
    return ", ".join(parts)


def render_rule(rule: DrRule) -> str:
    """The ingress rule: match frames for the VIP at our MAC, rewrite MACs, send them back out."""
    if not _IFNAME_RE.fullmatch(rule.interface):
        raise ValueError(f"invalid interface name {rule.interface!r}")
    if not rule.owners:
        raise ValueError("an empty pool cannot be rendered: keep the last pool or a sorry server")
    own = check_mac(rule.own_mac)
    owners = [check_mac(m) for m in rule.owners]
    family = "ip" if rule.vip.version == 4 else "ip6"
    return (
        f"ether daddr {own} {family} daddr {rule.vip} {rule.proto} dport {rule.port} counter "
        f"ether saddr set {own} ether daddr set {selector(rule)} map {{ {map_entries(owners)} }} "
        f'fwd to "{rule.interface}"'
    )


def render_ruleset(rule: DrRule) -> str:
    """A complete, atomic ``nft -f`` transaction replacing table ``netdev hapair_dr``."""
    return (
        "\n".join(
            [
                f"table {FAMILY} {TABLE}",
                f"delete table {FAMILY} {TABLE}",
                f"table {FAMILY} {TABLE} {{",
                "\tchain ingress {",
                f'\t\ttype filter hook ingress device "{rule.interface}" priority filter; '
                "policy accept;",
                f"\t\t{render_rule(rule)}",
                "\t}",
                "}",
            ]
        )
        + "\n"
    )


# ---------------------------------------------------------------- parsing ip -j (pure) -------


def _json_list(text: str, what: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text) if text.strip() else []
    except ValueError as exc:
        raise BalancerError(f"cannot read {what}: {exc}") from None
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def parse_link_mac(text: str, interface: str) -> str:
    """This interface's own MAC from ``ip -j link show dev IF``; BalancerError if not Ethernet."""
    links = _json_list(text, f"interface {interface}")
    if not links:
        raise BalancerError(f"interface {interface} does not exist")
    link = links[0]
    kind = link.get("link_type")
    address = link.get("address")
    if kind != "ether" or not isinstance(address, str):
        raise BalancerError(
            f"interface {interface} is {kind or 'not Ethernet'}: direct routing rewrites "
            "Ethernet MAC addresses"
        )
    return check_mac(address)


def parse_neighbours(text: str) -> dict[IpAddress, str]:
    """Address to MAC from ``ip -j neigh show dev IF``: entries that have a usable MAC."""
    out: dict[IpAddress, str] = {}
    for entry in _json_list(text, "the neighbour table"):
        dst, lladdr, state = entry.get("dst"), entry.get("lladdr"), entry.get("state")
        states = set(state) if isinstance(state, list) else set()
        if not isinstance(dst, str) or not isinstance(lladdr, str) or states & _NO_LLADDR:
            continue
        with contextlib.suppress(ValueError):
            out[ipaddress.ip_address(dst)] = check_mac(lladdr)
    return out


def explain_route(text: str, interface: str) -> str:
    """Why a backend may be unreachable at layer 2, from ``ip -j route get ADDR``."""
    routes = _json_list(text, "the route")
    if not routes:
        return "no route to it"
    route = routes[0]
    if route.get("type") == "local":
        return "it is an address of this host: direct routing cannot send to itself"
    if "gateway" in route:
        return (
            f"its route goes via gateway {route['gateway']}: direct routing needs the backend "
            f"on the same link as the VIP ({interface})"
        )
    if route.get("dev") != interface:
        return f"its route leaves by {route.get('dev')}, not by the VIP's interface {interface}"
    return f"no ARP/NDP answer on {interface} (is it up?)"


# ---------------------------------------------------------------- the kernel's view ----------


class Links(Protocol):
    """What the data plane reads from (and asks of) the kernel's link layer."""

    def own_mac(self, interface: str) -> str:
        """The interface's MAC; BalancerError if it is missing or not Ethernet."""

    def neighbours(self, interface: str) -> dict[IpAddress, str]:
        """The resolved neighbours on the interface."""

    def solicit(self, addresses: Sequence[IpAddress]) -> None:
        """Make the kernel resolve these addresses (without waiting)."""

    def resolve(
        self, interface: str, addresses: Sequence[IpAddress], timeout: float
    ) -> dict[IpAddress, str]:
        """Solicit and wait (at most ``timeout``) until every address has a MAC."""

    def explain(self, interface: str, address: IpAddress) -> str:
        """Why ``address`` has no MAC on the interface."""


class IpLinks:
    """``Links`` through the ``ip`` program (iproute2)."""

    def __init__(self) -> None:
        found = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/bin")
        if found is None:
            raise BalancerError('balancer.kind = "dr" needs iproute2: install package iproute2')
        self.ip = found

    def run(self, *args: str) -> str:
        """``ip -j ARGS``; stdout, or BalancerError with ip's complaint."""
        try:
            proc = subprocess.run(
                [self.ip, "-j", *args], capture_output=True, text=True,
                timeout=IP_TIMEOUT, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BalancerError(f"ip {' '.join(args)}: {exc}") from None
        if proc.returncode != 0:
            raise BalancerError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def own_mac(self, interface: str) -> str:
        try:
            text = self.run("link", "show", "dev", interface)
        except BalancerError:
            raise BalancerError(f"interface {interface} does not exist") from None
        return parse_link_mac(text, interface)

    def neighbours(self, interface: str) -> dict[IpAddress, str]:
        return parse_neighbours(self.run("neigh", "show", "dev", interface))

    def solicit(self, addresses: Sequence[IpAddress]) -> None:
        for address in addresses:
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            # Best effort: the datagram only exists to queue an ARP/NDP request.
            with (
                contextlib.suppress(OSError),
                socket.socket(family, socket.SOCK_DGRAM) as sock,
            ):
                sock.setblocking(False)
                sock.sendto(b"", (str(address), DISCARD_PORT))

    def resolve(
        self, interface: str, addresses: Sequence[IpAddress], timeout: float
    ) -> dict[IpAddress, str]:
        deadline = time.monotonic() + timeout
        self.solicit(addresses)
        while True:
            table = self.neighbours(interface)
            found = {a: table[a] for a in addresses if a in table}
            if len(found) == len(addresses) or time.monotonic() >= deadline:
                return found
            time.sleep(RESOLVE_POLL)

    def explain(self, interface: str, address: IpAddress) -> str:
        try:
            return explain_route(self.run("route", "get", str(address)), interface)
        except BalancerError as exc:
            return str(exc)


# ---------------------------------------------------------------- the data plane -------------


class DrDataPlane:
    """Owns table ``netdev hapair_dr`` on the VIP's interface; changes are checked, then swapped.

    Backends whose MAC cannot be learned are left out of the table (``status()`` says why);
    a MAC once learned is kept when the kernel forgets the neighbour, and replaced when the
    kernel learns a new one (``supervise()``).
    """

    def __init__(
        self,
        cfg: Balancer | None = None,
        *,
        interface: str,
        links: Links | None = None,
        load: Callable[[str], None] | None = None,
        resolve_timeout: float = RESOLVE_TIMEOUT,
    ) -> None:
        self.cfg = cfg
        self.interface = interface
        self._links = links
        self._load = load
        self.resolve_timeout = resolve_timeout
        self.loaded: str | None = None
        self.pool: Pool | None = None
        self.own_mac: str | None = None
        self.macs: dict[IpAddress, str] = {}  # last MAC learned per backend address
        self.unresolved: dict[str, str] = {}  # member name -> why it is left out
        self._waited: set[IpAddress] = set()

    @property
    def links(self) -> Links:
        """The kernel view (``ip`` is looked up on first use: remove() does not need it)."""
        if self._links is None:
            self._links = IpLinks()
        return self._links

    def _nft_load(self, text: str) -> None:
        if self._load is not None:
            self._load(text)
        else:
            nft_load(nft_binary("dr"), text)

    def preflight(self) -> None:
        """nft and ip are installed, and the VIP's interface exists and is Ethernet."""
        if self._load is None:
            nft_binary("dr")
        self.links.own_mac(self.interface)

    def reconfigure(self, cfg: Balancer) -> None:
        """New settings (scheduler, protocol, port) take effect at the next apply()."""
        self.cfg = cfg

    def _config(self) -> Balancer:
        if self.cfg is None:
            raise BalancerError("a dr data plane without a [balancer] can only remove")
        return self.cfg

    def _check_members(self, cfg: Balancer, pool: Pool) -> None:
        vip, port = cfg.listen
        for m in pool.members:
            if m.address.version != vip.version:
                raise BalancerError(f"backend {m.name} must be IPv{vip.version} like the VIP")
            if m.port != port:
                raise BalancerError(
                    f"backend {m.name}: direct routing cannot change the port (use {port})"
                )

    def _macs_for(
        self, members: Sequence[Member], table: Mapping[IpAddress, str]
    ) -> dict[str, str]:
        """Each member's MAC: the kernel's current one, else the last one learned."""
        out: dict[str, str] = {}
        for m in members:
            mac = table.get(m.address) or self.macs.get(m.address)
            if mac is not None:
                out[m.name] = mac
        return out

    def _render(self, cfg: Balancer, pool: Pool, own: str, macs: Mapping[str, str]) -> str:
        served = [m for m in pool.members if m.name in macs]
        owners = assign([(m.name, m.weight) for m in served], BUCKETS)
        vip, port = cfg.listen
        rule = DrRule(
            vip, port, self.interface, own, tuple(macs[name] for name in owners),
            cfg.scheduler, cfg.protocol,
        )  # fmt: skip
        return render_ruleset(rule)

    def _swap(self, text: str) -> bool:
        if text == self.loaded:
            return False
        self._nft_load(text)
        self.loaded = text
        return True

    def apply(self, pool: Pool) -> bool:
        """Serve ``pool``: learn the backends' MACs, then replace the table; False if unchanged.

        A backend never seen before gets one bounded wait for its MAC; one that stays unknown
        is left out (see ``status()``), and BalancerError is raised only if none is known.
        """
        cfg = self._config()
        self._check_members(cfg, pool)
        links = self.links
        own = links.own_mac(self.interface)
        table = links.neighbours(self.interface)
        unknown = [
            m.address for m in pool.members if m.address not in table and m.address not in self.macs
        ]
        first_time = [a for a in unknown if a not in self._waited]
        if first_time:
            table = {**table, **links.resolve(self.interface, first_time, self.resolve_timeout)}
            self._waited.update(first_time)
        again = [a for a in unknown if a not in first_time]
        if again:
            links.solicit(again)  # no second wait: supervise() picks up a late answer
        macs = self._macs_for(pool.members, table)
        unresolved = {
            m.name: links.explain(self.interface, m.address)
            for m in pool.members
            if m.name not in macs
        }
        if not macs:
            reasons = "; ".join(f"{name}: {why}" for name, why in unresolved.items())
            raise BalancerError(f"no backend's MAC address is known on {self.interface}: {reasons}")
        changed = self._swap(self._render(cfg, pool, own, macs))
        self.pool, self.own_mac, self.unresolved = pool, own, unresolved
        self.macs.update({m.address: macs[m.name] for m in pool.members if m.name in macs})
        return changed

    def remove(self) -> bool:
        """Delete table ``netdev hapair_dr`` if present (idempotent); True if there was one."""
        self.loaded = None
        self.pool = None
        return nft_delete_table(nft_binary("dr"), FAMILY, TABLE)

    def supervise(self, now: float) -> float | None:
        """Re-read our MAC and the backends' MACs; reload the table if any changed.

        Returns the next check time (sooner while a backend's MAC is still unknown). A failed
        read keeps the loaded table and tries again later; only a refused reload raises.
        """
        if self.pool is None or self.loaded is None:
            return None
        cfg = self._config()
        pool = self.pool
        try:
            own = self.links.own_mac(self.interface)
            table = self.links.neighbours(self.interface)
        except BalancerError:
            return now + RETRY_INTERVAL
        missing = [m.address for m in pool.members if m.address not in table]
        if missing:
            self.links.solicit(missing)  # answers arrive by the next check
        macs = self._macs_for(pool.members, table)
        self._swap(self._render(cfg, pool, own, macs))
        self.own_mac = own
        self.unresolved = {n: r for n, r in self.unresolved.items() if n not in macs}
        self.macs.update({m.address: macs[m.name] for m in pool.members if m.name in macs})
        return now + (RETRY_INTERVAL if self.unresolved else CHECK_INTERVAL)

    def status(self) -> dict[str, Any]:
        """Table, interface, our MAC, each served backend's MAC and why any is left out."""
        served = {} if self.pool is None else self._macs_for(self.pool.members, {})
        return {
            "table": f"{FAMILY} {TABLE}",
            "interface": self.interface,
            "loaded": self.loaded is not None,
            "own_mac": self.own_mac,
            "backends": served,
            "unresolved": dict(self.unresolved),
        }

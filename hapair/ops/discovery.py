"""Peer discovery over mDNS/DNS-SD (RFC 6762, RFC 6763): ``_hapair._udp.local.``.

Each node announces one service whose TXT record carries its cluster, node, role, priority,
version and heartbeat port. Discovery only finds an *address*: heartbeats are still
authenticated with the shared key, so an announcement grants nothing.

This module is the pure part (TXT codec, validation, :class:`PeerFinder`): it takes time as
an argument and never raises on what the network sends. ``hapair.ops.mdns`` is the I/O part,
python-zeroconf on a thread of its own.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import (
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
)
from typing import Any, Final, Protocol

from zeroconf import ServiceInfo

from hapair.iptypes import IpAddress

IPNetwork = IPv4Network | IPv6Network

SERVICE_TYPE: Final = "_hapair._udp.local."
# Record TTLs are zeroconf's, as RFC 6762 §10 recommends: 120 s for SRV and addresses, 75 min
# for PTR and TXT. A sighting lives as long as its shortest record (the SRV), and the watch
# asks again before that runs out, so a node that dies without a goodbye is forgotten within
# about two minutes while a live one never is.
TYPE_TXT: Final = 16
TYPE_SRV: Final = 33
CLASS_IN: Final = 1
FLAGS_QUERY: Final = 0x0000

# Limits on what the network hands us (python-zeroconf's rule: everything fed by the network
# is capped). A valid hapair TXT record is about 80 bytes.
MAX_TXT_BYTES: Final = 512
MAX_TXT_KEYS: Final = 16
MAX_ADDRESSES: Final = 8
MAX_SERVICES: Final = 64
MAX_LOGGED: Final = 64
MAX_PENDING: Final = 256
MAX_NAME_BYTES: Final = 255  # a whole DNS name (RFC 1035 §2.3.4)
#: A sighting never lives longer than this, whatever TTL it claims (RFC 6762 §10's 75 min).
MAX_TTL: Final = 4500.0

#: The config's Name rule (hapair.config.fields): 1-32 of A-Z a-z 0-9 . _ -
_NAME_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,32}")
_ROLE_RE: Final = re.compile(r"[A-Z]{1,16}")
_VERSION_RE: Final = re.compile(r"[\x21-\x7e]{1,32}")
_DIGITS_RE: Final = re.compile(r"[0-9]{1,5}")
_DNS_LABEL_MAX: Final = 63

#: How long a resolve of one announced service may wait for its records (ms).
RESOLVE_TIMEOUT_MS: Final = 3000
#: How often the watch re-reads the cache so a live peer's expiry moves forward (s).
REFRESH_INTERVAL: Final = 10.0
#: Ask a service for its records again once they have less than this left (s) ...
REQUERY_BELOW: Final = 40.0
#: ... but ask one service at most this often (s).
REQUERY_EVERY: Final = 15.0
#: Bound on waiting for zeroconf's thread when starting or stopping a watch (s).
THREAD_CALL_TIMEOUT: Final = 5.0
#: Pause before retrying a failed registration (s).
RETRY_DELAY: Final = 10.0


class WarnLog(Protocol):
    """The part of a structlog logger this module uses."""

    def warning(self, event: str, **fields: Any) -> object: ...


class Quiet:
    def warning(self, event: str, **fields: Any) -> object:
        return None


class RecordError(ValueError):
    """A TXT record from the network is not a valid hapair announcement."""


# ----------------------------------------------------------------------------- pure part ----


@dataclass(frozen=True)
class NodeRecord:
    """What one node announces in its TXT record."""

    cluster: str
    node: str
    role: str
    priority: int
    version: str
    port: int


def encode_txt(record: NodeRecord) -> dict[bytes, bytes]:
    """The TXT key/value pairs for `record` (keys: cluster node role prio ver port)."""
    return {
        b"cluster": record.cluster.encode(),
        b"node": record.node.encode(),
        b"role": record.role.encode(),
        b"prio": str(record.priority).encode(),
        b"ver": record.version.encode(),
        b"port": str(record.port).encode(),
    }


def _field(props: Mapping[bytes, bytes | None], key: bytes, pattern: re.Pattern[str]) -> str:
    raw = props.get(key)
    if raw is None:
        raise RecordError(f"{key.decode()}: missing")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise RecordError(f"{key.decode()}: not ASCII") from None
    if not pattern.fullmatch(text):
        raise RecordError(f"{key.decode()}: invalid value {text[:40]!r}")
    return text


def decode_txt(props: Mapping[bytes, bytes | None], size: int | None = None) -> NodeRecord:
    """Validate TXT pairs from the network; raise RecordError. Unknown keys are ignored.

    `size` is the raw TXT length on the wire when known (else it is estimated from `props`).
    """
    if len(props) > MAX_TXT_KEYS:
        raise RecordError(f"{len(props)} TXT keys (at most {MAX_TXT_KEYS})")
    if size is None:
        size = sum(len(k) + len(v or b"") + 2 for k, v in props.items())
    if size > MAX_TXT_BYTES:
        raise RecordError(f"TXT record of {size} bytes (at most {MAX_TXT_BYTES})")
    priority = int(_field(props, b"prio", _DIGITS_RE))
    port = int(_field(props, b"port", _DIGITS_RE))
    if priority > 255:
        raise RecordError(f"prio: {priority} is not 0..255")
    if not 1 <= port <= 65535:
        raise RecordError(f"port: {port} is not 1..65535")
    return NodeRecord(
        cluster=_field(props, b"cluster", _NAME_RE),
        node=_field(props, b"node", _NAME_RE),
        role=_field(props, b"role", _ROLE_RE),
        priority=priority,
        version=_field(props, b"ver", _VERSION_RE),
        port=port,
    )


@dataclass(frozen=True)
class Sighting:
    """One announced service as resolved from the network (nothing validated yet)."""

    name: str
    properties: Mapping[bytes, bytes | None]
    addresses: tuple[str, ...]
    #: Seconds the records stay valid from now; 0 means a goodbye.
    ttl: float
    #: Raw TXT size on the wire, when known.
    text_size: int | None = None


@dataclass(frozen=True)
class Seen:
    """A valid announcement: its service name, TXT content, usable addresses, expiry."""

    name: str
    record: NodeRecord
    addresses: tuple[IpAddress, ...]
    expires: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form for ``hapair discover --json``."""
        r = self.record
        return {
            "name": self.name,
            "address": str(self.addresses[0]) if self.addresses else None,
            "addresses": [str(a) for a in self.addresses],
            "cluster": r.cluster,
            "node": r.node,
            "role": r.role,
            "priority": r.priority,
            "version": r.version,
            "port": r.port,
        }


def parse_addresses(texts: Iterable[str]) -> tuple[IpAddress, ...]:
    """Unicast addresses parsed from `texts`, IPv4 first, at most MAX_ADDRESSES."""
    out: list[IpAddress] = []
    for text in texts:
        try:
            addr = ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr in out:
            continue
        out.append(addr)
    out.sort(key=lambda a: (a.version, a.packed))
    return tuple(out[:MAX_ADDRESSES])


class PeerFinder:
    """What the LAN announced, and the peer each cluster would pair with (time passed in).

    `me`, `own_addresses`, `networks` and `port` filter candidate *peers* only: a node never
    pairs with itself, only with addresses inside `networks` (empty: any) and only with a node
    that heartbeats on `port` (None: any). Link-local IPv6 addresses are never peers: the
    transport would need a scope.
    """

    def __init__(
        self,
        *,
        me: str | None = None,
        own_addresses: Iterable[IpAddress] = (),
        networks: Iterable[IPNetwork] = (),
        port: int | None = None,
        log: WarnLog | None = None,
    ) -> None:
        self.me = me
        self.own = frozenset(own_addresses)
        self.networks = tuple(networks)
        self.port = port
        self.log: WarnLog = log or Quiet()
        self.rejected = 0
        self.dropped = 0
        self._seen: dict[str, Seen] = {}
        self._chosen: dict[str, str] = {}
        self._logged: set[str] = set()

    # -- input ---------------------------------------------------------------------------

    def observe_at(self, sighting: Sighting, now: float) -> None:
        """Record `sighting`; a malformed one is ignored and logged once. Never raises."""
        name = str(sighting.name)[:MAX_NAME_BYTES]
        if not sighting.ttl > 0:  # also NaN
            self.forget_at(name, now)
            return
        try:
            if len(sighting.name.encode()) > MAX_NAME_BYTES:
                raise RecordError(f"service name longer than {MAX_NAME_BYTES} bytes")
            record = decode_txt(sighting.properties, sighting.text_size)
            addresses = parse_addresses(sighting.addresses)
        except (ValueError, AttributeError, TypeError) as exc:
            self.rejected += 1
            self._seen.pop(name, None)
            self._note(f"bad:{name}", "discovery_record_ignored", service=name, reason=str(exc))
            return
        self._expire(now)
        if name not in self._seen and len(self._seen) >= MAX_SERVICES:
            self.dropped += 1
            self._note("full", "discovery_table_full", limit=MAX_SERVICES, service=name)
            return
        self._seen[name] = Seen(name, record, addresses, now + min(sighting.ttl, MAX_TTL))

    def forget_at(self, name: str, now: float) -> None:
        """The service said goodbye or its records went away."""
        self._seen.pop(name, None)
        self._expire(now)

    def take_at(self, changes: Iterable[tuple[str, Sighting | None]], now: float) -> None:
        """What discovery saw since the last call: a sighting per name, None for a goodbye."""
        for name, sighting in changes:
            if sighting is None:
                self.forget_at(name, now)
            else:
                self.observe_at(sighting, now)

    # -- answers -------------------------------------------------------------------------

    def nodes_at(self, now: float, cluster: str | None = None) -> list[Seen]:
        """Every valid announcement (of `cluster` if given), sorted by cluster, node, name."""
        self._expire(now)
        found = [s for s in self._seen.values() if cluster is None or s.record.cluster == cluster]
        return sorted(found, key=lambda s: (s.record.cluster, s.record.node, s.name))

    def peer_of_at(self, cluster: str, now: float) -> Seen | None:
        """The peer of `cluster`: stable while it stays announced, else the lowest node name.

        The returned addresses are only the usable ones (inside `networks`, not ours).
        """
        candidates: dict[str, Seen] = {}
        for seen in self.nodes_at(now, cluster):
            usable = self._usable(seen)
            if usable is not None:
                candidates[seen.name] = usable
        if not candidates:
            self._chosen.pop(cluster, None)
            return None
        chosen = self._chosen.get(cluster)
        if chosen not in candidates:
            chosen = min(candidates, key=lambda n: (candidates[n].record.node, n))
            self._chosen[cluster] = chosen
            if len(candidates) > 1:
                others = sorted(c.record.node for n, c in candidates.items() if n != chosen)
                self._note(
                    f"extra:{cluster}",
                    "discovery_extra_nodes",
                    cluster=cluster,
                    chosen=candidates[chosen].record.node,
                    ignored=others[:8],
                    note="a pair has one peer: is a cluster name reused?",
                )
        return candidates[chosen]

    def next_expiry(self) -> float | None:
        """When the earliest announcement expires (None if there is none)."""
        return min((s.expires for s in self._seen.values()), default=None)

    # -- internals -----------------------------------------------------------------------

    def _usable(self, seen: Seen) -> Seen | None:
        r = seen.record
        if r.node == self.me or self.own.intersection(seen.addresses):
            return None
        if self.port is not None and r.port != self.port:
            self._note(
                f"port:{seen.name}",
                "discovery_port_mismatch",
                peer=r.node,
                port=r.port,
                expected=self.port,
            )
            return None
        addresses = tuple(
            a
            for a in seen.addresses
            if not (isinstance(a, IPv6Address) and a.is_link_local)
            and (not self.networks or any(a in n for n in self.networks))
        )
        if not addresses:
            self._note(
                f"net:{seen.name}",
                "discovery_peer_unreachable",
                peer=r.node,
                addresses=[str(a) for a in seen.addresses],
                networks=[str(n) for n in self.networks],
            )
            return None
        return replace(seen, addresses=addresses)

    def _expire(self, now: float) -> None:
        for name in [n for n, s in self._seen.items() if s.expires <= now]:
            del self._seen[name]

    def _note(self, key: str, event: str, **fields: Any) -> None:
        """Log `event` the first time `key` comes up (bounded); later ones are only counted."""
        if key in self._logged or len(self._logged) >= MAX_LOGGED:
            return
        self._logged.add(key)
        fields.setdefault("note", "logged once")
        self.log.warning(event, **fields)


def instance_label(cluster: str, node: str) -> str:
    """The service instance label: ``{cluster}-{node}`` (dots replaced), at most 63 bytes."""
    return f"{cluster}-{node}".replace(".", "_")[:_DNS_LABEL_MAX]


def host_label(cluster: str, node: str) -> str:
    """A host name label unique per (cluster, node), letters, digits and hyphens only.

    Two services sharing a host name would share address records, so a digest keeps names
    that differ only in punctuation apart.
    """
    digest = hashlib.sha256(f"{cluster}\0{node}".encode()).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9-]", "-", f"hapair-{cluster}-{node}")[:48].strip("-")
    return f"{stem}-{digest}"


def service_info(
    record: NodeRecord,
    addresses: Sequence[IpAddress],
    *,
    name: str | None = None,
) -> ServiceInfo:
    """The zeroconf service for `record` at `addresses` (`name` keeps a renamed instance)."""
    return ServiceInfo(
        SERVICE_TYPE,
        name or f"{instance_label(record.cluster, record.node)}.{SERVICE_TYPE}",
        port=record.port,
        properties=encode_txt(record),
        server=f"{host_label(record.cluster, record.node)}.local.",
        parsed_addresses=[str(a) for a in addresses],
    )


def sighting_of(info: ServiceInfo, ttl: float) -> Sighting:
    """A zeroconf ServiceInfo as a Sighting (no validation; PeerFinder does that)."""
    return Sighting(
        name=info.name,
        properties=dict(info.properties),
        addresses=tuple(info.parsed_addresses()),
        ttl=ttl,
        text_size=len(info.text) if info.text is not None else None,
    )

"""Heartbeat packet: a fixed, versioned, HMAC-SHA256 authenticated layout (see docs/protocol.md)."""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from hapair.core.advert import Advert
from hapair.core.roles import Role
from hapair.errors import WireError

MAGIC: Final = b"HAPR"
VERSION: Final = 2
FLAG_RESIGNING: Final = 0x01
#: The sender is in maintenance: it stays BACKUP and must not be counted on to take over.
FLAG_MAINTENANCE: Final = 0x02
_KNOWN_FLAGS: Final = FLAG_RESIGNING | FLAG_MAINTENANCE
CLUSTER_ID_SIZE: Final = 8
VIP_DIGEST_SIZE: Final = 8
NODE_NAME_SIZE: Final = 32
MAC_SIZE: Final = 32
MIN_KEY_SIZE: Final = 32
FILTER_TOKEN_SIZE: Final = 4
#: Where filter_token sits in the UDP payload (the kernel socket filter matches it there).
FILTER_TOKEN_OFFSET: Final = 20

U8_MAX: Final = 0xFF
U32_MAX: Final = 0xFFFF_FFFF
U64_MAX: Final = 0xFFFF_FFFF_FFFF_FFFF

# magic, version, flags, role, base prio, eff prio, reserved, cluster id, filter token,
# node, term, run, seq, challenge, echo, interval ms, vip digest
_BODY: Final = struct.Struct("!4sBBBBB3s8s4s32sQQQQQI8s")
BODY_SIZE: Final = 108
PACKET_SIZE: Final = 140
assert _BODY.size == BODY_SIZE and BODY_SIZE + MAC_SIZE == PACKET_SIZE

_RESERVED: Final = bytes(3)
_VERSION_OFFSET: Final = 4
_CLUSTER_OFFSET: Final = 12
_CLUSTER_DOMAIN: Final = b"hapair-cluster:"
_FILTER_DOMAIN: Final = b"hapair-filter-v2:"
_NO_TOKEN: Final = bytes(FILTER_TOKEN_SIZE)
_U64: Final = struct.Struct("!Q")
_ROLES: Final = {role.value: role for role in Role}


class RejectReason(enum.Enum):
    """Why a received datagram was not accepted as a heartbeat."""

    TRUNCATED = "truncated"
    OVERSIZED = "oversized"
    BAD_MAGIC = "bad_magic"
    BAD_VERSION = "bad_version"
    WRONG_CLUSTER = "wrong_cluster"
    BAD_MAC = "bad_mac"
    MALFORMED = "malformed"
    REPLAY = "replay"
    #: A packet of a run the receiver has not accepted, not echoing its current challenge.
    UNPROVEN = "unproven"
    #: An authentic sender beyond the cap of tracked peers (only key holders can get here).
    TOO_MANY_PEERS = "too_many_peers"
    SELF = "self"


class Rejected(WireError):
    """A datagram was refused; `reason` says why, `detail` is for the log only."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)


def cluster_id(name: str) -> bytes:
    """Return the 8-byte cluster id: the first 8 bytes of SHA-256(b"hapair-cluster:" + name)."""
    if not name:
        raise ValueError("cluster name must not be empty")
    return hashlib.sha256(_CLUSTER_DOMAIN + name.encode("utf-8")).digest()[:CLUSTER_ID_SIZE]


def vip_digest(addresses: Iterable[str]) -> bytes:
    """Return 8 bytes summarising the VIP set; independent of order, duplicates and NIC names."""
    if isinstance(addresses, str):
        raise TypeError("vip_digest() takes an iterable of addresses, not one string")
    canonical = sorted({ipaddress.ip_interface(a).with_prefixlen for a in addresses})
    return hashlib.sha256("\n".join(canonical).encode("ascii")).digest()[:VIP_DIGEST_SIZE]


def filter_token(key: bytes, challenge: int) -> bytes:
    """Return the 4-byte token a packet echoing `challenge` carries; 4 zero bytes for 0."""
    _check_key(key)
    _check_uint("challenge", challenge, U64_MAX)
    return _token(key, challenge)


@functools.lru_cache(maxsize=16)
def _token(key: bytes, challenge: int) -> bytes:
    """filter_token() without the checks, remembered: a pair's packets echo the same few
    challenges (ours, the peer's) for many intervals, and each token costs an HMAC."""
    if challenge == 0:
        return _NO_TOKEN
    return hmac.digest(key, _FILTER_DOMAIN + _U64.pack(challenge), "sha256")[:FILTER_TOKEN_SIZE]


def _check_uint(name: str, value: object, maximum: int, minimum: int = 0) -> None:
    # bool is an int subclass; True as a priority is a bug, not a value.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be in {minimum}..{maximum}, got {value}")


def _check_node_name(node: object) -> None:
    if not isinstance(node, str):
        raise ValueError(f"node must be a str, got {type(node).__name__}")
    raw = node.encode("utf-8")
    if not 1 <= len(raw) <= NODE_NAME_SIZE:
        raise ValueError(f"node must be 1..{NODE_NAME_SIZE} bytes of UTF-8, got {len(raw)}")
    if b"\x00" in raw:
        raise ValueError("node must not contain NUL")


def _check_key(key: bytes) -> None:
    if len(key) < MIN_KEY_SIZE:
        raise ValueError(f"key must be at least {MIN_KEY_SIZE} bytes, got {len(key)}")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One heartbeat: the sender's identity and freshness fields, and its `Advert`;
    construction raises ValueError if any field cannot be put on the wire."""

    cluster_id: bytes
    node: str
    run: int
    seq: int
    challenge: int
    echo: int
    advert: Advert

    def __post_init__(self) -> None:
        if not isinstance(self.cluster_id, bytes) or len(self.cluster_id) != CLUSTER_ID_SIZE:
            raise ValueError(f"cluster_id must be {CLUSTER_ID_SIZE} bytes")
        _check_node_name(self.node)
        # run, seq and challenge are never 0: 0 is "none" (echo 0: no challenge heard yet).
        _check_uint("run", self.run, U64_MAX, minimum=1)
        _check_uint("seq", self.seq, U64_MAX, minimum=1)
        _check_uint("challenge", self.challenge, U64_MAX, minimum=1)
        _check_uint("echo", self.echo, U64_MAX)
        check_advert(self.advert)


def check_advert(a: Advert) -> None:
    """ValueError unless every field of `a` fits its place in the packet."""
    if not isinstance(a, Advert):
        raise ValueError(f"advert must be an Advert, got {a!r}")
    if not isinstance(a.role, Role):
        raise ValueError(f"role must be a Role, got {a.role!r}")
    _check_uint("base_priority", a.base_priority, U8_MAX)
    _check_uint("effective_priority", a.effective_priority, U8_MAX)
    if not isinstance(a.resigning, bool):
        raise ValueError("resigning must be a bool")
    if not isinstance(a.maintenance, bool):
        raise ValueError("maintenance must be a bool")
    _check_uint("term", a.term, U64_MAX)
    # An interval of 0 would give the receiver a dead time of 0: instant false failover.
    _check_uint("interval_ms", a.interval_ms, U32_MAX, minimum=1)
    if not isinstance(a.vip_digest, bytes) or len(a.vip_digest) != VIP_DIGEST_SIZE:
        raise ValueError(f"vip_digest must be {VIP_DIGEST_SIZE} bytes")


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, body, "sha256")


def encode(hb: Heartbeat, key: bytes) -> bytes:
    """Return the PACKET_SIZE-byte signed packet for `hb`; ValueError if the key is too short."""
    _check_key(key)
    return encode_checked(
        key, hb.cluster_id, hb.node.encode("utf-8"), static_fields(hb.advert), hb.run, hb.seq,
        hb.challenge, hb.echo,
    )  # fmt: skip


#: The fields of a heartbeat that stay the same from one packet to the next while nothing
#: happens: flags, role code, base and effective priority, term, interval_ms, vip_digest.
StaticFields = tuple[int, int, int, int, int, int, bytes]


def static_fields(a: Advert) -> StaticFields:
    """A validated (`check_advert`) advert's fields, in the form `encode_checked` takes."""
    flags = (FLAG_RESIGNING if a.resigning else 0) | (FLAG_MAINTENANCE if a.maintenance else 0)
    return (
        flags, a.role.value, a.base_priority, a.effective_priority, a.term, a.interval_ms,
        a.vip_digest,
    )  # fmt: skip


def encode_checked(
    key: bytes,
    cluster: bytes,
    node_raw: bytes,
    static: StaticFields,
    run: int,
    seq: int,
    challenge: int,
    echo: int,
) -> bytes:
    """The signed packet from fields a `Heartbeat` already validated (the sender's hot path:
    no dataclass per packet); `node_raw` is the node name in UTF-8."""
    flags, role, base, effective, term, interval_ms, digest = static
    body = _BODY.pack(
        MAGIC, VERSION, flags, role, base, effective, _RESERVED, cluster, _token(key, echo),
        node_raw,  # struct pads "32s" with NULs
        term, run, seq, challenge, echo, interval_ms, digest,
    )  # fmt: skip
    return body + hmac.digest(key, body, "sha256")


def _trusted(**fields: object) -> Heartbeat:
    """A Heartbeat from fields known valid, without __post_init__'s checks (decode's path)."""
    hb = object.__new__(Heartbeat)
    for name, value in fields.items():
        object.__setattr__(hb, name, value)
    return hb


def _decode_node_name(raw: bytes) -> str:
    name = raw.rstrip(b"\x00")
    if not name:
        raise Rejected(RejectReason.MALFORMED, "empty node name")
    if b"\x00" in name:
        raise Rejected(RejectReason.MALFORMED, "NUL inside node name")
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(RejectReason.MALFORMED, "node name is not UTF-8") from None


def decode(data: bytes, key: bytes, expected_cluster: bytes) -> Heartbeat:
    """Authenticate and parse one datagram; raise Rejected (and nothing else) for any bad input."""
    _check_key(key)
    if len(expected_cluster) != CLUSTER_ID_SIZE:
        raise ValueError(f"expected_cluster must be {CLUSTER_ID_SIZE} bytes")
    # Magic and version come before the size: a packet of another version has another size
    # (version 1: 120 bytes), and `bad_version` tells an operator what is wrong with a
    # mixed-version pair, where `truncated` would not.
    if len(data) <= _VERSION_OFFSET:
        raise Rejected(RejectReason.TRUNCATED, f"{len(data)} < {PACKET_SIZE} bytes")
    if data[: len(MAGIC)] != MAGIC:
        raise Rejected(RejectReason.BAD_MAGIC)
    if data[_VERSION_OFFSET] != VERSION:
        raise Rejected(RejectReason.BAD_VERSION, f"version {data[_VERSION_OFFSET]}")
    if len(data) < PACKET_SIZE:
        raise Rejected(RejectReason.TRUNCATED, f"{len(data)} < {PACKET_SIZE} bytes")
    if len(data) > PACKET_SIZE:
        raise Rejected(RejectReason.OVERSIZED, f"{len(data)} > {PACKET_SIZE} bytes")
    if data[_CLUSTER_OFFSET : _CLUSTER_OFFSET + CLUSTER_ID_SIZE] != expected_cluster:
        raise Rejected(RejectReason.WRONG_CLUSTER)
    body, mac = data[:BODY_SIZE], data[BODY_SIZE:]
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise Rejected(RejectReason.BAD_MAC)

    (
        _magic,
        _version,
        flags,
        role_code,
        base_priority,
        effective_priority,
        reserved,
        cluster,
        token,
        node_raw,
        term,
        run,
        seq,
        challenge,
        echo,
        interval_ms,
        digest,
    ) = _BODY.unpack(body)
    if flags & ~_KNOWN_FLAGS:
        raise Rejected(RejectReason.MALFORMED, f"unknown flag bits 0x{flags:02x}")
    if reserved != _RESERVED:
        raise Rejected(RejectReason.MALFORMED, "reserved bytes not zero")
    role = _ROLES.get(role_code)
    if role is None:
        raise Rejected(RejectReason.MALFORMED, f"unknown role code {role_code}")
    node = _decode_node_name(node_raw)
    if interval_ms == 0:
        raise Rejected(RejectReason.MALFORMED, "interval_ms is 0")
    for name, value in (("run", run), ("seq", seq), ("challenge", challenge)):
        if value == 0:
            raise Rejected(RejectReason.MALFORMED, f"{name} is 0")
    if token != _token(key, echo):
        raise Rejected(RejectReason.MALFORMED, "filter_token does not match echo")
    # Every field was checked above or is bounded by its struct format: no second check.
    advert = Advert(
        role=role,
        base_priority=base_priority,
        effective_priority=effective_priority,
        resigning=bool(flags & FLAG_RESIGNING),
        term=term,
        interval_ms=interval_ms,
        vip_digest=digest,
        maintenance=bool(flags & FLAG_MAINTENANCE),
    )
    return _trusted(
        cluster_id=cluster, node=node, run=run, seq=seq, challenge=challenge, echo=echo,
        advert=advert,
    )  # fmt: skip

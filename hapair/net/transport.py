"""Heartbeat transport: one filtered UDP socket per heartbeat link, non-blocking, fair reads.

A link is one configured peer address. Its socket is bound to the local address the kernel
would send from to reach that peer (so a flood on the LAN fills the LAN socket's queue, never
the direct cable's), and carries a classic BPF filter (hapair.net.sockfilter) that admits only
datagrams from the peer's address and the cluster port, of the heartbeat's size, and, once the
node installs them, carrying one of its current filter tokens. The loop watches a single epoll
descriptor that holds every link socket, so links may come and go (reload, discovery) without
the loop re-registering anything.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import select
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from hapair.errors import RuntimeSetupError
from hapair.iptypes import IpAddress
from hapair.net import sockfilter
from hapair.wire.heartbeat import FILTER_TOKEN_OFFSET

#: Most datagrams read from one socket per wake-up: one flooded link cannot starve the others,
#: and a flood cannot starve the loop's timers.
MAX_READ_PER_SOCKET: Final = 128
#: Kept for callers that bound their own reads (doctor): the old total per wake-up.
MAX_READ_PER_WAKE: Final = 256
#: Larger than any valid heartbeat, so an oversized datagram is seen (and rejected) as such.
RECV_SIZE: Final = 2048
#: DSCP CS6 (network control), as VRRP uses: heartbeats jump queues on congested links.
TOS_CS6: Final = 0xC0
#: Receive buffer per link (a limit, not an allocation): a flood that the filter must admit
#: (a forged peer source before tokens are installed) at 10,000 datagrams/s, about 1 KB of
#: kernel memory each, overflows the queue only after the loop stalls for ~100 ms (the
#: default, ~200 KB, after ~20 ms: one missed heartbeat at 20 ms intervals).
RCVBUF: Final = 1 << 20
SO_RCVBUFFORCE: Final = 33


def _family(address: IpAddress) -> int:
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


def local_address_for(peer: IpAddress, port: int) -> IpAddress | None:
    """The source address the kernel picks to reach ``peer`` (None: no route).

    A connect() of a UDP socket is a route look-up in the kernel and sends nothing: no
    netlink round trip, so it is cheap enough for the loop (reload, discovery).
    """
    with socket.socket(_family(peer), socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((str(peer), port))
            return ipaddress.ip_address(probe.getsockname()[0])
        except OSError:
            return None


def _setup_error(port: int, exc: OSError) -> RuntimeSetupError:
    if exc.errno == errno.EADDRINUSE:
        return RuntimeSetupError(
            f"cluster.port: UDP port {port} is already in use "
            "(another hapair or VRRP daemon on this host?)"
        )
    if exc.errno == errno.EACCES:
        return RuntimeSetupError(
            f"cluster.port: binding UDP port {port} needs CAP_NET_BIND_SERVICE"
        )
    return RuntimeSetupError(f"cluster.port: cannot bind UDP {port}: {exc}")


@dataclass
class _Socket:
    """One bound socket and the peers (links) it serves: usually exactly one."""

    local: IpAddress
    sock: socket.socket
    peers: list[IpAddress] = field(default_factory=list)
    #: The link's name and each peer's socket address, made once (str() of an address
    #: costs microseconds, and the loop needs them at every send and receive).
    name: str = field(init=False)
    addresses: list[tuple[str, int]] = field(init=False)
    port: int = 0

    def __post_init__(self) -> None:
        self.name = ",".join(str(p) for p in self.peers)
        self.addresses = [(str(p), self.port) for p in self.peers]


class UdpTransport:
    """A socket per heartbeat link, bound to its local address and filtered in the kernel."""

    def __init__(
        self,
        port: int,
        peers: Iterable[IpAddress],
        *,
        packet_size: int | None = None,
        token_offset: int = FILTER_TOKEN_OFFSET,
    ) -> None:
        self.port = port
        self.packet_size = packet_size
        self.token_offset = token_offset
        self.peers: tuple[IpAddress, ...] = ()
        self.send_errors = 0
        #: Why a link has no socket right now (no route, address gone, bind refused).
        self.link_errors: dict[str, str] = {}
        self._tokens: tuple[bytes, ...] | None = None
        self._socks: dict[IpAddress, _Socket] = {}  # by local address
        self._by_fd: dict[int, _Socket] = {}
        self._pending: list[IpAddress] = []  # links without a socket: retried on send
        self._drops_closed: dict[str, int] = {}  # counts of sockets already closed
        self._rotate = 0
        self._epoll = select.epoll()
        try:
            self._apply(tuple(peers), strict=True)
        except BaseException:
            self.close()
            raise

    # -- links ---------------------------------------------------------------------------

    def open_family(self, family: int) -> None:
        """Check now that the port can be bound for ``family`` (before discovery finds a
        peer); raise RuntimeSetupError if not. Nothing stays open."""
        if any(_family(s.local) == family for s in self._socks.values()):
            return
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", self.port))
            except OSError as exc:
                raise _setup_error(self.port, exc) from exc

    def set_peers(self, peers: Iterable[IpAddress]) -> None:
        """Replace the links (reload, discovery): sockets are opened and closed to match.

        Never raises: a link that cannot be opened now is retried at each send.
        """
        self._apply(tuple(peers), strict=False)

    def _apply(self, peers: tuple[IpAddress, ...], *, strict: bool) -> None:
        self.peers = peers
        wanted = {p: local_address_for(p, self.port) for p in dict.fromkeys(peers)}
        for entry in list(self._socks.values()):
            mine = [p for p, local in wanted.items() if local == entry.local]
            if set(mine) != set(entry.peers):
                self._close_socket(entry)
        served = {p for entry in self._socks.values() for p in entry.peers}
        self._pending = [p for p in wanted if p not in served]
        self.link_errors = {}
        self._open_pending(strict=strict, resolved=wanted)

    def _open_pending(
        self, *, strict: bool, resolved: dict[IpAddress, IpAddress | None] | None = None
    ) -> None:
        """Open a socket for every link that has none (grouped by local address)."""
        pending, self._pending = self._pending, []
        groups: dict[IpAddress, list[IpAddress]] = {}
        for peer in pending:
            local = (resolved or {}).get(peer) or local_address_for(peer, self.port)
            if local is None:
                self.link_errors[str(peer)] = f"no route to {peer}"
                self._pending.append(peer)
            else:
                groups.setdefault(local, []).append(peer)
        for local, group in groups.items():
            old = self._socks.get(local)
            if old is not None:  # another link leaves from the same address: one socket
                group = [*old.peers, *group]
                self._close_socket(old)
            try:
                self._open(local, group)
            except sockfilter.FilterError as exc:  # e.g. more peers behind one address
                if strict:
                    raise RuntimeSetupError(f"cluster.peers: {exc}") from exc
                for p in group:
                    self.link_errors[str(p)] = str(exc)
                continue  # not retried: the same peers would be refused again
            except OSError as exc:
                if strict and exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise _setup_error(self.port, exc) from exc
                for p in group:
                    self.link_errors[str(p)] = f"cannot bind {local}:{self.port}: {exc}"
                self._pending += group
                continue
            for p in group:
                self.link_errors.pop(str(p), None)

    def _open(self, local: IpAddress, peers: list[IpAddress]) -> _Socket:
        family = _family(local)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            entry = _Socket(local, sock, peers, port=self.port)
            # Before bind: no unfiltered datagram is ever queued.
            self._attach(entry)
            try:  # above net.core.rmem_max needs CAP_NET_ADMIN (the daemon has it)
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, TOS_CS6)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_CS6)
            sock.bind((str(local), self.port))
        except BaseException:
            sock.close()
            raise
        self._socks[local] = entry
        self._by_fd[sock.fileno()] = entry
        self._epoll.register(sock.fileno(), select.EPOLLIN)
        return entry

    def _close_socket(self, entry: _Socket) -> None:
        name = entry.name
        with contextlib.suppress(OSError):
            self._drops_closed[name] = self._drops_closed.get(name, 0) + sockfilter.kernel_drops(
                entry.sock
            )
        fd = entry.sock.fileno()
        if fd >= 0:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)
            self._by_fd.pop(fd, None)
        entry.sock.close()
        self._socks.pop(entry.local, None)

    # -- the kernel filter ---------------------------------------------------------------

    def _attach(self, entry: _Socket) -> None:
        program = sockfilter.heartbeat_program(
            entry.peers, self.port, self.packet_size, self._tokens, self.token_offset
        )
        sockfilter.attach(entry.sock, program)

    def set_tokens(self, tokens: Sequence[bytes] | None) -> None:
        """Admit only datagrams carrying one of ``tokens`` (None: no token check); every
        socket's filter is replaced at once."""
        self._tokens = None if tokens is None else tuple(tokens)
        for entry in self._socks.values():
            self._attach(entry)

    def drops(self) -> dict[str, int]:
        """Datagrams the kernel dropped per link since start (filter refusals, full queue)."""
        out = dict(self._drops_closed)
        for entry in list(self._socks.values()):
            try:
                n = sockfilter.kernel_drops(entry.sock)
            except OSError:
                continue
            out[entry.name] = out.get(entry.name, 0) + n
        return out

    def links(self) -> dict[str, str | None]:
        """Each link (peer address) and the local address its socket is bound to (None: none)."""
        out: dict[str, str | None] = {str(p): None for p in self.peers}
        for entry in self._socks.values():
            for p in entry.peers:
                out[str(p)] = str(entry.local)
        return out

    # -- I/O -----------------------------------------------------------------------------

    def filenos(self) -> list[int]:
        """One descriptor to watch for readability: readable when any link socket is."""
        return [self._epoll.fileno()]

    def send(self, data: bytes) -> int:
        """Send ``data`` on every link's own socket; return how many sends succeeded. Never
        raises."""
        if self._pending:
            self._open_pending(strict=False)
        sent = 0
        for entry in list(self._socks.values()):
            for address in entry.addresses:
                try:
                    entry.sock.sendto(data, address)
                    sent += 1
                except OSError as exc:
                    # A down link (ENETUNREACH, EHOSTUNREACH) is what redundant links are for.
                    self.send_errors += 1
                    if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL) and entry.peers:
                        # The local address is gone: look the route up again next time.
                        self._pending += entry.peers
                        self._close_socket(entry)
                        break
        return sent

    def receive(self) -> list[tuple[bytes, str, str]]:
        """Read what is ready now (non-blocking) as (data, source, link): at most
        ``MAX_READ_PER_SOCKET`` from each socket, starting from another socket each time."""
        out: list[tuple[bytes, str, str]] = []
        try:
            ready = [fd for fd, _ in self._epoll.poll(0)]
        except OSError:
            return out
        if len(ready) > 1:
            self._rotate = (self._rotate + 1) % len(ready)
            ready = ready[self._rotate :] + ready[: self._rotate]
        for fd in ready:
            entry = self._by_fd.get(fd)
            if entry is None:
                continue
            sock, link = entry.sock, entry.name
            for _ in range(MAX_READ_PER_SOCKET):
                try:
                    data, addr = sock.recvfrom(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # e.g. ICMP port unreachable surfaced as ECONNREFUSED
                out.append((data, str(addr[0]), link))
        return out

    def close(self) -> None:
        """Close every socket (idempotent)."""
        for entry in list(self._socks.values()):
            self._close_socket(entry)
        self._pending.clear()
        self._epoll.close()


class PortListener:
    """One unfiltered socket per address family on the cluster port, on every address: for
    diagnosis (``hapair doctor``), which must hear what the daemon's filters would refuse."""

    def __init__(self, port: int, families: Iterable[int]) -> None:
        self.port = port
        self._socks: dict[int, socket.socket] = {}
        try:
            for family in sorted(set(families)):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                self._socks[family] = sock
                sock.setblocking(False)
                try:
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
                except OSError as exc:
                    raise _setup_error(port, exc) from exc
        except BaseException:
            self.close()
            raise

    def filenos(self) -> list[int]:
        """File descriptors to watch for readability."""
        return [s.fileno() for s in self._socks.values()]

    def receive(self) -> list[tuple[bytes, str]]:
        """Read what is ready now, at most ``MAX_READ_PER_WAKE`` datagrams."""
        out: list[tuple[bytes, str]] = []
        for sock in self._socks.values():
            while len(out) < MAX_READ_PER_WAKE:
                try:
                    data, addr = sock.recvfrom(RECV_SIZE)
                except OSError:
                    break
                out.append((data, str(addr[0])))
        return out

    def close(self) -> None:
        """Close every socket (idempotent)."""
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()

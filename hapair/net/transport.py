"""Heartbeat transport: unicast UDP to every peer address, non-blocking, bounded reads."""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from typing import Final

from hapair.errors import RuntimeSetupError

#: Most datagrams read per wake-up: a flood cannot starve the loop's timers.
MAX_READ_PER_WAKE: Final = 256
#: Larger than any valid heartbeat, so an oversized datagram is seen (and rejected) as such.
RECV_SIZE: Final = 2048
#: DSCP CS6 (network control), as VRRP uses: heartbeats jump queues on congested links.
TOS_CS6: Final = 0xC0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UdpTransport:
    """One socket per address family in use, bound to the cluster port on all addresses."""

    def __init__(self, port: int, peers: Iterable[IPAddress]) -> None:
        self.port = port
        self.peers: tuple[IPAddress, ...] = tuple(peers)
        self.send_errors = 0
        self._socks: dict[int, socket.socket] = {}
        families = {socket.AF_INET6 if p.version == 6 else socket.AF_INET for p in self.peers}
        try:
            for family in sorted(families):
                self._socks[family] = self._open(family)
        except BaseException:
            self.close()
            raise

    def _open(self, family: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, TOS_CS6)
                sock.bind(("::", self.port))
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_CS6)
                sock.bind(("0.0.0.0", self.port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise RuntimeSetupError(
                    f"cluster.port: UDP port {self.port} is already in use "
                    "(another hapair or VRRP daemon on this host?)"
                ) from exc
            if exc.errno == errno.EACCES:
                raise RuntimeSetupError(
                    f"cluster.port: binding UDP port {self.port} needs CAP_NET_BIND_SERVICE"
                ) from exc
            raise RuntimeSetupError(f"cluster.port: cannot bind UDP {self.port}: {exc}") from exc
        return sock

    def open_family(self, family: int) -> None:
        """Bind the port for ``family`` now, before any peer of it is known (discovery)."""
        if family not in self._socks:
            self._socks[family] = self._open(family)

    def filenos(self) -> list[int]:
        """File descriptors to watch for readability."""
        return [s.fileno() for s in self._socks.values()]

    def set_peers(self, peers: Iterable[IPAddress]) -> None:
        """Replace the peer list (reload); families must already be open."""
        peers = tuple(peers)
        for p in peers:
            family = socket.AF_INET6 if p.version == 6 else socket.AF_INET
            if family not in self._socks:
                self._socks[family] = self._open(family)
        self.peers = peers

    def send(self, data: bytes) -> int:
        """Send ``data`` to every peer address; return how many sends succeeded. Never raises."""
        sent = 0
        for peer in self.peers:
            family = socket.AF_INET6 if peer.version == 6 else socket.AF_INET
            try:
                self._socks[family].sendto(data, (str(peer), self.port))
                sent += 1
            except OSError:
                # A down link (ENETUNREACH, EHOSTUNREACH) is what redundant links are for.
                self.send_errors += 1
        return sent

    def receive(self) -> list[tuple[bytes, str]]:
        """Read what is ready now (non-blocking), at most ``MAX_READ_PER_WAKE`` datagrams."""
        out: list[tuple[bytes, str]] = []
        for sock in self._socks.values():
            while len(out) < MAX_READ_PER_WAKE:
                try:
                    data, addr = sock.recvfrom(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # e.g. ICMP port unreachable surfaced as ECONNREFUSED
                out.append((data, str(addr[0])))
        return out

    def close(self) -> None:
        """Close every socket (idempotent)."""
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()

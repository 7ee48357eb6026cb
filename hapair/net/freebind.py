"""IP_FREEBIND: bind an address this host does not have yet (a VIP on the standby)."""

from __future__ import annotations

import contextlib
import socket
from typing import Final

# Not exported by Python's socket module on every build; values from linux/in.h and in6.h.
IP_FREEBIND: Final = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND: Final = 78


def freebind(sock: socket.socket) -> None:
    """Let ``sock`` bind an address this host does not have (yet): the VIP on a standby."""
    sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    if sock.family == socket.AF_INET6:
        with contextlib.suppress(OSError):  # kernels before 4.15 honour IP_FREEBIND alone
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)

"""A tiny service for a lab node: UDP echo on VIP:7 and HTTP on VIP:80, answering with its name.

``python -m hapair.lab.service --name a --vip 10.77.0.50 [--vip fd77::50]``
Sockets bind to the VIP with IP_FREEBIND, so the service starts before the VIP exists and its
answers leave *from the VIP* (not from eth0's own address), as a real service behind a VIP does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import socket
from collections.abc import Sequence
from typing import Final, cast

from hapair.net.freebind import freebind

MAX_REQUEST: Final = 8192
READ_TIMEOUT: Final = 5.0
MAX_CONNECTIONS: Final = 256


def _socket(address: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """Return a non-blocking socket bound to `address`:`port`, even if the address is absent."""
    v6 = ipaddress.ip_address(address).version == 6
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        freebind(sock)
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class EchoProtocol(asyncio.DatagramProtocol):
    """Answer each datagram with "<name> <payload>"."""

    def __init__(self, name: str) -> None:
        self.name = name.encode("ascii", errors="replace")
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to answer on."""
        # asyncio's selector datagram transport does not subclass DatagramTransport at runtime.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        """Echo the payload, prefixed by this node's name."""
        if self.transport is not None:
            self.transport.sendto(self.name + b" " + data[:256], addr)

    def error_received(self, exc: Exception) -> None:
        """Ignore ICMP errors: the client may have gone; the next datagram is independent."""


class HttpService:
    """Answer any HTTP request with 200 and the node name; bounded read, then close."""

    def __init__(self, name: str) -> None:
        self.body = f"{name}\n".encode("ascii", errors="replace")
        self.active = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection."""
        if self.active >= MAX_CONNECTIONS:
            writer.close()
            return
        self.active += 1
        try:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.LimitOverrunError, OSError):
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            head = (
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("ascii") + self.body)
            with contextlib.suppress(OSError):
                await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except asyncio.IncompleteReadError:
            pass
        finally:
            self.active -= 1
            writer.close()


async def serve(name: str, addresses: Sequence[str], udp_port: int, http_port: int) -> None:
    """Serve UDP echo and HTTP on every address until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http = HttpService(name)
    closers: list[asyncio.BaseTransport | asyncio.Server] = []
    for address in addresses:
        udp = _socket(address, udp_port, socket.SOCK_DGRAM)
        transport, _ = await loop.create_datagram_endpoint(lambda: EchoProtocol(name), sock=udp)
        closers.append(transport)
        tcp = _socket(address, http_port, socket.SOCK_STREAM)
        closers.append(await asyncio.start_server(http.handle, sock=tcp, limit=MAX_REQUEST))
    # The lab waits for this line before it trusts the service to answer.
    print("ready", flush=True)
    await stop.wait()
    for item in closers:
        item.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point of the lab service."""
    parser = argparse.ArgumentParser(
        prog="python -m hapair.lab.service",
        description="UDP echo and HTTP bound to a VIP (IP_FREEBIND), answering with NAME.",
    )
    parser.add_argument("--name", required=True, help="what to answer with (the node name)")
    parser.add_argument(
        "--vip", action="append", required=True, help="address to serve on (repeatable)"
    )
    parser.add_argument("--udp-port", type=int, default=7)
    parser.add_argument("--http-port", type=int, default=80)
    args = parser.parse_args(argv)
    if not args.name.isascii() or " " in args.name or not args.name:
        parser.error("--name must be one ASCII word")
    asyncio.run(serve(args.name, args.vip, args.udp_port, args.http_port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

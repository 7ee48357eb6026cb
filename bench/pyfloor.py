"""The CPython floor of an idle heartbeat sender: only the work the protocol cannot skip.

`bench/idle.py --floor` runs one of these in each lab node, on hapair's two heartbeat links,
beside hapair and keepalived. Each interval it does what an idle hapair MASTER must do and
nothing else: drain both links' sockets, verify the newest datagram's HMAC-SHA256, sign one
packet and send it on both links, then sleep until the next tick. There is no election, no
freshness, no status, no lateness meter: its CPU is the least any Python daemon of this
design can use at this interval on this machine (the interpreter's wake-up, one HMAC to sign,
one to verify, two ``sendto`` and their veth delivery to the peer, the socket reads).

``--loop asyncio`` paces it with asyncio's ``call_at`` (as hapair does); ``--loop sleep`` with
a bare ``time.sleep`` (the least CPython can do). Only the standard library is imported, so
its RSS is that of the interpreter with asyncio and hmac loaded.

    python bench/pyfloor.py --bind 10.77.0.11 192.168.77.1 --peer 10.77.0.12 192.168.77.2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import socket
import struct
import time
from collections.abc import Sequence
from typing import Final

PORT: Final = 6994
#: The same size as hapair's heartbeat body (`hapair.wire.heartbeat.BODY_SIZE`) before its MAC.
BODY: Final = 108
KEY: Final = hashlib.sha256(b"hapair bench floor").digest()


class Floor:
    """Two links' sockets and the per-interval work."""

    def __init__(self, binds: Sequence[str], peers: Sequence[str], port: int = PORT) -> None:
        self.socks = []
        for addr in binds:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((addr, port))
            s.setblocking(False)
            self.socks.append(s)
        self.dests = [(p, port) for p in peers]
        self.seq = 0
        self.heard = 0  # datagrams whose MAC verified (the benchmark's own sanity check)

    def close(self) -> None:
        for s in self.socks:
            s.close()

    def tick(self) -> None:
        """Drain, verify the newest, sign and send on both links."""
        newest = b""
        for s in self.socks:
            while True:
                try:
                    newest = s.recv(2048)
                except BlockingIOError:
                    break
        if len(newest) == BODY + 32:
            mac = hmac.digest(KEY, newest[:BODY], "sha256")
            if hmac.compare_digest(mac, newest[BODY:]):
                self.heard += 1
        self.seq += 1
        body = struct.pack("!Q", self.seq).ljust(BODY, b"\0")
        packet = body + hmac.digest(KEY, body, "sha256")
        for s, dest in zip(self.socks, self.dests, strict=True):
            s.sendto(packet, dest)


def run_sleep(floor: Floor, interval: float) -> None:
    nxt = time.monotonic()
    while True:
        nxt += interval
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        floor.tick()


def run_asyncio(floor: Floor, interval: float) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        def tick(at: float) -> None:
            floor.tick()
            loop.call_at(at + interval, tick, at + interval)

        loop.call_at(loop.time() + interval, tick, loop.time() + interval)
        await loop.create_future()  # until killed

    asyncio.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bind", nargs="+", required=True, help="this node's link addresses")
    parser.add_argument("--peer", nargs="+", required=True, help="the peer's, in link order")
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--loop", choices=("asyncio", "sleep"), default="asyncio")
    args = parser.parse_args(argv)
    if len(args.bind) != len(args.peer):
        parser.error("--bind and --peer need one address per link each")
    floor = Floor(args.bind, args.peer)
    with contextlib.suppress(KeyboardInterrupt):
        (run_asyncio if args.loop == "asyncio" else run_sleep)(floor, args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Record heartbeats off the lab switch and replay them later (protocol v2 freshness drills).

    python -m hapair.lab.replay record --iface v-a --src 10.77.0.11 --out FILE --seconds S
        (inside the switch namespace: an AF_PACKET socket on the port facing the sender; one
        hex payload per line, flushed as it goes; SIGTERM ends it)
    python -m hapair.lab.replay send --file FILE --bind 10.77.0.11 --dst 10.77.0.12
        [--dst ...] --seconds S [--rate N]
        (inside the sender's namespace, its daemon dead: the same source address and port)

`send` replays every recorded payload in turn, round after round, to every --dst, for S
seconds at most N datagrams per second, then prints one JSON line {"sent": N, "seconds": S}.

`record_heartbeats()`, `replay_heartbeats()` and `restart_accept_delay()` drive these (and the
daemons) from the test process, for tests/netns/test_v2_freshness.py and bench/freshness.py.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final

from hapair.lab.addresses import HB4, LAN4
from hapair.lab.shell import LabError, wait_until
from hapair.wire.heartbeat import MAGIC, PACKET_SIZE

if TYPE_CHECKING:
    from hapair.lab.topology import Lab

ETH_P_ALL: Final = 0x0003
ETH_P_IP: Final = 0x0800
_ETH: Final = 14
_UDP: Final = struct.Struct("!HHHH")


class _Stop(Exception):
    pass


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def heartbeat_payload(frame: bytes, src: str, port: int) -> bytes | None:
    """The UDP payload of an Ethernet frame if it is a v2-sized heartbeat from `src` to `port`."""
    if len(frame) < _ETH + 20 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
        return None
    ip = frame[_ETH:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP or socket.inet_ntoa(ip[12:16]) != src:
        return None
    if len(ip) < ihl + _UDP.size:
        return None
    _sport, dport, length, _sum = _UDP.unpack_from(ip, ihl)
    payload = ip[ihl + _UDP.size : ihl + length]
    if dport != port or len(payload) != PACKET_SIZE or not payload.startswith(MAGIC):
        return None
    return payload


def record(iface: str, src: str, port: int, out: Path, seconds: float) -> int:
    """Append every heartbeat from `src` seen on `iface` to `out`; return how many."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    sock.settimeout(0.05)
    n = 0
    end = time.monotonic() + seconds
    with sock, out.open("a", encoding="ascii") as fh:
        try:
            while time.monotonic() < end:
                try:
                    frame = sock.recv(65535)
                except TimeoutError:
                    continue
                payload = heartbeat_payload(frame, src, port)
                if payload is not None:
                    fh.write(payload.hex() + "\n")
                    fh.flush()
                    n += 1
        except _Stop:
            pass
    return n


def send(
    packets: Sequence[bytes], bind: str, dsts: Sequence[str], port: int, seconds: float, rate: int
) -> int:
    """Replay `packets` round-robin to every destination; return datagrams sent."""
    if not packets:
        return 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind, port))
    sent = 0
    start = time.monotonic()
    with sock:
        try:
            while (elapsed := time.monotonic() - start) < seconds:
                if sent >= rate * elapsed:
                    time.sleep(0.001)
                    continue
                packet = packets[(sent // len(dsts)) % len(packets)]
                try:
                    sock.sendto(packet, (dsts[sent % len(dsts)], port))
                except OSError:
                    pass  # a route going away mid-drill: count nothing, go on
                else:
                    sent += 1
        except _Stop:
            pass
    return sent


# -- from the test process --------------------------------------------------------------


def start_recording(lab: Lab, node: str, out: Path, seconds: float = 600.0) -> None:
    """Record `node`'s LAN heartbeats on the switch port facing it (stop with `lab.stop`)."""
    lab.spawn(
        f"recorder-{node}", "sw",
        [sys.executable, "-m", "hapair.lab.replay", "record", "--iface", f"v-{node}",
         "--src", LAN4[node], "--out", str(out), "--seconds", str(seconds)],
    )  # fmt: skip


def record_heartbeats(lab: Lab, node: str, out: Path, seconds: float) -> None:
    """Record `node`'s LAN heartbeats for `seconds` (appended to `out`)."""
    start_recording(lab, node, out, seconds)
    if not wait_until(lambda: not lab.running(f"recorder-{node}"), timeout=seconds + 10):
        raise LabError("the heartbeat recorder did not finish")


def replay_heartbeats(
    lab: Lab, node: str, recording: Path, seconds: float, rate: int = 2000
) -> int:
    """Replay a recording of `node` from its own namespace to both of its peer's addresses."""
    from hapair.lab.nodes import PEER

    peer = PEER[node]
    dsts = [LAN4[peer], *([HB4[peer]] if lab.direct_cable else [])]
    out = lab.dir / f"replay-{node}.json"
    argv = [sys.executable, "-m", "hapair.lab.replay", "send", "--file", str(recording),
            "--bind", "0.0.0.0", "--seconds", str(seconds), "--rate", str(rate)]  # fmt: skip
    for dst in dsts:
        argv += ["--dst", dst]
    with out.open("wb") as fh:
        lab.spawn(f"replayer-{node}", node, argv, stdout=fh)
        if not wait_until(lambda: not lab.running(f"replayer-{node}"), timeout=seconds + 10):
            raise LabError("the replayer did not finish")
    return int(json.loads(out.read_text().strip().splitlines()[-1])["sent"])


def restart_accept_delay(lab: Lab, node: str, *, wipe: bool, timeout: float = 10.0) -> float:
    """SIGKILL and start `node` (its state dir emptied if `wipe`); seconds from its
    daemon_started until its peer logs peer_run_accepted for it (from the daemons' logs)."""
    from hapair.lab.nodes import PEER

    peer = PEER[node]
    lab.hapair.kill(node)
    if wipe:
        for path in (lab.dir / node).iterdir():
            if path.is_file() or path.is_socket():
                path.unlink()
    since = time.time()
    lab.hapair.start(node)
    events = lab.hapair.events()
    started = [e for e in events if e.node == node and e.name == "daemon_started" and e.ts > since]
    if not started:
        raise LabError(f"{node} logged no daemon_started")
    t0 = started[-1].ts

    def accepted() -> float | None:
        hits = [
            e.ts
            for e in lab.hapair.events()
            if e.node == peer and e.name == "peer_run_accepted" and e.get("peer") == node
        ]
        return next((ts for ts in hits if ts > t0), None)

    at = wait_until(accepted, timeout=timeout, step=0.02)
    if at is None:
        raise LabError(f"{peer} did not accept {node}'s new run within {timeout:.0f}s")
    return at - t0


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m hapair.lab.replay")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--iface", required=True)
    r.add_argument("--src", required=True)
    r.add_argument("--port", type=int, default=694)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--seconds", type=float, default=60.0)
    s = sub.add_parser("send")
    s.add_argument("--file", type=Path, required=True)
    s.add_argument("--bind", required=True)
    s.add_argument("--dst", action="append", required=True)
    s.add_argument("--port", type=int, default=694)
    s.add_argument("--seconds", type=float, default=1.0)
    s.add_argument("--rate", type=int, default=2000)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_term)
    start = time.monotonic()
    if args.cmd == "record":
        n = record(args.iface, args.src, args.port, args.out, args.seconds)
        print(json.dumps({"recorded": n, "seconds": round(time.monotonic() - start, 3)}))
        return 0
    lines = args.file.read_text(encoding="ascii").split()
    packets = [bytes.fromhex(line) for line in lines]
    n = send(packets, args.bind, args.dst, args.port, args.seconds, args.rate)
    print(json.dumps({"sent": n, "seconds": round(time.monotonic() - start, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

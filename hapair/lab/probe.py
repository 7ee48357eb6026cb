"""Client probe: a numbered UDP datagram to VIP:7 every 10 ms, plus pure analysis of the answers.

Run in the client namespace: ``python -m hapair.lab.probe --target 10.77.0.50 --out r.json``.
It stops at ``--duration`` or on SIGTERM/SIGINT, waits briefly for late answers and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import itertools
import json
import selectors
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Final

DEFAULT_INTERVAL: Final = 0.010
# An answer later than this counts as lost: a client would have retried or given up by then.
DEFAULT_ANSWER_TIMEOUT: Final = 1.0
MAX_DURATION: Final = 600.0
MAX_DATAGRAM: Final = 512
# Two flips between nodes closer than this are interleaving (split brain), not one clean move.
DEFAULT_FLAP_WINDOW: Final = 0.25


@dataclass(frozen=True)
class Sample:
    """One probe: sequence number, send time, answer time and answering node (None if lost)."""

    seq: int
    sent: float
    answered: float | None = None
    node: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class Outage:
    """A run of lost probes: first lost send time to first later answer; `lost` probes in it."""

    start: float
    end: float
    lost: int
    recovered: bool

    @property
    def duration(self) -> float:
        """Return the span in seconds."""
        return self.end - self.start


# ---------------------------------------------------------------- analysis (pure) -----------


def lost_count(samples: Sequence[Sample], *, after: float = float("-inf")) -> int:
    """Return how many probes sent at/after `after` got no answer."""
    return sum(1 for s in samples if s.answered is None and s.sent >= after)


def outages(samples: Sequence[Sample]) -> list[Outage]:
    """Return every maximal run of unanswered probes, in send order."""
    ordered = sorted(samples, key=lambda s: s.seq)
    found: list[Outage] = []
    run_start: Sample | None = None
    run_lost = 0
    for s in ordered:
        if s.answered is None:
            if run_start is None:
                run_start, run_lost = s, 0
            run_lost += 1
        elif run_start is not None:
            found.append(Outage(run_start.sent, s.answered, run_lost, recovered=True))
            run_start = None
    if run_start is not None:
        found.append(Outage(run_start.sent, ordered[-1].sent, run_lost, recovered=False))
    return found


def client_outage(samples: Sequence[Sample], *, fault: float | None = None) -> Outage | None:
    """Return the longest outage ending at/after `fault` (any outage if None); None if no loss."""
    candidates = [o for o in outages(samples) if fault is None or o.end >= fault]
    return max(candidates, key=lambda o: o.duration, default=None)


def first_answer_from(
    samples: Sequence[Sample], node: str, *, after: float = float("-inf")
) -> Sample | None:
    """Return the earliest-answered probe sent at/after `after` that `node` answered."""
    hits = [s for s in samples if s.node == node and s.answered is not None and s.sent >= after]
    return min(hits, key=lambda s: s.answered or 0.0, default=None)


def node_changes(samples: Sequence[Sample]) -> list[tuple[float, str, str]]:
    """Return (answer time, from node, to node) for each change of answering node."""
    answered = sorted(
        (s for s in samples if s.answered is not None and s.node), key=lambda s: s.seq
    )
    changes: list[tuple[float, str, str]] = []
    for prev, cur in itertools.pairwise(answered):
        if cur.node != prev.node and cur.answered is not None and prev.node and cur.node:
            changes.append((cur.answered, prev.node, cur.node))
    return changes


def split_brain_spans(
    samples: Sequence[Sample], *, window: float = DEFAULT_FLAP_WINDOW
) -> list[tuple[float, float]]:
    """Return spans in which answers flip between nodes more than once within `window`."""
    times = [t for t, _, _ in node_changes(samples)]
    spans: list[tuple[float, float]] = []
    i = 0
    while i < len(times):
        j = i
        while j + 1 < len(times) and times[j + 1] - times[j] <= window:
            j += 1
        if j > i:
            spans.append((times[i], times[j]))
        i = j + 1
    return spans


def split_brain_time(samples: Sequence[Sample], *, window: float = DEFAULT_FLAP_WINDOW) -> float:
    """Return the total seconds in which answers from both nodes interleave."""
    return sum(end - start for start, end in split_brain_spans(samples, window=window))


def load_samples(path: Path) -> list[Sample]:
    """Read a probe result file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Sample(**row) for row in data["samples"]]


def sample_from_stream(line: str) -> Sample | None:
    """Decode one ``--stream`` stdout line (None for anything else)."""
    try:
        row = json.loads(line)
        return Sample(**row) if isinstance(row, dict) else None
    except (ValueError, TypeError):
        return None


# ---------------------------------------------------------------- the probe (I/O) -----------


class _Stop:
    """Set by SIGTERM/SIGINT so the send loop ends and the results still get written."""

    requested = False

    @classmethod
    def handler(cls, signum: int, frame: FrameType | None) -> None:
        """Signal handler: ask the loop to stop."""
        del signum, frame
        cls.requested = True


def _decode(payload: bytes) -> tuple[int, str] | None:
    # The service answers "<node> <seq>"; anything else is noise and is ignored, never raised.
    parts = payload.decode("ascii", errors="replace").split()
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    return int(parts[1]), parts[0]


def run_probe(
    target: str,
    port: int,
    *,
    interval: float,
    duration: float,
    answer_timeout: float,
    stream: bool,
) -> tuple[list[Sample], int]:
    """Probe `target`:`port` until `duration` or a stop signal; return samples and late answers."""
    family = socket.AF_INET6 if ipaddress.ip_address(target).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sent: dict[int, float] = {}
    got: dict[int, tuple[float, str, str]] = {}
    late = 0
    seq = 0
    start = time.monotonic()
    next_send = start
    stop_at = start + min(duration, MAX_DURATION)
    drain_until: float | None = None
    max_seq = int(min(duration, MAX_DURATION) / interval) + 2
    try:
        while True:
            now = time.monotonic()
            if drain_until is None and (_Stop.requested or now >= stop_at or seq >= max_seq):
                drain_until = now + min(answer_timeout, 0.3)
            if drain_until is not None and now >= drain_until:
                break
            if drain_until is None and now >= next_send:
                sent[seq] = time.time()
                # No route / ARP failure surfaces here: that probe is simply lost.
                with contextlib.suppress(OSError):
                    sock.sendto(str(seq).encode("ascii"), (target, port))
                seq += 1
                # Keep a fixed grid; after a stall skip missed slots rather than bursting.
                next_send = max(next_send + interval, now)
            wake = drain_until if drain_until is not None else next_send
            for _key, _mask in sel.select(max(0.0, wake - time.monotonic())):
                late += _receive(sock, sent, got, answer_timeout, stream)
    finally:
        sel.close()
        sock.close()
    samples = []
    for n, ts in sorted(sent.items()):
        hit = got.get(n)
        if hit is None:
            samples.append(Sample(n, ts))
        else:
            samples.append(Sample(n, ts, hit[0], hit[1], hit[2]))
    return samples, late


def _receive(
    sock: socket.socket,
    sent: dict[int, float],
    got: dict[int, tuple[float, str, str]],
    answer_timeout: float,
    stream: bool,
) -> int:
    late = 0
    for _ in range(64):
        try:
            payload, addr = sock.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            # ICMP errors (port unreachable while the service is absent) arrive here.
            continue
        now = time.time()
        decoded = _decode(payload)
        if decoded is None or decoded[0] not in sent or decoded[0] in got:
            continue
        n, node = decoded
        if now - sent[n] > answer_timeout:
            late += 1
            continue
        got[n] = (now, node, str(addr[0]))
        if stream:
            row = {"seq": n, "sent": sent[n], "answered": now, "node": node, "source": addr[0]}
            sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()
    return late


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point of the probe."""
    parser = argparse.ArgumentParser(
        prog="python -m hapair.lab.probe",
        description="Send a numbered UDP datagram to TARGET:PORT every INTERVAL; record answers.",
    )
    parser.add_argument("--target", required=True, help="the VIP to probe")
    parser.add_argument("--port", type=int, default=7)
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="seconds")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds (upper bound)")
    parser.add_argument("--answer-timeout", type=float, default=DEFAULT_ANSWER_TIMEOUT)
    parser.add_argument("--out", type=Path, help="write JSON results here")
    parser.add_argument("--stream", action="store_true", help="print each answer as JSON")
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.duration <= 0:
        parser.error("--interval and --duration must be positive")
    signal.signal(signal.SIGTERM, _Stop.handler)
    signal.signal(signal.SIGINT, _Stop.handler)
    samples, late = run_probe(
        args.target,
        args.port,
        interval=args.interval,
        duration=args.duration,
        answer_timeout=args.answer_timeout,
        stream=args.stream,
    )
    result = {
        "target": args.target,
        "port": args.port,
        "interval": args.interval,
        "answer_timeout": args.answer_timeout,
        "late": late,
        "samples": [asdict(s) for s in samples],
    }
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result), encoding="utf-8")
        tmp.replace(args.out)
    else:
        sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

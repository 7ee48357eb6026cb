"""The ``dns`` balancer's responder: ``python -m hapair.balancer.dnsserver --config FILE``.

A process of its own, so that a query flood never delays the daemon's heartbeats. The first
process binds one UDP and one TCP socket per worker (``SO_REUSEPORT``, so the kernel spreads
clients over them; ``IP_FREEBIND``, so a hot standby without the VIP can bind it), forks the
workers and then only manages them. A worker answers with ``dnsanswer.Answerer`` until it is
told to stop. On SIGHUP the manager re-reads the file and, if it is good, forks a new set of
workers with the new answers before it stops the old set (a bad file keeps the old ones and
says why on stderr); a worker that dies is replaced. The manager writes ``PID GENERATION`` to
the ready file once its workers serve a file's answers: the data plane waits for that line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import mmap
import os
import signal
import socket
import stat
import struct
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Final

from hapair.balancer.dnsanswer import Answerer, Zone, zone_from_json
from hapair.net.freebind import freebind

MAX_CONFIG_BYTES: Final = 1 << 20
MAX_WORKERS: Final = 64
#: UDP datagrams answered per wake-up before TCP gets its turn.
UDP_BATCH: Final = 64
RECV_SIZE: Final = 4096
#: Per worker; further connections are closed at once (RFC 7766 6.2.2 lets a server refuse).
MAX_TCP_CONNECTIONS: Final = 64
TCP_IDLE_TIMEOUT: Final = 10.0
STOP_TIMEOUT: Final = 2.0
#: More worker deaths than this within the window: exit, and let the daemon's supervision act.
DEATH_LIMIT: Final = 5
DEATH_WINDOW: Final = 30.0
_SIGNALS: Final = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
_PR_SET_PDEATHSIG: Final = 1
_reported: set[str] = set()


def log(event: str, **fields: Any) -> None:
    """One JSON line on stderr, dropped rather than ever blocking the responder.

    Supervision drains that pipe only now and then: a full pipe must not stop DNS.
    """
    line = json.dumps({"event": event, **fields}, default=str) + "\n"
    with contextlib.suppress(OSError):
        if stat.S_ISFIFO(os.fstat(2).st_mode):  # never a terminal: the flag is shared
            os.set_blocking(2, False)
        os.write(2, line.encode()[:4000])


def log_once(event: str, **fields: Any) -> None:
    """``log`` the first occurrence of ``event`` only (it may repeat per packet)."""
    if event not in _reported:
        _reported.add(event)
        log(event, **fields)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The file the data plane writes: where to listen, how many workers, what to answer."""

    address: str
    port: int
    workers: int
    ready_file: Path
    generation: int
    zone: Zone

    def to_json(self) -> dict[str, Any]:
        """What ``read_config`` reads back."""
        return {
            "listen": self.address,
            "port": self.port,
            "workers": self.workers,
            "ready_file": str(self.ready_file),
            "generation": self.generation,
            "zone": self.zone.to_json(),
        }


def parse_config(text: str) -> ServerConfig:
    """Check a configuration; ValueError says what is wrong."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ValueError(f"larger than {MAX_CONFIG_BYTES} bytes")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    address, port, workers = obj.get("listen"), obj.get("port"), obj.get("workers")
    generation, ready = obj.get("generation"), obj.get("ready_file")
    try:
        ip_address(address if isinstance(address, str) else "")
    except ValueError:
        raise ValueError(f"listen: {address!r} is not an IP address") from None
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port: {port!r} is not a port")
    if not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers: must be 1 to {MAX_WORKERS} (got {workers!r})")
    if not isinstance(generation, int) or not isinstance(ready, str) or not ready:
        raise ValueError("generation and ready_file are required")
    assert isinstance(address, str)
    return ServerConfig(
        address, port, workers, Path(ready), generation, zone_from_json(obj.get("zone"))
    )


def read_config(path: Path) -> ServerConfig:
    """``parse_config`` of a file; OSError or ValueError."""
    with path.open("rb") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    return parse_config(data.decode("utf-8", errors="replace"))


def bind(address: str, port: int, workers: int) -> list[tuple[socket.socket, socket.socket]]:
    """One (UDP, TCP) socket pair per worker on ``address``:``port``; OSError if not possible."""
    pairs = []
    family = socket.AF_INET6 if ip_address(address).version == 6 else socket.AF_INET
    for _ in range(workers):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        pairs.append((udp, tcp))
        for sock in (udp, tcp):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            freebind(sock)
            sock.bind((address, port))
            sock.setblocking(False)
        tcp.listen(128)
    return pairs


class SharedCounter:
    """Round-robin counters in memory shared by the workers (forked after it is made).

    Increments race between workers; a lost one only repeats an order once, which is cheaper
    than a lock per query.
    """

    _slot: Final = struct.Struct("=Q")

    def __init__(self) -> None:
        self.map = mmap.mmap(-1, 16)

    def __call__(self, slot: int) -> int:
        offset = slot * 8
        value: int = self._slot.unpack_from(self.map, offset)[0]
        self._slot.pack_into(self.map, offset, (value + 1) & 0xFFFF_FFFF_FFFF_FFFF)
        return value


# --------------------------------------------------------------------- worker -----------------


def _die_with(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the manager died before the line above
        os._exit(0)


def drain_udp(respond: Callable[..., bytes | None], sock: socket.socket) -> None:
    """Answer what is queued on ``sock``, up to ``UDP_BATCH`` datagrams."""
    for _ in range(UDP_BATCH):
        try:
            wire, peer = sock.recvfrom(RECV_SIZE)
        except OSError:  # drained (EAGAIN), or an ICMP error report
            return
        try:
            response = respond(wire, peer[0])
        except Exception as exc:  # a bug must not stop the worker: say so once
            log_once("dns_answer_failed", error=repr(exc))
            continue
        if response is not None:
            with contextlib.suppress(OSError):  # buffer full or peer gone: UDP may drop
                sock.sendto(response, peer)


class TcpHandler:
    """DNS over TCP (RFC 7766): length-framed queries, several per connection, bounded."""

    def __init__(self, answerer: Answerer) -> None:
        self.answerer = answerer
        self.open = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= MAX_TCP_CONNECTIONS:
            writer.close()
            return
        self.open += 1
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else ""
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                size = int.from_bytes(head, "big")
                wire = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_TIMEOUT)
                response = self.answerer.respond(wire, client, udp=False)
                if response is None:
                    continue
                writer.write(len(response).to_bytes(2, "big") + response)
                await asyncio.wait_for(writer.drain(), TCP_IDLE_TIMEOUT)
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass  # closed, idle or stuck: RFC 7766 6.2.3 lets the server close it
        except Exception as exc:
            log_once("dns_tcp_failed", error=repr(exc))
        finally:
            self.open -= 1
            writer.close()


def run_worker(answerer: Answerer, udp: socket.socket, tcp: socket.socket) -> int:
    """Serve until SIGTERM (the manager's stop); in a forked child."""
    # Forked siblings inherit one random state: without this, every worker would give the
    # same sequence of `weighted` and `random` orders, and a client spread over two workers
    # would see each draw twice.
    answerer.reseed()
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _, ctx: log_once("dns_loop_error", error=ctx.get("message")))
    loop.run_until_complete(_serve(answerer, udp, tcp))
    return 0


async def _serve(answerer: Answerer, udp: socket.socket, tcp: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()  # an Event, not loop.stop(): a SIGTERM during start-up is kept
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # meant for the manager
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    loop.add_reader(udp.fileno(), drain_udp, answerer.respond, udp)
    server = await asyncio.start_server(TcpHandler(answerer), sock=tcp)
    await stop.wait()
    server.close()


# --------------------------------------------------------------------- manager ----------------


class Manager:
    """Forks, replaces and stops the workers; re-reads the file on SIGHUP."""

    def __init__(
        self,
        path: Path,
        config: ServerConfig,
        sockets: Sequence[tuple[socket.socket, socket.socket]],
    ) -> None:
        self.path = path
        self.config = config
        self.sockets = list(sockets)
        self.counter = SharedCounter()
        self.answerer = Answerer(config.zone, counter=self.counter)
        self.workers: dict[int, int] = {}  # pid -> slot
        self.deaths: deque[float] = deque()

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; 1 when the workers keep dying."""
        for slot in range(len(self.sockets)):
            self.fork(slot)
        self.write_ready()
        while True:
            sig = signal.sigwait(_SIGNALS)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.stop(list(self.workers))
                self.config.ready_file.unlink(missing_ok=True)
                return 0
            if sig == signal.SIGHUP:
                self.reload()
            elif not self.reap():
                self.stop(list(self.workers))
                return 1

    def fork(self, slot: int) -> None:
        """Start the worker for socket pair ``slot`` with the current answers."""
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _die_with(parent)
                udp, tcp = self.sockets[slot]
                for index, pair in enumerate(self.sockets):
                    if index != slot:
                        pair[0].close()
                        pair[1].close()
                code = run_worker(self.answerer, udp, tcp)
            except BaseException as exc:
                log("dns_worker_failed", error=repr(exc))
            finally:
                os._exit(code)
        self.workers[pid] = slot

    def reload(self) -> None:
        """New answers from the file, served by new workers; a bad file changes nothing."""
        try:
            config = read_config(self.path)
            answerer = Answerer(config.zone, counter=self.counter)
        except (OSError, ValueError) as exc:
            log(
                "dns_reload_failed",
                config=str(self.path),
                error=str(exc),
                action="kept the old answers",
            )
            return
        old = (self.config.address, self.config.port, self.config.workers)
        if (config.address, config.port, config.workers) != old:
            log("dns_reload_partial", reason="listen and workers change only at a restart")
        self.config, self.answerer = config, answerer
        retiring = list(self.workers)
        for slot in range(len(self.sockets)):
            self.fork(slot)
        self.stop(retiring)
        self.write_ready()

    def reap(self) -> bool:
        """Replace dead workers; False when they die too often to go on."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return True
            slot = self.workers.pop(pid, None)
            if slot is None:
                continue
            now = time.monotonic()
            self.deaths.append(now)
            while self.deaths and self.deaths[0] < now - DEATH_WINDOW:
                self.deaths.popleft()
            log("dns_worker_died", pid=pid, status=status, deaths=len(self.deaths))
            if len(self.deaths) > DEATH_LIMIT:
                return False
            self.fork(slot)

    def stop(self, pids: Sequence[int]) -> None:
        """Stop these workers and wait (bounded) until they are gone."""
        for pid in pids:
            self.workers.pop(pid, None)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        pending = set(pids)
        while pending:
            for pid in list(pending):
                with contextlib.suppress(ChildProcessError, ProcessLookupError):
                    if os.waitpid(pid, os.WNOHANG)[0] == 0:
                        if time.monotonic() < deadline:
                            continue
                        os.kill(pid, signal.SIGKILL)
                        os.waitpid(pid, 0)
                pending.discard(pid)
            if pending:
                time.sleep(0.002)

    def write_ready(self) -> None:
        """``PID GENERATION``: the workers serve this generation's answers."""
        ready = self.config.ready_file
        tmp = ready.with_name(f".{ready.name}.{os.getpid()}")
        tmp.write_text(f"{os.getpid()} {self.config.generation}\n")
        tmp.replace(ready)


def _never_called(signum: int, frame: object) -> None:
    del signum, frame


def main(argv: Sequence[str] | None = None) -> int:
    """Bind, fork the workers, serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m hapair.balancer.dnsserver")
    parser.add_argument("--config", required=True, type=Path, help="the JSON the data plane wrote")
    args = parser.parse_args(argv)
    try:
        config = read_config(args.config)
    except (OSError, ValueError) as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 2
    # Blocked before the first fork: the manager takes signals with sigwait, and a worker
    # unblocks them only once its own handlers are in place. The handlers never run, but they
    # show in /proc/PID/status (SigCgt), which Supervised.signal checks before a reload.
    for sig in _SIGNALS:
        signal.signal(sig, _never_called)
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        sockets = bind(config.address, config.port, config.workers)
    except OSError as exc:
        where = f"[{config.address}]" if ":" in config.address else config.address
        print(f"cannot listen on {where}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return Manager(args.config, config, sockets).run()


if __name__ == "__main__":
    sys.exit(main())

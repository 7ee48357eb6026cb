"""The detector: pool membership with rise/fall, probe scheduling, and real loopback probes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from hapair.balancer.health import HealthBoard, HealthChange, ProbeSpec
from hapair.balancer.probes import probe

SPEC = ProbeSpec("tcp", "127.0.0.1", 1, interval=1.0, timeout=0.5, rise=2, fall=3)


def test_backend_leaves_after_fall_failures_and_returns_after_rise_successes() -> None:
    board = HealthBoard({"r1": SPEC, "r2": SPEC}, now=0.0)
    assert board.healthy() == ["r1", "r2"]
    changes: list[HealthChange | None] = []
    t = 0.0
    for ok in (False, False, False, True, True):
        assert board.due(t) == ["r1", "r2"]
        changes.append(board.record("r1", ok, "refused" if not ok else "ok", t))
        board.record("r2", True, "ok", t)
        t += 1.0
    assert changes == [None, None, HealthChange("r1", False, "refused"), None,
                       HealthChange("r1", True, "ok")]  # fmt: skip
    assert board.healthy() == ["r1", "r2"]


def test_probes_are_scheduled_per_interval_and_never_overlap() -> None:
    board = HealthBoard({"r1": SPEC}, now=10.0)
    assert board.due(10.0) == ["r1"]
    assert board.due(10.5) == []  # still in flight
    assert board.next_deadline() is None
    board.record("r1", True, "ok", 10.2)
    assert board.next_deadline() == pytest.approx(11.2)
    assert board.due(11.1) == [] and board.due(11.2) == ["r1"]


def test_unprobed_backends_stay_in_the_pool() -> None:
    board = HealthBoard({"r1": ProbeSpec("none", "127.0.0.1", 80)}, now=0.0)
    assert board.due(100.0) == [] and board.next_deadline() is None
    assert board.healthy() == ["r1"]
    assert board.snapshot()["r1"] == {"up": True, "reason": "not probed yet", "probes": 0}


# -- real probes on loopback -------------------------------------------------------------------


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def http_handler(status: int, body: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
        await writer.drain()
        writer.close()

    return handle


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _probe_with(handler: Handler | None, spec_kw: dict[str, object]) -> tuple[bool, str]:
    if handler is None:
        return await probe(ProbeSpec(port=free_port(), host="127.0.0.1", **spec_kw))  # type: ignore[arg-type]
    server, port = await serve(handler)
    async with server:
        return await probe(ProbeSpec(port=port, host="127.0.0.1", **spec_kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("handler", "spec", "ok", "reason"),
    [
        (http_handler(200, b"ok"), {"kind": "tcp"}, True, "tcp connect ok"),
        (None, {"kind": "tcp"}, False, "Connection refused"),
        (http_handler(200, b"alive"), {"kind": "http", "body_contains": "alive"}, True, "http 200"),
        (http_handler(503, b"no"), {"kind": "http"}, False, "http status 503, expected 200"),
        (http_handler(200, b"dead"), {"kind": "http", "body_contains": "alive"}, False,
         "body lacks 'alive'"),
    ],
)  # fmt: skip
def test_probes_against_real_loopback_servers(
    handler: Handler | None, spec: dict[str, object], ok: bool, reason: str
) -> None:
    assert asyncio.run(_probe_with(handler, spec)) == (ok, reason)


def test_a_server_that_never_answers_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2)
        writer.close()

    ok, reason = asyncio.run(_probe_with(silent, {"kind": "http", "timeout": 0.1}))
    assert not ok and reason == "timeout after 100 ms"


def test_garbage_answer_is_not_http() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        await writer.drain()
        writer.close()

    ok, reason = asyncio.run(_probe_with(garbage, {"kind": "http"}))
    assert not ok and reason.startswith("not an HTTP answer")

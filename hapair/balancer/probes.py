"""Backend probes, the I/O edge of the detector: a TCP connect, or an HTTP GET.

Each returns ``(ok, reason)`` and never raises for network trouble: a probe that cannot
connect, times out, or gets the wrong answer is simply a failed probe with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Final

from hapair.balancer.health import ProbeSpec

#: Bytes of an HTTP answer read at most (status line, headers and the body searched).
MAX_HTTP_READ: Final = 64 * 1024


async def probe(spec: ProbeSpec) -> tuple[bool, str]:
    """Run the probe ``spec`` describes, bounded by its timeout."""
    try:
        if spec.kind == "tcp":
            return await asyncio.wait_for(_tcp(spec), spec.timeout)
        if spec.kind == "http":
            return await asyncio.wait_for(_http(spec), spec.timeout)
        return True, "not probed"
    except TimeoutError:
        return False, f"timeout after {spec.timeout * 1000:.0f} ms"
    except OSError as exc:
        # asyncio wraps connect errors ("Connect call failed ..."); the errno says it plainly.
        return False, os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__


async def _tcp(spec: ProbeSpec) -> tuple[bool, str]:
    _, writer = await asyncio.open_connection(spec.host, spec.port)
    await _close(writer)
    return True, "tcp connect ok"


async def _http(spec: ProbeSpec) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection(spec.host, spec.port)
    try:
        host = f"[{spec.host}]" if ":" in spec.host else spec.host
        writer.write(
            f"GET {spec.path} HTTP/1.0\r\nHost: {host}:{spec.port}\r\n"
            "User-Agent: hapair-probe\r\nConnection: close\r\n\r\n".encode("ascii")
        )
        await writer.drain()
        data = b""
        while len(data) < MAX_HTTP_READ:
            chunk = await reader.read(MAX_HTTP_READ - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        await _close(writer)
    status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return False, f"not an HTTP answer: {status_line[:60]!r}"
    status = int(parts[1])
    if status != spec.expect_status:
        return False, f"http status {status}, expected {spec.expect_status}"
    if spec.body_contains is not None:
        body = data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""
        if spec.body_contains.encode() not in body:
            return False, f"body lacks {spec.body_contains!r}"
    return True, f"http {status}"


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()

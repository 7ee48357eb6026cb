"""A control request whose answer takes time (a reload) is awaited, and the loop runs on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hapair.ops.control_client import request
from hapair.runtime.control import ControlServer


def test_an_async_handler_is_awaited_while_the_loop_keeps_ticking(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    ticks: list[int] = []
    release = asyncio.Event()

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        await release.wait()  # a balancer reload on its worker, say
        return {"ok": True, "ticks_meanwhile": len(ticks)}

    async def ticker() -> None:
        while len(ticks) < 5:
            ticks.append(1)
            await asyncio.sleep(0.01)
        release.set()

    async def scenario() -> dict[str, Any]:
        server = ControlServer(path, handler)
        await server.start()
        try:
            tick = asyncio.ensure_future(ticker())
            reply = await asyncio.to_thread(request, path, {"cmd": "reload"})
            await tick
            return reply
        finally:
            await server.close()

    assert asyncio.run(scenario()) == {"ok": True, "ticks_meanwhile": 5}

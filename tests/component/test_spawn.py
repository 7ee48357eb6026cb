"""Children started off the loop: exit status, output, timeouts (real processes, watched loop)."""

from __future__ import annotations

import asyncio
import sys

from hapair.net.tracking import run_probe
from hapair.spawn import spawn


def test_track_probes_report_the_exit_status_and_a_timeout_kills() -> None:
    async def scenario() -> list[bool]:
        return [
            await run_probe(("/bin/true",), 5.0),
            await run_probe(("/bin/false",), 5.0),
            await run_probe((sys.executable, "-c", "import time; time.sleep(30)"), 0.3),
            await run_probe(("/nonexistent/program",), 5.0),
        ]

    assert asyncio.run(scenario()) == [True, False, False, False]


def test_output_is_read_and_the_exit_is_seen_without_waiting_on_the_loop() -> None:
    async def scenario() -> tuple[bytes, int | None]:
        out = bytearray()
        child = await spawn(
            [sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"], output=out.extend
        )
        await asyncio.wait_for(child.exited, 10)
        await asyncio.wait_for(child.closed, 10)
        child.close()
        return bytes(out), child.returncode

    assert asyncio.run(scenario()) == (b"hi\n", 3)

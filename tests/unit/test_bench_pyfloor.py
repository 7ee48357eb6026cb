"""bench/pyfloor.py does the work it claims: both links carry a verified heartbeat each tick."""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

FLOOR = Path(__file__).resolve().parents[2] / "bench" / "pyfloor.py"


@pytest.fixture(scope="module")
def pyfloor() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pyfloor", FLOOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pair(pyfloor: ModuleType) -> Iterator[tuple[object, object]]:
    port = _free_port()
    # Two "links" per side on loopback: 127.0.0.1/.3 for one, 127.0.0.2/.4 for the other.
    a = pyfloor.Floor(["127.0.0.1", "127.0.0.3"], ["127.0.0.2", "127.0.0.4"], port=port)
    b = pyfloor.Floor(["127.0.0.2", "127.0.0.4"], ["127.0.0.1", "127.0.0.3"], port=port)
    yield a, b
    a.close()
    b.close()


def test_each_tick_verifies_the_peers_newest_and_sends_on_every_link(pair: tuple) -> None:
    a, b = pair
    a.tick()
    b.tick()  # reads a's two copies, verifies the newest, sends its own
    a.tick()
    assert (a.heard, b.heard) == (1, 1)
    assert (a.seq, b.seq) == (2, 1)


def test_a_forged_datagram_is_not_counted(pair: tuple, pyfloor: ModuleType) -> None:
    a, b = pair
    port = a.dests[0][1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(bytes(pyfloor.BODY + 32), ("127.0.0.2", port))
    b.tick()
    assert b.heard == 0

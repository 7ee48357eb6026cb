"""Protocol v2 freshness with the real daemons: a restart with no state is accepted at once,
and a recorded heartbeat stream, replayed after its sender died, is never accepted.

Timing figures are measured from the daemons' own logs and only bounded generously here (so a
broken handshake fails instead of hanging); bench/freshness.py prints them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from hapair.lab.events import Event
from hapair.lab.nodes import Timers
from hapair.lab.replay import record_heartbeats, replay_heartbeats, restart_accept_delay
from hapair.lab.shell import wait_until
from hapair.lab.topology import Lab

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

FAST = Timers(interval=0.05, dead_after=4)
_counter = iter(range(1000))


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(f"v2r{os.getpid() % 1000}{next(_counter)}", timers=FAST) as lab:
        yield lab


def role(lab: Lab, node: str) -> str | None:
    status = lab.hapair.status(node)
    return None if status is None else str(status["role"])


def start_pair(lab: Lab) -> None:
    lab.hapair.start("a")
    lab.hapair.start("b")
    assert wait_until(
        lambda: lab.vip_holders() == ["a"] and role(lab, "b") == "BACKUP", timeout=10, step=0.02
    )


def named(lab: Lab, name: str, node: str, after: float = 0.0) -> list[Event]:
    return [e for e in lab.hapair.events() if e.name == name and e.node == node and e.ts > after]


def test_a_restart_with_its_state_wiped_is_accepted_within_two_intervals(lab: Lab) -> None:
    start_pair(lab)
    delays = [restart_accept_delay(lab, "b", wipe=True) for _ in range(3)]
    print(f"new-run acceptance delay (s): {[round(d, 4) for d in delays]}")
    # Generous: only so that a broken handshake fails here (bench/freshness.py measures).
    assert max(delays) < 2 * FAST.interval + 0.5
    assert wait_until(lambda: role(lab, "b") == "BACKUP", timeout=5, step=0.02)
    assert lab.vip_holders() == ["a"]


def rejected(lab: Lab, node: str) -> dict[str, int]:
    status = lab.hapair.status(node)
    assert status is not None
    counts = status["rejected"]
    assert isinstance(counts, dict)
    return {str(k): int(v) for k, v in counts.items()}


def test_a_recorded_stream_replayed_after_its_sender_died_is_never_accepted(lab: Lab) -> None:
    start_pair(lab)
    recording = lab.dir / "a.hex"
    record_heartbeats(lab, "a", recording, 1.0)  # run 1 of a
    restart_accept_delay(lab, "a", wipe=True)  # run 2 of a; b fails over and a takes back
    assert wait_until(lambda: lab.vip_holders() == ["a"], timeout=10, step=0.02)
    record_heartbeats(lab, "a", recording, 1.0)  # run 2 of a
    lines = recording.read_text().split()
    assert len(lines) >= 20, f"only {len(lines)} heartbeats recorded"

    before = rejected(lab, "b")
    lab.hapair.kill("a")
    killed = time.time()
    lab.remove_vips("a")  # what ExecStopPost's release would do, without telling b
    sent = replay_heartbeats(lab, "a", recording, 8 * FAST.dead_time)
    after = rejected(lab, "b")

    took_over = [e for e in named(lab, "role_changed", "b", killed) if e.get("to_role") == "MASTER"]
    assert took_over, "b did not take over while the replay ran"
    print(f"b took MASTER {took_over[0].ts - killed:.3f}s after a died; {sent} replayed")
    assert took_over[0].get("reason") == "peer_dead"
    assert took_over[0].ts - killed < FAST.dead_time + 1.0  # generous (logs, loaded VM)
    assert lab.vip_holders() == ["b"]
    # Nothing accepted: b's last heartbeat from a is older than a's death.
    asked = time.time()  # the snapshot is taken after this
    status = lab.hapair.status("b")
    assert status is not None
    [peer] = status["peers"]  # type: ignore[misc]
    assert peer["node"] == "a" and not peer["alive"]
    assert peer["last_heard_ago"] >= asked - killed - 0.05  # a packet just before death
    # Run 2 (the accepted one) replays as `replay`, run 1 as `unproven`.
    grew = {k: after.get(k, 0) - before.get(k, 0) for k in ("replay", "unproven")}
    assert grew["replay"] > 0 and grew["unproven"] > 0, grew
    assert grew["replay"] + grew["unproven"] >= sent * 0.9, (grew, sent)

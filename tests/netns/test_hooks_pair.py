"""[[hook]] on the real pair: role hooks run with HAPAIR_* on both nodes, in order."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from hapair.lab.nodes import Timers
from hapair.lab.shell import wait_until
from hapair.lab.topology import Lab

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

RECORD = (
    "import json, os, sys; "
    "open(sys.argv[1], 'a').write(json.dumps({k: v for k, v in os.environ.items()"
    " if k.startswith('HAPAIR_')}) + '\\n')"
)


def records(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_role_hooks_follow_a_handover() -> None:
    with Lab(f"hh{os.getpid() % 10000}", timers=Timers(interval=0.05, dead_after=4)) as lab:
        out = {n: lab.dir / f"hook-{n}.jsonl" for n in ("a", "b")}
        for node in ("a", "b"):
            cfg = lab.hapair.config_path(node)
            cfg.write_text(
                cfg.read_text()
                + f'\n[[hook]]\non = ["role"]\ncommand = ["{sys.executable}", "-c", '
                + json.dumps(RECORD)
                + f', "{out[node]}"]\ntimeout = "5s"\n'
            )
        lab.hapair.start("a")
        lab.hapair.start("b")
        assert wait_until(lambda: lab.vip_holders() == ["a"], timeout=10)
        assert wait_until(
            lambda: any(r["HAPAIR_ROLE"] == "MASTER" for r in records(out["a"])), timeout=5
        )
        assert wait_until(
            lambda: any(r["HAPAIR_ROLE"] == "BACKUP" for r in records(out["b"])), timeout=5
        )
        master = next(r for r in records(out["a"]) if r["HAPAIR_ROLE"] == "MASTER")
        assert master["HAPAIR_EVENT"] == "master" and master["HAPAIR_NODE"] == "a"
        assert master["HAPAIR_VIPS"].startswith("10.77.0.50/24")

        lab.python("a", ["-m", "hapair", "handover", "-c", str(lab.hapair.config_path("a"))])
        assert wait_until(lambda: records(out["b"])[-1]["HAPAIR_ROLE"] == "MASTER", timeout=5)
        assert wait_until(lambda: records(out["a"])[-1]["HAPAIR_ROLE"] == "BACKUP", timeout=5)
        last = records(out["b"])[-1]
        assert last["HAPAIR_PREVIOUS_ROLE"] == "BACKUP" and last["HAPAIR_REASON"] == "peer_resigned"
        assert last["HAPAIR_PEER"] == "a"
        finished = [e for e in lab.hapair.events() if e.name == "hook_finished"]
        assert finished and all(e.fields.get("exit_status") == 0 for e in finished)

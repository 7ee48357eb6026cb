"""Runtime pieces that need no network: state file, CLI parsing and exit codes, status text."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from hapair.cli import build_parser, format_status, main
from hapair.runtime.state import Loaded, PersistentState, read_state, save_state

GOOD = """
[node]
name = "lb1"
priority = 150
[cluster]
name = "web"
secret_file = "{secret}"
peers = ["10.0.0.12", "192.168.77.2"]
interval = "200ms"
dead_after = 5
[[vip]]
address = "10.0.0.50/24"
interface = "eth0"
"""


def write_config(tmp_path: Path, text: str = GOOD) -> Path:
    secret = tmp_path / "secret"
    secret.write_text(base64.b64encode(os.urandom(32)).decode())
    secret.chmod(0o600)
    cfg = tmp_path / "hapair.toml"
    cfg.write_text(text.format(secret=secret))
    return cfg


def test_state_round_trip_is_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "web-lb1.state"
    save_state(path, PersistentState(maintenance=True))
    assert read_state(path) == Loaded(PersistentState(maintenance=True))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["web-lb1.state"]  # no temp file left


def test_broken_or_missing_state_file_gives_defaults_and_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "x.state"
    path.write_text("{not json")
    loaded = read_state(path)
    assert loaded.state == PersistentState() and "not valid JSON" in str(loaded.problem)
    missing = read_state(tmp_path / "missing")
    assert missing.state == PersistentState() and "missing" in str(missing.problem)


def test_check_config_ok_explains_timers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(write_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "worst-case detection" in out


def test_check_config_lists_every_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = GOOD.replace("priority = 150", "priority = 0").replace('"200ms"', '"fast"')
    assert main(["check-config", str(write_config(tmp_path, bad))]) == 2
    err = capsys.readouterr().err
    assert "node.priority" in err and "cluster.interval" in err


def test_keygen_prints_32_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen"]) == 0
    assert len(base64.b64decode(capsys.readouterr().out.strip())) == 32


def test_status_without_daemon_is_a_runtime_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path, GOOD + f'[runtime]\nstate_dir = "{tmp_path}"\n')
    assert main(["status", "-c", str(cfg)]) == 1
    assert "no daemon" in capsys.readouterr().err


def test_every_command_has_teaching_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():  # type: ignore[attr-defined]
        text = p.format_help()
        assert len(text) > 200, name


def test_format_status_shows_the_facts() -> None:
    text = format_status(
        {
            "cluster": "web", "node": "lb1", "role": "MASTER", "resigning": False, "term": 3,
            "priority": {"base": 150, "effective": 90}, "fault_reason": None,
            "vips_held": ["10.0.0.50/24"],
            "peers": [{"node": "lb2", "role": "BACKUP", "alive": True,
                       "priority": {"base": 100, "effective": 100}, "last_heard_ago": 0.1,
                       "links": {"10.0.0.12": 0.1, "192.168.77.2": 0.12}}],
            "last_transition": {"from": "BACKUP", "to": "MASTER", "reason": "peer_dead",
                                "ago": 12.0, "at": 1.7e9},
            "rejected": {"bad_mac": 2},
            "heartbeat_drops": {"10.0.0.12": 51234, "192.168.77.2": 0},
            "balancer": {"kind": "proxy", "scheduler": "weighted", "mode": "hot",
                         "active": True, "plane": {},
                         "backends": {"10.0.1.21:80": {"up": False, "reason": "refused",
                                                       "probes": 7}}},
            "transitions": [
                {"from": "INIT", "to": "BACKUP", "reason": "peer_is_master", "term": 2,
                 "at": 1.7e9, "ago": 40.0},
                {"from": "BACKUP", "to": "MASTER", "reason": "peer_dead", "term": 3,
                 "at": 1.7e9 + 28, "ago": 12.0},
            ],
        }
    )  # fmt: skip
    for needle in ("MASTER", "priority 90 (base 150)", "10.0.0.50/24", "peer lb2: BACKUP",
                   "192.168.77.2", "peer_dead", "bad_mac=2", "balancer: proxy (weighted, hot)",
                   "per link: 10.0.0.12=51234, 192.168.77.2=0",
                   "backend 10.0.1.21:80: DOWN (refused, 7 probes)",
                   "recent transitions (newest last):",
                   "(40.0s ago) INIT -> BACKUP (peer_is_master), term 2",
                   "(12.0s ago) BACKUP -> MASTER (peer_dead), term 3"):  # fmt: skip
        assert needle in text

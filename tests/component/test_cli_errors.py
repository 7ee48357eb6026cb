"""The real CLI on bad input: exit 2 with the key path, one clean line, no traceback, no hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hapair.cli import main
from tests.unit.test_config_input import base

# Generous: a hang is what is tested, not speed (a blocking FIFO open never returns).
TIMEOUT = 30.0


def hapair(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-m", "hapair", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        env=env,
        check=False,
    )


NASTY: list[tuple[str, str, str]] = [
    ("5000-digit integer", base(extra="[garp]\nburst = " + "9" * 5000 + "\n"), "  garp.burst: "),
    (
        "5000-deep arrays",
        base(extra="[runtime]\nstate_dir = " + "[" * 5000 + "]" * 5000 + "\n"),
        "  runtime.state_dir: arrays or tables nested",
    ),
    ("401-digit interval", base(cluster="interval = " + "1" * 401), "  cluster.interval: "),
]


@pytest.mark.parametrize(("case", "text", "line"), NASTY, ids=[n[0] for n in NASTY])
def test_check_config_exits_2_naming_the_key(
    tmp_path: Path, case: str, text: str, line: str
) -> None:
    path = tmp_path / "hapair.toml"
    path.write_text(text)
    done = hapair("check-config", "--no-secret", str(path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"hapair: configuration error in {path}: ")
    assert any(row.startswith(line) for row in done.stderr.splitlines()), done.stderr


def test_a_fifo_secret_does_not_hang_check_config(tmp_path: Path) -> None:
    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    path = tmp_path / "hapair.toml"
    path.write_text(base(cluster=f'secret_file = "{fifo}"'))
    done = hapair("check-config", str(path), cwd=tmp_path)  # TimeoutExpired if it blocks
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"  cluster.secret_file: {fifo} is a FIFO (named pipe)" in done.stderr


def test_a_bom_file_checks_ok_and_warnings_are_printed(tmp_path: Path) -> None:
    path = tmp_path / "hapair.toml"
    path.write_text("\ufeff" + base(interface="lo"), encoding="utf-8")
    done = hapair("check-config", "--no-secret", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{path}: OK" in done.stdout
    assert '  warning: vip[0].interface = "lo": a VIP on loopback' in done.stdout


def test_status_without_a_daemon_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "hapair.toml"
    path.write_text(base(extra=f'[runtime]\nstate_dir = "{tmp_path}"\n'))
    done = hapair("status", "-c", str(path), cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert (
        done.stderr
        == f"hapair: no daemon: control socket {tmp_path}/web-alpha.sock does not exist\n"
    )


def test_release_with_a_bad_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "hapair.toml"
    path.write_text(base(peers='"255.255.255.255"'))
    done = hapair("release", "-c", str(path), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "  cluster.peers[0]: '255.255.255.255' is not a unicast host address" in done.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "soon"])
def test_a_bad_timeout_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["handover", "--timeout", value])
    assert info.value.code == 2
    assert "argument --timeout: " in capsys.readouterr().err

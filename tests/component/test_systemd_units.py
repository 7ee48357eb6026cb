"""The systemd units: systemd-analyze accepts them, they agree with each other and with the CLI,
and their capability set and sandbox are enough for the balancer engines the daemon starts."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hapair.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "systemd"
BINARY = "/usr/local/bin/hapair"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (apt: systemd)"
)


def directives(name: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every setting of ``systemd/NAME``, in file order."""
    section = ""
    out = []
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(name: str, key: str) -> list[str]:
    return [v for _, k, v in directives(name) if k == key]


def analyze(unit_dir: Path, unit: str, level: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit_dir / unit)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": level, "SYSTEMD_LOG_COLOR": "0"},
    )  # fmt: skip


def verify(unit_dir: Path, unit: str) -> list[str]:
    """systemd-analyze verify's complaints about ``unit`` (empty: accepted).

    At level info: a value systemd cannot parse (``WatchdogSec=five``) is only a notice.
    """
    proc = analyze(unit_dir, unit, "info")
    # Complaints about the host's own units are not ours; every one about ours names it.
    ours = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if "hapair" in line or str(unit_dir) in line
    ]
    if proc.returncode != 0 and not ours:
        ours = [f"exit status {proc.returncode}: {proc.stderr.strip()}"]
    return ours


def staged(tmp_path: Path, name: str, edit: tuple[str, str] | None = None) -> Path:
    """A copy of ``systemd/NAME`` whose commands run an executable stub of hapair.

    ``verify`` insists that every command exists: the stub stands in for the install path.
    """
    unit_dir = tmp_path / "units"
    unit_dir.mkdir(exist_ok=True)
    stub = tmp_path / "bin" / "hapair"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = (UNITS / name).read_text().replace(BINARY, str(stub))
    if edit is not None:
        assert edit[0] in text
        text = text.replace(*edit)
    (unit_dir / name).write_text(text)
    return unit_dir


# -- systemd accepts them ----------------------------------------------------------------------


@needs_analyze
@pytest.mark.parametrize(
    ("name", "unit"),
    [("hapair.service", "hapair.service"), ("hapair@.service", "hapair@web.service")],
)
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path, name: str, unit: str) -> None:
    assert verify(staged(tmp_path, name), unit) == []


@needs_analyze
@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (("KillMode=mixed", "KillMode=mixed\nKilMode=mixed"), "KilMode"),
        (("WatchdogSec=5s", "WatchdogSec=five"), "five"),
        (("Type=notify", "Type=notfiy"), "notfiy"),
        (("ExecReload=/", "ExecReload=hapair-relative /"), "hapair-relative"),
    ],
)
def test_the_verify_check_catches_a_broken_unit(
    tmp_path: Path, edit: tuple[str, str], complaint: str
) -> None:
    """The check above is not vacuous: it sees what systemd would ignore at runtime."""
    problems = verify(staged(tmp_path, "hapair.service", edit), "hapair.service")
    assert any(complaint in p for p in problems), problems


@needs_analyze
def test_systemd_understands_every_capability_as_written(tmp_path: Path) -> None:
    """An unknown capability name is dropped without a word, even by verify: compare the sets
    systemd loaded (its debug dump of the unit) with the ones the file spells out."""
    proc = analyze(staged(tmp_path, "hapair.service"), "hapair.service", "debug")
    loaded = {}
    for line in (proc.stdout + proc.stderr).splitlines():
        key, _, rest = line.strip().partition(": ")
        if key in ("CapabilityBoundingSet", "AmbientCapabilities"):
            loaded[key] = {c.upper() for c in rest.split()}
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        assert loaded.get(key) == set(values("hapair.service", key)[0].split()), key


@needs_analyze
def test_the_verify_check_needs_the_installed_binary(tmp_path: Path) -> None:
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    text = (UNITS / "hapair.service").read_text().replace(BINARY, str(tmp_path / "no-hapair"))
    (unit_dir / "hapair.service").write_text(text)
    assert any("no-hapair" in p for p in verify(unit_dir, "hapair.service"))


# -- they agree with each other and with the CLI -----------------------------------------------


def test_the_template_differs_only_in_the_configuration_it_names() -> None:
    plain = directives("hapair.service")
    template = [
        (s, k, v.replace("/etc/hapair/%i.toml", "/etc/hapair/hapair.toml"))
        for s, k, v in directives("hapair@.service")
    ]
    differ = {k for a, b in zip(plain, template, strict=True) if a != b for _, k, _ in (a, b)}
    assert differ == {"Description", "SyslogIdentifier"}
    assert values("hapair@.service", "SyslogIdentifier") == ["hapair-%i"]


@pytest.mark.parametrize(
    ("name", "config"),
    [("hapair.service", "/etc/hapair/hapair.toml"), ("hapair@.service", "/etc/hapair/%i.toml")],
)
def test_every_command_is_a_real_hapair_command_on_the_same_file(name: str, config: str) -> None:
    parser = build_parser(with_lab=False)
    commands = {
        key: [shlex.split(v.lstrip("-@:+!")) for v in values(name, key)]
        for key in ("ExecStart", "ExecReload", "ExecStopPost")
    }
    seen = {}
    for key, argvs in commands.items():
        seen[key] = [argv[1] for argv in argvs]
        for argv in argvs:
            assert argv[0] == BINARY
            args = parser.parse_args(argv[1:])
            assert (getattr(args, "config", None) or args.file) == config
    assert seen == {
        "ExecStart": ["run"],
        "ExecReload": ["check-config", "reload"],  # validated first, applied second
        "ExecStopPost": ["release"],
    }


@pytest.mark.parametrize("name", ["hapair.service", "hapair@.service"])
def test_the_settings_the_daemon_relies_on(name: str) -> None:
    def one(key: str) -> str:
        found = values(name, key)
        assert len(found) == 1, f"{key}: {found}"
        return found[0]

    assert one("Type") == "notify" and one("NotifyAccess") == "main"
    assert one("KillMode") == "mixed"  # SIGTERM to the daemon alone: it hands over first
    assert one("Restart") == "on-failure" and one("RestartPreventExitStatus") == "2"
    assert one("RuntimeDirectory") == "hapair"  # the default runtime.state_dir, /run/hapair
    assert one("RuntimeDirectoryPreserve") == "yes"  # the instances share it
    # The default runtime.lib_dir, /var/lib/hapair: writable under ProtectSystem=strict, kept.
    assert one("StateDirectory") == "hapair" and one("StateDirectoryMode") == "0700"
    assert one("NoNewPrivileges") == "yes" and one("ProtectSystem") == "strict"
    assert one("RestrictRealtime") == "yes"  # real time is off unless an operator says so
    bounding = set(one("CapabilityBoundingSet").split())
    ambient = set(one("AmbientCapabilities").split())
    # systemd refuses to start a unit whose ambient set exceeds its bounding set.
    assert ambient <= bounding
    # hapair run refuses to start without these two (daemon.check_capabilities).
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW"} <= ambient
    assert "CAP_SYS_PTRACE" not in bounding and "CAP_SYS_ADMIN" not in bounding
    families = set(one("RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}
    watchdog = one("WatchdogSec")
    assert watchdog.endswith("s") and float(watchdog[:-1]) >= 2  # pings every half of it


# -- the sandbox is enough for the engines -----------------------------------------------------

# One engine data plane driven as the daemon drives it, inside the unit's restrictions:
# the capability bounding set (as root, as the unit runs), no_new_privs, and no writable
# executable memory (PR_SET_MDWE where the kernel has it, as MemoryDenyWriteExecute=).
ENGINE_DRIVER = """
import ctypes, json, sys
from ipaddress import ip_address
from pathlib import Path
from hapair.balancer.engine import EngineDataPlane
from hapair.balancer.plane import Member, Pool
from hapair.config.balancer import Balancer
from hapair.errors import BalancerError
mdwe = ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) == 0
engine, run_dir, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
cfg = Balancer.model_validate({
    "kind": "proxy", "scheduler": "rr", "mode": "cold", "listen": f"127.0.0.1:{port}",
    "backend": [{"address": "127.0.0.1:9"}, {"address": "127.0.0.2:9"}],
    "proxy": {"engine": engine, "connect_timeout": "500ms", "timeout": "2s"},
})
plane = EngineDataPlane(cfg, run_dir=run_dir)
steps = []
try:
    steps.append(plane.apply(Pool((Member(ip_address("127.0.0.1"), 9, 1),))))
    two = (Member(ip_address("127.0.0.1"), 9, 1), Member(ip_address("127.0.0.2"), 9, 1))
    steps.append(plane.apply(Pool(two)))  # a graceful reload
    steps.append(plane.remove())
    print(json.dumps({"ok": steps, "mdwe": mdwe}))
except BalancerError as exc:
    plane.remove()
    print(json.dumps({"error": str(exc), "mdwe": mdwe}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_engine_sandboxed(tmp_path: Path, engine: str, drop: str | None = None) -> dict[str, object]:
    caps = values("hapair.service", "CapabilityBoundingSet")[0].split()
    keep = [c.removeprefix("CAP_").lower() for c in caps if c != drop]
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)  # as RuntimeDirectoryMode=
    argv = [
        "setpriv", f"--bounding-set=-all,{','.join('+' + c for c in keep)}",
        "--inh-caps=-all", "--no-new-privs",
        sys.executable, "-c", ENGINE_DRIVER, engine, str(run_dir / "x.balancer"),
        str(free_port()),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=90, env=env, check=False)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def engine_present(engine: str) -> bool:
    return bool(shutil.which(engine) or Path(f"/usr/sbin/{engine}").exists())


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="bounding the capabilities of a root process needs root and setpriv",
)


@needs_root
@pytest.mark.parametrize("engine", ["nginx", "haproxy"])
def test_engines_start_reload_and_stop_inside_the_units_sandbox(
    tmp_path: Path, engine: str
) -> None:
    if not engine_present(engine):
        pytest.skip(f"{engine} is not installed")
    result = run_engine_sandboxed(tmp_path, engine)
    assert result.get("ok") == [True, True, True], result


@needs_root
def test_nginx_is_why_the_unit_keeps_cap_chown(tmp_path: Path) -> None:
    if not engine_present("nginx"):
        pytest.skip("nginx is not installed")
    result = run_engine_sandboxed(tmp_path, "nginx", drop="CAP_CHOWN")
    assert "chown" in str(result.get("error")), result

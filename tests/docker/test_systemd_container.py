"""systemd/hapair.service as shipped, under a real systemd (PID 1 in two containers).

Without `--privileged`: the containers get SYS_ADMIN (systemd mounts the unit's sandbox),
NET_ADMIN and NET_RAW (the VIP, gratuitous ARP), no seccomp profile (systemd installs the unit's
own filter), tmpfs /run and the host's cgroup tree (cgroup v1, cgroupfs driver: systemd in the
container manages its subtree /docker/ID).

The tests are steps of one story and run in file order on one pair; a step whose predecessor
failed is skipped. On a failure each node's unit status and journal are printed.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, TypeVar

import pytest

from hapair.config.keygen import generate_key
from hapair.lab import shell
from hapair.ops.journald import MESSAGE_IDS
from tests.docker.conftest import LABEL

PREFIX: Final = f"hps{os.getpid()}"
# The compose lab owns 172.31.77.0/24; the first of these that nothing on the host uses is ours.
LAB_SUBNET: Final = ipaddress.ip_network("172.31.77.0/24")
CANDIDATES: Final = [ipaddress.ip_network(f"172.31.{n}.0/24") for n in range(78, 90)]
CONFIG: Final = "/etc/hapair/hapair.toml"
SECRET: Final = "/etc/hapair/key"
# Exactly what the issue allows: no --privileged on these hosts.
RUN_OPTIONS: Final[dict[str, Any]] = {
    "cap_add": ["SYS_ADMIN", "NET_ADMIN", "NET_RAW"],
    "security_opt": ["seccomp=unconfined"],
    "tmpfs": {"/run": "", "/run/lock": ""},
    "cgroupns": "host",
    "volumes": {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
    "environment": {"container": "docker"},
}
# Bounds, in seconds. The unit: WatchdogSec=5s, RestartSec=2s; hapair: 5 x 200 ms dead time.
BOOT_TIMEOUT: Final = 60.0
ELECTION_TIMEOUT: Final = 10.0
RELEASE_TIMEOUT: Final = 5.0
WATCHDOG_SEC: Final = 5.0
RESTART_TIMEOUT: Final = 2.0 + 10.0
ROLES: Final = ("INIT", "BACKUP", "MASTER", "FAULT")
# hapair.service's CapabilityBoundingSet=, as bit numbers (linux/capability.h).
UNIT_CAPS: Final = {"CHOWN": 0, "KILL": 5, "SETGID": 6, "SETUID": 7, "NET_BIND_SERVICE": 10}
UNIT_CAPS_NET: Final = {"NET_ADMIN": 12, "NET_RAW": 13}

T = TypeVar("T")


def toml(name: str, priority: int, peer: str, vip: str) -> str:
    # preempt off: after each failover the new master keeps the VIP, so every step ends in a
    # stable state the next one starts from (preemption itself is tested in tests/netns).
    return (
        f'[node]\nname = "{name}"\npriority = {priority}\n\n'
        f'[cluster]\nname = "hps"\nsecret_file = "{SECRET}"\npeers = ["{peer}"]\n'
        'interval = "200ms"\ndead_after = 5\npreempt = false\n\n'
        f'[[vip]]\naddress = "{vip}"\ninterface = "eth0"\n\n[log]\n'
    )


def wait_until(what: str, probe: Callable[[], T | None], timeout: float, step: float = 0.1) -> T:
    """Poll ``probe`` until it returns a truthy value; fail naming ``what`` after ``timeout``."""
    seen: list[T | None] = [None]

    def polled() -> T | None:
        seen[0] = probe()
        return seen[0]

    found = shell.wait_until(polled, timeout=timeout, step=step)
    if not found:
        pytest.fail(f"{what}: not within {timeout:.0f} s (last seen: {seen[0]!r})")
    return found


@dataclass
class Node:
    name: str
    address: str
    container: Any

    def run(self, *cmd: str, timeout: int = 30) -> tuple[int, str]:
        """Run ``cmd`` in the container (bounded by timeout(1)); exit status, stdout+stderr."""
        rc, out = self.container.exec_run(["timeout", str(timeout), *cmd])
        return rc, out.decode(errors="replace")

    def show(self, *props: str) -> dict[str, str]:
        """``systemctl show hapair -p ...`` as a dict."""
        _, out = self.run("systemctl", "show", "hapair", *(f"-p{p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def status(self) -> dict[str, Any] | None:
        """``hapair status --json``, or None while no daemon answers."""
        rc, out = self.container.exec_run(
            ["timeout", "10", "hapair", "status", "-c", CONFIG, "--json"], demux=True
        )
        try:
            return json.loads(out[0]) if rc == 0 and out[0] else None
        except ValueError:
            return None

    def role(self) -> str | None:
        s = self.status()
        return s["role"] if s else None

    def has_vip(self, vip: str) -> bool:
        _, out = self.run("ip", "-4", "-o", "addr", "show", "dev", "eth0")
        return f" {vip} " in out

    def journal(self, **match: str) -> list[dict[str, Any]]:
        """``journalctl -u hapair -o json``: the entries whose fields equal ``match``."""
        _, out = self.run("journalctl", "-u", "hapair", "-o", "json", "--no-pager")
        entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return [e for e in entries if all(e.get(k) == v for k, v in match.items())]

    def install(self, path: str, text: str, mode: int) -> None:
        """Write ``path`` by exec: put_archive would make dockerd mount the container's volumes
        into its root (for the copy), and each such mount of /sys/fs/cgroup stays behind,
        hidden under /sys but listed in every later mount namespace."""
        rc, out = self.container.exec_run(
            ["sh", "-c", 'mkdir -p "${1%/*}" && umask 077 && printf %s "$DATA" | base64 -d >"$1"'
             ' && chmod "$2" "$1"',
             "sh", path, f"{mode:o}"],
            environment={"DATA": base64.b64encode(text.encode()).decode()},
        )  # fmt: skip
        assert rc == 0, f"node {self.name}: writing {path} failed: {out!r}"

    def sandbox(self, pid: str) -> dict[str, str]:
        """``pid``'s sandbox as the kernel and the process see it."""
        _, status = self.run("cat", f"/proc/{pid}/status")
        wanted = ("CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
        out = {k: v for k, _, v in (line.partition(":\t") for line in status.splitlines())}
        out = {k: out.get(k, "?") for k in wanted}
        _, ns = self.run("readlink", "/proc/1/ns/mnt", f"/proc/{pid}/ns/mnt")
        out["own mount namespace"] = str(len(set(ns.split())) == 2)
        # Inside its mount namespace: what ProtectSystem=strict, ProtectControlGroups= and
        # PrivateTmp= promise.
        _, probe = self.run(
            "sh", "-c",
            "touch /tmp/.hps-outside; nsenter -t \"$1\" -m sh -c 'touch /usr/.hps;"
            " mkdir /sys/fs/cgroup/systemd/.hps; test -e /tmp/.hps-outside || echo PrivateTmp'",
            "sh", pid,
        )  # fmt: skip
        out["probe"] = probe
        return out

    def diagnostics(self) -> str:
        parts = [f"===== node {self.name} ({self.address})"]
        for cmd in (
            ["systemctl", "status", "hapair", "--no-pager", "-l", "-n0"],
            ["systemctl", "--failed", "--no-pager"],
            ["journalctl", "-u", "hapair", "--no-pager", "-n60", "-o", "short-precise"],
            ["hapair", "status", "-c", CONFIG],
            ["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
        ):
            parts.append("$ " + " ".join(cmd) + "\n" + self.run(*cmd)[1].rstrip())
        return "\n".join(parts)


@dataclass
class Pair:
    a: Node
    b: Node
    vip: str
    done: set[str] = field(default_factory=set)

    @contextmanager
    def step(self, name: str, after: str | None) -> Iterator[None]:
        """Run one step of the story: skipped if ``after`` failed, diagnostics if this fails."""
        if after is not None and after not in self.done:
            pytest.skip(f"needs step {after!r}, which did not pass")
        try:
            yield
        except (Exception, pytest.fail.Exception):
            print(self.diagnostics())
            raise
        self.done.add(name)

    def diagnostics(self) -> str:
        return f"{self.a.diagnostics()}\n{self.b.diagnostics()}"


def free_subnet(client: Any) -> ipaddress.IPv4Network:
    """The first candidate no Docker network and no host route overlaps."""
    used = [LAB_SUBNET]
    for net in client.networks.list():
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            if cfg.get("Subnet"):
                used.append(ipaddress.ip_network(cfg["Subnet"], strict=False))
    routes = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "table", "all"],
        capture_output=True, text=True, timeout=10, check=False,
    ).stdout  # fmt: skip
    for line in routes.splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest and dest[0].isdigit():
            used.append(ipaddress.ip_network(dest, strict=False))
    for cand in CANDIDATES:
        if not any(cand.overlaps(u) for u in used if u.version == 4):
            return cand
    pytest.skip(f"every candidate subnet {CANDIDATES[0]}..{CANDIDATES[-1]} is in use here")


def wait_booted(node: Node) -> None:
    """systemd up: running, or degraded (listed, then accepted)."""
    state = wait_until(
        f"systemd in {node.name} to finish booting",
        lambda: (
            (s := node.run("systemctl", "is-system-running", "--wait", timeout=20)[1].strip())
            in ("running", "degraded")
            and s
        ),
        BOOT_TIMEOUT,
        step=0.5,
    )
    if state == "degraded":
        print(f"node {node.name}: boot degraded:\n{node.run('systemctl', '--failed')[1]}")


def wait_restarted(node: Node, before: dict[str, str], timeout: float) -> dict[str, str]:
    """Wait until systemd has restarted the unit once since ``before`` and it is active again."""
    want = str(int(before["NRestarts"]) + 1)

    def probe() -> dict[str, str] | None:
        s = node.show("MainPID", "NRestarts", "ActiveState", "InvocationID")
        return s if (s["ActiveState"], s["NRestarts"]) == ("active", want) else None

    after = wait_until(f"systemd to restart hapair on {node.name}", probe, timeout)
    assert after["MainPID"] not in ("0", before["MainPID"]), (before, after)
    assert after["InvocationID"] != before["InvocationID"], (before, after)
    return after


@pytest.fixture(scope="module")
def pair(docker_client: Any, build_image: Callable[[str], str]) -> Iterator[Pair]:
    """Two booted systemd containers on a network of their own, configured, hapair stopped."""
    import docker
    from docker.types import IPAMConfig, IPAMPool

    image = build_image("systemd")
    subnet = free_subnet(docker_client)
    hosts = list(subnet.hosts())
    address = {"a": str(hosts[10]), "b": str(hosts[11])}
    vip = f"{hosts[49]}/{subnet.prefixlen}"
    ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet), gateway=str(hosts[0]))])
    network = docker_client.networks.create(
        PREFIX, driver="bridge", ipam=ipam, labels={LABEL: PREFIX}
    )
    containers: list[Any] = []
    key = generate_key() + "\n"
    try:
        nodes = {}
        for name, prio, peer in (("a", 150, "b"), ("b", 100, "a")):
            endpoint = docker_client.api.create_endpoint_config(ipv4_address=address[name])
            container = docker_client.containers.run(
                image,
                name=f"{PREFIX}-{name}",
                hostname=f"node-{name}",
                detach=True,
                network=PREFIX,
                networking_config={PREFIX: endpoint},
                labels={LABEL: PREFIX},
                **RUN_OPTIONS,
            )
            containers.append(container)
            node = nodes[name] = Node(name, address[name], container)
            node.install(CONFIG, toml(name, prio, address[peer], vip), 0o644)
            node.install(SECRET, key, 0o600)
        the_pair = Pair(nodes["a"], nodes["b"], vip)
        try:
            for node in nodes.values():
                wait_booted(node)
                rc, out = node.run("hapair", "check-config", CONFIG)
                assert rc == 0, f"node {node.name}: hapair check-config failed:\n{out}"
        except (Exception, pytest.fail.Exception):
            for c in containers:
                print(f"===== docker logs {c.name}\n{c.logs(tail=40).decode(errors='replace')}")
            print(the_pair.diagnostics())
            raise
        yield the_pair
    finally:
        # Every removal is tried; the first failure is raised after the others.
        errors: list[Exception] = []
        for remove in [*(partial(c.remove, force=True) for c in containers), network.remove]:
            try:
                remove()
            except docker.errors.APIError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def test_start_reaches_active_after_ready(pair: Pair) -> None:
    """Type=notify: `systemctl start` returns, and the unit is active, only after READY=1."""
    with pair.step("start", after=None):
        for node in (pair.a, pair.b):
            started = time.monotonic()
            rc, out = node.run("systemctl", "start", "hapair", timeout=70)
            print(f"node {node.name}: systemctl start took {time.monotonic() - started:.2f} s")
            assert rc == 0, f"node {node.name}: systemctl start hapair failed ({rc}):\n{out}"
            _, active = node.run("systemctl", "is-active", "hapair")
            assert active.strip() == "active", f"node {node.name}: is-active says {active!r}"
            show = node.show(
                "Type", "ActiveState", "SubState", "StatusText", "NRestarts", "WatchdogUSec"
            )
            print(f"node {node.name}: {show}")
            assert show["Type"] == "notify", show
            assert (show["ActiveState"], show["SubState"]) == ("active", "running"), show
            assert show["WatchdogUSec"] == "5s", show
            assert show["NRestarts"] == "0", show
            # STATUS= from the daemon: "<ROLE>, ..." (systemd keeps the last one it was sent).
            assert show["StatusText"].split(",")[0] in ROLES, show
            # The sandbox is in force, not silently skipped in the container.
            box = node.sandbox(node.show("MainPID")["MainPID"])
            print(f"node {node.name}: sandbox {box}")
            caps = sum(1 << bit for bit in (UNIT_CAPS | UNIT_CAPS_NET).values())
            assert int(box["CapBnd"], 16) == caps, f"CapabilityBoundingSet= not applied: {box}"
            assert int(box["CapAmb"], 16) == sum(1 << b for b in UNIT_CAPS_NET.values()) | (
                1 << UNIT_CAPS["NET_BIND_SERVICE"]
            ), box
            assert (box["NoNewPrivs"], box["Seccomp"]) == ("1", "2"), box
            assert box["own mount namespace"] == "True", box
            probe = box["probe"]
            assert "'/usr/.hps': Read-only file system" in probe, f"ProtectSystem=: {probe}"
            assert "/systemd/.hps': Read-only file system" in probe, (
                f"ProtectControlGroups: {probe}"
            )
            assert "PrivateTmp" in probe, f"the daemon sees the container's /tmp: {probe}"


def test_peer_is_backup_and_master_holds_vip(pair: Pair) -> None:
    with pair.step("elected", after="start"):
        wait_until(
            "a MASTER and b BACKUP",
            lambda: (pair.a.role(), pair.b.role()) == ("MASTER", "BACKUP"),
            ELECTION_TIMEOUT,
        )
        status_a = pair.a.status()
        assert status_a is not None
        assert pair.vip in status_a["vips_held"], status_a
        assert pair.a.has_vip(pair.vip), f"{pair.vip} not on a's eth0"
        assert not pair.b.has_vip(pair.vip), f"{pair.vip} on the BACKUP b's eth0"
        text = wait_until(
            "a's StatusText to say MASTER",
            lambda: (s := pair.a.show("StatusText")["StatusText"]).startswith("MASTER") and s,
            ELECTION_TIMEOUT,
        )
        print(f"a: StatusText={text}")


def test_sigkill_master_release_failover_restart(pair: Pair) -> None:
    """SIGKILL leaves the VIP in the kernel: only ExecStopPost's release can remove it."""
    with pair.step("killed", after="elected"):
        a, b = pair.a, pair.b
        before = a.show("MainPID", "InvocationID", "NRestarts")
        killed = time.monotonic()
        rc, out = a.run("systemctl", "kill", "-s", "KILL", "hapair")
        assert rc == 0, out
        wait_until("the VIP gone from a", lambda: not a.has_vip(pair.vip), RELEASE_TIMEOUT, 0.05)
        gone = time.monotonic() - killed
        wait_until(
            "b MASTER with the VIP",
            lambda: b.has_vip(pair.vip) and b.role() == "MASTER",
            RELEASE_TIMEOUT,
            0.05,
        )
        print(
            f"VIP gone from a after {gone:.2f} s; b MASTER after {time.monotonic() - killed:.2f} s"
        )
        # The removal was release's, run as ExecStopPost in the killed invocation.
        inv = before["InvocationID"]
        release = wait_until(
            "release's output in a's journal",
            lambda: [
                e["MESSAGE"]
                for e in a.journal(_SYSTEMD_INVOCATION_ID=inv)
                if e.get("_PID") != before["MainPID"] and e.get("SYSLOG_IDENTIFIER") == "hapair"
            ],
            RELEASE_TIMEOUT,
        )
        print(f"a: ExecStopPost said {release}")
        assert f"removed {pair.vip} on eth0" in release, release
        exits = [
            (e.get("EXIT_CODE"), e.get("EXIT_STATUS"))
            for e in a.journal(INVOCATION_ID=inv, SYSLOG_IDENTIFIER="systemd")
            if e.get("EXIT_CODE")
        ]
        assert ("killed", "9") in exits, f"systemd did not see the daemon die of SIGKILL: {exits}"
        # Restart=on-failure after RestartSec=2s: a new daemon, which finds b MASTER.
        after = wait_restarted(a, before, RESTART_TIMEOUT)
        # Release, not the new daemon's start-up clean-up, removed the VIP.
        stale = a.journal(
            _SYSTEMD_INVOCATION_ID=after["InvocationID"], HAPAIR_EVENT="stale_vip_removed"
        )
        assert not stale, f"the restarted daemon found the VIP left behind: {stale}"
        wait_until("a BACKUP after its restart", lambda: a.role() == "BACKUP", ELECTION_TIMEOUT)
        assert b.has_vip(pair.vip) and not a.has_vip(pair.vip), "the VIP must be on b alone"


def test_watchdog_restarts_hung_daemon(pair: Pair) -> None:
    """A stopped daemon stops pinging: systemd aborts it after WatchdogSec and restarts it."""
    with pair.step("watchdog", after="killed"):
        a, b = pair.a, pair.b
        before = b.show("MainPID", "InvocationID", "NRestarts")
        stopped = time.monotonic()
        rc, out = b.run("systemctl", "kill", "-s", "STOP", "--kill-whom=main", "hapair")
        assert rc == 0, out
        _, stat = b.run("cat", f"/proc/{before['MainPID']}/stat")
        assert stat.split(")")[-1].split()[0] == "T", f"b's daemon is not stopped: {stat}"
        # Silent for the dead time: a takes over while b still holds the VIP (the duplicate
        # the unit's watchdog ends).
        wait_until("a MASTER while b hangs", lambda: a.role() == "MASTER", ELECTION_TIMEOUT)
        after = wait_restarted(b, before, WATCHDOG_SEC + RESTART_TIMEOUT)
        print(f"b restarted {time.monotonic() - stopped:.2f} s after SIGSTOP: {before} -> {after}")
        systemd_said = b.journal(INVOCATION_ID=before["InvocationID"], SYSLOG_IDENTIFIER="systemd")
        messages = [e.get("MESSAGE", "") for e in systemd_said]
        assert "watchdog" in [e.get("UNIT_RESULT") for e in systemd_said], messages
        # systemd's own timestamps: the last ping came at most WatchdogSec/2 before SIGSTOP.
        at = {
            what: int(e["__REALTIME_TIMESTAMP"]) / 1e6
            for e in systemd_said
            for what in ("Sent signal SIGSTOP", "Watchdog timeout")
            if what in e.get("MESSAGE", "")
        }
        assert len(at) == 2, messages
        hung = at["Watchdog timeout"] - at["Sent signal SIGSTOP"]
        print(f"b: watchdog timeout {hung:.2f} s after SIGSTOP")
        assert WATCHDOG_SEC / 2 - 0.5 <= hung <= WATCHDOG_SEC + 1.0, messages
        # SIGABRT left the VIP on b too; ExecStopPost's release removed it before the restart.
        stale = b.journal(
            _SYSTEMD_INVOCATION_ID=after["InvocationID"], HAPAIR_EVENT="stale_vip_removed"
        )
        assert not stale, f"the restarted daemon found the VIP left behind: {stale}"
        wait_until("b BACKUP after its restart", lambda: b.role() == "BACKUP", ELECTION_TIMEOUT)
        wait_until(
            "the VIP on a alone",
            lambda: a.has_vip(pair.vip) and not b.has_vip(pair.vip),
            RELEASE_TIMEOUT,
        )


def test_journal_carries_hapair_fields(pair: Pair) -> None:
    """Native journal entries: SYSLOG_IDENTIFIER, MESSAGE_ID per event, HAPAIR_* fields."""
    with pair.step("journal", after="watchdog"):
        for node, masters in ((pair.a, 2), (pair.b, 1)):
            entries = [e for e in node.journal(SYSLOG_IDENTIFIER="hapair") if "HAPAIR_EVENT" in e]
            assert entries, f"node {node.name}: no native hapair entries"
            for e in entries:
                # journal: the native protocol, not stderr lines ("stdout" transport).
                assert e["_TRANSPORT"] == "journal", e
                assert e["HAPAIR_NODE"] == node.name and e["HAPAIR_CLUSTER"] == "hps", e
                if e["HAPAIR_EVENT"] in MESSAGE_IDS:
                    assert e.get("MESSAGE_ID") == MESSAGE_IDS[e["HAPAIR_EVENT"]], e
            events = [e["HAPAIR_EVENT"] for e in entries]
            assert events.count("daemon_started") == 2, f"node {node.name}: {events}"
            changes = [e for e in entries if e["HAPAIR_EVENT"] == "role_changed"]
            for e in changes:
                assert {"HAPAIR_ROLE", "HAPAIR_PREVIOUS_ROLE", "HAPAIR_REASON"} <= e.keys(), e
            story = [
                f"{e['HAPAIR_PREVIOUS_ROLE']}->{e['HAPAIR_ROLE']} ({e['HAPAIR_REASON']})"
                for e in changes
            ]
            print(f"node {node.name}: {story}")
            to_master = [e for e in changes if e["HAPAIR_ROLE"] == "MASTER"]
            assert len(to_master) == masters, f"node {node.name}: {story}"
            acquired = [e for e in entries if e["HAPAIR_EVENT"] == "vip_acquired"]
            assert [e["HAPAIR_VIP"] for e in acquired] == [pair.vip] * masters, acquired

"""A failover lab on one machine: six hosts and a switch, each in its own network namespace.

Layout (prefix ``p``): ``p-sw`` holds bridge br0; hosts ``p-a`` and ``p-b`` (the pair),
``p-c`` (client), ``p-r1`` and ``p-r2`` (backends) and ``p-x`` (an attacker on the LAN, for
floods and forged packets) each have ``eth0`` on 10.77.0.0/24 and fd77::/64, plugged into br0.
A and B also share a direct heartbeat cable ``eth1`` (192.168.77.1/30 <-> .2/30) unless the lab
is built with ``direct_cable=False`` (a pair with a single heartbeat link).
Veths are created straight inside the namespaces, so nothing touches the root namespace;
down() deletes every namespace carrying the prefix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Final

import hapair
from hapair.lab import shell
from hapair.lab.addresses import HB4, HOSTS, LAN4, LAN6, NODES, SWITCH, VIP4, VIP6, mac
from hapair.lab.events import Event
from hapair.lab.nodes import HapairPair, Timers
from hapair.lab.shell import LabError

Handler = Callable[[int, FrameType | None], object] | int | None

PREFIX_PATTERN: Final = re.compile(r"[a-z][a-z0-9]{0,9}")
DIR_TAG: Final = "hapair-lab-"
SERVICE_READY_TIMEOUT: Final = 10.0
# The lab's own nftables table for one-way partitions (hapair's tables have other names).
ONEWAY_TABLE: Final = "hapair_lab_oneway"

# Forwarding off: a new namespace may start with it on, and a former master that forwards the
# client's packets would hide a missing gratuitous ARP. DAD off: addresses usable at once.
HOST_SYSCTLS: Final = (
    "net.ipv4.ip_forward=0",
    "net.ipv6.conf.all.forwarding=0",
    "net.ipv6.conf.default.forwarding=0",
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
)
SWITCH_SYSCTLS: Final = (
    "net.ipv4.ip_forward=0",
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
)


def check_prefix(prefix: str) -> str:
    """Return `prefix` if it is a valid lab prefix; raise LabError otherwise."""
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise LabError(f"bad lab prefix {prefix!r}: use 1-10 of [a-z0-9], starting with a letter")
    return prefix


def lab_namespaces(prefix: str) -> list[str]:
    """Return the existing namespaces that belong to the lab called `prefix`."""
    own = {f"{prefix}-{h}" for h in (*HOSTS, SWITCH)}
    return [ns for ns in shell.list_netns() if ns in own]


def lab_dirs(prefix: str) -> list[Path]:
    """Return the lab directories a lab called `prefix` left in the temp directory."""
    found = []
    for path in Path(tempfile.gettempdir()).glob(f"{DIR_TAG}{prefix}-*"):
        try:
            meta = json.loads((path / "lab.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and meta.get("prefix") == prefix:
            found.append(path)
    return found


def teardown(prefix: str) -> list[str]:
    """Remove lab `prefix` from any process: kill its processes, delete namespaces and dirs."""
    check_prefix(prefix)
    namespaces = lab_namespaces(prefix)
    pids = sorted({pid for ns in namespaces for pid in shell.netns_pids(ns)})
    if pids:
        shell.kill_pids(pids)
    for ns in namespaces:
        shell.run(["ip", "netns", "del", ns], check=False)
    for path in lab_dirs(prefix):
        shutil.rmtree(path, ignore_errors=True)
    return namespaces


@dataclass(frozen=True)
class Proc:
    """A process the lab started, in its own process group."""

    key: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        """Return its pid (also its process group id)."""
        return self.popen.pid


class Lab:
    """The lab: build with up(), remove with down(); also a context manager that cleans up."""

    def __init__(
        self,
        prefix: str = "hpl",
        *,
        timers: Timers | None = None,
        ipv6: bool = False,
        services: bool = True,
        direct_cable: bool = True,
    ) -> None:
        self.prefix = check_prefix(prefix)
        self.ipv6 = ipv6
        self.direct_cable = direct_cable
        self.services = services
        self.dir = Path()
        self.procs: dict[str, Proc] = {}
        self.hapair = HapairPair(self, timers or Timers())
        self._is_up = False
        self._old_handlers: dict[int, Handler] = {}

    # ---------------------------------------------------------------- naming ------------------

    def ns(self, host: str) -> str:
        """Return the namespace name of `host` ("a", "b", "c", "r1", "r2", "x" or "sw")."""
        if host not in (*HOSTS, SWITCH):
            raise LabError(f"no host {host!r} in the lab")
        return f"{self.prefix}-{host}"

    @property
    def vips(self) -> list[str]:
        """Return the VIPs (without prefix length) the pair floats."""
        return [VIP4, VIP6] if self.ipv6 else [VIP4]

    # ---------------------------------------------------------------- life cycle --------------

    def __enter__(self) -> Lab:
        self.trap_signals()
        try:
            # up() cleans up after its own failures; a lab that already existed is not ours.
            return self.up()
        except BaseException:
            self._restore_signals()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> Lab:
        """Build namespaces, links, addresses, configs and services; raise LabError on failure."""
        if self._is_up:
            return self
        if lab_namespaces(self.prefix):
            raise LabError(
                f"lab {self.prefix!r} already exists; remove it with: hapair lab down "
                f"--prefix {self.prefix}"
            )
        self._is_up = True
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=f"{DIR_TAG}{self.prefix}-"))
            (self.dir / "lab.json").write_text(
                json.dumps({"prefix": self.prefix, "pid": os.getpid()}), encoding="utf-8"
            )
            self._build_network()
            self.hapair.write_configs()
            if self.services:
                self._start_services()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Kill every process this lab started, delete its namespaces and its directory."""
        if not self._is_up and not self.procs:
            # Never built (or already removed): another lab with this prefix is not ours.
            self._restore_signals()
            return
        for key in list(self.procs):
            self.stop(key, sig=signal.SIGKILL)
        self.procs.clear()
        teardown(self.prefix)
        if self.dir != Path() and self.dir.is_dir():
            shutil.rmtree(self.dir, ignore_errors=True)
        self._is_up = False
        self._restore_signals()

    def trap_signals(self) -> None:
        """Turn SIGTERM into SystemExit until down(), so cleanup runs as on Ctrl-C."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_term(signum: int, frame: FrameType | None) -> None:
            del frame
            raise SystemExit(128 + signum)

        self._old_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_term)

    def _restore_signals(self) -> None:
        for signum, handler in self._old_handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._old_handlers.clear()

    # ---------------------------------------------------------------- network -----------------

    def _build_network(self) -> None:
        sw = self.ns(SWITCH)
        for host in (SWITCH, *HOSTS):
            shell.run(["ip", "netns", "add", self.ns(host)])
        self._sysctl(sw, SWITCH_SYSCTLS)
        for host in HOSTS:
            self._sysctl(self.ns(host), HOST_SYSCTLS)
        shell.ip(
            "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0", netns=sw
        )
        shell.ip("link", "set", "br0", "up", netns=sw)
        for host in HOSTS:
            ns = self.ns(host)
            shell.ip("link", "set", "lo", "up", netns=ns)
            shell.ip(
                "link",
                "add",
                "eth0",
                "address",
                mac(host),
                "type",
                "veth",
                "peer",
                "name",
                f"v-{host}",
                "netns",
                sw,
                netns=ns,
            )
            shell.ip("link", "set", f"v-{host}", "master", "br0", "up", netns=sw)
            shell.ip("addr", "add", f"{LAN4[host]}/24", "dev", "eth0", netns=ns)
            shell.ip("addr", "add", f"{LAN6[host]}/64", "dev", "eth0", "nodad", netns=ns)
            shell.ip("link", "set", "eth0", "up", netns=ns)
        if not self.direct_cable:
            return
        a, b = self.ns("a"), self.ns("b")
        shell.ip(
            "link",
            "add",
            "eth1",
            "address",
            mac("a", 1),
            "type",
            "veth",
            "peer",
            "name",
            "eth1",
            "address",
            mac("b", 1),
            "netns",
            b,
            netns=a,
        )
        for node in NODES:
            shell.ip("addr", "add", f"{HB4[node]}/30", "dev", "eth1", netns=self.ns(node))
            shell.ip("link", "set", "eth1", "up", netns=self.ns(node))

    @staticmethod
    def _sysctl(ns: str, settings: Sequence[str]) -> None:
        shell.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *settings])

    @property
    def node_links(self) -> tuple[str, ...]:
        """The pair nodes' interfaces: eth0 (the LAN), and eth1 (the direct cable) if built."""
        return ("eth0", "eth1") if self.direct_cable else ("eth0",)

    def peer_addresses(self, node: str) -> list[str]:
        """The addresses `node`'s peer sends heartbeats to: one per heartbeat link."""
        return [LAN4[node], HB4[node]] if self.direct_cable else [LAN4[node]]

    def sysctl(self, host: str, key: str) -> str:
        """Return the value of sysctl `key` inside `host`'s namespace."""
        return self.exec(host, ["sysctl", "-n", key]).stdout.strip()

    def set_lan(self, node: str, up: bool) -> None:
        """Set `node`'s switch port up or down: its eth0 gains or loses carrier."""
        shell.ip("link", "set", f"v-{node}", "up" if up else "down", netns=self.ns(SWITCH))

    def set_host_links(self, node: str, up: bool) -> None:
        """Set `node`'s own eth0 and eth1 up or down (a host that died, or came back)."""
        for link in self.node_links:
            shell.ip("link", "set", link, "up" if up else "down", netns=self.ns(node))

    def partition(self, heal: bool = False) -> None:
        """Blackhole A<->B traffic on both links (or remove the blackholes when `heal`)."""
        verb = "del" if heal else "add"
        for me, peer in (("a", "b"), ("b", "a")):
            # Strict reverse-path filtering makes the blackhole also drop what the peer sends
            # here: a sender that bypasses its routing table (keepalived's unicast VRRP does)
            # is still cut off, as a real partition would.
            self._sysctl(self.ns(me), [f"net.ipv4.conf.all.rp_filter={0 if heal else 1}"])
            for dest in self.peer_addresses(peer):
                shell.ip(
                    "route", verb, "blackhole", f"{dest}/32", netns=self.ns(me), check=not heal
                )

    def partition_oneway(self, src: str, dst: str, heal: bool = False) -> None:
        """Drop every packet from node `src` arriving at node `dst` (or stop dropping).

        Only that direction is cut: `dst` still reaches `src`. The drop is an nftables rule in
        `dst`'s namespace at prerouting, so no trick of the sender's (a socket bound to a device,
        a raw socket) gets around it; ARP is not IP and still passes, as on a real broken path.
        """
        if {src, dst} != set(NODES):
            raise LabError(f"a one-way partition is between a and b, not {src}->{dst}")
        nft = ["ip", "netns", "exec", self.ns(dst), "nft"]
        if heal:
            shell.run([*nft, "delete", "table", "inet", ONEWAY_TABLE], check=False)
            return
        v4 = ", ".join([LAN4[src], *([HB4[src]] if self.direct_cable else [])])
        rules = (
            f"table inet {ONEWAY_TABLE} {{\n"
            f"  chain pre {{\n    type filter hook prerouting priority -300; policy accept;\n"
            f"    ip saddr {{ {v4} }} drop\n    ip6 saddr {LAN6[src]} drop\n  }}\n}}\n"
        )
        shell.run([*nft, "-f", "-"], input_text=rules)

    def vip_holders(self) -> list[str]:
        """Return the nodes that currently have the IPv4 VIP on eth0."""
        return [n for n in NODES if self.has_vip(n)]

    def has_vip(self, node: str, vip: str = VIP4) -> bool:
        """Return whether `node` holds `vip` on eth0 right now."""
        links = shell.ip_json("addr", "show", "dev", "eth0", netns=self.ns(node))
        return shell.has_address(links, vip)

    def remove_vips(self, node: str) -> None:
        """Delete the VIPs from `node` by hand (what an ExecStopPost does for keepalived)."""
        for vip, plen in ((VIP4, 24), (VIP6, 64)):
            shell.ip(
                "addr", "del", f"{vip}/{plen}", "dev", "eth0", netns=self.ns(node), check=False
            )

    # ---------------------------------------------------------------- processes ---------------

    def env(self) -> dict[str, str]:
        """Return the environment for lab subprocesses: this checkout importable as `hapair`."""
        root = str(Path(hapair.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def exec(
        self,
        host: str,
        argv: Sequence[str],
        *,
        timeout: float = shell.DEFAULT_TIMEOUT,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` to completion inside `host`'s namespace."""
        return shell.run(
            ["ip", "netns", "exec", self.ns(host), *argv], timeout=timeout, check=check
        )

    def python(
        self, host: str, args: Sequence[str], *, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python ARGS`` (this interpreter, this checkout) inside `host`'s namespace."""
        argv = ["ip", "netns", "exec", self.ns(host), sys.executable, *args]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, env=self.env(), check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"timed out after {timeout:.0f}s: {' '.join(argv)}") from exc
        if check and proc.returncode != 0:
            raise LabError(f"exit {proc.returncode}: {' '.join(argv)}: {proc.stderr.strip()}")
        return proc

    def spawn(
        self,
        key: str,
        host: str,
        argv: Sequence[str],
        *,
        stdout: int | IO[bytes] | None = None,
        stamp_lines: bool = False,
    ) -> Proc:
        """Start `argv` in `host`'s namespace, own process group, stderr to ``DIR/KEY.log``."""
        if key in self.procs and self.procs[key].popen.poll() is None:
            raise LabError(f"{key} is already running (pid {self.procs[key].pid})")
        log = self.dir / f"{key}.log"
        full = ["ip", "netns", "exec", self.ns(host), *argv]
        with log.open("ab") as err:
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stamp_lines else (stdout or subprocess.DEVNULL),
                stderr=subprocess.STDOUT if stamp_lines else err,
                env=self.env(),
                start_new_session=True,
            )
        if stamp_lines:
            # Lines without their own timestamps (keepalived) get the arrival time here.
            threading.Thread(target=_stamp, args=(popen, log), daemon=True).start()
        proc = Proc(key, popen, log)
        self.procs[key] = proc
        return proc

    def running(self, key: str) -> bool:
        """Return whether the process started as `key` is still alive."""
        proc = self.procs.get(key)
        return proc is not None and proc.popen.poll() is None

    def stop(
        self,
        key: str,
        *,
        sig: signal.Signals = signal.SIGTERM,
        group: bool = True,
        timeout: float = 5.0,
    ) -> int | None:
        """Signal process `key` (its whole group unless `group` is False); reap it, bounded."""
        proc = self.procs.get(key)
        if proc is None:
            return None
        if proc.popen.poll() is None:
            try:
                if group:
                    os.killpg(proc.pid, sig)
                else:
                    os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            return proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.popen.wait(timeout=timeout)

    def _start_services(self) -> None:
        for host in (*NODES, "r1", "r2"):
            addrs = self.vips if host in NODES else [LAN4[host]]
            args = ["-m", "hapair.lab.service", "--name", host]
            for addr in addrs:
                args += ["--vip", addr]
            with (self.dir / f"service-{host}.out").open("wb") as fh:
                self.spawn(f"service-{host}", host, [sys.executable, *args], stdout=fh)
        for host in (*NODES, "r1", "r2"):
            ready = self.dir / f"service-{host}.out"
            if not shell.wait_until(
                partial(_contains, ready, b"ready"), timeout=SERVICE_READY_TIMEOUT
            ):
                log = _read(self.dir / f"service-{host}.log").decode(errors="replace")
                raise LabError(f"service in {host} did not start:\n{log[-2000:]}")

    # ---------------------------------------------------------------- hapair daemons ----------

    def start_node(self, node: str) -> None:
        """Start hapair on `node` (``ip netns exec NS python -m hapair run -c NODE.toml``)."""
        self.hapair.start(node)

    def term_node(self, node: str) -> None:
        """SIGTERM `node`'s daemon and wait (bounded) for it to exit."""
        self.hapair.terminate(node)

    def events(self, since: float = float("-inf")) -> list[Event]:
        """Return both hapair daemons' log events at/after `since`, in time order."""
        return [ev for ev in self.hapair.events() if ev.ts >= since]

    def describe(self) -> str:
        """Return a short how-to-look text for humans."""
        c, a, b = self.ns("c"), self.ns("a"), self.ns("b")
        logs = [str(p.log) for p in self.procs.values() if not p.key.startswith("service-")]
        return "\n".join(
            [
                f"lab {self.prefix!r} is up; files in {self.dir}",
                f"  client:  ip netns exec {c} curl -s http://{VIP4}/    (answers a or b)",
                f"           ip netns exec {c} ip neigh show {VIP4}       (MAC 02:77:00:00:00:0b"
                " is a, ...0c is b)",
                f"  status:  ip netns exec {a} {sys.executable} -m hapair status -c "
                f"{self.hapair.config_path('a')}",
                f"  VIP:     ip -n {a} -br addr show dev eth0; ip -n {b} -br addr show dev eth0",
                f"  logs:    {'  '.join(logs) or '(no daemons started)'}",
                f"  remove:  hapair lab down --prefix {self.prefix}",
            ]
        )


def _contains(path: Path, needle: bytes) -> bool:
    return needle in _read(path)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()[-65536:]
    except OSError:
        return b""


def _stamp(popen: subprocess.Popen[bytes], log: Path) -> None:
    stream = popen.stdout
    if stream is None:
        return
    with log.open("a", encoding="utf-8") as out:
        for raw in iter(stream.readline, b""):
            out.write(f"{time.time():.6f}\t{raw.decode(errors='replace').rstrip()}\n")
            out.flush()

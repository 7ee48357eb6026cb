"""The compose lab in Docker as a drill testbed, driven through the Docker engine API.

`hapair drill --docker` finds a running compose lab (compose/docker-compose.yml) by its
containers' compose labels, reads each node's configuration out of its container, and runs the
same drills as the namespace lab: the faults are `docker kill`, `docker pause`, network
disconnects and commands inside the nodes; the daemons' JSON logs come from `docker logs`.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import threading
import time
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from hapair.config.duration import parse_duration
from hapair.lab import shell
from hapair.lab.client import ProbeRun, lines_of, probe_argv
from hapair.lab.events import Event, current_role, parse_json_line
from hapair.lab.nodes import Timers
from hapair.lab.shell import LabError

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container

PROJECT_LABEL: Final = "com.docker.compose.project"
SERVICE_LABEL: Final = "com.docker.compose.service"
NODE_SERVICES: Final = {"a": "node-a", "b": "node-b"}
CLIENT_SERVICE: Final = "client"
CONFIG: Final = "/etc/hapair/hapair.toml"
# The supervisor (hapair.ops.supervisor) keeps the daemon's pid here and does not restart it
# while the hold file exists: how a drill keeps a killed daemon down with its container up.
PID_FILE: Final = "/run/hapair/daemon.pid"
HOLD_FILE: Final = "/run/hapair/hold"
PARTITION_TABLE: Final = "hapair_drill"
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 20.0
HANDOVER_TIMEOUT: Final = 30.0
MAX_EVENTS: Final = 100_000


def connect() -> DockerClient:
    """Return a client of the local Docker engine, or a LabError that says what is missing."""
    try:
        import docker
    except ImportError:
        raise LabError(
            "hapair drill --docker needs the docker SDK: pip install 'hapair[docker]'"
        ) from None
    try:
        client = docker.from_env(version="auto", timeout=60)
        client.ping()
    except Exception as exc:  # the SDK raises several unrelated types for "no engine"
        raise LabError(f"no Docker engine answers: {exc}") from None
    return client


def find_project(client: DockerClient, wanted: str | None) -> str:
    """Return the compose project that runs the lab: `wanted`, or the only one there is."""
    running = client.containers.list(filters={"label": f"{SERVICE_LABEL}=node-a"})
    projects = sorted({str(c.labels.get(PROJECT_LABEL, "")) for c in running} - {""})
    if wanted is not None:
        if wanted not in projects:
            found = ", ".join(projects) or "none"
            raise LabError(f"no running compose lab {wanted!r} (running labs: {found})")
        return wanted
    if len(projects) != 1:
        if not projects:
            raise LabError(
                "no compose lab is running; start one: "
                "docker compose -f compose/docker-compose.yml up -d"
            )
        raise LabError(f"several compose labs run ({', '.join(projects)}); pick one: --project")
    return projects[0]


@dataclass(frozen=True)
class NodeSetup:
    """What a drill needs to know of one node, read from its own configuration."""

    container: str
    vip: str
    interface: str
    address: str
    network: str
    timers: Timers


def compose_container(client: DockerClient, project: str, service: str) -> Container:
    """The one container of compose `service` in `project`; LabError if not exactly one."""
    found = client.containers.list(
        all=True, filters={"label": [f"{PROJECT_LABEL}={project}", f"{SERVICE_LABEL}={service}"]}
    )
    if len(found) != 1:
        raise LabError(
            f"compose lab {project!r}: expected one {service} container, not {len(found)}"
        )
    return found[0]


def _exec(container: Container, argv: list[str], *, check: bool = True) -> tuple[int, str]:
    result = container.exec_run(argv, stdout=True, stderr=True)
    out = result.output.decode(errors="replace") if isinstance(result.output, bytes) else ""
    code = int(result.exit_code or 0)
    if check and code != 0:
        raise LabError(f"{container.name}: exit {code}: {shlex.join(argv)}: {out.strip()[-500:]}")
    return code, out


def _read_setup(container: Container) -> NodeSetup:
    _, text = _exec(container, ["cat", CONFIG])
    try:
        cfg = tomllib.loads(text)
        vip, interface = str(cfg["vip"][0]["address"]), str(cfg["vip"][0]["interface"])
        cluster = cfg.get("cluster", {})
        timers = Timers(
            interval=parse_duration(str(cluster.get("interval", "1s"))),
            dead_after=int(cluster.get("dead_after", 3)),
        )
    except (tomllib.TOMLDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise LabError(
            f"{container.name}:{CONFIG}: cannot read the VIP and timers: {exc}"
        ) from None
    networks: dict[str, Any] = container.attrs["NetworkSettings"]["Networks"]
    if len(networks) != 1:
        raise LabError(f"{container.name}: expected one network, found {sorted(networks)}")
    ((network, settings),) = networks.items()
    return NodeSetup(
        str(container.name),
        vip.split("/")[0],
        interface,
        str(settings["IPAddress"]),
        network,
        timers,
    )


class ContainerEvents:
    """One node's daemon events, read incrementally from its container's output."""

    def __init__(self, container: Container, node: str) -> None:
        self.container, self.node = container, node
        self._seen: set[str] = set()
        self._events: list[Event] = []
        self._since = 0.0

    def events(self) -> list[Event]:
        """Return every event so far (across container restarts), in time order."""
        # `since` has one-second resolution in practice: overlap, then drop lines already seen.
        since = max(self._since - 2.0, 1.0)
        polled = time.time()
        with contextlib.suppress(Exception):
            raw = self.container.logs(stdout=True, stderr=True, since=since, stream=False)
            self._since = polled
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else ""
            known = len(self._events)
            for line in text.splitlines():
                if line in self._seen or len(self._events) >= MAX_EVENTS:
                    continue
                ev = parse_json_line(self.node, line)
                if ev is not None:
                    self._seen.add(line)
                    self._events.append(ev)
            if len(self._events) > known:
                self._events.sort(key=lambda e: e.ts)
        return list(self._events)


class DockerPair:
    """The hapair daemons of a compose lab, run by the supervisor in containers node-a and -b."""

    label = "hapair"

    def __init__(self, client: DockerClient, project: str) -> None:
        self.client, self.project = client, project
        self.containers = {
            n: compose_container(client, project, s) for n, s in NODE_SERVICES.items()
        }
        self.setup = {n: _read_setup(c) for n, c in self.containers.items()}
        self.timers = self.setup["a"].timers
        self._logs = {n: ContainerEvents(c, n) for n, c in self.containers.items()}
        self._lock = threading.Lock()

    def state(self, node: str) -> str:
        """Return the container's state: running, paused, exited..."""
        container = self.containers[node]
        container.reload()
        return str(container.status)

    def events(self) -> list[Event]:
        """Return both nodes' events, time-ordered."""
        with self._lock:
            evs = [ev for log in self._logs.values() for ev in log.events()]
        return sorted(evs, key=lambda e: e.ts)

    def _node_events(self, node: str) -> list[Event]:
        with self._lock:
            return self._logs[node].events()

    def _live_events(self, node: str) -> list[Event] | None:
        """`node`'s events while its daemon is alive (container up, daemon not exited)."""
        if self.state(node) not in ("running", "paused"):
            return None
        events = self._node_events(node)
        last = [e for e in events if e.name in ("daemon_started", "daemon_exited")]
        return events if last and last[-1].name == "daemon_started" else None

    def running(self, node: str) -> bool:
        """Return whether `node`'s daemon is alive: container up and the daemon not exited."""
        return self._live_events(node) is not None

    def role(self, node: str) -> str | None:
        """Return `node`'s role per its log (None when the daemon or container is down)."""
        events = self._live_events(node)
        return None if events is None else current_role(events)

    def pids(self, node: str) -> list[int]:
        """Return no host pids: the daemons live in containers (faults go through Docker)."""
        return []

    def write_configs(self) -> None:
        """Nothing to write: the compose lab carries its nodes' configurations."""

    def start(self, node: str) -> None:
        """Start the container if it is down, lift the hold; wait for daemon_started."""
        since = time.time()
        container = self.containers[node]
        if self.state(node) != "running":
            container.start()
        _exec(container, ["rm", "-f", HOLD_FILE])

        def started() -> bool:
            return any(
                e.name == "daemon_started" and e.ts >= since - 0.5 for e in self._node_events(node)
            ) and self.running(node)

        if not shell.wait_until(started, timeout=START_TIMEOUT, step=0.1):
            tail = container.logs(tail=20).decode(errors="replace")
            raise LabError(
                f"hapair in {container.name} did not start in {START_TIMEOUT:.0f}s:\n{tail}"
            )

    def _signal_daemon(self, node: str, sig: str) -> None:
        # Hold first: the supervisor must not restart what the drill stopped on purpose.
        script = f"touch {HOLD_FILE} && kill -{sig} $(cat {PID_FILE})"
        _exec(self.containers[node], ["sh", "-c", script])

    def kill(self, node: str) -> None:
        """SIGKILL the daemon inside its container; the container and its VIP stay."""
        self._signal_daemon(node, "KILL")

    def terminate(self, node: str) -> None:
        """SIGTERM the daemon (as `systemctl stop`) and wait (bounded) until it exited."""
        since = time.time()
        self._signal_daemon(node, "TERM")
        if not shell.wait_until(
            lambda: any(
                e.name == "daemon_exited" and e.ts >= since for e in self._node_events(node)
            ),
            timeout=STOP_TIMEOUT,
            step=0.05,
        ):
            raise LabError(f"hapair in {self.containers[node].name} did not exit after SIGTERM")

    def release(self, node: str) -> float:
        """Wait until the supervisor's release (its ExecStopPost) removed the VIP; return when."""
        setup = self.setup[node]
        if not shell.wait_until(
            lambda: not has_vip(self.containers[node], setup), timeout=STOP_TIMEOUT, step=0.02
        ):
            raise LabError(f"{setup.container} still holds {setup.vip} after the daemon died")
        return time.time()

    def handover(self, node: str) -> bool | None:
        """Run ``hapair handover`` in `node`'s container; return whether it succeeded."""
        container = self.containers[node]
        code, _ = _exec(
            container,
            ["timeout", str(int(HANDOVER_TIMEOUT)), "hapair", "handover", "-c", CONFIG],
            check=False,
        )
        return code == 0


def _set_restart_policy(container: Container, policy: dict[str, Any]) -> None:
    # The stubs know only "always" and "on-failure"; the engine also takes "no" and
    # "unless-stopped", which the compose lab uses.
    updater: Any = container
    updater.update(restart_policy=policy)


def has_vip(container: Container, setup: NodeSetup) -> bool:
    """Return whether `container` has the VIP on its interface now."""
    _, out = _exec(container, ["ip", "-j", "addr", "show", "dev", setup.interface], check=False)
    try:
        return shell.has_address(json.loads(out), setup.vip)
    except ValueError:
        return False


class DockerBed:
    """Faults and observations on a compose lab, through the Docker engine."""

    kind = "docker"

    def __init__(self, client: DockerClient, pair: DockerPair) -> None:
        self.client, self.pair = client, pair
        self.vip = pair.setup["a"].vip
        self.client_container = compose_container(client, pair.project, CLIENT_SERVICE)
        # A frozen container cannot run `ip`: remember what it held when it froze.
        self._frozen_vip: dict[str, bool] = {}
        self._restart_policy: dict[str, dict[str, Any]] = {}

    def start_probe(self) -> ProbeRun:
        """Run the probe in the client container, its stdout streamed back through the API."""
        api = self.client.api
        argv = probe_argv("python", self.vip)
        exec_id = api.exec_create(self.client_container.id, argv, stdout=True, stderr=False)["Id"]
        chunks = api.exec_start(exec_id, stream=True)

        def stop() -> None:
            _exec(self.client_container, ["pkill", "-TERM", "-f", "hapair.lab.probe"], check=False)

        return ProbeRun(lines_of(chunks), stop)

    def has_vip(self, node: str) -> bool:
        """Return whether `node` has the VIP (as it froze, while it is paused; no if it is down)."""
        if node in self._frozen_vip:
            return self._frozen_vip[node]
        if self.pair.state(node) != "running":
            return False
        return has_vip(self.pair.containers[node], self.pair.setup[node])

    def vip_holders(self) -> list[str]:
        """Return the nodes that have the VIP configured."""
        return [n for n in self.pair.containers if self.has_vip(n)]

    def crash(self, node: str) -> float:
        """`docker kill` the node's container and pull it off the network: a dead host."""
        container = self.pair.containers[node]
        setup = self.pair.setup[node]
        # No restart policy while it is "dead": Docker would otherwise bring it back at once.
        self._restart_policy[node] = dict(container.attrs["HostConfig"]["RestartPolicy"])
        _set_restart_policy(container, {"Name": "no"})
        at = time.time()
        container.kill()
        self.client.networks.get(setup.network).disconnect(container, force=True)
        return at

    def recover(self, node: str) -> None:
        """Plug the container back in with its old address, start it and its daemon."""
        container = self.pair.containers[node]
        setup = self.pair.setup[node]
        with contextlib.suppress(Exception):  # already connected: nothing to do
            self.client.networks.get(setup.network).connect(container, ipv4_address=setup.address)
        policy = self._restart_policy.pop(node, None)
        if policy is not None:
            _set_restart_policy(container, policy)
        self.pair.start(node)

    def set_link(self, node: str, up: bool) -> None:
        """``ip link set IFACE up|down`` inside the node: its own interface loses carrier."""
        setup = self.pair.setup[node]
        state = "up" if up else "down"
        _exec(self.pair.containers[node], ["ip", "link", "set", setup.interface, state])

    def partition(self, heal: bool = False) -> None:
        """Drop every packet between the nodes with an nftables table in each (or delete it)."""
        for node, container in self.pair.containers.items():
            if heal:
                _exec(container, ["nft", "delete", "table", "inet", PARTITION_TABLE], check=False)
                continue
            peer = next(s.address for n, s in self.pair.setup.items() if n != node)
            rules = (
                f"table inet {PARTITION_TABLE} {{\n"
                f"  chain in {{ type filter hook input priority -300; ip saddr {peer} drop; }}\n"
                f"  chain out {{ type filter hook output priority -300; ip daddr {peer} drop; }}\n"
                "}\n"
            )
            _exec(container, ["sh", "-c", f"printf '%s' {shlex.quote(rules)} | nft -f -"])

    def pause(self, node: str, resume: bool = False) -> bool:
        """`docker pause` (freezer cgroup) or unpause the node's container."""
        container = self.pair.containers[node]
        if resume:
            container.unpause()
            self._frozen_vip.pop(node, None)
        else:
            held = self.has_vip(node)
            container.pause()
            self._frozen_vip[node] = held
        return True

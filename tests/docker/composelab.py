"""The compose lab (compose/docker-compose.yml) driven from tests: up, exec, VIP holder, down.

The lab's subnet and addresses are fixed, so only one lab can be up on a host at a time:
whatever brings it up holds `compose_lock()` for as long as the lab exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from hapair.lab.dockerbed import CONFIG, PROJECT_LABEL, compose_container
from hapair.lab.events import parse_json_line
from hapair.lab.shell import LabError, has_address, wait_until

REPO: Final = Path(__file__).resolve().parents[2]
COMPOSE_FILE: Final = REPO / "compose" / "docker-compose.yml"
LOCK_PATH: Final = Path("/tmp/hapair-compose-lab.lock")
LOCK_WAIT: Final = 15 * 60.0
VIP: Final = "172.31.77.50"
VIP_URL: Final = f"http://{VIP}/"
NODES: Final = ("node-a", "node-b")
COMPOSE_TIMEOUT: Final = 180.0
EXEC_TIMEOUT: Final = 20.0
UP_WAIT: Final = 60.0
SUBNET: Final = "172.31.77.0/24"
#: Every lab project a test brings up is named so; under the lock, any other one is a leftover.
PROJECT_PREFIX: Final = "hpc"

# Runs in the client container: N GETs of a URL, one JSON list of [status, body] out.
_GETS: Final = """
import json, sys, urllib.request
out = []
for _ in range(int(sys.argv[2])):
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[3])) as r:
            out.append([r.status, r.read(200).decode("ascii", "replace").strip()])
    except Exception as exc:
        out.append([0, type(exc).__name__])
print(json.dumps(out))
"""


@contextlib.contextmanager
def compose_lock(path: Path = LOCK_PATH, timeout: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the host-wide compose-lab lock (flock), waiting at most `timeout` seconds for it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:

        def take() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        if not wait_until(take, timeout=timeout, step=0.5):
            raise LabError(f"another compose lab held {path} for {timeout:.0f}s")
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def compose_command() -> list[str]:
    """Debian's docker-compose 1.29 when installed, else the Compose v2 plugin."""
    return ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]


class ComposeLab:
    """One compose project of the lab, with the image `image` for every container."""

    def __init__(self, project: str, image: str, client: Any | None = None) -> None:
        if client is None:
            import docker

            client = docker.from_env(version="auto", timeout=120)
        self.project = project
        self.image = image
        self.docker = client

    def __enter__(self) -> ComposeLab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # --- compose itself ---------------------------------------------------------------------

    def compose(self, *args: str, timeout: float = COMPOSE_TIMEOUT) -> str:
        """Run one compose command on this project; return its output, raise LabError on failure."""
        argv = [*compose_command(), "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        env = {**os.environ, "HAPAIR_IMAGE": self.image}
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"timed out after {timeout:.0f}s: {' '.join(argv)}") from exc
        if proc.returncode != 0:
            raise LabError(f"exit {proc.returncode}: {' '.join(argv)}\n{proc.stderr[-3000:]}")
        return proc.stdout

    def up(self, wait: float = UP_WAIT) -> None:
        """Start the lab (after removing a leftover of the same project); wait until it serves."""
        self.down()
        self.clear_subnet()
        self.compose("up", "-d", "--no-build")
        if not wait_until(self.serving, timeout=wait, step=0.3):
            raise LabError(
                f"the lab did not serve within {wait:.0f}s: VIP on {self.vip_holders()}\n"
                + self.logs_text("node-a")[-2000:]
                + self.logs_text("node-b")[-2000:]
            )

    def down(self) -> None:
        """Remove the project's containers, network and volume; leave nothing labelled behind."""
        with contextlib.suppress(LabError):
            self.compose("down", "-v", "--remove-orphans", "-t", "5")
        label = {"label": f"{PROJECT_LABEL}={self.project}"}
        for container in self.docker.containers.list(all=True, filters=label):
            with contextlib.suppress(Exception):
                container.remove(force=True)
        for network in self.docker.networks.list(filters=label):
            with contextlib.suppress(Exception):
                network.remove()
        for volume in self.docker.volumes.list(filters=label):
            with contextlib.suppress(Exception):
                volume.remove(force=True)

    def clear_subnet(self) -> None:
        """Remove a crashed run's lab holding the subnet; call only while holding the lock."""
        for network in self.docker.networks.list():
            network.reload()
            configs = (network.attrs.get("IPAM") or {}).get("Config") or []
            if not any(c.get("Subnet") == SUBNET for c in configs):
                continue
            owner = (network.attrs.get("Labels") or {}).get(PROJECT_LABEL, "")
            if not owner.startswith(PROJECT_PREFIX):
                raise LabError(
                    f"network {network.name} (project {owner or 'none'}) holds {SUBNET}: "
                    "another lab is up without the lab lock; remove it first"
                )
            ComposeLab(owner, self.image, client=self.docker).down()

    def leftovers(self) -> list[str]:
        """Names of containers, networks and volumes still labelled with this project."""
        label = {"label": f"{PROJECT_LABEL}={self.project}"}
        return [
            *(c.name for c in self.docker.containers.list(all=True, filters=label)),
            *(n.name for n in self.docker.networks.list(filters=label)),
            *(v.name for v in self.docker.volumes.list(filters=label)),
        ]

    # --- containers -------------------------------------------------------------------------

    def container(self, service: str) -> Any:
        """The (single) container of `service`; raise LabError if there is not exactly one."""
        return compose_container(self.docker, self.project, service)

    def exec(
        self, service: str, argv: Sequence[str], timeout: float = EXEC_TIMEOUT
    ) -> tuple[int, str]:
        """Run `argv` in `service`'s container; return (exit status, stdout+stderr)."""
        cmd = ["docker", "exec", self.container(service).id, *argv]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return 124, f"timed out after {timeout:.0f}s: {' '.join(argv)}"
        return proc.returncode, proc.stdout + proc.stderr

    def logs_text(self, service: str) -> str:
        """`docker logs` of `service` (stdout and stderr)."""
        try:
            raw: bytes = self.container(service).logs(stdout=True, stderr=True)
        except LabError:
            return ""
        return raw.decode("utf-8", errors="replace")

    def events(self, service: str, name: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines of `service` (only those whose event is `name`, when given)."""
        parsed = (parse_json_line(service, line) for line in self.logs_text(service).splitlines())
        return [
            {"event": ev.name, "ts": ev.ts, **ev.fields}
            for ev in parsed
            if ev is not None and (name is None or ev.name == name)
        ]

    # --- the pair and the site --------------------------------------------------------------

    def holds_vip(self, service: str) -> bool:
        """Whether `service` has the VIP on eth0 (False if it is not running)."""
        rc, out = self.exec(service, ["ip", "-j", "addr", "show", "dev", "eth0"], timeout=10)
        if rc != 0:
            return False
        try:
            return has_address(json.loads(out), VIP)
        except ValueError:
            return False

    def vip_holders(self) -> list[str]:
        """The node services that have the VIP on eth0."""
        return [node for node in NODES if self.holds_vip(node)]

    def vip_holder(self) -> str | None:
        """The node service holding the VIP when exactly one does, else None."""
        holders = self.vip_holders()
        return holders[0] if len(holders) == 1 else None

    def status(self, service: str) -> dict[str, Any]:
        """`hapair status --json` of `service`'s daemon."""
        rc, out = self.exec(service, ["hapair", "status", "-c", CONFIG, "--json"])
        if rc != 0:
            raise LabError(f"hapair status on {service}: exit {rc}: {out}")
        data: dict[str, Any] = json.loads(out)
        return data

    def http_gets(self, count: int = 1, timeout: float = 1.0) -> list[tuple[int, str]]:
        """`count` GETs of the VIP from the client: (status, body) each, status 0 on error."""
        rc, out = self.exec(
            "client",
            ["python", "-c", _GETS, VIP_URL, str(count), str(timeout)],
            timeout=count * timeout + 15,
        )
        if rc != 0:
            return [(0, out.strip()[-200:])]
        return [(int(status), str(body)) for status, body in json.loads(out)]

    def http_ok(self) -> bool:
        """Whether one GET of the VIP from the client answers 200."""
        return self.http_gets(1)[0][0] == 200

    def serving(self) -> bool:
        """Exactly one node holds the VIP and the client gets 200 through it."""
        return self.vip_holder() is not None and self.http_ok()

"""Balancer benchmark: requests (or queries) per second through the VIP, kind by kind.

In one namespace lab, the real hapair pair runs each ``[balancer]`` kind in turn; the client
host loads the VIP with wrk (HTTP) or dnsperf (DNS), and, in the same run and alternating with
it, the same load goes to the reference:

- ``nat``, ``dr``: straight to one backend (what the client would get without a dispatcher);
- ``proxy`` (nginx, HAProxy): the same engine with a hand-written configuration doing the same
  job (keep-alive upstreams, the client's address in X-Forwarded-For and X-Real-IP), no hapair;
- ``redirect``: nginx's own ``return 302``;
- ``dns``: dnsmasq answering the same name on the same address.

Backends are nginx on r1 and r2 answering ``200 rN`` on port 8081. Each cell is the median of
``--runs`` runs of ``--seconds`` each; the ratio is hapair's median over the reference's, and the
target the issue set is printed beside it.

    sudo .venv/bin/python bench/balancers.py [--runs 3] [--seconds 5] [--kinds nat,dns] [--json]

Needs wrk, dnsperf and dnsmasq (``HAPAIR_WITH_BENCH=1 ./scripts/setup.sh`` installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hapair.lab.addresses import LAN4, VIP4
from hapair.lab.nodes import Timers
from hapair.lab.shell import LabError, wait_until
from hapair.lab.topology import Lab

PORT: Final = 8081
DNS_NAME: Final = "www.example.com"
BACKENDS: Final = ("r1", "r2")


@dataclass(frozen=True)
class Kind:
    """One row of the table: how hapair is configured, and what it is compared with."""

    name: str
    balancer: str  # the [balancer] TOML appended to both nodes' configs
    reference: str  # "direct", "nginx-proxy", "haproxy-proxy", "nginx-302", "dnsmasq"
    target: float
    load: str = "http"  # "http" or "dns"
    node_sysctls: tuple[str, ...] = ()
    realserver: bool = False
    gateway: str | None = None  # a second VIP the backends route the client through


def _backends(weighted: bool = False) -> str:
    out = []
    for i, host in enumerate(BACKENDS):
        out.append(f'[[balancer.backend]]\naddress = "{LAN4[host]}:{PORT}"\n')
        if weighted and i == 0:
            out.append("weight = 2\n")
    return "\n".join(out)


CHECK: Final = '[balancer.check]\nkind = "tcp"\ninterval = "1s"\ntimeout = "500ms"\n'


def _table(kind: str, extra: str = "", port: int = PORT) -> str:
    return (
        f'\n[balancer]\nkind = "{kind}"\nlisten = "{VIP4}:{port}"\n{extra}\n{CHECK}\n' + _backends()
    )


KINDS: Final = {
    "nat": Kind(
        "nat", _table("nat", "masquerade = true"), "direct", 0.9,
        node_sysctls=("net.ipv4.ip_forward=1",),
    ),
    "nat-gw": Kind(
        "nat-gw", _table("nat") + '\n[[vip]]\naddress = "10.77.0.51/24"\ninterface = "eth0"\n',
        "direct", 0.9, gateway="10.77.0.51",
        node_sysctls=("net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                      "net.ipv4.conf.eth0.send_redirects=0"),
    ),
    "dr": Kind("dr", _table("dr"), "direct", 0.9, realserver=True),
    "proxy-nginx": Kind(
        "proxy-nginx", _table("proxy", "[balancer.proxy]\nengine = \"nginx\"\n"),
        "nginx-proxy", 0.95, node_sysctls=("net.ipv4.ip_nonlocal_bind=1",),
    ),
    "proxy-haproxy": Kind(
        "proxy-haproxy", _table("proxy", "[balancer.proxy]\nengine = \"haproxy\"\n"),
        "haproxy-proxy", 0.95, node_sysctls=("net.ipv4.ip_nonlocal_bind=1",),
    ),
    "redirect": Kind(
        "redirect", _table("redirect"), "nginx-302", 0.8,
        node_sysctls=("net.ipv4.ip_nonlocal_bind=1",),
    ),
    "dns": Kind(
        "dns", _table("dns", f'[balancer.dns]\nnames = ["{DNS_NAME}"]\nttl = "5s"\n', 53),
        "dnsmasq", 0.5, load="dns",
    ),
}  # fmt: skip


# ------------------------------------------------------------------ reference servers -------


def backend_nginx_conf(run: Path, name: str, body: int) -> str:
    """nginx on a backend: its name, padded to ``body`` bytes, from a file (sendfile)."""
    www = run / f"www-{name}"
    www.mkdir(exist_ok=True)
    text = f"{name}\n"
    (www / "index.html").write_text(text + "x" * max(0, body - len(text)))
    # The bare name is served from memory; a padded body from the file.
    serve = f'return 200 "{name}\\n";' if body <= len(text) else "try_files /index.html =404;"
    return f"""
user root;  # the lab directory is private to root
worker_processes 1;
daemon off;
pid {run}/nginx-{name}.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {run}/body-{name}; proxy_temp_path {run}/proxy-{name};
    fastcgi_temp_path {run}/fcgi-{name}; uwsgi_temp_path {run}/uwsgi-{name};
    scgi_temp_path {run}/scgi-{name};
    keepalive_requests 100000;
    sendfile on;
    server {{ listen {PORT}; root {www}; location = / {{ {serve} }} }}
}}
"""


def reference_nginx_conf(run: Path, body: str, http_extra: str = "") -> str:
    return f"""
worker_processes 1;
daemon off;
pid {run}/nginx-ref.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {run}/body-ref; proxy_temp_path {run}/proxy-ref;
    fastcgi_temp_path {run}/fcgi-ref; uwsgi_temp_path {run}/uwsgi-ref;
    scgi_temp_path {run}/scgi-ref;
    keepalive_requests 100000;
    {http_extra}
    server {{ listen {VIP4}:{PORT}; location / {{ {body} }} }}
}}
"""


def reference_proxy_nginx(run: Path) -> str:
    servers = " ".join(f"server {LAN4[h]}:{PORT};" for h in BACKENDS)
    upstream = f"upstream pool {{ {servers} keepalive 32; }}"
    # The same job as hapair's: keep-alive upstreams and the client's address passed on.
    body = (
        'proxy_pass http://pool; proxy_http_version 1.1; proxy_set_header Connection "";'
        " proxy_set_header Host $host; proxy_set_header X-Real-IP $remote_addr;"
        " proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
    )
    return reference_nginx_conf(run, body, upstream)


def reference_haproxy(run: Path) -> str:
    servers = "\n".join(f"    server {h} {LAN4[h]}:{PORT}" for h in BACKENDS)
    return f"""
global
    pidfile {run}/haproxy-ref.pid
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    option forwardfor
frontend fe
    bind {VIP4}:{PORT}
    http-request set-header X-Real-IP %[src]
    default_backend be
backend be
    balance roundrobin
{servers}
"""


# ------------------------------------------------------------------ load generators ----------


def wrk(lab: Lab, url: str, seconds: float, connections: int) -> float:
    out = lab.exec(
        "c",
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds:g}s", url],
        timeout=seconds + 30,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if match is None:
        raise LabError(f"wrk printed no rate:\n{out}")
    if errors:
        print(f"    wrk: {errors.group(0)}", file=sys.stderr)
    return float(match.group(1))


def dnsperf(lab: Lab, server: str, seconds: float, queries: Path) -> float:
    out = lab.exec(
        "c",
        ["dnsperf", "-s", server, "-d", str(queries), "-l", f"{seconds:g}", "-c", "4",
         "-q", "200", "-t", "2"],
        timeout=seconds + 30,
    ).stdout  # fmt: skip
    match = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if match is None:
        raise LabError(f"dnsperf printed no rate:\n{out}")
    if lost and int(lost.group(1)) > 0:
        print(f"    dnsperf: {lost.group(0)}", file=sys.stderr)
    return float(match.group(1))


# ------------------------------------------------------------------ the run ------------------


@dataclass
class Row:
    kind: Kind
    hapair: list[float] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)

    def ratio(self) -> float | None:
        if not self.hapair or not self.reference or statistics.median(self.reference) <= 0:
            return None
        return statistics.median(self.hapair) / statistics.median(self.reference)


class Bench:
    """The lab and its helpers for one benchmark run."""

    def __init__(self, lab: Lab, seconds: float, connections: int, body: int) -> None:
        self.lab = lab
        self.body = body
        self.seconds = seconds
        self.connections = connections
        self.run = lab.dir / "bench"
        self.run.mkdir(exist_ok=True)
        self.queries = self.run / "queries.txt"
        self.queries.write_text(f"{DNS_NAME} A\n" * 100)

    def tune_hosts(self) -> None:
        """Every run opens tens of thousands of short upstream connections from the dispatcher:
        reuse TIME_WAIT ports and widen the range, or later runs starve of ports (for hapair
        and the reference alike) and the figures drift down run after run."""
        for host in ("a", "b", "c", *BACKENDS):
            self.lab.exec(host, ["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1",
                                 "net.ipv4.ip_local_port_range=1024 65535"])  # fmt: skip

    def start_backends(self) -> None:
        for host in BACKENDS:
            conf = self.run / f"nginx-{host}.conf"
            conf.write_text(backend_nginx_conf(self.run, host, self.body))
            self.lab.spawn(f"nginx-{host}", host, ["nginx", "-c", str(conf)])
        for host in BACKENDS:
            url = f"http://{LAN4[host]}:{PORT}/"
            check = ["python3", "-c", f"import urllib.request as u; u.urlopen('{url}', timeout=1)"]
            if not wait_until(
                lambda c=check: self.lab.exec("c", c, check=False).returncode == 0, timeout=10
            ):
                raise LabError(f"backend nginx on {host} does not answer")

    def load(self, kind: Kind, server: str) -> float:
        if kind.load == "dns":
            return dnsperf(self.lab, server, self.seconds, self.queries)
        return wrk(self.lab, f"http://{server}:{PORT}/", self.seconds, self.connections)

    def with_hapair(
        self, kind: Kind, runs: int, row: Row, reference: Callable[[], float] | None
    ) -> None:
        lab = self.lab
        for node in ("a", "b"):
            for setting in kind.node_sysctls:
                lab.exec(node, ["sysctl", "-qw", setting])
        if kind.realserver:
            for host in BACKENDS:
                lab.python(host, ["-m", "hapair", "realserver", "up", VIP4])
        if kind.gateway:
            for host in BACKENDS:
                lab.exec(host, ["ip", "route", "replace", f"{LAN4['c']}/32", "via", kind.gateway])
        for node in ("a", "b"):
            cfg = lab.hapair.config_path(node)
            base = cfg.read_text().split("\n[balancer]")[0]
            cfg.write_text(base + kind.balancer)
        lab.hapair.start("a")
        lab.hapair.start("b")
        try:
            if not wait_until(lambda: lab.vip_holders() == ["a"], timeout=15):
                raise LabError(f"{kind.name}: node a did not become MASTER")
            time.sleep(1.0)  # first probes done, engines up
            for _ in range(runs):
                row.hapair.append(self.load(kind, VIP4))
                line = f"  {kind.name}: hapair {row.hapair[-1]:.0f}/s"
                if reference is not None:
                    row.reference.append(reference())
                    line += f", {kind.reference} {row.reference[-1]:.0f}/s"
                print(line, file=sys.stderr)
        finally:
            lab.hapair.terminate("a")
            lab.hapair.terminate("b")
            wait_until(
                lambda: not lab.hapair.running("a") and not lab.hapair.running("b"), timeout=10
            )
            if kind.realserver:
                for host in BACKENDS:
                    lab.python(host, ["-m", "hapair", "realserver", "down", VIP4], check=False)
            if kind.gateway:
                for host in BACKENDS:
                    lab.exec(host, ["ip", "route", "del", f"{LAN4['c']}/32"], check=False)

    def reference_server(self, kind: Kind) -> tuple[list[str], str]:
        """The reference server's argv on node a and a label."""
        if kind.reference in ("nginx-proxy", "nginx-302"):
            conf = self.run / f"{kind.reference}.conf"
            if kind.reference == "nginx-proxy":
                conf.write_text(reference_proxy_nginx(self.run))
            else:
                body = f"return 302 http://{LAN4['r1']}:{PORT}$request_uri;"
                conf.write_text(reference_nginx_conf(self.run, body))
            return ["nginx", "-c", str(conf)], kind.reference
        if kind.reference == "haproxy-proxy":
            conf = self.run / "haproxy-ref.cfg"
            conf.write_text(reference_haproxy(self.run))
            return ["haproxy", "-db", "-f", str(conf)], kind.reference
        if kind.reference == "dnsmasq":
            argv = [
                shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "--keep-in-foreground",
                "--no-resolv", "--no-hosts", "--port=53", f"--listen-address={VIP4}",
                "--bind-interfaces", f"--address=/{DNS_NAME}/{LAN4['r1']}",
                "--cache-size=0", "--user=root", "--pid-file=",
            ]  # fmt: skip
            return argv, "dnsmasq"
        raise ValueError(kind.reference)


def measure(bench: Bench, kind: Kind, runs: int) -> Row:
    """hapair's runs and the reference's, alternating, in the same lab."""
    lab = bench.lab
    row = Row(kind)
    if kind.reference == "direct":
        bench.with_hapair(kind, runs, row, lambda: bench.load(kind, LAN4["r1"]))
        return row
    # The reference serves on node a's VIP address while hapair is stopped; runs alternate.
    argv, label = bench.reference_server(kind)
    port, proto = (53, "u") if kind.load == "dns" else (PORT, "t")
    for _ in range(runs):
        one = Row(kind)
        bench.with_hapair(kind, 1, one, None)
        row.hapair += one.hapair
        for node in ("a", "b"):  # hapair's engine lets its last connections finish first
            if not wait_until(lambda n=node: not listening(lab, n, port, proto), timeout=15):
                raise LabError(f"{kind.name}: something still listens on {node}:{port}")
        lab.remove_vips("a")
        lab.remove_vips("b")
        lab.exec("a", ["ip", "addr", "add", f"{VIP4}/24", "dev", "eth0"])
        # hapair's exit moved the VIP to b on its way out: the client must ask again.
        lab.exec("c", ["ip", "neigh", "flush", "all"])
        lab.spawn(f"ref-{label}", "a", argv)
        try:
            if not wait_until(lambda: listening(lab, "a", port, proto), timeout=10):
                log = (lab.dir / f"ref-{label}.log").read_text(errors="replace")[-2000:]
                raise LabError(f"reference {label} did not start:\n{log}")
            row.reference.append(bench.load(kind, VIP4))
            if not lab.running(f"ref-{label}"):
                raise LabError(f"reference {label} died during the run")
            print(f"  {kind.name}: {label} {row.reference[-1]:.0f}/s", file=sys.stderr)
        finally:
            lab.stop(f"ref-{label}")
            lab.remove_vips("a")
    return row


def listening(lab: Lab, node: str, port: int, proto: str) -> bool:
    """Whether a socket on ``node`` listens on (tcp, ``proto="t"``) or binds (udp) ``port``."""
    flags = "-Hltn" if proto == "t" else "-Hlun"
    out = lab.exec(node, ["ss", flags, f"sport = :{port}"], check=False).stdout
    return bool(out.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument(
        "--body", type=int, default=3, help="backend response body in bytes (default: 3, 'r1\\n')"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/balancers.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("wrk", "dnsperf", "nginx", "haproxy"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench/balancers.py: {tool} is missing (HAPAIR_WITH_BENCH=1 ./scripts/setup.sh)")
            return 2
    kinds = [KINDS[k] for k in args.kinds.split(",")]
    rows = []
    with Lab(f"bb{os.getpid() % 10000}", timers=Timers(interval=0.2, dead_after=5)) as lab:
        bench = Bench(lab, args.seconds, args.connections, args.body)
        bench.tune_hosts()
        bench.start_backends()
        for kind in kinds:
            print(f"{kind.name} ...", file=sys.stderr)
            rows.append(measure(bench, kind, args.runs))
    if args.json:
        print(json.dumps([
            {"kind": r.kind.name, "hapair": r.hapair, "reference": r.reference,
             "reference_kind": r.kind.reference, "ratio": r.ratio(), "target": r.kind.target}
            for r in rows
        ], indent=2))  # fmt: skip
        return 0
    print(f"\n{'kind':<14} {'hapair /s':>10} {'reference':<14} {'ref /s':>10} {'ratio':>6} target")
    for r in rows:
        ratio = r.ratio()
        ok = "" if ratio is None else ("ok" if ratio >= r.kind.target else "BELOW")
        print(
            f"{r.kind.name:<14} {statistics.median(r.hapair):>10.0f} {r.kind.reference:<14}"
            f" {statistics.median(r.reference):>10.0f} {ratio or 0:>6.2f} >= {r.kind.target} {ok}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

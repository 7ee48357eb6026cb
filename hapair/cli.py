"""The ``hapair`` command line. Exit status: 0 ok, 1 runtime error, 2 configuration error."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from hapair import __version__
from hapair.errors import ConfigError, HapairError

DEFAULT_CONFIG: Final = "/etc/hapair/hapair.toml"

_RAW = argparse.RawDescriptionHelpFormatter


def _seconds(text: str) -> float:
    """A --timeout/--wait value: a finite number of seconds >= 0 (argparse says why not)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of seconds >= 0")
    return value


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"configuration file (default: {DEFAULT_CONFIG})",
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground."""
    from hapair.runtime.daemon import run_daemon

    return run_daemon(args.config, args.log_format)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a file and explain its timers."""
    from hapair.balancer.explain import explain_balancer
    from hapair.config import load_config
    from hapair.config.explain import config_warnings, explain_timers

    cfg = load_config(args.file, check_secret=not args.no_secret)
    print(
        f"{args.file}: OK (cluster {cfg.cluster.name!r}, node {cfg.node.name!r}, "
        f"priority {cfg.node.priority}, {len(cfg.vip)} VIP(s))"
    )
    lines = explain_timers(cfg)
    if cfg.balancer is not None:
        lines += explain_balancer(cfg.balancer)
    for line in lines:
        print(f"  {line}")
    for line in config_warnings(cfg):
        print(f"  warning: {line}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    """Print a new random shared key."""
    from hapair.config.keygen import generate_key

    print(generate_key())
    return 0


def control_socket(config: str) -> Path:
    """The running daemon's socket, even while the file on disk has an error being edited."""
    from hapair.config import load_config
    from hapair.config.load import socket_path_hint

    try:
        return load_config(config, check_secret=False).control_socket_path
    except ConfigError:
        hint = socket_path_hint(config)
        if hint is None:
            raise
        return hint


def _status(config: str) -> dict[str, Any]:
    from hapair.ops.control_client import request

    reply = request(control_socket(config), {"cmd": "status"})
    if reply.get("denied"):
        raise HapairError(str(reply.get("error")))
    if not reply.get("ok"):
        raise HapairError(f"status failed: {reply.get('error')}")
    status: dict[str, Any] = reply["status"]
    return status


def format_status(s: dict[str, Any]) -> str:
    """Human-readable status, one fact per line."""
    prio = s["priority"]
    lines = [
        f"{s['cluster']}/{s['node']}: {s['role']}"
        + (" (resigning)" if s.get("resigning") else "")
        + (" (maintenance)" if s.get("maintenance") else "")
        + f"  term {s['term']}  priority {prio['effective']} (base {prio['base']})",
    ]
    if s.get("fault_reason"):
        lines.append(f"  fault: {s['fault_reason']}")
    lines.append(f"  VIPs held: {', '.join(s['vips_held']) or 'none'}")
    for p in s["peers"]:
        links = ", ".join(f"{k} {v:.3f}s ago" for k, v in p["links"].items())
        state = p["role"] if p["alive"] else f"DEAD (was {p['role']})"
        lines.append(
            f"  peer {p['node']}: {state}, priority {p['priority']['effective']}"
            f" (base {p['priority']['base']}), last heard {p['last_heard_ago']:.3f}s ago"
            f" [{links}]"
        )
    if not s["peers"]:
        lines.append("  peer: none heard yet")
    t = s.get("last_transition")
    if t:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t["at"])) if t["at"] else "?"
        lines.append(
            f"  last transition: {t['from']} -> {t['to']} ({t['reason']}) at {when},"
            f" {t['ago']:.1f}s ago"
        )
    history = s.get("transitions") or []
    if len(history) > 1:
        lines.append("  recent transitions (newest last):")
        for t in history:
            when = time.strftime("%H:%M:%S", time.localtime(t["at"]))
            lines.append(
                f"    {when} ({t['ago']:.1f}s ago) {t['from']} -> {t['to']} ({t['reason']}),"
                f" term {t['term']}"
            )
    if s.get("rejected"):
        rej = ", ".join(f"{k}={v}" for k, v in sorted(s["rejected"].items()))
        lines.append(f"  rejected heartbeats: {rej}")
    drops = s.get("heartbeat_drops") or {}
    if any(drops.values()):
        text = ", ".join(f"{k}={v}" for k, v in sorted(drops.items()))
        lines.append(f"  dropped by the kernel (filter or full queue), per link: {text}")
    b = s.get("balancer")
    if b:
        serving = "serving" if b["active"] else "not serving"
        lines.append(f"  balancer: {b['kind']} ({b['scheduler']}, {b['mode']}), {serving}")
        for name, h in b["backends"].items():
            state = "up" if h["up"] else "DOWN"
            lines.append(f"    backend {name}: {state} ({h['reason']}, {h['probes']} probes)")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    """Show this node's role, priority, peers, VIPs and last transition."""
    s = _status(args.config)
    print(json.dumps(s, indent=2) if args.json else format_status(s))
    return 0


def cmd_handover(args: argparse.Namespace) -> int:
    """Planned switchover; wait until the peer reports MASTER."""
    from hapair.config import load_config
    from hapair.ops.control_client import request

    reply = request(control_socket(args.config), {"cmd": "handover"})
    if not reply.get("ok"):
        print(f"hapair handover: refused: {reply.get('error')}", file=sys.stderr)
        return 1
    try:
        dead_time = load_config(args.config, check_secret=False).dead_time
    except ConfigError:
        dead_time = 10.0
    bound = args.timeout if args.timeout is not None else dead_time + 2.0
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        s = _status(args.config)
        masters = [p["node"] for p in s["peers"] if p["alive"] and p["role"] == "MASTER"]
        if s["role"] != "MASTER" and masters:
            print(f"handover done: {masters[0]} is MASTER, {s['node']} is {s['role']}")
            return 0
        if s["role"] == "MASTER" and not s["resigning"]:
            print(
                "hapair handover: the peer did not take over; this node is still MASTER",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.02)
    print(f"hapair handover: no confirmation within {bound:.1f}s", file=sys.stderr)
    return 1


def cmd_maintenance(args: argparse.Namespace) -> int:
    """Maintenance on: hand over and stay BACKUP (even across restarts) until off."""
    from hapair.ops.control_client import request

    on = args.state == "on"
    reply = request(control_socket(args.config), {"cmd": "maintenance", "on": on})
    if not reply.get("ok"):
        print(f"hapair maintenance: refused: {reply.get('error')}", file=sys.stderr)
        return 1
    if reply.get("note"):
        print(f"maintenance on, but: {reply['note']}")
        return 0
    if not on:
        print("maintenance off: this node follows the normal election again")
        return 0
    bound = time.monotonic() + (args.timeout or 10.0)
    while time.monotonic() < bound:
        s = _status(args.config)
        if s["role"] != "MASTER":
            print(f"maintenance on: {s['node']} is {s['role']} and stays so until `off`")
            return 0
        time.sleep(0.02)
    print("maintenance on, but this node is still MASTER (the peer has not taken over)")
    return 1


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask the daemon to re-read its file; print why if it refused (it keeps the old one)."""
    from hapair.ops.control_client import request

    reply = request(control_socket(args.config), {"cmd": "reload"})
    if not reply.get("ok"):
        print(f"hapair reload: refused: {reply.get('error')}", file=sys.stderr)
        return 1
    print("reloaded")
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    """Remove this node's VIPs and stale runtime files (idempotent)."""
    from hapair.runtime.release import release

    report = release(args.config, force=args.force)
    if report.peer_master:
        print(
            f"peer {report.peer_master} is MASTER ({report.waited * 1000:.0f} ms after"
            " it was told this node is out of service)"
        )
    for note in report.notes:
        print(f"note: {note}")
    for item in report.removed:
        print(f"removed {item}")
    if not report.removed:
        print("nothing to release")
    return 0


def cmd_realserver(args: argparse.Namespace) -> int:
    """Prepare (up) or restore (down) a direct-routing backend."""
    from hapair import realserver

    vip = realserver.parse_vip(args.vip)
    state = Path(args.state_file) if args.state_file else None
    if args.action == "up":
        report = realserver.up(vip, args.interface or realserver.DEFAULT_INTERFACE, state)
    else:
        report = realserver.down(vip, args.interface, state)
    for line in report:
        print(line)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Preflight this node; exit 0 without errors, 1 with any, 2 if the file is invalid."""
    from hapair.config import load_config
    from hapair.ops.doctor import Probes, findings_json, format_findings, run_doctor

    cfg = load_config(args.config, check_secret=False)  # the secret is one of the findings
    findings = run_doctor(cfg, Probes(wait=args.wait))
    report = findings_json(cfg, findings)
    print(json.dumps(report, indent=2) if args.json else format_findings(findings))
    return 0 if report["ok"] else 1


def cmd_discover(args: argparse.Namespace) -> int:
    """List the hapair nodes that announce themselves on the LAN (mDNS)."""
    from hapair.ops.mdns import browse

    class _Stderr:
        def warning(self, event: str, **fields: Any) -> object:
            detail = " ".join(f"{k}={v}" for k, v in fields.items() if k != "note")
            print(f"hapair discover: {event}: {detail}", file=sys.stderr)
            return None

    nodes = browse(args.cluster, args.timeout, log=_Stderr())
    if args.json:
        print(json.dumps([n.as_dict() for n in nodes], indent=2))
        return 0
    if not nodes:
        where = f" of cluster {args.cluster!r}" if args.cluster else ""
        print(f"no hapair node{where} answered within {args.timeout:g}s", file=sys.stderr)
        return 0
    rows = [("ADDRESS", "CLUSTER", "NODE", "ROLE", "PRIORITY", "VERSION", "PORT")]
    for n in nodes:
        r = n.record
        address = ",".join(str(a) for a in n.addresses) or "-"
        rows.append((address, r.cluster, r.node, r.role, str(r.priority), r.version, str(r.port)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def build_parser(with_lab: bool = True) -> argparse.ArgumentParser:
    """The argument parser; the daemon (``run``) leaves out the lab to keep its RSS small."""
    parser = argparse.ArgumentParser(
        prog="hapair",
        formatter_class=_RAW,
        description=(
            "hapair keeps a floating virtual IP (VIP) alive on one of two nodes.\n"
            "Both nodes run `hapair run`; they exchange authenticated UDP heartbeats, elect a\n"
            "MASTER by priority, and the MASTER holds the VIP and announces it with\n"
            "gratuitous ARP (unsolicited NA for IPv6)."
        ),
        epilog=(
            "first steps:\n"
            "  hapair keygen > /etc/hapair/secret && chmod 600 /etc/hapair/secret\n"
            "  hapair check-config /etc/hapair/hapair.toml\n"
            "  hapair run -c /etc/hapair/hapair.toml      (usually via systemd)\n"
            "  hapair status            hapair handover\n"
            "  sudo hapair lab drill crash   (watch a failover on this machine)\n"
            "  hapair drill --docker crash   (the same on the compose lab: compose/)\n"
        ),
    )
    parser.add_argument("--version", action="version", version=f"hapair {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run",
        help="run the daemon in the foreground",
        formatter_class=_RAW,
        description=(
            "Run this node's daemon in the foreground until SIGTERM.\n\n"
            "Start-up checks everything first (config, secret, capabilities, interfaces,\n"
            "routes to peers, the UDP port) and configures nothing if any check fails.\n"
            "The node listens for one dead interval before it may claim the VIP.\n"
            "SIGTERM: a MASTER hands over to the peer, releases its VIPs and exits within 1 s.\n"
            "SIGHUP: reload the file; an invalid file is refused and the old one kept.\n"
            "Priorities, timers, peers, key, checks and the VIP set apply live."
        ),
        epilog="exit status: 0 clean stop, 1 runtime error, 2 configuration error",
    )
    _config_arg(p)
    p.add_argument(
        "--log-format",
        choices=["auto", "console", "json"],
        default=None,
        help="override [log] format (auto: console on a TTY, JSON lines otherwise)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "check-config",
        help="validate a file and explain its timers",
        formatter_class=_RAW,
        description=(
            "Validate FILE. On success print what the timers mean: how often heartbeats go\n"
            "out, the worst-case time to declare the peer dead and take over, preemption and\n"
            "GARP behaviour. On failure print every problem with its dotted path, e.g.\n"
            "  cluster.interval: must be > 0\n"
            "and exit 2."
        ),
        epilog="example:\n  hapair check-config /etc/hapair/hapair.toml && systemctl reload hapair",
    )
    p.add_argument("file", nargs="?", default=DEFAULT_CONFIG, metavar="FILE")
    p.add_argument(
        "--no-secret",
        action="store_true",
        help="do not read cluster.secret_file nor look for the hook and track programs"
        " (e.g. checking a file for another host)",
    )
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "keygen",
        help="print a new random shared key",
        formatter_class=_RAW,
        description="Print 32 random bytes, base64-encoded: the shared key for secret_file.\n"
        "Both nodes need the same key.",
        epilog="example:\n  (umask 077; hapair keygen > /etc/hapair/secret)\n"
        "  scp -p /etc/hapair/secret lb2:/etc/hapair/secret",
    )
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser(
        "status",
        help="show role, priority, peers and VIPs",
        formatter_class=_RAW,
        description="Ask the running daemon (over its control socket) for its state:\n"
        "role, base and effective priority, each peer with its role and last-heard age on\n"
        "every link, the VIPs held, and the last transition with its reason.",
    )
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "maintenance",
        help="hand over and stay BACKUP until turned off (survives restarts)",
        formatter_class=_RAW,
        description="on: this node hands the VIP to its peer (make-before-break, as in\n"
        "handover) and then never becomes MASTER, not even when the peer dies, until\n"
        "`maintenance off`; the setting is kept in the state file under runtime.lib_dir\n"
        "(/var/lib/hapair), so a restart or a reboot keeps it; the command returns once\n"
        "it is on disk. The peer is told (a heartbeat flag) and\n"
        "does not count on this node. If no healthy peer can take over, the node stays\n"
        "MASTER and hands over as soon as one can.\n"
        "off: back to the normal election (with preempt on, a higher-priority node takes\n"
        "the VIP back at once).",
        epilog="planned maintenance of lb1:\n  lb1$ hapair maintenance on\n"
        "  lb1$ apt upgrade && reboot      # lb2 serves meanwhile\n"
        "  lb1$ hapair maintenance off",
    )
    _config_arg(p)
    p.add_argument("state", choices=["on", "off"])
    p.add_argument(
        "--timeout", type=_seconds, default=None, metavar="SECONDS",
        help="how long to wait for the peer to take over (default: 10)",
    )  # fmt: skip
    p.set_defaults(func=cmd_maintenance)

    p = sub.add_parser(
        "reload",
        help="re-read the configuration file (like SIGHUP, but says if it failed)",
        formatter_class=_RAW,
        description="Ask the running daemon to validate its file again and apply it live:\n"
        "priorities, timers, peers, key, checks, the VIP set and the balancer's pool,\n"
        "scheduler and checks. Nothing is applied unless everything is (a pool the data\n"
        "plane refuses, say an nginx config failing `nginx -t`, rejects the whole reload and\n"
        "the running configuration stays). Node and cluster names, the port, the VIP\n"
        "interfaces and the balancer's kind, mode, listen and engine need a restart.",
        epilog="example:\n  hapair check-config /etc/hapair/hapair.toml && hapair reload",
    )
    _config_arg(p)
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser(
        "handover",
        help="planned switchover to the peer",
        formatter_class=_RAW,
        description="Ask this node, which must be MASTER, to hand the VIP to its peer.\n"
        "The peer takes over at once (no dead timer) and this node drops the VIP only after\n"
        "hearing the peer as MASTER (make-before-break). This node then does not preempt\n"
        "back until the peer stops being MASTER. Returns when the peer reports MASTER.",
    )
    _config_arg(p)
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="how long to wait for confirmation (default: dead time + 2 s)",
    )
    p.set_defaults(func=cmd_handover)

    p = sub.add_parser(
        "release",
        help="remove this node's VIPs (after a crash; ExecStopPost)",
        formatter_class=_RAW,
        description="Remove every VIP of this node's configuration from its interface and a\n"
        "stale control socket. Idempotent: safe to run whenever the daemon is not running,\n"
        "e.g. as systemd ExecStopPost so a killed daemon never leaves a VIP behind.\n\n"
        "If a VIP is still held (the daemon died as MASTER), release first tells the peer\n"
        "that this node is out of service, so it takes over at once instead of waiting for\n"
        "its dead timer, and removes the VIP once the peer is heard as MASTER (at most 1 s).",
    )
    _config_arg(p)
    p.add_argument(
        "--force", action="store_true", help="release even though this node's daemon is running"
    )
    p.set_defaults(func=cmd_release)

    p = sub.add_parser(
        "realserver",
        help="prepare a backend for direct routing (balancer kind dr)",
        formatter_class=_RAW,
        description=(
            "Run this on each backend of a `dr` (direct routing) balancer, not on the pair.\n\n"
            "Direct routing hands the client's packet to the backend unchanged: it is still\n"
            "addressed to the VIP, and the backend answers the client directly. So the backend\n"
            "must own the VIP, yet never claim it on the LAN, or it would steal the VIP from the\n"
            "pair. `up` therefore:\n"
            "  1. sets net.ipv4.conf.all.arp_ignore=1: answer ARP only for addresses on the\n"
            "     interface the request came in on (the VIP is on lo, requests come on eth0);\n"
            "  2. sets net.ipv4.conf.all.arp_announce=2: never use the VIP as the sender address\n"
            "     of this host's own ARP requests (that would poison the neighbours' caches);\n"
            "  3. adds VIP/32 (or /128) on lo: accepted locally, no subnet route, no ARP.\n"
            "The kernel uses the larger of conf.all and conf.<interface>, so `all` covers every\n"
            "interface; a value already at or above the target is left alone. IPv6 needs no\n"
            "sysctl (Neighbour Solicitations are answered only for the receiving interface).\n\n"
            "Both actions are idempotent. `down` removes the VIP, then restores the sysctls\n"
            "`up` changed, once no prepared IPv4 VIP needs them; the previous values are kept in\n"
            "the state file.\n\n"
            "The service must listen at the balancer's port (direct routing cannot change it)\n"
            "on the VIP and on the backend's own address, which the pair's health checks\n"
            "probe: listening on 0.0.0.0 (or ::) covers both."
        ),
        epilog=(
            "examples:\n"
            "  hapair realserver up 10.0.1.50            (on every backend, e.g. at boot)\n"
            "  hapair realserver up fd00::50 --interface lo\n"
            "  hapair realserver down 10.0.1.50          (take the backend out of direct routing)\n"
            "persist the sysctls instead, if you prefer (then `up` changes only the address):\n"
            "  printf 'net.ipv4.conf.all.arp_ignore=1\\nnet.ipv4.conf.all.arp_announce=2\\n' \\\n"
            "    > /etc/sysctl.d/90-hapair-dr.conf"
        ),
    )
    p.add_argument("action", choices=["up", "down"], help="prepare (up) or restore (down)")
    p.add_argument("vip", metavar="VIP", help="the balancer's VIP, e.g. 10.0.1.50 or fd00::50")
    p.add_argument(
        "--interface",
        default=None,
        metavar="IF",
        help="where the VIP goes (default: lo; down: where up put it)",
    )
    p.add_argument(
        "--state-file",
        default=None,
        metavar="FILE",
        help="record of what up changed, for down"
        " (default: /run/hapair/realserver-NETNS.json, one per network namespace)",
    )
    p.set_defaults(func=cmd_realserver)

    p = sub.add_parser(
        "doctor",
        help="preflight this node before it goes live (run on each node)",
        formatter_class=_RAW,
        description=(
            "Check everything this node needs, without changing anything, and say how to fix\n"
            "what is wrong: capabilities; each VIP interface exists, is up and has carrier;\n"
            "the sysctls the balancer needs (ip_forward for nat, ip_nonlocal_bind for hot\n"
            "nginx) and ARP settings; nft/nginx/HAProxy present, with their versions; the\n"
            "secret file's permissions and key; the clock; the heartbeat port is free (or\n"
            "held by this node's own daemon); a route to every peer address.\n\n"
            "Then it listens on the heartbeat port for the peer's heartbeats (about 1 s;\n"
            "a raw socket watches copies if this node's daemon holds the port). It sends\n"
            "nothing, so a running pair is not disturbed. An authenticated heartbeat proves\n"
            "the peer runs, reaches this node on that link, and has the same key and cluster\n"
            "name; its VIP set digest is compared with this node's. The reverse direction is\n"
            "proven by running doctor on the peer too.\n\n"
            "Each finding is [ok], [warn] or [ERROR]; a problem's fix is printed below it."
        ),
        epilog=(
            "examples:\n"
            "  hapair doctor -c /etc/hapair/hapair.toml           (on lb1, then on lb2)\n"
            "  hapair doctor --json | jq '.findings[] | select(.level != \"ok\")'\n"
            "  hapair doctor && systemctl start hapair\n"
            "exit status: 0 no errors (warnings allowed), 1 any error, 2 invalid configuration"
        ),
    )
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--wait", type=_seconds, default=None, metavar="SECONDS",
        help="how long to listen for the peer (default: 1 s, or 3 heartbeat intervals)",
    )  # fmt: skip
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser(
        "discover",
        help="list the hapair nodes on the LAN (mDNS)",
        formatter_class=_RAW,
        description="Browse _hapair._udp.local. over multicast DNS and list every node that\n"
        "answers: its addresses, cluster, node name, role, priority, version and heartbeat\n"
        "port. Needs no configuration and no key; what it shows is what the nodes claim\n"
        "(discovery finds addresses, heartbeats still need the shared key).",
        epilog="examples:\n  hapair discover\n  hapair discover --cluster web --json",
    )
    p.add_argument("--cluster", default=None, metavar="NAME", help="only nodes of this cluster")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=1.5,
        metavar="SECONDS",
        help="how long to listen for answers (default: 1.5)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_discover)

    if with_lab:
        from hapair.lab.commands import register

        register(sub)
    return parser


#: First words that never need the lab's subcommands: registering those imports the lab's
#: harness (its config writer loads pydantic and the config models), 40 ms of every ``hapair
#: status``. ``hapair lab``, help and a mistyped command still see every command.
CORE_WORDS: Final = frozenset(
    {"run", "check-config", "keygen", "status", "maintenance", "reload", "handover", "release"}
    | {"realserver", "doctor", "discover", "--version"}
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hapair`` console script."""
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(with_lab=words[:1] == [] or words[0] not in CORE_WORDS).parse_args(words)
    try:
        status: int = args.func(args)
        return status
    except ConfigError as exc:
        print(f"hapair: configuration error in {exc}", file=sys.stderr)
        return 2
    except HapairError as exc:
        print(f"hapair: {exc}", file=sys.stderr)
        return exc.exit_status
    except OSError as exc:
        # The last net: a file or socket the command could not use, said in one line.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"hapair: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["build_parser", "main"]

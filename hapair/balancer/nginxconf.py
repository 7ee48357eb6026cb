"""nginx configurations for the ``proxy`` and ``redirect`` kinds (pure: a pool in, text out).

Every file is self-contained: its own pid file, temp paths under the run directory, the error
log on stderr (the supervisor keeps a tail), no access log, ``daemon off`` so the master stays
the supervised child. Choices that are not nginx's defaults, and why:

* ``max_fails=0``: hapair's probes decide who is in the pool. nginx's passive marking is per
  worker, invisible to ``hapair status`` and would take a backend out for ``fail_timeout`` after
  one failed request even when the probes see it healthy. A request that meets a backend which
  died since the last probe is retried on the next one (``proxy_next_upstream``).
* ``source-hash`` is ``hash $remote_addr consistent``, not ``ip_hash``: ``ip_hash`` keys IPv4
  clients on their /24 only (a whole office lands on one backend), while the consistent hash
  uses the whole address, honours weights and moves only the clients of a backend that leaves.
  The key is the backend's ``address:port``, so both nodes of the pair map clients alike.
* Workers run as nginx's unprivileged default user and the run directory may be closed to it:
  nothing is buffered to temp files (``proxy_request_buffering off``,
  ``proxy_max_temp_file_size 0``). A request body is streamed, so a request whose body was
  already sent is not retried (nginx never retries non-idempotent methods anyway).
* ``redirect`` answers ``302`` with ``Location: http://BACKEND$request_uri``. ``weighted`` and
  ``random`` draw per request (``split_clients`` on ``$request_id``), ``source-hash`` keys on the
  client address. nginx has no per-request counter shared by its workers, but the connection
  counter behind ``$connection`` is (it lives in shared memory): ``rr`` rotates per *connection*,
  on the counter's last three digits, so requests on one keep-alive connection go to one
  backend and the order restarts every 1000 connections (at most one extra turn per 1000).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from hapair.balancer.plane import Member, Pool, endpoint_name
from hapair.config.balancer import Balancer
from hapair.iptypes import IpAddress

CONF_NAME: Final = "nginx.conf"
PID_NAME: Final = "nginx.pid"
TEMP_NAME: Final = "nginx-temp"
WORKER_CONNECTIONS: Final = 4096
RLIMIT_NOFILE: Final = 4 * WORKER_CONNECTIONS
UPSTREAM_KEEPALIVE: Final = 32
#: Old workers finish their requests after a reload, within the proxy timeout plus this.
SHUTDOWN_GRACE: Final = 10.0
#: ``split_clients`` shares are in hundredths of a percent.
BASIS_POINTS: Final = 10_000
#: ``rr`` redirects rotate on this many trailing digits of ``$connection``.
ROTATION_DIGITS: Final = 3
_TEMP_KINDS: Final = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
_UNSAFE: Final = frozenset("\"\\$;{}#'") | frozenset(chr(c) for c in range(33))


def duration(seconds: float) -> str:
    """``2s`` or ``1500ms``: the units nginx and HAProxy both read."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def quoted(path: Path) -> str:
    """``path`` in double quotes; ValueError for characters a config file cannot carry safely."""
    text = str(path)
    if not path.is_absolute() or any(c in _UNSAFE for c in text):
        raise ValueError(f"{text!r}: the run directory must be an absolute path without blanks,"
                         " quotes, '$', ';', '#', braces or backslashes")  # fmt: skip
    return f'"{text}"'


def url_host(address: IpAddress, port: int) -> str:
    """``10.0.1.21``, ``10.0.1.21:8080`` or ``[fd00::21]``: the authority of an http URL."""
    host = f"[{address}]" if address.version == 6 else str(address)
    return host if port == 80 else f"{host}:{port}"


def split_shares(weights: Sequence[int]) -> list[int]:
    """Each weight's share in basis points: they sum to 10000 and none is 0.

    Largest remainder rounding keeps every share within one basis point of the exact value
    (before the floor of 1 that keeps a tiny weight in the pool).
    """
    if not weights or any(w <= 0 for w in weights) or len(weights) > BASIS_POINTS:
        raise ValueError("need 1 to 10000 positive weights")
    total = sum(weights)
    exact = [w * BASIS_POINTS / total for w in weights]
    shares = [max(1, int(x)) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (shares[i] - exact[i], i))
    for i in by_remainder[: BASIS_POINTS - sum(shares)]:
        shares[i] += 1
    while sum(shares) > BASIS_POINTS:  # only after floors of 1: take from the largest
        shares[shares.index(max(shares))] -= 1
    return shares


def percent(basis_points: int) -> str:
    """``66.67%`` from 6667."""
    return f"{basis_points // 100}.{basis_points % 100:02d}%"


def rotation(count: int, digits: int = ROTATION_DIGITS) -> dict[str, int]:
    """Every ``digits``-digit tail of a counter, and the pool slot it rotates to."""
    return {f"{v:0{digits}d}": v % count for v in range(10**digits)}


def _head(cfg: Balancer, run_dir: Path) -> list[str]:
    options = cfg.proxy_options
    temp = run_dir / TEMP_NAME
    grace = duration(options.timeout + SHUTDOWN_GRACE)
    return [
        f"# Generated by hapair for balancer kind {cfg.kind!r} (scheduler {cfg.scheduler!r}).",
        "# Rewritten on every pool change: do not edit.",
        "daemon off;",
        "master_process on;",
        f"worker_processes {options.workers or 'auto'};",
        f"pid {quoted(run_dir / PID_NAME)};",
        "error_log stderr warn;",
        f"worker_rlimit_nofile {RLIMIT_NOFILE};",
        f"worker_shutdown_timeout {grace};",
        "",
        "events {",
        f"    worker_connections {WORKER_CONNECTIONS};",
        "}",
        "",
        "http {",
        "    access_log off;",
        "    server_tokens off;",
        *(f"    {kind}_temp_path {quoted(temp / kind)};" for kind in _TEMP_KINDS),
    ]


def _listen(cfg: Balancer) -> str:
    return f"        listen {endpoint_name(*cfg.listen)};"


def _comment(pool: Pool) -> list[str]:
    return ["    # the sorry server stands in for a pool that is all down"] if pool.sorry else []


def render_proxy(cfg: Balancer, pool: Pool, run_dir: Path) -> str:
    """``kind = "proxy"`` with ``engine = "nginx"``: a reverse proxy over ``pool``."""
    options = cfg.proxy_options
    address, port = cfg.listen
    default_host = url_host(address, port)
    method = {"source-hash": ["hash $remote_addr consistent;"], "random": ["random;"]}
    lines = [
        *_head(cfg, run_dir),
        "    client_max_body_size 0;",
        "",
        "    # Host as the client sent it; an HTTP/1.0 client without one gets the VIP's.",
        "    map $http_host $hapair_host {",
        f'        "" "{default_host}";',
        "        default $http_host;",
        "    }",
        "",
        *_comment(pool),
        "    upstream hapair_pool {",
        *(f"        {line}" for line in method.get(cfg.scheduler, [])),
        *(f"        server {m.name} weight={m.weight} max_fails=0;" for m in pool.members),
        f"        keepalive {UPSTREAM_KEEPALIVE};",
        "    }",
        "",
        "    server {",
        _listen(cfg),
        "        location / {",
        "            proxy_pass http://hapair_pool;",
        "            proxy_http_version 1.1;",
        '            proxy_set_header Connection "";',
        "            proxy_set_header Host $hapair_host;",
        "            proxy_set_header X-Real-IP $remote_addr;",
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "            proxy_redirect off;",
        "            proxy_request_buffering off;",
        "            proxy_max_temp_file_size 0;",
        f"            proxy_connect_timeout {duration(options.connect_timeout)};",
        f"            proxy_read_timeout {duration(options.timeout)};",
        f"            proxy_send_timeout {duration(options.timeout)};",
        "            proxy_next_upstream error timeout;",
        f"            proxy_next_upstream_tries {options.retries + 1};",
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _target(m: Member) -> str:
    return f'"http://{url_host(m.address, m.port)}"'


def _chooser(cfg: Balancer, members: Sequence[Member]) -> list[str]:
    """The ``$hapair_target`` variable: which backend this request is sent to."""
    if cfg.scheduler == "rr":
        digits = ROTATION_DIGITS
        slots = rotation(len(members), digits)
        return [
            "    # rr: rotate on the shared connection counter's last digits.",
            "    map 00$connection $hapair_tail {",
            f'        "~(?<tail>[0-9]{{{digits}}})$" $tail;',
            "    }",
            "    map $hapair_tail $hapair_target {",
            f"        default {_target(members[0])};",
            *(f"        {tail} {_target(members[i])};" for tail, i in slots.items() if i),
            "    }",
        ]
    key = '"${remote_addr}"' if cfg.scheduler == "source-hash" else '"${request_id}"'
    shares = split_shares([m.weight for m in members])
    entries = [f"        {percent(s)} {_target(m)};" for s, m in zip(shares, members, strict=True)]
    entries[-1] = f"        * {_target(members[-1])};"
    return [f"    split_clients {key} $hapair_target {{", *entries, "    }"]


def render_redirect(cfg: Balancer, pool: Pool, run_dir: Path) -> str:
    """``kind = "redirect"``: answer every request with a 302 to a backend chosen per request."""
    members = pool.members
    if len(members) == 1:
        chooser: list[str] = []
        target = f"http://{url_host(members[0].address, members[0].port)}"
    else:
        chooser = [*_chooser(cfg, members), ""]
        target = "$hapair_target"
    lines = [
        *_head(cfg, run_dir),
        "",
        *_comment(pool),
        *chooser,
        "    server {",
        _listen(cfg),
        "        location / {",
        '            add_header Cache-Control "no-store" always;',
        f"            return 302 {target}$request_uri;",
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render(cfg: Balancer, pool: Pool, run_dir: Path) -> str:
    """The nginx configuration serving ``pool`` for ``cfg.kind`` (``proxy`` or ``redirect``)."""
    if cfg.kind == "redirect":
        return render_redirect(cfg, pool, run_dir)
    return render_proxy(cfg, pool, run_dir)

"""Hostile and mistaken input (issue 10, 5): a ConfigError with the key path, or a warning."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from hapair.config import Config, ConfigError, load_config, read_secret
from hapair.config.explain import config_warnings
from hapair.config.load import socket_path_hint, validate_config
from hapair.config.source import MAX_NESTING, parse_toml

KEY = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="  # 32 bytes, base64


def base(
    *,
    peers: str = '"192.0.2.2", "192.0.2.3"',
    vip: str = "198.51.100.50/24",
    interface: str = "eth0",
    cluster: str = "",
    extra: str = "",
) -> str:
    return (
        '[node]\nname = "alpha"\npriority = 150\n\n'
        f'[cluster]\nname = "web"\npeers = [{peers}]\n{cluster}\n'
        f'[[vip]]\naddress = "{vip}"\ninterface = "{interface}"\n{extra}'
    )


NAT = '[balancer]\nkind = "nat"\nlisten = "198.51.100.50:80"\n'
HOOK = '[[hook]]\non = ["master"]\ncommand = ["{0}"]\n'
TRACK = '[[track]]\nkind = "command"\nweight = 10\ncommand = ["{0}"]\n'

# (case, file text, expected dotted path, expected start of the message)
REFUSED: list[tuple[str, str, str, str]] = [
    (
        "5000-digit integer",
        base(extra="[garp]\nburst = " + "9" * 5000 + "\n"),
        "garp.burst",
        "an integer of 5000 digits (line 13)",
    ),
    (
        "5000-deep arrays",
        base(extra="[runtime]\nstate_dir = " + "[" * 5000 + "]" * 5000 + "\n"),
        "runtime.state_dir",
        f"arrays or tables nested more than {MAX_NESTING} deep (line 13)",
    ),
    (
        "deep inline tables in an array of tables",
        base(extra='[[hook]]\non = ["master"]\nenv = ' + "{a=" * 40 + "1" + "}" * 40 + "\n"),
        "hook[0].env",
        f"arrays or tables nested more than {MAX_NESTING} deep",
    ),
    (
        "401-digit interval",
        base(cluster="interval = " + "1" * 401),
        "cluster.interval",
        "an integer of about 401 digits is far too large for a duration",
    ),
    (
        "401-digit interval string",
        base(cluster='interval = "' + "1" * 401 + 's"'),
        "cluster.interval",
        "'" + "1" * 40 + "'... (402 characters) is not a finite",
    ),
    (
        "peer loopback",
        base(peers='"127.0.0.1"'),
        "cluster.peers[0]",
        "'127.0.0.1' is not a unicast host address: it is a loopback",
    ),
    (
        "peer ::1",
        base(peers='"::1"'),
        "cluster.peers[0]",
        "'::1' is not a unicast host address: it is a loopback",
    ),
    (
        "peer limited broadcast",
        base(peers='"255.255.255.255"'),
        "cluster.peers[0]",
        "'255.255.255.255' is not a unicast host address: it is the limited broadcast",
    ),
    (
        "peer multicast",
        base(peers='"224.0.0.18"'),
        "cluster.peers[0]",
        "'224.0.0.18' is not a unicast host address: it is a multicast",
    ),
    (
        "peer unspecified",
        base(peers='"0.0.0.0"'),
        "cluster.peers[0]",
        "'0.0.0.0' is not a unicast host address: it is the unspecified",
    ),
    (
        "peer IPv4-mapped",
        base(peers='"::ffff:192.0.2.2"'),
        "cluster.peers[0]",
        "'::ffff:192.0.2.2' is not a unicast host address: it is an IPv4-mapped",
    ),
    (
        "peer subnet broadcast",
        base(peers='"192.0.2.2", "198.51.100.255"'),
        "cluster.peers[1]",
        "198.51.100.255 is the broadcast address of vip[0]'s subnet 198.51.100.0/24",
    ),
    (
        "peer subnet network",
        base(peers='"198.51.100.0"'),
        "cluster.peers[0]",
        "198.51.100.0 is the network address of vip[0]'s subnet",
    ),
    (
        "peer equal to a VIP",
        base(peers='"198.51.100.50"'),
        "cluster.peers[0]",
        "198.51.100.50 is also vip[0]",
    ),
    (
        "VIP /0",
        base(vip="198.51.100.50/0"),
        "vip[0].address",
        "'198.51.100.50/0': prefix /0 covers every address",
    ),
    (
        "VIP ::/0",
        base(vip="fd00::50/0"),
        "vip[0].address",
        "'fd00::50/0': prefix /0 covers every address",
    ),
    (
        "VIP IPv4-mapped",
        base(vip="::ffff:10.0.0.50/128"),
        "vip[0].address",
        "'::ffff:10.0.0.50/128' cannot float between nodes: it is an IPv4-mapped IPv6 address:"
        " write 10.0.0.50",
    ),
    (
        "VIP link-local",
        base(vip="fe80::50/64"),
        "vip[0].address",
        "'fe80::50/64' is link-local (fe80::/10)",
    ),
    (
        "VIP broadcast",
        base(vip="255.255.255.255/32"),
        "vip[0].address",
        "'255.255.255.255/32' cannot float between nodes: it is the limited broadcast",
    ),
    (
        "backend equal to listen",
        base(extra=NAT + '[[balancer.backend]]\naddress = "198.51.100.50:80"\n'),
        "balancer.backend[0].address",
        "198.51.100.50:80 is the balancer's own listen address",
    ),
    (
        "hook relative",
        base(extra=HOOK.format("notify")),
        "hook[0].command",
        "command[0] 'notify' is not an absolute path: hapair does not search PATH",
    ),
    (
        "hook ./relative",
        base(extra=HOOK.format("./bin/notify")),
        "hook[0].command",
        "command[0] './bin/notify' is not an absolute path",
    ),
    (
        "track relative",
        base(extra=TRACK.format("check")),
        "track[0].command",
        "command[0] 'check' is not an absolute path",
    ),
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hapair.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path, **kwargs: bool) -> list[tuple[str, str]]:
    kwargs.setdefault("check_secret", False)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    return info.value.problems


def assert_one(found: list[tuple[str, str]], path: str, start: str) -> None:
    matching = [(p, m) for p, m in found if p == path and m.startswith(start)]
    assert matching, f"no problem at {path!r} starting {start!r} in {found}"


@pytest.mark.parametrize(("case", "text", "path", "start"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_with_its_key_path(
    tmp_path: Path, case: str, text: str, path: str, start: str
) -> None:
    assert_one(problems(write(tmp_path, text)), path, start)


def test_every_problem_of_one_file_in_one_run(tmp_path: Path) -> None:
    text = base(peers='"127.0.0.1", "255.255.255.255"', vip="fe80::50/64", extra=HOOK.format("x"))
    found = problems(write(tmp_path, text))
    assert [p for p, _ in found] == [
        "cluster.peers[0]",
        "cluster.peers[1]",
        "vip[0].address",
        "hook[0].command",
    ]


def test_a_utf8_bom_is_skipped(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "\ufeff" + base()), check_secret=False)
    assert cfg.node.name == "alpha"
    assert socket_path_hint(tmp_path / "hapair.toml") == Path("/run/hapair/web-alpha.sock")


def test_a_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    afile = tmp_path / "state"
    afile.write_text("")
    text = base(extra=f'[runtime]\nstate_dir = "{afile}"\n')
    assert_one(problems(write(tmp_path, text)), "runtime.state_dir", f"{afile} exists and is not")


def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    return path


def test_a_fifo_secret_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    text = base(cluster=f'secret_file = "{fifo}"')
    # No writer ever opens the FIFO: a blocking open would wait here forever.
    assert problems(write(tmp_path, text), check_secret=True) == [
        (
            "cluster.secret_file",
            f"{fifo} is a FIFO (named pipe), not a regular file (it must hold the key)",
        )
    ]


def test_a_fifo_config_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "hapair.toml"
    os.mkfifo(fifo)
    assert problems(fifo) == [("", f"{fifo} is a FIFO (named pipe), not a config file")]
    assert socket_path_hint(fifo) is None


@pytest.mark.parametrize("table", ["hook", "track"])
def test_missing_and_unexecutable_programs_are_refused_when_the_host_is_checked(
    tmp_path: Path, table: str
) -> None:
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    snippet = HOOK if table == "hook" else TRACK
    missing = tmp_path / "missing"
    text = base(cluster=f'secret_file = "{secret(tmp_path)}"', extra=snippet.format(missing))
    text += snippet.format(plain) + snippet.format(tmp_path)
    path = write(tmp_path, text)
    assert problems(path, check_secret=True) == [
        (f"{table}[0].command", f"{missing}: no such file on this host"),
        (f"{table}[1].command", f"{plain} is not executable: run `chmod +x {plain}`"),
        (f"{table}[2].command", f"{tmp_path} is a directory, not a program"),
    ]
    # Not checked without the host (check-config --no-secret, release, status).
    plain.chmod(plain.stat().st_mode | stat.S_IXUSR)
    assert isinstance(load_config(path, check_secret=False), Config)


WARNED: list[tuple[str, str, str]] = [
    ("VIP on lo", base(interface="lo"), 'vip[0].interface = "lo": a VIP on loopback'),
    ("VIP /1", base(vip="10.0.0.50/1"), "vip[0].address = '10.0.0.50/1': prefix /1 makes"),
    ("VIP /7", base(vip="10.0.0.50/7"), "vip[0].address = '10.0.0.50/7': prefix /7"),
    ("VIP IPv6 /8", base(vip="fd00::50/8"), "vip[0].address = 'fd00::50/8': prefix /8"),
]


@pytest.mark.parametrize(("case", "text", "start"), WARNED, ids=[w[0] for w in WARNED])
def test_legal_but_suspect_is_a_warning(tmp_path: Path, case: str, text: str, start: str) -> None:
    warnings = config_warnings(load_config(write(tmp_path, text), check_secret=False))
    assert any(w.startswith(start) for w in warnings), warnings


def test_ordinary_prefixes_are_not_warned_about(tmp_path: Path) -> None:
    for vip in ("10.0.0.50/8", "198.51.100.50/24", "fd00::50/64", "10.0.0.50/32"):
        warnings = config_warnings(load_config(write(tmp_path, base(vip=vip)), check_secret=False))
        assert not [w for w in warnings if w.startswith("vip[")], (vip, warnings)


def test_nesting_inside_strings_and_comments_does_not_count() -> None:
    deep = "[" * 100
    text = f'a = "{deep}"\nb = \'{deep}\'\nc = """\n{deep}\n"""\n# {deep}\nd = [[1], [2]]\n'
    assert parse_toml(text)["d"] == [[1], [2]]


# Fragments a config is made of, plus the hostile ones: arbitrary sequences of them must only
# ever end in a Config or a ConfigError.
_PIECES = [
    base(),
    "[node]\n",
    "[cluster]\n",
    "[[vip]]\n",
    "[[hook]]\n",
    "[runtime]\n",
    "[balancer]\n",
    "name = ",
    "peers = ",
    "interval = ",
    "priority = ",
    "address = ",
    "control_group = ",
    "state_dir = ",
    "command = ",
    "burst = ",
    "listen = ",
    "secret_file = ",
    '"x"',
    '"/tmp"',
    '"10.0.0.1/0"',
    '"::ffff:1.2.3.4"',
    '"127.0.0.1"',
    '"1e999s"',
    "1e999",
    "inf",
    "nan",
    "-0",
    "true",
    "99999999999999999999999",
    "9" * 4400,
    "[",
    "]",
    "{",
    "}",
    ",",
    "=",
    "\n",
    "\ufeff",
    '"""',
    "'",
    '"',
    "#",
    "\\",
    "\x00",
    "\udcff"[:0],
    "é",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_PIECES) | st.text(max_size=8), max_size=30), st.booleans())
def test_any_text_ends_in_a_config_or_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, pieces: list[str], deep: bool
) -> None:
    text = "".join(pieces) + ("x = " + "[" * 3000 if deep else "")
    path = tmp_path_factory.mktemp("h") / "hapair.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_config(path, check_secret=True)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(m, str) and m for _, m in exc.problems)


_SCALARS = (
    st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.booleans()
    | st.sampled_from(["auto", "/tmp", "10.0.0.1", "fd00::1/0", "1s", "fault", "root", "0"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_PLACES = [
    ("node", "name"),
    ("node", "priority"),
    ("cluster", "peers"),
    ("cluster", "interval"),
    ("cluster", "port"),
    ("cluster", "dead_after"),
    ("cluster", "secret_file"),
    ("cluster", "preempt_delay"),
    ("runtime", "control_group"),
    ("runtime", "control_admin_group"),
    ("runtime", "state_dir"),
    ("runtime", "control_socket"),
    ("garp", "burst"),
    ("garp", "refresh"),
    ("log", "level"),
    ("metrics", "listen"),
    ("balancer", "listen"),
    ("balancer", "kind"),
    ("discovery", "announce"),
    ("vip", None),
    ("track", None),
    ("hook", None),
    ("balancer", "backend"),
    ("node", None),
    ("cluster", None),
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_PLACES), _VALUES), min_size=1, max_size=4))
def test_any_values_end_in_a_config_or_a_config_error(
    changes: list[tuple[tuple[str, str | None], object]],
) -> None:
    data = parse_toml(base(extra=NAT + '[[balancer.backend]]\naddress = "198.51.100.7:80"\n'))
    for (table, key), value in changes:
        if key is None:
            data[table] = value
        elif isinstance(data.get(table), dict):
            data[table][key] = value
        else:
            data[table] = {key: value}
    try:
        validate_config(data, check_secret=True)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(m, str) and m for _, m in exc.problems)


def test_read_secret_refuses_a_fifo_at_once(tmp_path: Path) -> None:
    # run, reload and release read the key through read_secret.
    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as info:
        read_secret(fifo)
    assert info.value.problems == [
        (
            "cluster.secret_file",
            f"{fifo} is a FIFO (named pipe), not a regular file (it must hold the key)",
        )
    ]


def test_run_logs_each_warning_once_at_start(tmp_path: Path) -> None:
    from hapair.runtime.daemon import log_config_warnings

    cfg = load_config(write(tmp_path, base(interface="lo", vip="10.0.0.50/1")), check_secret=False)
    with capture_logs() as logs:
        log_config_warnings(cfg)
    assert [e["warning"] for e in logs if e["event"] == "config_warning"] == config_warnings(cfg)
    assert len(config_warnings(cfg)) == 2

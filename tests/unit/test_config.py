"""Configuration model and loader: defaults, every error with its path, secrets, timers."""

from __future__ import annotations

import base64
import math
import os
from ipaddress import ip_address, ip_interface
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from hapair.config import Config, ConfigError, load_config, read_secret
from hapair.config.duration import format_duration, parse_duration
from hapair.config.explain import config_warnings, explain_timers
from hapair.config.keygen import generate_key
from hapair.core.election import ElectionSettings

MINIMAL = """
[node]
name = "alpha"
priority = 150

[cluster]
name = "web"
peers = ["192.0.2.2"]

[[vip]]
address = "198.51.100.50/24"
interface = "eth0"
"""


def write(tmp_path: Path, text: str, name: str = "hapair.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text), check_secret=False)


def problems_of(tmp_path: Path, text: str, *, check_secret: bool = False) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), check_secret=check_secret)
    return info.value.problems


def secret_file(tmp_path: Path, content: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_text(content)
    path.chmod(mode)
    return path


# --- defaults --------------------------------------------------------------------------------


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    cfg = load_config(path, check_secret=False)
    assert cfg.source == str(path)
    assert (cfg.node.name, cfg.node.priority) == ("alpha", 150)
    c = cfg.cluster
    assert c.name == "web"
    assert c.secret_file == Path("/etc/hapair/secret")
    assert c.peers == (ip_address("192.0.2.2"),)
    assert (c.port, c.interval, c.dead_after) == (694, 0.2, 5)
    assert (c.preempt, c.preempt_delay) == (True, 0.0)
    assert cfg.vip[0].address == ip_interface("198.51.100.50/24")
    assert cfg.vip[0].interface == "eth0"
    assert cfg.vip_addresses == (ip_address("198.51.100.50"),)
    g = cfg.garp
    assert (g.burst, g.spacing, g.second_burst_delay, g.refresh) == (5, 0.01, 2.0, 10.0)
    assert cfg.track == ()
    assert cfg.runtime.state_dir == Path("/run/hapair")
    assert cfg.control_socket_path == Path("/run/hapair/web-alpha.sock")
    assert cfg.state_file_path == Path("/var/lib/hapair/web-alpha.state")  # survives reboots
    assert (cfg.log.level, cfg.log.format) == ("info", "auto")


def test_bare_vip_address_gets_a_host_prefix(tmp_path: Path) -> None:
    text = MINIMAL.replace('"198.51.100.50/24"', '"198.51.100.50"')
    text += '[[vip]]\naddress = "fd00::50"\ninterface = "eth1"\n'
    cfg = load_text(tmp_path, text)
    assert [str(v.address) for v in cfg.vip] == ["198.51.100.50/32", "fd00::50/128"]


def test_two_daemons_on_one_host_get_distinct_runtime_paths(tmp_path: Path) -> None:
    one = load_text(tmp_path, MINIMAL)
    two = load_text(tmp_path, MINIMAL.replace('name = "alpha"', 'name = "beta"'))
    assert one.control_socket_path != two.control_socket_path
    assert one.state_file_path != two.state_file_path


def test_explicit_runtime_paths_win(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        MINIMAL
        + '[runtime]\nstate_dir = "/tmp/h"\nlib_dir = "/tmp/l"\ncontrol_socket = "/tmp/c.sock"\n',
    )
    assert cfg.control_socket_path == Path("/tmp/c.sock")
    assert cfg.state_file_path == Path("/tmp/l/web-alpha.state")


def test_models_are_frozen(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    with pytest.raises(ValidationError):
        cfg.node.priority = 10
    with pytest.raises(ValidationError):
        cfg.cluster = cfg.cluster
    assert isinstance(cfg.vip, tuple)
    assert isinstance(cfg.cluster.peers, tuple)
    hash(cfg)


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20ms", 0.02),
        ("200ms", 0.2),
        ("1.5s", 1.5),
        ("2m", 120.0),
        (" 3 s ", 3.0),
        ("0s", 0.0),
        (".5s", 0.5),
        (2, 2.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_accepts(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("fast", '\'fast\' is not a duration: use e.g. "200ms", "1.5s" or a number of seconds'),
        ("200", "has no unit"),
        ("5h", "is not a duration"),
        ("-1s", "is not a duration"),
        ("", "is not a duration"),
        (-1, "is negative"),
        (True, "is not a duration"),
        (float("inf"), "not a finite duration"),
        ([1], "is not a duration"),
    ],
)
def test_parse_duration_rejects(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.2, "200ms"), (0.0125, "12.5ms"), (1.2, "1.2s"), (90, "90s"), (120, "2m")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False))
def test_format_duration_round_trips(seconds: float) -> None:
    back = parse_duration(format_duration(seconds))
    assert math.isclose(back, seconds, rel_tol=1e-9, abs_tol=0.0005)


def test_duration_fields_report_the_parser_message(tmp_path: Path) -> None:
    text = MINIMAL.replace('peers = ["192.0.2.2"]', 'peers = ["192.0.2.2"]\ninterval = "fast"')
    assert problems_of(tmp_path, text) == [
        (
            "cluster.interval",
            '\'fast\' is not a duration: use e.g. "200ms", "1.5s" or a number of seconds',
        )
    ]


def test_duration_bounds(tmp_path: Path) -> None:
    text = MINIMAL.replace('peers = ["192.0.2.2"]', 'peers = ["192.0.2.2"]\ninterval = "5ms"')
    [(path, message)] = problems_of(tmp_path, text)
    assert path == "cluster.interval"
    assert "between 10ms and 10s" in message
    assert "5ms" in message


# --- every problem in one run ----------------------------------------------------------------


def test_every_problem_is_reported_in_one_run(tmp_path: Path) -> None:
    text = (
        MINIMAL.replace("priority = 150", "priority = 0")
        .replace(
            'peers = ["192.0.2.2"]', 'peers = ["192.0.2.2"]\ninterval = "0.1x"\ndead_after = 2'
        )
        .replace('"198.51.100.50/24"', '"198.51.100.500/24"')
    )
    problems = problems_of(tmp_path, text)
    assert len(problems) == 4
    assert sorted(path for path, _ in problems) == [
        "cluster.dead_after",
        "cluster.interval",
        "node.priority",
        "vip[0].address",
    ]
    messages = dict(problems)
    assert messages["node.priority"] == "must be an integer from 1 to 254 (got 0)"
    assert messages["cluster.dead_after"] == "must be an integer from 3 to 100 (got 2)"
    assert "not an IP address with prefix" in messages["vip[0].address"]


def test_error_lists_every_problem_with_its_path(tmp_path: Path) -> None:
    text = MINIMAL.replace("priority = 150", 'priority = "high"')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), check_secret=False)
    assert info.value.exit_status == 2
    assert "  node.priority: must be an integer" in str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "path", "fragment"),
    [
        (
            "dead_after",
            "dead_aftr",
            "cluster.dead_aftr",
            "unknown key (did you mean 'dead_after'?)",
        ),
        ("[cluster]", "[clustre]", "clustre", "did you mean 'cluster'?"),
        ("interface = ", "interfcae = ", "vip[0].interfcae", "did you mean 'interface'?"),
        ("priority", "zzz", "node.zzz", "unknown key (known keys: name, priority)"),
    ],
)
def test_unknown_key_suggests_the_closest(
    tmp_path: Path, old: str, new: str, path: str, fragment: str
) -> None:
    text = MINIMAL.replace('peers = ["192.0.2.2"]', 'peers = ["192.0.2.2"]\ndead_after = 5')
    problems = problems_of(tmp_path, text.replace(old, new, 1))
    assert [p for p, m in problems if fragment in m] == [path]


def test_missing_sections_are_named(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[node]\nname = "a"\npriority = 1\n')
    assert problems == [
        ("cluster", "required table [cluster] is missing"),
        ("vip", "required: at least one [[vip]] table"),
    ]


def test_wrong_types_are_reported_plainly(tmp_path: Path) -> None:
    text = MINIMAL.replace('peers = ["192.0.2.2"]', 'peers = "192.0.2.2"\npreempt = "yes"')
    assert problems_of(tmp_path, text) == [
        (
            "cluster.peers",
            'must be "auto" or an array of addresses, e.g. ["10.0.0.2"] (got \'192.0.2.2\')',
        ),
        ("cluster.preempt", "must be a valid boolean (got 'yes')"),
    ]


# --- tracks ----------------------------------------------------------------------------------


TRACKS = """
[[track]]
kind = "interface"
interface = "eth1"
weight = 20

[[track]]
kind = "gateway"
address = "192.0.2.1"
method = "arp"
interface = "eth0"
weight = "fault"

[[track]]
kind = "command"
command = ["/usr/local/bin/check", "--quick"]
weight = 5
interval = "2s"
"""


def test_tracks_of_each_kind_parse(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL + TRACKS)
    first, second, third = cfg.track
    assert (first.kind, first.weight, first.rise, first.fall) == ("interface", 20, 2, 2)
    assert (first.interval, first.timeout) == (1.0, 1.0)
    assert second.kind == "gateway" and second.forces_fault
    assert (second.method, second.interface) == ("arp", "eth0")
    assert third.kind == "command"
    assert third.command == ("/usr/local/bin/check", "--quick")


@pytest.mark.parametrize(
    ("track", "expected"),
    [
        (
            'kind = "interface"\ninterface = "eth1"\nweight = 300',
            ("track[0].weight", "must be an integer from 1 to 253"),
        ),
        (
            'kind = "gateway"\naddress = "192.0.2.1"\nweight = 1\ncommand = ["x"]',
            ("track[0].command", "unknown key for kind 'gateway'"),
        ),
        (
            'kind = "gateway"\naddress = "192.0.2.1"\nweight = 1\nmethod = "ping"',
            ("track[0].method", "must be 'arp' or 'icmp' (got 'ping')"),
        ),
        ('kind = "command"\nweight = 1', ("track[0].command", "required key is missing")),
        (
            'kind = "command"\ncommand = []\nweight = 1',
            ("track[0].command", "must be a non-empty array of strings"),
        ),
        ('kind = "interface"\nweight = 1', ("track[0].interface", "required key is missing")),
        ('kind = "disk"\nweight = 1', ("track[0].kind", "must be one of 'interface', 'gateway'")),
        ("weight = 1", ("track[0].kind", "required: one of 'interface', 'gateway', 'command'")),
        (
            'kind = "gateway"\naddress = "fd00::1"\nmethod = "arp"\nweight = 1',
            ("track[0].method", "ARP is IPv4 only"),
        ),
        (
            'kind = "gateway"\naddress = "192.0.2.1"\nmethod = "arp"\nweight = 1',
            ("track[0].interface", 'required with method = "arp"'),
        ),
        (
            'kind = "gateway"\naddress = "fe80::1"\nweight = 1',
            ("track[0].interface", "required for the link-local gateway"),
        ),
        (
            'kind = "interface"\ninterface = "eth1"\nweight = 1\ntimeout = "2s"',
            ("track[0].timeout", "must not exceed interval"),
        ),
    ],
)
def test_track_errors_are_precise(tmp_path: Path, track: str, expected: tuple[str, str]) -> None:
    [(path, message)] = problems_of(tmp_path, f"{MINIMAL}\n[[track]]\n{track}\n")
    assert path == expected[0]
    assert expected[1] in message


# --- cross-field rules -----------------------------------------------------------------------


def test_duplicate_vips_and_peer_equal_to_vip(tmp_path: Path) -> None:
    text = MINIMAL.replace('peers = ["192.0.2.2"]', 'peers = ["192.0.2.2", "198.51.100.50"]')
    text += '[[vip]]\naddress = "198.51.100.50/32"\ninterface = "eth1"\n'
    problems = problems_of(tmp_path, text)
    assert [p for p, _ in problems] == ["vip[1].address", "cluster.peers[1]"]


def test_duplicate_peers_rejected(tmp_path: Path) -> None:
    text = MINIMAL.replace('["192.0.2.2"]', '["192.0.2.2", "192.0.2.2"]')
    assert problems_of(tmp_path, text) == [("cluster.peers", "192.0.2.2 is listed more than once")]


def test_garp_second_burst_must_follow_the_first(tmp_path: Path) -> None:
    text = MINIMAL + '[garp]\nburst = 10\nspacing = "1s"\nsecond_burst_delay = "5s"\n'
    [(path, message)] = problems_of(tmp_path, text)
    assert path == "garp.second_burst_delay"
    assert "longer than one burst (9s)" in message


def test_overlong_socket_path_rejected(tmp_path: Path) -> None:
    text = MINIMAL + f'[runtime]\nstate_dir = "/{"d" * 100}"\n'
    [(path, message)] = problems_of(tmp_path, text)
    assert path == "runtime.state_dir"
    assert "at most 107" in message


def test_the_loop_thread_is_real_time_only_when_asked(tmp_path: Path) -> None:
    assert load_text(tmp_path, MINIMAL).runtime.realtime_priority == 0
    cfg = load_text(tmp_path, MINIMAL + "[runtime]\nrealtime_priority = 10\n")
    assert cfg.runtime.realtime_priority == 10


@pytest.mark.parametrize("priority", ["-1", "100", '"high"'])
def test_a_realtime_priority_outside_0_to_99_is_refused(tmp_path: Path, priority: str) -> None:
    text = MINIMAL + f"[runtime]\nrealtime_priority = {priority}\n"
    [(path, _)] = problems_of(tmp_path, text)
    assert path == "runtime.realtime_priority"


# --- file and TOML errors --------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.problems == [("", f"no such file: {tmp_path / 'nope.toml'}")]


def test_toml_syntax_error_has_line_number(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, '[node]\nname = "a"\npriority = = 3\n')
    [(path, message)] = problems
    assert path == ""
    assert "TOML syntax error" in message
    assert "line 3" in message


# --- secret ----------------------------------------------------------------------------------


def with_secret(path: Path) -> str:
    return MINIMAL.replace('name = "web"', f'name = "web"\nsecret_file = "{path}"')


def test_good_secret_accepted(tmp_path: Path) -> None:
    key = os.urandom(32)
    path = secret_file(tmp_path, base64.b64encode(key).decode() + "\n")
    assert read_secret(path) == key
    cfg = load_config(write(tmp_path, with_secret(path)))
    assert cfg.cluster.secret_file == path


def test_missing_secret(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, with_secret(tmp_path / "absent"), check_secret=True)
    [(path, message)] = problems
    assert path == "cluster.secret_file"
    assert "no such file" in message


def test_open_secret_rejected_with_the_fix(tmp_path: Path) -> None:
    path = secret_file(tmp_path, generate_key(), mode=0o644)
    [(where, message)] = problems_of(tmp_path, with_secret(path), check_secret=True)
    assert where == "cluster.secret_file"
    assert f"chmod 600 {path}" in message
    with pytest.raises(ConfigError):
        read_secret(path)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (base64.b64encode(b"x" * 16).decode(), "decodes to 16 bytes"),
        ("not base64 at all!", "is not base64"),
        ("", "is empty"),
    ],
)
def test_bad_secret_content_rejected(tmp_path: Path, content: str, fragment: str) -> None:
    path = secret_file(tmp_path, content)
    [(where, message)] = problems_of(tmp_path, with_secret(path), check_secret=True)
    assert where == "cluster.secret_file"
    assert fragment in message


def test_secret_problems_join_schema_problems(tmp_path: Path) -> None:
    text = with_secret(tmp_path / "absent").replace("priority = 150", "priority = 999")
    problems = problems_of(tmp_path, text, check_secret=True)
    assert [p for p, _ in problems] == ["node.priority", "cluster.secret_file"]


def test_keygen_decodes_to_32_bytes() -> None:
    key = generate_key()
    assert len(base64.b64decode(key, validate=True)) == 32
    assert key != generate_key()


# --- timers ----------------------------------------------------------------------------------


def test_dead_time_for(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    assert cfg.cluster.dead_interval == pytest.approx(1.0)
    assert cfg.dead_time_for(128) == pytest.approx(1.1)
    assert cfg.dead_time_for(254) == pytest.approx(1.0 + 2 / 256 * 0.2)
    assert cfg.dead_time_for(1) == pytest.approx(1.0 + 255 / 256 * 0.2)
    # the election computes the same from the same settings (one formula)
    election = ElectionSettings("a", 128, cfg.cluster.interval, cfg.cluster.dead_after)
    assert election.dead_time(cfg.cluster.interval, 128) == cfg.dead_time_for(128)
    assert cfg.dead_time == cfg.dead_time_for(150)
    assert cfg.dead_time_for(200) < cfg.dead_time_for(100)
    with pytest.raises(ValueError):
        cfg.dead_time_for(256)


def test_explain_and_warnings(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL + TRACKS + "[garp]\nrefresh = 0\n")
    lines = explain_timers(cfg)
    assert lines[0].startswith("heartbeat: every 200ms")
    assert any("5 missed heartbeats" in line and "skew" in line for line in lines)
    assert any("≈ detection + a few ms" in line for line in lines)
    assert any(line.startswith("preempt: on") for line in lines)
    assert any(line.startswith("track[2]: command") for line in lines)
    warnings = config_warnings(cfg)
    assert any("one link" in w for w in warnings)
    assert any(w.startswith("garp.refresh = 0") for w in warnings)

"""The journald sink: field mapping, native encoding, sanitising, detection, never raising."""

from __future__ import annotations

import array
import fcntl
import io
import json
import os
import re
import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from hapair.log import configure, get_logger, use_journald
from hapair.ops.journald import (
    MESSAGE_IDS,
    JournalRenderer,
    JournalSink,
    JournalWriter,
    encode_entry,
    field_name,
    journal_fields,
    message,
    stderr_is_journal,
    valid_field_name,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "journald.md"

# Pinned: a MESSAGE_ID is a public, permanent name. Changing one breaks operators' queries.
PINNED_IDS = {
    "role_changed": "5511d1c12af34801ba91d3860e6a7261",
    "vip_acquired": "b7359de873614971817bba2ac505b20d",
    "vip_released": "13e0f62b6b9f4833bff186c1fc627f57",
    "peer_lost": "d4125e85edd74a1f8bb796d209286e6a",
    "peer_found": "3d8b8111321940dc8c59031571e7f114",
    "split_brain": "1b28a1efefc34a328351003641e86cc2",
    "backend_down": "1d85960289bb424383dd6a87306efee8",
    "backend_up": "dd9d3b86bce84b9db87331fd0ea18ffd",
    "config_reloaded": "9a962374ce194e93aec5859c15ef75e9",
    "config_reload_failed": "045b94bbe9dc4c089c5baa1a1fa49976",
    "daemon_started": "40c341d5347140029895c2bdee09a22e",
    "daemon_stopped": "8820c98ce1b242a7ac8a952588b02b97",
    "balancer_failed": "37f6db092b564bc29732633a73214c3b",
}


# -- MESSAGE_IDs -------------------------------------------------------------------------


def test_message_ids_are_pinned() -> None:
    assert dict(MESSAGE_IDS) == PINNED_IDS


def test_message_ids_are_distinct_128_bit_hex() -> None:
    assert len(set(MESSAGE_IDS.values())) == len(MESSAGE_IDS)
    for mid in MESSAGE_IDS.values():
        assert re.fullmatch(r"[0-9a-f]{32}", mid)


def test_docs_list_every_message_id() -> None:
    rows = dict(re.findall(r"^\|\s*`(\w+)`\s*\|\s*`([0-9a-f]{32})`", DOCS.read_text(), re.M))
    assert rows == PINNED_IDS


# -- field mapping -----------------------------------------------------------------------


def test_role_change_maps_to_documented_fields() -> None:
    fields = journal_fields(
        {
            "event": "role_changed",
            "level": "info",
            "ts": 1.5,
            "timestamp": "2024-01-01T00:00:00Z",
            "cluster": "web",
            "node": "alpha",
            "from_role": "MASTER",
            "to_role": "BACKUP",
            "reason": "peer_higher_priority",
            "term": 7,
            "priority": 100,
        }
    )
    assert fields == {
        "MESSAGE": "role MASTER -> BACKUP (peer_higher_priority)",
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "hapair",
        "MESSAGE_ID": "5511d1c12af34801ba91d3860e6a7261",
        "HAPAIR_EVENT": "role_changed",
        "HAPAIR_ROLE": "BACKUP",
        "HAPAIR_PREVIOUS_ROLE": "MASTER",
        "HAPAIR_REASON": "peer_higher_priority",
        "HAPAIR_CLUSTER": "web",
        "HAPAIR_NODE": "alpha",
        "HAPAIR_TERM": "7",
        "HAPAIR_PRIORITY": "100",
    }
    assert list(fields)[:3] == ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"]


@pytest.mark.parametrize(
    ("event", "data", "line"),
    [
        (
            "vip_acquired",
            {"vip": "10.0.0.10/24", "interface": "eth0", "reason": "takeover"},
            "VIP 10.0.0.10/24 acquired on eth0 (takeover)",
        ),
        (
            "vip_released",
            {"vip": "10.0.0.10/24", "reason": "exit"},
            "VIP 10.0.0.10/24 released (exit)",
        ),
        (
            "peer_lost",
            {"peer": "beta", "reason": "dead_interval"},
            "peer beta lost (dead_interval)",
        ),
        ("peer_found", {"peer": "beta", "reason": "heartbeat"}, "peer beta found (heartbeat)"),
        (
            "split_brain",
            {"peer": "beta", "reason": "both_master"},
            "split brain with peer beta (both_master)",
        ),
        (
            "backend_down",
            {"backend": "web1", "reason": "connect refused", "pool": ["web2"]},
            "backend web1 down (connect refused)",
        ),
        ("backend_up", {"backend": "web1", "reason": "ok"}, "backend web1 up (ok)"),
        (
            "config_reloaded",
            {"source": "/etc/hapair/hapair.toml"},
            "configuration reloaded from /etc/hapair/hapair.toml",
        ),
        ("peer_lost", {}, "peer ? lost (?)"),
        (
            "garp_sent",
            {"burst": "takeover", "vips": ["10.0.0.10/24"], "cluster": "web", "node": "a"},
            'garp_sent burst=takeover vips=["10.0.0.10/24"]',
        ),
        (
            "heartbeat_rejected",
            {"reason": "bad_mac", "detail": "from 10.0.0.2", "note": ""},
            'heartbeat_rejected reason=bad_mac detail="from 10.0.0.2" note=""',
        ),
        ("daemon_stopped", {}, "hapair stopped"),
        (
            "balancer_failed",
            {"error": "nginx -t failed", "exception": "Traceback:\n  ...\nOSError: boom\n"},
            "balancer failed: nginx -t failed: OSError: boom",
        ),
    ],
)
def test_message_one_liners(event: str, data: dict[str, Any], line: str) -> None:
    assert message(event, data) == line


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        ("critical", "2"),
        ("error", "3"),
        ("warning", "4"),
        ("info", "6"),
        ("debug", "7"),
        ("odd", "6"),
    ],
)
def test_priority_from_level(level: str, priority: str) -> None:
    assert journal_fields({"event": "x", "level": level})["PRIORITY"] == priority


def test_unknown_event_has_no_message_id() -> None:
    fields = journal_fields({"event": "track_changed", "level": "info", "check": "gw", "up": False})
    assert "MESSAGE_ID" not in fields
    assert fields["HAPAIR_CHECK"] == "gw"
    assert fields["HAPAIR_UP"] == "false"


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        ("text", "text"),
        (3, "3"),
        (0.25, "0.25"),
        (True, "true"),
        (None, "null"),
        (["a", "b"], '["a","b"]'),
        ({"k": 1}, '{"k":1}'),
        (b"raw", "raw"),
        (Path("/etc/x"), '"/etc/x"'),
    ],
)
def test_values_render_as_text_or_json(value: object, rendered: str) -> None:
    assert journal_fields({"event": "e", "v": value})["HAPAIR_V"] == rendered


def test_documented_names_win_collisions() -> None:
    fields = journal_fields(
        {"event": "e", "role": "X", "to_role": "MASTER", "peer-addr": 1, "PEER_ADDR": 2}
    )
    assert fields["HAPAIR_ROLE"] == "MASTER"
    assert fields["HAPAIR_ROLE_2"] == "X"
    assert (fields["HAPAIR_PEER_ADDR"], fields["HAPAIR_PEER_ADDR_2"]) == ("1", "2")


# -- sanitising --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("peer", "HAPAIR_PEER"),
        ("already_present", "HAPAIR_ALREADY_PRESENT"),
        ("peer-addr", "HAPAIR_PEER_ADDR"),
        ("a.b c", "HAPAIR_A_B_C"),
        ("_private", "HAPAIR__PRIVATE"),
        ("2nd", "HAPAIR_2ND"),
        ("élan", "HAPAIR__LAN"),
        ("x" * 100, "HAPAIR_" + "X" * 57),
    ],
)
def test_field_name_sanitises(key: str, name: str) -> None:
    assert field_name(key) == name
    assert valid_field_name(name)


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("MESSAGE", True),
        ("HAPAIR_2ND", True),
        ("_PID", False),
        ("2ND", False),
        ("lower", False),
        ("A-B", False),
        ("", False),
        ("A" * 64, True),
        ("A" * 65, False),
    ],
)
def test_valid_field_name(name: str, valid: bool) -> None:
    assert valid_field_name(name) is valid


@given(st.dictionaries(st.text(), st.text() | st.integers() | st.none(), max_size=8))
def test_any_event_dict_gives_encodable_fields(data: dict[str, Any]) -> None:
    fields = journal_fields({"event": "e", **data})
    assert all(valid_field_name(name) for name in fields)
    encode_entry(fields)


# -- native encoding ---------------------------------------------------------------------


def test_encode_plain_fields() -> None:
    assert (
        encode_entry({"MESSAGE": "hi there", "PRIORITY": "6"}) == b"MESSAGE=hi there\nPRIORITY=6\n"
    )


def test_encode_newline_value_binary_safe() -> None:
    value = "line 1\nline 2"
    assert encode_entry({"HAPAIR_EXCEPTION": value, "A": "b"}) == (
        b"HAPAIR_EXCEPTION\n" + struct.pack("<Q", 13) + b"line 1\nline 2\nA=b\n"
    )


def test_encode_bytes_and_utf8() -> None:
    assert encode_entry({"A": b"\x00\xff", "B": "é"}) == b"A=\x00\xff\nB=\xc3\xa9\n"


def test_encode_rejects_invalid_name() -> None:
    with pytest.raises(ValueError, match="invalid journal field name"):
        encode_entry({"_PID": "1"})


# -- detection ---------------------------------------------------------------------------


def stream_id(fd: int) -> str:
    st_ = os.fstat(fd)
    return f"{st_.st_dev}:{st_.st_ino}"


def test_detection_matches_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        env = {"JOURNAL_STREAM": stream_id(a.fileno())}
        assert stderr_is_journal(env, a.fileno())
        assert not stderr_is_journal(env, b.fileno())


@pytest.mark.parametrize("value", ["", "12", "1:", ":2", "a:b", "1:2:3"])
def test_detection_rejects_malformed_values(tmp_path: Path, value: str) -> None:
    with open(tmp_path / "a", "w") as a:
        assert not stderr_is_journal({"JOURNAL_STREAM": value}, a.fileno())
    assert not stderr_is_journal({}, 2)


def test_detection_on_a_closed_fd_is_false(tmp_path: Path) -> None:
    with open(tmp_path / "a", "w") as a:
        fd = a.fileno()
        env = {"JOURNAL_STREAM": stream_id(fd)}
    assert not stderr_is_journal(env, fd)


# -- the writer over a real local socket -------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for journald (short path: AF_UNIX allows 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="hj", dir="/tmp") as d:
        path = os.path.join(d, "socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        try:
            yield sock, path
        finally:
            sock.close()


def test_writer_sends_one_datagram(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    fields = {"MESSAGE": "hi", "HAPAIR_EXCEPTION": "a\nb"}
    writer = JournalWriter(path)
    writer.send(fields)
    writer.close()
    assert sock.recv(65536) == encode_entry(fields)


def test_writer_sends_oversize_entry_as_sealed_memfd(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    fields = {"MESSAGE": "big", "HAPAIR_BLOB": "x" * 4_000_000}
    writer = JournalWriter(path)
    writer.send(fields)
    writer.close()
    data, ancdata, _, _ = sock.recvmsg(16, socket.CMSG_SPACE(struct.calcsize("i")))
    assert data == b""
    [(level, kind, payload)] = ancdata
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
    fd = array.array("i", payload)[0]
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        for seal in (fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_GROW, fcntl.F_SEAL_WRITE):
            assert seals & seal
        expected = encode_entry(fields)
        assert os.pread(fd, len(expected) + 1, 0) == expected
    finally:
        os.close(fd)


def test_sink_falls_back_to_stderr_and_notes_it_once() -> None:
    err = io.StringIO()
    sink = JournalSink(JournalWriter("/nonexistent/journal/socket"), fallback=err)
    sink.info({"MESSAGE": "one"})
    sink.warning({"MESSAGE": "two"})
    lines = [json.loads(line) for line in err.getvalue().splitlines()]
    assert [line.get("event") for line in lines] == ["journald_unavailable", None, None]
    assert lines[0]["socket"] == "/nonexistent/journal/socket"
    assert [line.get("MESSAGE") for line in lines[1:]] == ["one", "two"]
    assert sink.failures == 2


def test_renderer_never_raises() -> None:
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    (fields,), kwargs = JournalRenderer()(None, "info", {"event": "e", "value": Hostile()})
    assert kwargs == {}
    assert fields["HAPAIR_EVENT"] == "log_render_failed"
    encode_entry(fields)


# -- configure() -------------------------------------------------------------------------


@pytest.fixture
def reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.mark.usefixtures("reset_structlog")
def test_configure_journald_sink_sends_entries(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    configure("info", sink="journald", journal_socket=path, cluster="web", node="alpha")
    log = get_logger()
    log.debug("below_level")
    log.warning("peer_lost", peer="beta", reason="dead_interval")
    raw = sock.recv(65536)
    fields = dict(line.split("=", 1) for line in raw.decode().splitlines())
    assert fields["MESSAGE_ID"] == MESSAGE_IDS["peer_lost"]
    assert fields["PRIORITY"] == "4"
    assert (fields["HAPAIR_CLUSTER"], fields["HAPAIR_NODE"]) == ("web", "alpha")
    assert (fields["HAPAIR_PEER"], fields["HAPAIR_REASON"]) == ("beta", "dead_interval")
    assert "HAPAIR_TS" not in fields


@pytest.mark.usefixtures("reset_structlog")
def test_configure_journald_sink_without_journald_never_raises(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("info", sink="journald", journal_socket="/nonexistent/socket")
    get_logger().info("config_reloaded", source="/etc/hapair.toml")
    lines = capsys.readouterr().err.splitlines()
    assert json.loads(lines[0])["event"] == "journald_unavailable"
    assert json.loads(lines[1])["MESSAGE"] == "configuration reloaded from /etc/hapair.toml"


@pytest.mark.usefixtures("reset_structlog")
@pytest.mark.parametrize("sink", ["auto", "stderr"])
def test_configure_stderr_json_unchanged(
    sink: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    configure("info", "json", sink=sink, node="alpha")
    get_logger().info("role_changed", to_role="MASTER")
    line = json.loads(capsys.readouterr().err)
    assert (line["event"], line["to_role"], line["node"]) == ("role_changed", "MASTER", "alpha")
    assert "ts" in line and "timestamp" in line


def test_auto_sink_follows_journal_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", stream_id(2))
    assert use_journald("auto")
    assert not use_journald("stderr")
    monkeypatch.setenv("JOURNAL_STREAM", "0:0")
    assert not use_journald("auto")
    assert use_journald("journald")

"""Pure analysis of client-probe samples and daemon logs, on made-up data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hapair.lab.events import (
    Event,
    LogFollower,
    current_role,
    dual_master_spans,
    parse_json_line,
    parse_keepalived_line,
)
from hapair.lab.probe import (
    Sample,
    client_outage,
    first_answer_from,
    lost_count,
    node_changes,
    outages,
    split_brain_spans,
    split_brain_time,
)

STEP = 0.01


def samples(pattern: str, *, t0: float = 1000.0, rtt: float = 0.001) -> list[Sample]:
    """Build samples from a pattern: one char per probe, '.' lost, a letter = answering node."""
    out = []
    for seq, ch in enumerate(pattern):
        sent = t0 + seq * STEP
        if ch == ".":
            out.append(Sample(seq, sent))
        else:
            out.append(Sample(seq, sent, sent + rtt, ch, "10.77.0.50"))
    return out


def test_no_loss_means_no_outage() -> None:
    s = samples("aaaaabbbbb")
    assert outages(s) == []
    assert client_outage(s) is None
    assert lost_count(s) == 0


def test_outage_spans_first_lost_to_first_answer_after_it() -> None:
    s = samples("aaa....bbb")
    (o,) = outages(s)
    assert o.lost == 4
    assert o.recovered
    assert o.start == pytest.approx(1000.03)
    # Ends when the first answered probe after the gap was answered (sent 1000.07 + rtt).
    assert o.end == pytest.approx(1000.071)
    assert o.duration == pytest.approx(0.041)


def test_longest_outage_after_the_fault_wins() -> None:
    s = samples("a.aaa......aa..a")
    assert client_outage(s).lost == 6  # type: ignore[union-attr]
    # A fault after the long gap only considers gaps that end after it.
    after = client_outage(s, fault=1000.125)
    assert after is not None and after.lost == 2


def test_outage_before_the_fault_is_ignored() -> None:
    s = samples("a..aaaaaaa")
    assert client_outage(s, fault=1000.05) is None


def test_unrecovered_outage_runs_to_the_last_probe() -> None:
    s = samples("aa....")
    (o,) = outages(s)
    assert not o.recovered
    assert o.lost == 4
    assert o.end == pytest.approx(1000.05)


def test_lost_count_after() -> None:
    s = samples("..aa..aa")
    assert lost_count(s) == 4
    assert lost_count(s, after=1000.03) == 2


def test_first_answer_from_new_master() -> None:
    s = samples("aaa..abbb")
    hit = first_answer_from(s, "b")
    assert hit is not None and hit.seq == 6
    assert first_answer_from(s, "a", after=1000.035) is not None
    assert first_answer_from(s, "c") is None


def test_clean_move_is_not_split_brain() -> None:
    s = samples("aaaa...bbbb")
    ((when, old, new),) = node_changes(s)
    assert (old, new) == ("a", "b")
    assert when == pytest.approx(1000.071)
    assert split_brain_time(s) == 0.0


def test_interleaved_answers_are_split_brain() -> None:
    s = samples("aaaababab.bbbbb")
    spans = split_brain_spans(s)
    assert len(spans) == 1
    start, end = spans[0]
    # First flip is the answer to probe 4 (b), last flip the answer to probe 8 (b again).
    assert start == pytest.approx(1000.041)
    assert end == pytest.approx(1000.081)
    assert split_brain_time(s) == pytest.approx(0.04)


def test_flips_far_apart_are_separate_moves() -> None:
    # a -> b, then 40 probes (0.4 s) later b -> a: a partition and its heal, not interleaving.
    s = samples("aaaa" + "b" * 40 + "aaaa")
    assert len(node_changes(s)) == 2
    assert split_brain_time(s, window=0.25) == 0.0
    assert split_brain_time(s, window=1.0) == pytest.approx(0.4)


def test_out_of_order_input_is_sorted_by_sequence() -> None:
    s = samples("aa..bb")
    assert outages(list(reversed(s))) == outages(s)


def test_json_log_lines() -> None:
    line = json.dumps(
        {"event": "role_changed", "ts": 12.5, "from_role": "BACKUP", "to_role": "MASTER"}
    )
    ev = parse_json_line("b", line)
    assert ev == Event("b", 12.5, "role_changed", {"from_role": "BACKUP", "to_role": "MASTER"})
    for junk in (
        "",
        "not json",
        "{broken",
        "[1,2]",
        '{"event": "x"}',
        '{"ts": 1}',
        '{"event": "x", "ts": true}',
    ):
        assert parse_json_line("a", junk) is None


def test_keepalived_log_lines() -> None:
    ev = parse_keepalived_line("a", "17.25\tWed Nov 25: (VI_1) Entering MASTER STATE")
    assert ev is not None and ev.name == "role_changed" and ev.get("to_role") == "MASTER"
    assert ev.ts == 17.25
    garp = parse_keepalived_line("a", "18.0\tSending gratuitous ARP on eth0 for 10.77.0.50")
    assert garp is not None and garp.name == "garp_sent"
    assert parse_keepalived_line("a", "no tab here") is None
    assert parse_keepalived_line("a", "x\t(VI_1) Entering MASTER STATE") is None


def _role(node: str, ts: float, role: str) -> Event:
    return Event(node, ts, "role_changed", {"to_role": role})


def test_current_role_follows_the_latest_run() -> None:
    evs = [
        Event("a", 1.0, "daemon_started"),
        _role("a", 2.0, "BACKUP"),
        _role("a", 3.0, "MASTER"),
        Event("a", 4.0, "daemon_stopped"),
    ]
    assert current_role(evs[:3]) == "MASTER"
    assert current_role(evs) is None
    assert current_role([*evs, Event("a", 5.0, "daemon_started")]) == "INIT"


def test_dual_master_spans() -> None:
    evs = [
        _role("a", 1.0, "MASTER"),
        _role("b", 1.0, "BACKUP"),
        _role("b", 5.0, "MASTER"),
        _role("b", 7.5, "BACKUP"),
        _role("b", 9.0, "MASTER"),
    ]
    assert dual_master_spans(evs, ["a", "b"]) == [(5.0, 7.5), (9.0, float("inf"))]
    assert dual_master_spans(evs[:2], ["a", "b"]) == []


def test_log_follower_reads_only_complete_appended_lines(tmp_path: Path) -> None:
    log = tmp_path / "daemon-a.log"
    follow = LogFollower("a", log)
    assert follow.events() == []
    line = json.dumps({"event": "daemon_started", "ts": 1.0})
    log.write_text(line + "\n" + '{"event": "role_changed", "ts": 2.0, "to_ro')
    assert [e.name for e in follow.events()] == ["daemon_started"]
    with log.open("a") as fh:
        fh.write('le": "MASTER"}\nnot json\n')
    evs = follow.events()
    assert [e.name for e in evs] == ["daemon_started", "role_changed"]
    assert current_role(evs) == "MASTER"


def test_keepalived_stop_and_previous_role(tmp_path: Path) -> None:
    log = tmp_path / "keepalived-a.log"
    log.write_text(
        "1.0\tStarting VRRP child process, pid=7\n"
        "2.0\t(VI_1) Entering BACKUP STATE (init)\n"
        "3.0\t(VI_1) Entering MASTER STATE\n"
        "4.0\tWed Nov 25 01:38:40 2026: Stopping\n"
        "5.0\tStopped Keepalived v2.2.7\n"
    )
    evs = LogFollower("a", log, keepalived=True).events()
    roles = [(e.get("from_role"), e.get("to_role")) for e in evs if e.name == "role_changed"]
    assert roles == [("INIT", "BACKUP"), ("BACKUP", "MASTER"), ("MASTER", "STOPPING")]
    assert current_role(evs) is None

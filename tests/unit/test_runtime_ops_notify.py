"""What the node tells systemd, mDNS, metrics, hooks and the log: recorded by fakes, in order."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from hapair.balancer.health import HealthChange
from hapair.core.actions import RoleChanged
from hapair.core.roles import Role
from hapair.ops.hooks import BackendEvent, HookEvent, RoleEvent
from hapair.runtime.ops_notify import TRANSITION_HISTORY, OpsNotifier
from hapair.wire.heartbeat import RejectReason

Journal = list[tuple[str, Any]]

MASTER_WITH_PEER: Mapping[str, Any] = {
    "role": "MASTER",
    "vips_held": ["10.0.0.50/24"],
    "peers": [{"node": "lb2", "role": "BACKUP", "alive": True}],
}
BACKUP_ALONE: Mapping[str, Any] = {"role": "BACKUP", "vips_held": [], "peers": []}


class FakeSystemd:
    """Records WATCHDOG=1 and STATUS= into the shared journal."""

    def __init__(self, journal: Journal, period: float | None = None) -> None:
        self.journal = journal
        self.watchdog_period = period

    def watchdog(self) -> bool:
        self.journal.append(("systemd", "WATCHDOG=1"))
        return True

    def status(self, text: str) -> bool:
        self.journal.append(("systemd", f"STATUS={text}"))
        return True


class FakeMdns:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def update(self, *, role: str | None = None, priority: int | None = None) -> None:
        self.journal.append(("mdns", (role, priority)))


class FakeMetrics:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def role_changed(self, from_: Role, to: Role, reason: str) -> None:
        self.journal.append(("metrics", ("role_changed", from_, to, reason)))

    def heartbeat_sent(self) -> None:
        self.journal.append(("metrics", ("heartbeat_sent",)))

    def heartbeat_received(self, peer: str, now: float) -> None:
        self.journal.append(("metrics", ("heartbeat_received", peer, now)))

    def heartbeat_rejected(self, reason: RejectReason) -> None:
        self.journal.append(("metrics", ("heartbeat_rejected", reason)))

    def vip_conflict(self) -> None:
        self.journal.append(("metrics", ("vip_conflict",)))

    def set_vips(self, vips: Iterable[str]) -> None:
        self.journal.append(("metrics", ("set_vips", list(vips))))

    def vips_held(self, held: Iterable[str]) -> None:
        self.journal.append(("metrics", ("vips_held", list(held))))

    def set_backends(self, names: Iterable[str], up: Iterable[str]) -> None:
        self.journal.append(("metrics", ("set_backends", list(names), list(up))))


class FakeHooks:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def submit(self, event: HookEvent) -> None:
        self.journal.append(("hooks", event))


class FakeLog:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def info(self, event: str, **fields: Any) -> None:
        self.journal.append(("log", (event, fields)))


class Status:
    """The node's ``status()``: a snapshot that a test changes, and how often it was read."""

    def __init__(self, snapshot: Mapping[str, Any] = BACKUP_ALONE) -> None:
        self.snapshot = snapshot
        self.reads = 0

    def __call__(self) -> Mapping[str, Any]:
        self.reads += 1
        return self.snapshot


def notifier(
    journal: Journal,
    *,
    parties: str = "systemd mdns metrics",
    period: float | None = None,
    status: Status | None = None,
    now: float = 0.0,
) -> OpsNotifier:
    return OpsNotifier(
        systemd=FakeSystemd(journal, period) if "systemd" in parties else None,
        mdns=FakeMdns(journal) if "mdns" in parties else None,
        metrics=FakeMetrics(journal) if "metrics" in parties else None,
        hooks=FakeHooks(journal),
        log=FakeLog(journal),
        status=status or Status(),
        now=now,
        wall=lambda: 1_700_000_000.0,
    )


def systemd_messages(journal: Journal) -> list[str]:
    return [m for party, m in journal if party == "systemd"]


# -- STATUS= and WATCHDOG=1 ------------------------------------------------------------------

STATUS_TEXT = [
    pytest.param(MASTER_WITH_PEER, "MASTER, VIP 10.0.0.50/24 held, peer lb2 BACKUP", id="master"),
    pytest.param(BACKUP_ALONE, "BACKUP, no VIP held, no peer heard", id="backup-alone"),
    pytest.param(
        {"role": "INIT", "vips_held": [], "peers": []},
        "INIT, no VIP held, no peer heard",
        id="init",
    ),
    pytest.param(
        {"role": "FAULT", "fault_reason": "carrier_lost:eth0", "vips_held": [], "peers": []},
        "FAULT (carrier_lost:eth0), no VIP held, no peer heard",
        id="fault",
    ),
    pytest.param(
        {
            **MASTER_WITH_PEER,
            "resigning": True,
            "peers": [{"node": "lb2", "role": "BACKUP", "alive": False}],
        },
        "MASTER (resigning), VIP 10.0.0.50/24 held, peer lb2 lost",
        id="resigning-peer-lost",
    ),
]


@pytest.mark.parametrize(("snapshot", "text"), STATUS_TEXT)
def test_the_status_line_is_the_status_snapshot_in_one_line(
    snapshot: Mapping[str, Any], text: str
) -> None:
    journal: Journal = []
    ops = notifier(journal, status=Status(snapshot))
    ops.step_done(0.0, [])
    assert systemd_messages(journal) == [f"STATUS={text}"]


# Each step is (what happens before it, the time of the step); then what systemd heard.
WHEN_SENT = [
    pytest.param(
        None, [((), 0.0), ((), 0.1), (("changed",), 0.2), ((), 0.3)],
        ["STATUS", "STATUS"],
        id="first-step-then-only-after-a-change",
    ),
    pytest.param(
        None, [(("changed", "changed", "changed"), 0.0)], ["STATUS"],
        id="many-changes-one-line-per-step",
    ),
    pytest.param(
        1.0, [((), 0.0), ((), 0.5), ((), 1.0), ((), 1.2), ((), 2.5)],
        ["WATCHDOG=1", "STATUS", "WATCHDOG=1", "STATUS", "WATCHDOG=1", "STATUS"],
        id="a-ping-is-followed-by-the-status",
    ),
    pytest.param(
        1.0, [((), 0.0), (("changed",), 0.4), ((), 0.6)],
        ["WATCHDOG=1", "STATUS", "STATUS"],
        id="a-change-between-pings",
    ),
    pytest.param(
        None, [((), 0.0), (("backend",), 0.1), ((), 0.2)], ["STATUS", "STATUS"],
        id="a-backend-change-is-a-change",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("period", "steps", "heard"), WHEN_SENT)
def test_when_status_and_watchdog_are_sent(
    period: float | None, steps: list[tuple[tuple[str, ...], float]], heard: list[str]
) -> None:
    journal: Journal = []
    status = Status()
    ops = notifier(journal, parties="systemd", period=period, status=status)
    for before, now in steps:
        for what in before:
            if what == "changed":
                ops.changed()
            else:
                ops.backend_changed("r1", HealthChange("r1", False, "refused"), Role.MASTER, "")
        ops.step_done(now, [])
    sent = [
        m.partition("=")[0] if m.startswith("STATUS=") else m for m in systemd_messages(journal)
    ]
    assert sent == heard
    assert status.reads == heard.count("STATUS")  # the snapshot is built only to be sent


@pytest.mark.parametrize(
    ("period", "now", "deadline"),
    [(None, 5.0, None), (0.2, 5.0, 5.0), (30.0, 0.0, 0.0)],
)
def test_the_loop_wakes_for_the_first_ping_at_once(
    period: float | None, now: float, deadline: float | None
) -> None:
    ops = notifier([], parties="systemd", period=period, now=now)
    assert ops.next_deadline() == deadline


def test_the_next_ping_is_one_period_after_the_last() -> None:
    journal: Journal = []
    ops = notifier(journal, parties="systemd", period=0.5, now=10.0)
    ops.step_done(10.1, [])
    assert ops.next_deadline() == pytest.approx(10.6)


def test_without_systemd_the_status_is_never_built() -> None:
    journal: Journal = []
    status = Status()
    ops = notifier(journal, parties="mdns metrics", status=status)
    ops.changed()
    ops.step_done(0.0, ["10.0.0.50/24"])
    assert status.reads == 0
    assert journal == [("metrics", ("vips_held", ["10.0.0.50/24"]))]
    assert ops.next_deadline() is None


# -- role changes ----------------------------------------------------------------------------

TAKEOVER = RoleChanged(Role.BACKUP, Role.MASTER, "peer_dead", 7)
ROLE_EVENT = RoleEvent(Role.MASTER, Role.BACKUP, "peer_dead", peer="lb2")
ROLE_LOG = (
    "role_changed",
    {"from_role": "BACKUP", "to_role": "MASTER", "reason": "peer_dead", "term": 7, "priority": 90},
)


@pytest.mark.parametrize(
    ("parties", "told"),
    [
        pytest.param(
            "systemd mdns metrics",
            [
                ("metrics", ("role_changed", Role.BACKUP, Role.MASTER, "peer_dead")),
                ("log", ROLE_LOG),
                ("hooks", ROLE_EVENT),
                ("mdns", ("MASTER", 90)),
            ],
            id="everyone-in-order",
        ),
        pytest.param("", [("log", ROLE_LOG), ("hooks", ROLE_EVENT)], id="no-optional-party"),
        pytest.param(
            "mdns", [("log", ROLE_LOG), ("hooks", ROLE_EVENT), ("mdns", ("MASTER", 90))], id="mdns"
        ),
    ],
)
def test_a_role_change_is_told_to_each_party_in_order(parties: str, told: Journal) -> None:
    journal: Journal = []
    ops = notifier(journal, parties=parties)
    ops.role_changed(TAKEOVER, 90, "lb2", 3.0)
    assert journal == told  # systemd hears of it through STATUS= at the end of the step


def test_role_changes_are_kept_for_status_newest_last_and_bounded() -> None:
    ops = notifier([])
    assert ops.last_transition_wall is None and ops.transitions_at(0.0) == []
    for i in range(TRANSITION_HISTORY + 3):
        ops.role_changed(RoleChanged(Role.BACKUP, Role.MASTER, f"r{i}", i), 100, "", float(i))
    kept = ops.transitions_at(20.0)
    assert len(kept) == TRANSITION_HISTORY
    assert kept[-1] == {
        "from": "BACKUP", "to": "MASTER", "reason": f"r{TRANSITION_HISTORY + 2}",
        "term": TRANSITION_HISTORY + 2, "at": 1_700_000_000.0, "ago": 8.0,
    }  # fmt: skip
    assert kept[0]["reason"] == "r3"
    assert ops.last_transition_wall == 1_700_000_000.0


# -- priority, backends, reload, counters ----------------------------------------------------

CALLS = [
    pytest.param(
        lambda ops: ops.priority_changed(40), [("mdns", (None, 40))], id="priority"
    ),
    pytest.param(
        lambda ops: ops.backend_changed(
            "r1", HealthChange("r1", True, "http 200"), Role.BACKUP, "lb2"
        ),
        [("hooks", BackendEvent("r1", True, "http 200", Role.BACKUP, peer="lb2"))],
        id="backend",
    ),
    pytest.param(
        lambda ops: ops.reconfigured(iter(["10.0.0.50/24"]), None),
        [("metrics", ("set_vips", ["10.0.0.50/24"]))],
        id="reload-without-balancer",
    ),
    pytest.param(
        lambda ops: ops.reconfigured(["10.0.0.50/24"], (["r1", "r2"], ["r2"])),
        [
            ("metrics", ("set_vips", ["10.0.0.50/24"])),
            ("metrics", ("set_backends", ["r1", "r2"], ["r2"])),
        ],
        id="reload-with-balancer",
    ),
    pytest.param(lambda ops: ops.heartbeat_sent(), [("metrics", ("heartbeat_sent",))], id="sent"),
    pytest.param(
        lambda ops: ops.heartbeat_received("lb2", 4.5),
        [("metrics", ("heartbeat_received", "lb2", 4.5))],
        id="received",
    ),
    pytest.param(
        lambda ops: ops.heartbeat_rejected(RejectReason.REPLAY),
        [("metrics", ("heartbeat_rejected", RejectReason.REPLAY))],
        id="rejected",
    ),
    pytest.param(lambda ops: ops.vip_conflict(), [("metrics", ("vip_conflict",))], id="conflict"),
]  # fmt: skip


@pytest.mark.parametrize(("call", "told"), CALLS)
def test_each_party_is_told_only_what_concerns_it(call: Any, told: Journal) -> None:
    journal: Journal = []
    call(notifier(journal))
    assert journal == told


@pytest.mark.parametrize(("call", "told"), CALLS)
def test_an_absent_party_is_skipped(call: Any, told: Journal) -> None:
    journal: Journal = []
    call(notifier(journal, parties=""))
    assert journal == [(party, m) for party, m in told if party == "hooks"]

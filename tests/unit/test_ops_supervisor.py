"""The supervisor's pure half: restart rules over explicit `now` values, and its command line."""

from __future__ import annotations

import signal

import pytest

from hapair.ops.supervisor import (
    HOLD_POLL,
    Step,
    UnitPolicy,
    Verdict,
    build_parser,
    exit_fields,
    hapair_argv,
)

DELAY = 2.0


def started_at(policy: UnitPolicy, now: float) -> None:
    assert policy.next_step(now, held=False).verdict is Verdict.START
    policy.started(now)


@pytest.mark.parametrize(
    ("status", "stopping", "expected"),
    [
        (1, False, Step(Verdict.WAIT, "restart_delay", until=10.0 + DELAY)),
        (None, False, Step(Verdict.WAIT, "restart_delay", until=10.0 + DELAY)),
        # Unlike Restart=on-failure: in a container nothing else would start it again.
        (0, False, Step(Verdict.WAIT, "restart_delay", until=10.0 + DELAY)),
        (2, False, Step(Verdict.EXIT, "config_error", exit_status=2)),
        (0, True, Step(Verdict.EXIT, "stopped", exit_status=0)),
        (2, True, Step(Verdict.EXIT, "stopped", exit_status=0)),
        (None, True, Step(Verdict.EXIT, "stopped", exit_status=0)),
    ],
)
def test_exit_decisions(status: int | None, stopping: bool, expected: Step) -> None:
    policy = UnitPolicy(DELAY)
    started_at(policy, 0.0)
    if stopping:
        policy.stop()
    assert policy.exited(10.0, status) == expected


# (now, held) -> verdict, after a start at 0 and an exit at 10 (restart due at 12).
@pytest.mark.parametrize(
    ("now", "held", "verdict", "until"),
    [
        (10.0, False, Verdict.WAIT, 12.0),
        (11.9, False, Verdict.WAIT, 12.0),
        (12.0, False, Verdict.START, None),
        (30.0, False, Verdict.START, None),
        (10.0, True, Verdict.HOLD, 10.0 + HOLD_POLL),
        (99.0, True, Verdict.HOLD, 99.0 + HOLD_POLL),
    ],
)
def test_after_an_exit(now: float, held: bool, verdict: Verdict, until: float | None) -> None:
    policy = UnitPolicy(DELAY)
    started_at(policy, 0.0)
    policy.exited(10.0, 1)
    step = policy.next_step(now, held=held)
    assert (step.verdict, step.until) == (verdict, until)


def test_first_start_is_immediate_unless_held() -> None:
    policy = UnitPolicy(DELAY)
    assert policy.next_step(0.0, held=True).verdict is Verdict.HOLD
    assert policy.next_step(0.1, held=False).verdict is Verdict.START


def test_hold_outlasts_the_restart_delay_and_ends_with_a_start() -> None:
    policy = UnitPolicy(DELAY)
    started_at(policy, 0.0)
    policy.exited(1.0, None)
    timeline = [(1.0, True), (3.0, True), (50.0, True), (50.1, False)]
    steps = [policy.next_step(now, held=held).verdict for now, held in timeline]
    assert steps == [Verdict.HOLD, Verdict.HOLD, Verdict.HOLD, Verdict.START]


def test_start_limit_is_five_starts_in_sixty_seconds() -> None:
    policy = UnitPolicy(0.0)
    for now in (0.0, 1.0, 2.0, 3.0, 4.0):
        started_at(policy, now)
        policy.exited(now + 0.5, 1)
    assert policy.next_step(5.0, held=False) == Step(Verdict.EXIT, "start_limit", exit_status=1)
    # The first start leaves the window at 60 s: one more start is allowed, then none.
    assert policy.next_step(60.0, held=False).verdict is Verdict.START
    policy.started(60.0)
    policy.exited(60.5, 1)
    assert policy.next_step(60.5, held=False).verdict is Verdict.EXIT


def test_slow_crashes_never_hit_the_limit() -> None:
    policy = UnitPolicy(DELAY)
    for i in range(20):
        now = i * 15.0
        started_at(policy, now)
        policy.exited(now + 10.0, None)


def test_a_released_hold_forgives_earlier_crashes() -> None:
    policy = UnitPolicy(0.0)
    for now in (0.0, 1.0, 2.0, 3.0, 4.0):
        started_at(policy, now)
        policy.exited(now, 1)
    assert policy.next_step(5.0, held=True).verdict is Verdict.HOLD
    assert policy.next_step(6.0, held=False).verdict is Verdict.START


@pytest.mark.parametrize("held", [False, True])
def test_a_stop_request_ends_any_wait(held: bool) -> None:
    policy = UnitPolicy(DELAY)
    started_at(policy, 0.0)
    policy.exited(1.0, 1)
    policy.stop()
    assert policy.stopping
    assert policy.next_step(1.5, held=held) == Step(Verdict.EXIT, "stopped", exit_status=0)


@pytest.mark.parametrize(
    ("delay", "burst", "window"), [(-1.0, 5, 60.0), (2.0, 0, 60.0), (2.0, 5, 0.0)]
)
def test_policy_rejects_nonsense(delay: float, burst: int, window: float) -> None:
    with pytest.raises(ValueError):
        UnitPolicy(delay, burst=burst, window=window)


@pytest.mark.parametrize(
    ("returncode", "fields"),
    [
        (0, (0, None)),
        (1, (1, None)),
        (2, (2, None)),
        (-signal.SIGKILL, (None, "SIGKILL")),
        (-signal.SIGTERM, (None, "SIGTERM")),
        (-signal.SIGABRT, (None, "SIGABRT")),
    ],
)
def test_exit_fields(returncode: int, fields: tuple[int | None, str | None]) -> None:
    assert exit_fields(returncode) == fields


@pytest.mark.parametrize(
    ("argv", "config", "delay", "hold"),
    [
        ([], "/etc/hapair/hapair.toml", 2.0, "/run/hapair/hold"),
        (["-c", "x.toml", "--restart-delay", "500ms"], "x.toml", 0.5, "/run/hapair/hold"),
        (
            ["--restart-delay", "1.5s", "--hold-file", "/tmp/h"],
            "/etc/hapair/hapair.toml",
            1.5,
            "/tmp/h",
        ),
    ],
)
def test_parser(argv: list[str], config: str, delay: float, hold: str) -> None:
    args = build_parser().parse_args(argv)
    assert (args.config, args.restart_delay, args.hold_file) == (config, delay, hold)


@pytest.mark.parametrize("bad", ["2", "soon", "-1s"])
def test_parser_refuses_bad_delays(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--restart-delay", bad])
    assert info.value.code == 2
    assert "--restart-delay" in capsys.readouterr().err


def test_hapair_argv_uses_this_interpreter() -> None:
    argv = hapair_argv("release", "/etc/x.toml")
    assert argv[1:] == ["-m", "hapair", "release", "-c", "/etc/x.toml"]

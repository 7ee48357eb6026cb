"""Hooks, the pure half: the ``[[hook]]`` model and the planner (event in, invocations out)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from pydantic import ValidationError

from hapair.config.hooks import Hook
from hapair.core.roles import Role
from hapair.ops.hooks import (
    DEFAULT_PATH,
    ROLE_LANE,
    BackendEvent,
    HookContext,
    OutputTail,
    RoleEvent,
    event_env,
    inherited_env,
    lane_of,
    missing_programs,
    plan_hooks,
    trigger_of,
)

CONTEXT = HookContext(cluster="web", node="alpha", vips=("198.51.100.50/24", "fd00::50/64"))
INHERITED = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
TAKEOVER = RoleEvent(Role.MASTER, Role.BACKUP, "peer_dead", peer="beta")
WEB1_DOWN = BackendEvent("web1", up=False, reason="connection refused", role=Role.MASTER)


def hook(on: Any, *command: str, **extra: Any) -> Hook:
    return Hook.model_validate({"on": on, "command": list(command) or ["/bin/true"], **extra})


def errors(data: dict[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    with pytest.raises(ValidationError) as info:
        Hook.model_validate(data)
    return [(e["loc"], e["msg"]) for e in info.value.errors()]


# --- the [[hook]] model ----------------------------------------------------------------------


def test_hook_defaults() -> None:
    h = hook(["master"], "/usr/local/bin/on-master", "--quick")
    assert h.command == ("/usr/local/bin/on-master", "--quick")
    assert h.timeout == 10.0
    assert h.env == ()


@pytest.mark.parametrize(
    ("on", "triggers"),
    [
        (["role"], {"master", "backup", "fault"}),
        (["backend"], {"backend_up", "backend_down"}),
        ("master", {"master"}),
        (["fault", "backend_down"], {"fault", "backend_down"}),
        (["role", "master"], {"master", "backup", "fault"}),
    ],
)
def test_on_expands_groups(on: Any, triggers: set[str]) -> None:
    assert hook(on).triggers == triggers


@pytest.mark.parametrize(
    ("on", "message"),
    [
        ([], "non-empty array"),
        (["primary"], "on[0] must be one of"),
        (["master", "master"], "listed more than once"),
        ([1], "got 1"),
        (True, "non-empty array"),
    ],
)
def test_on_rejects(on: Any, message: str) -> None:
    [(loc, msg)] = errors({"on": on, "command": ["/bin/true"]})
    assert loc == ("on",)
    assert message in msg


def test_timeout_is_a_bounded_duration() -> None:
    assert hook("role", timeout="1.5s").timeout == 1.5
    [(loc, msg)] = errors({"on": "role", "command": ["/bin/x"], "timeout": "2h"})
    assert loc == ("timeout",)
    [(loc, msg)] = errors({"on": "role", "command": ["/bin/x"], "timeout": "0s"})
    assert loc == ("timeout",) and "between" in msg


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HAPAIR_ROLE": "x"}, "set by hapair"),
        ({"hapair_x": "x"}, "set by hapair"),
        ({"1X": "x"}, "not a variable name"),
        ({"A-B": "x"}, "not a variable name"),
        ({"N": 3}, "must be a string"),
        ({"N": "a\0b"}, "NUL"),
        (["N=1"], "must be a table"),
    ],
)
def test_env_rejects(env: Any, message: str) -> None:
    [(loc, msg)] = errors({"on": "role", "command": ["/bin/x"], "env": env})
    assert loc == ("env",)
    assert message in msg


def test_env_keeps_file_order_and_model_stays_hashable() -> None:
    h = hook("role", env={"B": "2", "A": "1"})
    assert h.env == (("B", "2"), ("A", "1"))
    assert hash(h) == hash(hook("role", env={"B": "2", "A": "1"}))


def test_every_problem_is_reported_with_its_key() -> None:
    found = errors({"on": ["nope"], "command": [], "timeout": "x", "shell": True})
    assert sorted(loc for loc, _ in found) == [("command",), ("on",), ("shell",), ("timeout",)]


# --- the planner -----------------------------------------------------------------------------


def test_role_event_environment() -> None:
    assert event_env(TAKEOVER, CONTEXT) == {
        "HAPAIR_EVENT": "master",
        "HAPAIR_ROLE": "MASTER",
        "HAPAIR_PREVIOUS_ROLE": "BACKUP",
        "HAPAIR_REASON": "peer_dead",
        "HAPAIR_CLUSTER": "web",
        "HAPAIR_NODE": "alpha",
        "HAPAIR_PEER": "beta",
        "HAPAIR_VIPS": "198.51.100.50/24 fd00::50/64",
        "HAPAIR_BACKEND": "",
        "HAPAIR_BACKEND_STATE": "",
    }


def test_backend_event_environment() -> None:
    env = event_env(WEB1_DOWN, CONTEXT)
    assert env["HAPAIR_EVENT"] == "backend_down"
    assert env["HAPAIR_ROLE"] == "MASTER"
    assert env["HAPAIR_PREVIOUS_ROLE"] == ""
    assert env["HAPAIR_REASON"] == "connection refused"
    assert env["HAPAIR_BACKEND"] == "web1"
    assert env["HAPAIR_BACKEND_STATE"] == "down"
    up = event_env(BackendEvent("web1", True, "ok", Role.BACKUP), CONTEXT)
    assert up["HAPAIR_BACKEND_STATE"] == "up"


@pytest.mark.parametrize(
    ("event", "trigger", "lane"),
    [
        (TAKEOVER, "master", ROLE_LANE),
        (RoleEvent(Role.BACKUP, Role.MASTER, "preempted"), "backup", ROLE_LANE),
        (RoleEvent(Role.FAULT, Role.BACKUP, "carrier_lost:eth0"), "fault", ROLE_LANE),
        (WEB1_DOWN, "backend_down", "backend:web1"),
        (BackendEvent("web2", True, "ok", Role.MASTER), "backend_up", "backend:web2"),
    ],
)
def test_trigger_and_lane(event: Any, trigger: str, lane: str) -> None:
    assert trigger_of(event) == trigger
    assert lane_of(event) == lane


HOOKS = (
    hook(["role"], "/hooks/any-role"),
    hook(["backup"], "/hooks/backup"),
    hook(["master", "backend_down"], "/hooks/master-or-down", timeout="3s"),
    hook(["backend"], "/hooks/backend"),
    hook("master", "/hooks/master", "--flag"),
)


@pytest.mark.parametrize(
    ("event", "programs"),
    [
        (TAKEOVER, ["/hooks/any-role", "/hooks/master-or-down", "/hooks/master"]),
        (RoleEvent(Role.BACKUP, Role.MASTER, "preempted"), ["/hooks/any-role", "/hooks/backup"]),
        (RoleEvent(Role.FAULT, Role.MASTER, "x"), ["/hooks/any-role"]),
        (WEB1_DOWN, ["/hooks/master-or-down", "/hooks/backend"]),
        (BackendEvent("web1", True, "ok", Role.MASTER), ["/hooks/backend"]),
    ],
)
def test_plan_filters_by_trigger_and_keeps_config_order(event: Any, programs: list[str]) -> None:
    plan = plan_hooks(event, HOOKS, CONTEXT, INHERITED)
    assert [inv.argv[0] for inv in plan.invocations] == programs


def test_plan_names_hooks_by_config_index_and_carries_argv_and_timeout() -> None:
    plan = plan_hooks(TAKEOVER, HOOKS, CONTEXT, INHERITED)
    assert plan.lane == ROLE_LANE and plan.trigger == "master" and plan.backend == ""
    assert [inv.hook for inv in plan.invocations] == ["hook[0]", "hook[2]", "hook[4]"]
    assert plan.invocations[1].timeout == 3.0
    assert plan.invocations[2].argv == ("/hooks/master", "--flag")
    down = plan_hooks(WEB1_DOWN, HOOKS, CONTEXT, INHERITED)
    assert down.lane == "backend:web1" and down.backend == "web1"


def test_plan_without_matching_hooks_is_empty() -> None:
    assert plan_hooks(WEB1_DOWN, (hook("role"),), CONTEXT, INHERITED).invocations == ()
    assert plan_hooks(TAKEOVER, (), CONTEXT, INHERITED).invocations == ()


def test_environment_is_inherited_minimum_then_hook_table_then_hapair() -> None:
    h = hook("role", env={"SERVICE": "web", "PATH": "/opt/bin"})
    [inv] = plan_hooks(TAKEOVER, (h,), CONTEXT, INHERITED).invocations
    assert inv.env["SERVICE"] == "web"
    assert inv.env["PATH"] == "/opt/bin"  # a hook may set its own PATH
    assert inv.env["LANG"] == "C.UTF-8"
    assert inv.env["HAPAIR_EVENT"] == "master"
    expected = {"PATH", "LANG", "SERVICE", *event_env(TAKEOVER, CONTEXT)}
    assert set(inv.env) == expected


def test_inherited_env_is_path_and_lang_only() -> None:
    environ = {
        "PATH": "/x",
        "LANG": "de_DE.UTF-8",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "CREDENTIALS_DIRECTORY": "/run/credentials/hapair.service",
        "HOME": "/root",
    }
    assert inherited_env(environ) == {"PATH": "/x", "LANG": "de_DE.UTF-8"}
    assert inherited_env({}) == {"PATH": DEFAULT_PATH}
    assert inherited_env({"PATH": "", "LANG": ""}) == {"PATH": DEFAULT_PATH}


def test_missing_programs() -> None:
    hooks = (hook("role", sys.executable), hook("role", "/nonexistent/hapair-hook"))
    assert missing_programs(hooks) == ["/nonexistent/hapair-hook"]


# --- the output tail -------------------------------------------------------------------------


def test_output_tail_keeps_the_end() -> None:
    tail = OutputTail(limit=8)
    tail.feed(b"abc")
    assert tail.text() == "abc" and not tail.truncated
    tail.feed(b"defghij\n\n")
    assert tail.text() == "efghij" and tail.truncated
    assert tail.total == 12


def test_output_tail_replaces_invalid_utf8() -> None:
    tail = OutputTail(limit=3)
    tail.feed("é".encode() * 3)  # the cut lands inside a character
    assert tail.text() == "\ufffdé"
    tail.feed(b"\xff")
    assert tail.text().endswith("\ufffd")

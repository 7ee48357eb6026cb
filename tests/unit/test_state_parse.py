"""The state file's content rules (pure): strict schema, legacy v1 migration, never a raise."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hapair.runtime.state import (
    MAX_STATE_BYTES,
    SCHEMA_VERSION,
    Loaded,
    PersistentState,
    parse_state,
)

OFF, ON = PersistentState(False), PersistentState(True)


@pytest.mark.parametrize("state", [OFF, ON])
def test_what_is_written_reads_back_as_is(state: PersistentState) -> None:
    assert parse_state(state.to_json()) == Loaded(state)
    assert json.loads(state.to_json()) == {
        "version": SCHEMA_VERSION,
        "maintenance": state.maintenance,
    }


# (file content, words the reason must contain)
BAD: list[tuple[bytes, str]] = [
    (b"", "empty"),
    (b"  \n", "empty"),
    (b'{"version": 1, "maint', "not valid JSON"),  # truncated
    (b"\x00\xff\xfe garbage", "not UTF-8"),
    (b"{not json", "not valid JSON"),
    (b"[]", "must be a JSON object"),
    (b"true", "must be a JSON object"),
    (b'{"version": 1, "maintenance": "false"}', "maintenance must be true or false"),
    (b'{"version": 1, "maintenance": 0}', "maintenance must be true or false"),
    (b'{"version": 1, "maintenance": null}', "maintenance must be true or false"),
    (b'{"version": 1}', "missing key(s) 'maintenance'"),
    (b'{"maintenance": true}', "missing key(s) 'version'"),
    (b'{"version": true, "maintenance": true}', "version must be 1"),
    (b'{"version": 1.0, "maintenance": true}', "version must be 1"),
    (b'{"version": 2, "maintenance": true}', "version must be 1"),
    (b'{"version": -1, "maintenance": true}', "version must be 1"),
    (b'{"version": 1, "maintenance": true, "boot_epoch": 5}', "unknown key(s) 'boot_epoch'"),
    (b'{"version": 1, "maintenance": true, "x": 1}', "unknown key(s) 'x'"),
    (b'{"version": 1, "maintenance": true, "maintenance": false}', "appears twice"),
    (b'{"version": Infinity, "maintenance": true}', "Infinity is not a valid value"),
    (b'{"version": -Infinity, "maintenance": true}', "-Infinity is not a valid value"),
    (b'{"version": NaN, "maintenance": true}', "NaN is not a valid value"),
    (b'{"version": 1' + b"0" * 30 + b', "maintenance": true}', "out of range"),
    (b'{"version": 1, "maintenance": ' + b"[" * 40 + b"]" * 40 + b"}", "nested more than"),
    (b"[" * 3000 + b"]" * 3000, "more than the 4096"),
    (b" " * (MAX_STATE_BYTES + 1), "more than the 4096"),
    # Legacy (v1) files whose maintenance is not a real boolean.
    (b'{"boot_epoch": 1, "extra": {"maintenance": "false"}}', "extra.maintenance must be"),
    (b'{"boot_epoch": 1, "extra": []}', "extra must be an object"),
]


@pytest.mark.parametrize(("data", "reason"), BAD)
def test_bad_content_gives_the_defaults_and_says_what_is_wrong(data: bytes, reason: str) -> None:
    loaded = parse_state(data)
    assert loaded.state == OFF
    assert loaded.problem is not None and reason in loaded.problem, loaded.problem
    assert loaded.needs_rewrite


def _legacy(**fields: object) -> bytes:
    return json.dumps(fields).encode()


U64 = 2**64 - 1
LEGACY: list[tuple[bytes, PersistentState]] = [
    # What main wrote before: boot_epoch, replay_marks, extra (maintenance only there).
    (_legacy(boot_epoch=17, replay_marks={"b": [17, 4]}, extra={"maintenance": True}), ON),
    (_legacy(boot_epoch=17, replay_marks={}, extra={"maintenance": False}), OFF),
    (_legacy(boot_epoch=17, replay_marks={}, extra={}), OFF),
    (_legacy(boot_epoch=U64, extra={"maintenance": True}), ON),
    # The values the old reader crashed on are dropped unread now: only maintenance counts.
    (_legacy(boot_epoch=-5, replay_marks={"b": [-1, U64 + 1]}, extra={"maintenance": True}), ON),
    (_legacy(replay_marks={f"n{i}": [1, i] for i in range(65)}, extra={"maintenance": True}), ON),
    (b"{}", OFF),
]


@pytest.mark.parametrize(("data", "state"), LEGACY)
def test_a_legacy_file_keeps_its_maintenance_and_is_migrated(
    data: bytes, state: PersistentState
) -> None:
    loaded = parse_state(data)
    assert loaded == Loaded(state, migrated=True)
    assert loaded.needs_rewrite


def test_a_legacy_boot_epoch_beyond_int_range_is_refused_not_crashed() -> None:
    loaded = parse_state(b'{"boot_epoch": ' + b"9" * 400 + b"}")
    assert loaded.state == OFF and "out of range" in str(loaded.problem)


def test_nesting_inside_strings_does_not_count() -> None:
    data = b'{"boot_epoch": 1, "extra": {"maintenance": true, "note": "' + b"[{" * 50 + b'"}}'
    assert parse_state(data) == Loaded(ON, migrated=True)


@given(st.binary(max_size=MAX_STATE_BYTES + 64))
def test_any_bytes_load_without_raising(data: bytes) -> None:
    loaded = parse_state(data)
    assert isinstance(loaded.state.maintenance, bool)
    # Either the file was exactly a valid current one, or it is to be rewritten.
    if not loaded.needs_rewrite:
        assert parse_state(loaded.state.to_json()) == loaded


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)
KEYS = st.sampled_from(["version", "maintenance", "extra", "boot_epoch", "x"])
VALUES = st.one_of(st.just(1), st.booleans(), JSON_VALUES)


# The CI VM is shared (2 cores, labs running): generation speed is not what this tests.
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, VALUES, max_size=4))
def test_any_json_object_loads_to_a_valid_state_or_a_reason(raw: dict[str, object]) -> None:
    loaded = parse_state(json.dumps(raw).encode())
    assert isinstance(loaded.state.maintenance, bool)
    valid = raw.keys() == {"version", "maintenance"} and type(raw["version"]) is int
    valid = valid and raw["version"] == 1 and isinstance(raw["maintenance"], bool)
    assert (loaded.problem is None and not loaded.migrated) == valid
    if loaded.problem is not None:
        assert loaded.state == OFF

"""The control socket: mode 0660, owned by runtime.control_group, one JSON request per call."""

from __future__ import annotations

import asyncio
import grp
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from hapair.config.load import validate_config
from hapair.errors import ConfigError
from hapair.runtime.control import ControlServer, request

GROUP = "nogroup"


def test_the_socket_is_0660_and_belongs_to_the_control_group(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    seen: list[dict[str, Any]] = []

    def handler(req: dict[str, Any]) -> dict[str, Any]:
        seen.append(req)
        return {"ok": True, "echo": req.get("cmd")}

    async def scenario() -> dict[str, Any]:
        server = ControlServer(path, handler, GROUP)
        await server.start()
        try:
            st = os.stat(path)
            assert stat.S_IMODE(st.st_mode) == 0o660
            assert st.st_gid == grp.getgrnam(GROUP).gr_gid
            return await asyncio.to_thread(request, path, {"cmd": "status"})
        finally:
            await server.close()

    reply = asyncio.run(scenario())
    assert reply == {"ok": True, "echo": "status"} and seen == [{"cmd": "status"}]
    assert not path.exists()  # removed on close


def test_an_unknown_group_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(
            {
                "node": {"name": "a", "priority": 150},
                "cluster": {"name": "c", "peers": ["10.0.0.2"]},
                "vip": [{"address": "10.0.0.50/24", "interface": "eth0"}],
                "runtime": {"control_group": "no-such-group-hapair"},
            },
            check_secret=False,
        )
    assert (
        "runtime.control_group",
        "group 'no-such-group-hapair' does not exist on this host (groupadd no-such-group-hapair)",
    ) in info.value.problems

"""The control socket: read and admin levels from SO_PEERCRED, bad requests answered, real users."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hapair.config.load import validate_config
from hapair.errors import ConfigError
from hapair.ops.control_client import request
from hapair.runtime.control import MAX_CLIENTS, MAX_DEPTH, MAX_REQUEST, ControlServer

GROUP = "nogroup"
NOBODY = 65534
REPO = Path(__file__).resolve().parents[2]

# A stdlib-only client, run as another user: prints the daemon's reply (or the OSError).
CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"oserror": exc.__class__.__name__}))
    sys.exit(0)
s.sendall(sys.argv[2].encode() + b"\\n")
print(s.makefile("rb").readline().decode().strip())
"""


class Log:
    """Collects warning lines like the structlog logger the daemon passes."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def echo(req: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "echo": req.get("cmd")}


def serve(
    path: Path,
    body: Callable[[ControlServer], Awaitable[Any]],
    *,
    group: str | None = None,
    admin_group: str | None = None,
    log: Log | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Run ``body`` against a started server; return its result and any asyncio error reports."""
    errors: list[dict[str, Any]] = []

    async def scenario() -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors.append(ctx))
        server = ControlServer(path, echo, group, admin_group, log=log)
        await server.start()
        try:
            return await body(server)
        finally:
            await server.close()

    return asyncio.run(scenario()), errors


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="hpin-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _world_runnable(path: Path) -> bool:
    parts = [path, *path.parents]
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in parts)


def unprivileged_python() -> str:
    """An interpreter of this version that a user without access to /root can execute."""
    for candidate in (Path(sys.executable).resolve(), Path(f"/usr/bin/python{sys.version[:4]}")):
        if candidate.exists() and _world_runnable(candidate):
            return str(candidate)
    pytest.skip("no Python interpreter runnable by an unprivileged user")


def as_user(uid: int, gid: int, *argv: str, env: dict[str, str] | None = None) -> str:
    """Run ``argv`` (after the interpreter) as uid/gid with no supplementary groups; stdout."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a client as another user")
    done = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
         unprivileged_python(), *argv],
        capture_output=True, text=True, timeout=30, env=env, check=False, cwd="/",
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout + done.stderr


def ask(path: Path, uid: int, gid: int, cmd: str) -> dict[str, Any]:
    reply: dict[str, Any] = json.loads(
        as_user(uid, gid, "-c", CLIENT, str(path), json.dumps({"cmd": cmd}))
    )
    return reply


@dataclass(frozen=True)
class Account:
    """A throwaway user: primary group ``read``, supplementary group ``admin`` (user db only)."""

    user: str
    uid: int
    read: str
    read_gid: int
    admin: str


@pytest.fixture
def account() -> Iterator[Account]:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd for a throwaway user")
    tag = uuid.uuid4().hex[:6]
    user, read, admin = f"hpin-u{tag}", f"hpin-r{tag}", f"hpin-a{tag}"
    made: list[list[str]] = []
    try:
        for group in (read, admin):
            subprocess.run(["groupadd", group], check=True, capture_output=True)
            made.append(["groupdel", group])
        subprocess.run(
            ["useradd", "-M", "-N", "-g", read, "-G", admin, "-s", "/usr/sbin/nologin", user],
            check=True, capture_output=True,
        )  # fmt: skip
        made.append(["userdel", user])
        info = subprocess.run(["id", "-u", user], check=True, capture_output=True, text=True)
        yield Account(user, int(info.stdout), read, grp.getgrnam(read).gr_gid, admin)
    finally:
        for undo in reversed(made):
            subprocess.run(undo, check=False, capture_output=True)


# ------------------------------------------------------------------- file mode and group ------


def test_one_group_the_socket_is_0660_and_belongs_to_it(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"

    async def body(_: ControlServer) -> dict[str, Any]:
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == grp.getgrnam(GROUP).gr_gid
        return await asyncio.to_thread(request, path, {"cmd": "status"})

    reply, errors = serve(path, body, group=GROUP)
    assert reply == {"ok": True, "echo": "status"} and not errors
    assert not path.exists()  # removed on close


def test_two_groups_the_socket_is_0666_and_credentials_decide(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"

    async def body(_: ControlServer) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    mode, _ = serve(path, body, group=GROUP, admin_group="root")
    assert mode == 0o666


# ------------------------------------------------------------------- access levels -----------


def test_read_and_admin_levels_for_real_users(public_dir: Path, account: Account) -> None:
    path = public_dir / "c.sock"
    log = Log()

    async def body(_: ControlServer) -> dict[str, dict[str, Any]]:
        def run() -> dict[str, dict[str, Any]]:
            return {
                "stranger status": ask(path, NOBODY, NOBODY, "status"),
                "stranger handover": ask(path, NOBODY, NOBODY, "handover"),
                "reader status": ask(path, NOBODY, account.read_gid, "status"),
                "reader handover": ask(path, NOBODY, account.read_gid, "handover"),
                "reader reload": ask(path, NOBODY, account.read_gid, "reload"),
                # Its process has no supplementary groups: the admin group comes from the user db.
                "admin handover": ask(path, account.uid, account.read_gid, "handover"),
                "admin maintenance": ask(path, account.uid, account.read_gid, "maintenance"),
                "root handover": request(path, {"cmd": "handover"}),
            }

        return await asyncio.to_thread(run)

    replies, errors = serve(path, body, group=account.read, admin_group=account.admin, log=log)
    read, admin = account.read, account.admin
    assert replies == {
        "stranger status": {
            "ok": False,
            "denied": True,
            "error": f"status needs the group {read!r} or {admin!r} (you are uid {NOBODY})",
        },
        "stranger handover": {
            "ok": False,
            "denied": True,
            "error": f"handover needs the admin group {admin!r} (you are uid {NOBODY})",
        },
        "reader status": {"ok": True, "echo": "status"},
        "reader handover": {
            "ok": False,
            "denied": True,
            "error": f"handover needs the admin group {admin!r} (you are uid {NOBODY})",
        },
        "reader reload": {
            "ok": False,
            "denied": True,
            "error": f"reload needs the admin group {admin!r} (you are uid {NOBODY})",
        },
        "admin handover": {"ok": True, "echo": "handover"},
        "admin maintenance": {"ok": True, "echo": "maintenance"},
        "root handover": {"ok": True, "echo": "handover"},
    }
    assert [kind for _, f in log.lines for kind in [f["kind"]]] == ["denied"]  # once, then counted
    assert not errors


def test_without_an_admin_group_only_root_is_admin(public_dir: Path) -> None:
    path = public_dir / "c.sock"

    async def body(_: ControlServer) -> dict[str, Any]:
        return await asyncio.to_thread(ask, path, NOBODY, NOBODY, "maintenance")

    reply, _ = serve(path, body, group=GROUP)
    assert reply["error"] == (
        f"maintenance needs root or runtime.control_admin_group (you are uid {NOBODY})"
    )


def test_a_user_who_cannot_open_the_socket_gets_one_line(public_dir: Path) -> None:
    path = public_dir / "c.sock"
    config = public_dir / "hapair.toml"
    config.write_text(
        '[node]\nname = "a"\npriority = 150\n[cluster]\nname = "c"\npeers = ["192.0.2.2"]\n'
        f'[[vip]]\naddress = "192.0.2.50/24"\ninterface = "eth0"\n'
        f'[runtime]\ncontrol_socket = "{path}"\n'
    )
    config.chmod(0o644)
    site = sysconfig.get_paths()["purelib"]
    env = {"PYTHONPATH": f"{REPO}:{site}", "PATH": "/usr/bin:/bin"}

    async def body(_: ControlServer) -> str:
        cli = ("-m", "hapair", "status", "-c", str(config))
        return await asyncio.to_thread(as_user, NOBODY, NOBODY, *cli, env=env)

    out, _ = serve(path, body, group="root")  # 0660 root:root: nobody may not connect
    assert out == (
        f"hapair: permission denied on the control socket {path}: run as root or as a member"
        " of runtime.control_group (status) or runtime.control_admin_group\n"
    )


# ------------------------------------------------------------------- bad requests ------------


def raw(path: Path, data: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(data)
        reply: dict[str, Any] = json.loads(s.makefile("rb").readline())
        return reply


BAD: list[tuple[str, bytes, str, str]] = [
    (
        "70 KB line",
        b'{"cmd": "' + b"x" * 70_000 + b'"}\n',
        "oversized",
        f"request larger than {MAX_REQUEST} bytes",
    ),
    (
        "5 KB line",
        b'{"cmd": "' + b"x" * 5_000 + b'"}\n',
        "oversized",
        f"request larger than {MAX_REQUEST} bytes",
    ),
    ("4000-deep JSON", b"[" * 4000 + b"]" * 4000 + b"\n", "oversized", "request larger than"),
    (
        "2000-deep JSON",
        b"[" * 2000 + b"]" * 2000 + b"\n",
        "too_deep",
        f"request nested deeper than {MAX_DEPTH}",
    ),
    ("not JSON", b"status please\n", "malformed", "request is not JSON"),
    ("not UTF-8", b'{"cmd": "\xff"}\n', "malformed", "request is not JSON"),
    ("an array", b'["status"]\n', "malformed", "request must be a JSON object"),
]


@pytest.mark.parametrize(("case", "data", "kind", "start"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_request_gets_an_error_reply_and_one_log_line(
    tmp_path: Path, case: str, data: bytes, kind: str, start: str
) -> None:
    path = tmp_path / "c.sock"
    log = Log()

    async def body(server: ControlServer) -> list[dict[str, Any]]:
        replies = [await asyncio.to_thread(raw, path, data) for _ in range(3)]
        replies.append(await asyncio.to_thread(request, path, {"cmd": "status"}))
        assert server.rejected[kind] == 3
        return replies

    replies, errors = serve(path, body, log=log)
    for reply in replies[:3]:
        assert reply["ok"] is False and reply["error"].startswith(start), reply
    assert replies[3] == {"ok": True, "echo": "status"}  # the server still serves
    assert [(event, f["kind"]) for event, f in log.lines] == [("control_request_rejected", kind)]
    assert not errors  # no asyncio "exception was never retrieved" report


def test_a_handler_bug_is_an_error_reply_not_a_dead_task(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"

    def broken(_: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("boom")

    async def scenario() -> dict[str, Any]:
        server = ControlServer(path, broken)
        await server.start()
        try:
            return await asyncio.to_thread(request, path, {"cmd": "status"})
        finally:
            await server.close()

    assert asyncio.run(scenario()) == {"ok": False, "error": "internal error: KeyError: 'boom'"}


def test_an_unknown_group_is_a_config_error() -> None:
    for key in ("control_group", "control_admin_group"):
        with pytest.raises(ConfigError) as info:
            validate_config(
                {
                    "node": {"name": "a", "priority": 150},
                    "cluster": {"name": "c", "peers": ["10.0.0.2"]},
                    "vip": [{"address": "10.0.0.50/24", "interface": "eth0"}],
                    "runtime": {key: "no-such-group-hapair"},
                },
                check_secret=False,
            )
        assert (
            f"runtime.{key}",
            "group 'no-such-group-hapair' does not exist on this host"
            " (groupadd no-such-group-hapair)",
        ) in info.value.problems


def test_idle_connections_beyond_the_cap_are_answered_busy(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    log = Log()

    async def body(server: ControlServer) -> dict[str, Any]:
        idle = []
        for _ in range(MAX_CLIENTS):
            idle.append(await asyncio.open_unix_connection(str(path)))
        # Let the server accept them all (each then waits for its request line).
        for _ in range(100):
            if server._clients == MAX_CLIENTS:
                break
            await asyncio.sleep(0.01)
        reply = await asyncio.to_thread(request, path, {"cmd": "status"})
        for _, writer in idle:
            writer.close()
        return reply

    reply, errors = serve(path, body, log=log)
    assert reply == {"ok": False, "error": f"busy: {MAX_CLIENTS} requests are being served"}
    assert [f["kind"] for _, f in log.lines] == ["busy"] and not errors

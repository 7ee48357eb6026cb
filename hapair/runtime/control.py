"""The control socket: one JSON request per connection, one JSON reply (``hapair status``...)."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import inspect
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from hapair.errors import HapairError, RuntimeSetupError

MAX_REQUEST: Final = 4096
CLIENT_TIMEOUT: Final = 2.0

#: A reply, or an awaitable one (a reload waits for the balancer, off the loop).
Handler = Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]


class ControlServer:
    """A Unix stream socket (mode 0660, group ``runtime.control_group``) answering ``handler``."""

    def __init__(self, path: Path, handler: Handler, group: str | None = None) -> None:
        self.path = path
        self.handler = handler
        self.group = group
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind the socket; refuse if another live daemon already listens there."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            if is_live(self.path):
                raise RuntimeSetupError(
                    f"runtime.control_socket: {self.path} is in use: is this node's daemon "
                    "already running?"
                )
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o660)
        if self.group is not None:
            gid = int(self.group) if self.group.isdigit() else grp.getgrnam(self.group).gr_gid
            os.chown(self.path, -1, gid)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT)
            try:
                request = json.loads(line[:MAX_REQUEST] or b"{}")
                if not isinstance(request, dict):
                    raise ValueError("request must be a JSON object")
                answer = self.handler(request)
                reply = await answer if inspect.isawaitable(answer) else answer
            except (ValueError, HapairError) as exc:
                reply = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def close(self) -> None:
        """Stop serving and remove the socket file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def is_live(path: Path) -> bool:
    """True if a daemon accepts connections on ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
        except OSError:
            return False
        return True


def request(path: Path, payload: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
    """Send one request to a running daemon and return its reply (client side)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except FileNotFoundError as exc:
            raise HapairError(f"no daemon: control socket {path} does not exist") from exc
        except ConnectionRefusedError as exc:
            raise HapairError(f"no daemon listening on {path} (stale socket?)") from exc
        s.sendall(json.dumps(payload).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply = json.loads(buf or b"{}")
    if not isinstance(reply, dict):
        raise HapairError("malformed reply from the daemon")
    return reply

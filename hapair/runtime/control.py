"""The control socket: one JSON request per connection, one JSON reply (``hapair status``...).

Two access levels, decided per request from the connecting process's credentials
(SO_PEERCRED): *read* (``status``) and *admin* (``handover``, ``maintenance``, ``reload``).
uid 0 and the daemon's own uid are always admin; otherwise the peer's gid and the supplementary
groups of its user (``os.getgrouplist``) are matched against ``runtime.control_admin_group``
(admin, which implies read) and ``runtime.control_group`` (read). The socket file only has to
let both groups connect: see :func:`socket_mode`.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import inspect
import json
import os
import pwd
import re
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from hapair.errors import HapairError, RuntimeSetupError
from hapair.ops.control_client import is_live

MAX_REQUEST: Final = 4096
# A request is a flat object; anything nested deeper is not one of ours.
MAX_DEPTH: Final = 8
CLIENT_TIMEOUT: Final = 2.0
# Connections served at once; more are answered "busy" at once (a local user cannot pile up
# thousands of idle connections, each held for CLIENT_TIMEOUT).
MAX_CLIENTS: Final = 16

Access = Literal["read", "admin"]
#: The level each command needs; an unknown command needs read (it only gets "unknown").
COMMAND_ACCESS: Final[dict[str, Access]] = {
    "status": "read",
    "handover": "admin",
    "maintenance": "admin",
    "reload": "admin",
}

#: A reply, or one that comes later (`maintenance` answers once the state is durable).
Reply = dict[str, Any] | Awaitable[dict[str, Any]]
Handler = Callable[[dict[str, Any]], Reply]
# struct ucred from unix(7): pid, uid, gid as three C ints.
_UCRED: Final = struct.Struct("3i")
_JSON_TOKEN: Final = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class RequestError(ValueError):
    """A request that is not one: too large, not JSON, too deep, not an object."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class PeerCred:
    """Who is on the other end of a connection (SO_PEERCRED, taken at connect time)."""

    pid: int
    uid: int
    gid: int


def peer_cred(sock: Any) -> PeerCred:
    """The credentials of the process connected to the Unix socket ``sock``."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCred(pid, uid, gid)


def user_groups(uid: int, gid: int) -> frozenset[int]:
    """``gid`` and the supplementary groups of ``uid``'s user (just ``gid`` if it has none)."""
    try:
        name = pwd.getpwuid(uid).pw_name
        return frozenset(os.getgrouplist(name, gid)) | {gid}
    except (KeyError, OverflowError, OSError):
        return frozenset({gid})


def group_id(group: str) -> int:
    """The gid of a group name or number (validated to exist by the config)."""
    return int(group) if group.isascii() and group.isdigit() else grp.getgrnam(group).gr_gid


@dataclass(frozen=True)
class AccessPolicy:
    """Who may do what: the read and admin groups (names as configured, and their gids)."""

    read_group: str | None = None
    admin_group: str | None = None
    read_gid: int | None = None
    admin_gid: int | None = None
    owner_uid: int = 0

    @classmethod
    def of(cls, read_group: str | None, admin_group: str | None, owner_uid: int) -> AccessPolicy:
        """Resolve the group names once (at start, off the request path)."""
        read_gid = None if read_group is None else group_id(read_group)
        admin_gid = None if admin_group is None else group_id(admin_group)
        return cls(read_group, admin_group, read_gid, admin_gid, owner_uid)

    def is_owner(self, uid: int) -> bool:
        """Root and the daemon's own user are always admin (no group look-up needed)."""
        return uid in (0, self.owner_uid)

    def level(self, uid: int, groups: frozenset[int]) -> Access | None:
        """The access a process of ``uid`` in ``groups`` has; None for none at all."""
        if self.is_owner(uid):
            return "admin"
        admin, read = self.admin_gid, self.read_gid
        if admin is not None and admin in groups:
            return "admin"
        if read is not None and read in groups:
            return "read"
        return None

    def refusal(self, command: str, needed: Access, uid: int) -> str:
        """One line saying what access ``command`` needs, for a process of ``uid``."""
        you = f"(you are uid {uid})"
        admin = f"the admin group {self.admin_group!r}" if self.admin_group else None
        if needed == "admin":
            if admin is None:
                return f"{command} needs root or runtime.control_admin_group {you}"
            return f"{command} needs {admin} {you}"
        names = [f"{g!r}" for g in (self.read_group, self.admin_group) if g]
        if not names:
            return f"{command} needs root or runtime.control_group {you}"
        which = "the group " + " or ".join(names)
        return f"{command} needs {which} {you}"


def socket_mode(policy: AccessPolicy) -> tuple[int, int | None]:
    """The socket file's mode and group, so that every member of both groups can connect.

    One group (or both the same): mode 0660 with that group, so the kernel already keeps
    everyone else out. Two different groups: a file has one group, so the mode is 0666 and
    the credential check on every request is what decides; no group: 0660, the daemon's own.
    """
    gids = {g for g in (policy.read_gid, policy.admin_gid) if g is not None}
    if len(gids) > 1:
        return 0o666, None
    return 0o660, next(iter(gids), None)


def parse_request(line: bytes) -> dict[str, Any]:
    """The JSON object in ``line``; raise RequestError saying what is wrong with it."""
    if len(line) > MAX_REQUEST:
        raise RequestError("oversized", f"request larger than {MAX_REQUEST} bytes")
    depth = 0
    for token in _JSON_TOKEN.finditer(line):
        mark = token.group()
        if mark in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise RequestError("too_deep", f"request nested deeper than {MAX_DEPTH}")
        elif mark in (b"]", b"}"):
            depth -= 1
    try:
        request = json.loads(line or b"{}")
    except (ValueError, RecursionError) as exc:
        raise RequestError("malformed", f"request is not JSON: {str(exc)[:80]}") from None
    if not isinstance(request, dict):
        raise RequestError("malformed", "request must be a JSON object")
    return request


class ControlServer:
    """A Unix stream socket answering ``handler``, each request checked against ``policy``."""

    def __init__(
        self,
        path: Path,
        handler: Handler,
        group: str | None = None,
        admin_group: str | None = None,
        log: Any = None,
    ) -> None:
        self.path = path
        self.handler = handler
        self.policy = AccessPolicy.of(group, admin_group, os.geteuid())
        self.log = log
        #: Requests refused as malformed, oversized, too deep or denied, by kind.
        self.rejected: Counter[str] = Counter()
        self._server: asyncio.AbstractServer | None = None
        self._clients = 0
        self._active: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

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
        # The reader's limit sits above MAX_REQUEST so that an oversized line is seen as such.
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=2 * MAX_REQUEST
        )
        mode, gid = socket_mode(self.policy)
        os.chmod(self.path, mode)
        if gid is not None:
            os.chown(self.path, -1, gid)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        task = asyncio.current_task()
        if task is not None:
            self._active[task] = writer
        try:
            if self._clients > MAX_CLIENTS:
                reply = self._reject("busy", f"busy: {MAX_CLIENTS} requests are being served")
            else:
                reply = await self._answer(reader, writer)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except OSError:  # timed out, or the client went away (TimeoutError is an OSError)
            pass
        finally:
            self._clients -= 1
            if task is not None:
                self._active.pop(task, None)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, Any]:
        # Credentials first, while the connection is surely open; unknown means no access.
        try:
            cred = peer_cred(writer.get_extra_info("socket"))
        except (OSError, AttributeError):
            cred = PeerCred(0, -1, -1)
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), CLIENT_TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            line = exc.partial  # the client closed its side without a newline
        except (asyncio.LimitOverrunError, ValueError):
            return self._reject("oversized", f"request larger than {MAX_REQUEST} bytes")
        try:
            request = parse_request(line.strip())
        except RequestError as exc:
            return self._reject(exc.kind, str(exc))
        cmd = request.get("cmd")
        needed = COMMAND_ACCESS.get(cmd, "read") if isinstance(cmd, str) else "read"
        if not self.policy.is_owner(cred.uid):
            groups = await asyncio.to_thread(user_groups, cred.uid, cred.gid)  # NSS may block
            level = self.policy.level(cred.uid, groups)
            if level is None or (needed == "admin" and level != "admin"):
                shown = cmd if isinstance(cmd, str) and cmd in COMMAND_ACCESS else "this request"
                refusal = self.policy.refusal(shown, needed, cred.uid)
                return {**self._reject("denied", refusal, uid=cred.uid), "denied": True}
        try:
            answer = self.handler(request)
            return await answer if inspect.isawaitable(answer) else answer
        except HapairError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug in a command must not kill the connection task
            return self._reject("failed", f"internal error: {type(exc).__name__}: {exc}")

    def _reject(self, kind: str, error: str, **fields: Any) -> dict[str, Any]:
        """Count a refused request; log the first of each kind (then only count)."""
        self.rejected[kind] += 1
        if self.rejected[kind] == 1 and self.log is not None:
            self.log.warning(
                "control_request_rejected", kind=kind, error=error, **fields,
                note="logged once per kind; then counted",
            )  # fmt: skip
        return {"ok": False, "error": error}

    async def close(self) -> None:
        """Stop serving and remove the socket file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._active:
            # Closing a connection ends its wait for a request line; the handler then finishes
            # by itself (a handler cancelled at loop shutdown makes asyncio log a traceback).
            for writer in self._active.values():
                writer.close()
            await asyncio.wait(list(self._active), timeout=CLIENT_TIMEOUT)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

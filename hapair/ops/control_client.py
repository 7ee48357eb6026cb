"""The control socket's client side: is a daemon there, and one request with its reply.

The server (``hapair.runtime.control``) lives with the daemon; ``hapair status``, ``doctor``,
``release`` and the lab only need this side.
"""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any

from hapair.errors import HapairError


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
    """Send one request to a running daemon and return its reply; HapairError if that fails."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            with contextlib.suppress(BrokenPipeError):
                # A daemon that refuses at once (busy) has replied and closed: read that reply.
                s.sendall(json.dumps(payload).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n") and len(buf) <= 1 << 24:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except FileNotFoundError:
        raise HapairError(f"no daemon: control socket {path} does not exist") from None
    except ConnectionRefusedError:
        raise HapairError(f"no daemon listening on {path} (stale socket?)") from None
    except PermissionError:
        raise HapairError(
            f"permission denied on the control socket {path}: run as root or as a member of"
            " runtime.control_group (status) or runtime.control_admin_group"
        ) from None
    except TimeoutError:
        raise HapairError(f"the daemon on {path} did not answer within {timeout:g}s") from None
    except OSError as exc:
        raise HapairError(f"control socket {path}: {exc.strerror or exc}") from None
    try:
        reply = json.loads(buf or b"{}")
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise HapairError("malformed reply from the daemon")
    return reply

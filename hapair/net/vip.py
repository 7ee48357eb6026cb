"""Virtual IP addresses on local interfaces, managed over rtnetlink in the current namespace."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Interface, ip_address
from typing import Any, Final, Literal, TypeVar

from pyroute2.iproute.linux import IPRoute
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_fixed

from hapair.errors import VipError
from hapair.iptypes import IpAddress
from hapair.net.rtaddr import AddressSocket

_T = TypeVar("_T")

IFNAMSIZ: Final = 16  # kernel limit including the trailing NUL
IFF_LOWER_UP: Final = 0x10000  # <linux/if.h>: driver signals L1 up (carrier)
IFA_F_NODAD: Final = 0x02  # <linux/if_addr.h>

# Errnos that mean "the kernel was momentarily busy"; anything else is a real answer.
TRANSIENT_ERRNOS: Final = frozenset({errno.EBUSY, errno.EAGAIN, errno.ENOBUFS, errno.EINTR})
# The whole retry budget stays far below any sane failover budget (seconds): a VIP that
# cannot be added in 150 ms will not be added by trying for longer.
RETRY_ATTEMPTS: Final = 3
RETRY_BUDGET_S: Final = 0.150
RETRY_WAIT_S: Final = 0.010
# Guard around one worker round trip (retries included); only hit if the kernel never answers.
CALL_TIMEOUT_S: Final = 0.5

_ABSENT_ON_DELETE: Final = frozenset({errno.ESRCH, errno.EADDRNOTAVAIL})


@dataclass(frozen=True)
class Vip:
    """A floating address and the interface it lives on."""

    address: IPv4Interface | IPv6Interface
    interface: str

    def __post_init__(self) -> None:
        name = self.interface
        bad = not name or len(name.encode()) >= IFNAMSIZ or "/" in name or ":" in name
        if bad or any(ch.isspace() for ch in name):
            raise ValueError(f"invalid interface name {name!r}")

    @property
    def family(self) -> Literal[4, 6]:
        """The IP version, 4 or 6."""
        return 4 if self.address.version == 4 else 6

    @property
    def af(self) -> int:
        """The socket address family: socket.AF_INET or socket.AF_INET6."""
        return socket.AF_INET if self.address.version == 4 else socket.AF_INET6

    @property
    def ip(self) -> IpAddress:
        """The bare address, without prefix length."""
        return self.address.ip

    def __str__(self) -> str:
        return f"{self.address.with_prefixlen} on {self.interface}"


def _errno_of(exc: BaseException) -> int | None:
    """The errno carried by a pyroute2 NetlinkError (``code``) or an OSError, if any."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return abs(code)
    if isinstance(exc, OSError):
        return exc.errno
    return None


def _is_transient(exc: BaseException) -> bool:
    """True for errors worth another attempt."""
    return _errno_of(exc) in TRANSIENT_ERRNOS


def _describe(exc: BaseException) -> str:
    """Errno text plus symbolic name, e.g. 'Operation not permitted [EPERM]'."""
    code = _errno_of(exc)
    if code is None:
        return f"{type(exc).__name__}: {exc}"
    return f"{os.strerror(code)} [{errno.errorcode.get(code, code)}]"


def _netlink(
    call: Callable[..., Any], *args: Any, budget: float = RETRY_BUDGET_S, **kwargs: Any
) -> Any:
    """Run one netlink call, retrying transient errnos within ``budget`` seconds."""
    retrying = Retrying(
        stop=stop_after_attempt(RETRY_ATTEMPTS) | stop_after_delay(budget),
        wait=wait_fixed(min(RETRY_WAIT_S, budget / RETRY_ATTEMPTS)),
        retry=retry_if_exception(_is_transient),
        reraise=True,
    )
    return retrying(call, *args, **kwargs)


def _netlink_now(call: Callable[..., _T], *args: Any, attempts: int = RETRY_ATTEMPTS) -> _T:
    """Run one netlink call on the caller's thread (the heartbeat loop: add and remove are on
    the takeover path), retrying a transient errno at once: a retry sleep there would block
    every timer of the loop (tenacity's waits are for the netlink thread's calls)."""
    for _ in range(attempts - 1):
        try:
            return call(*args)
        except Exception as exc:
            if not _is_transient(exc):
                raise
    return call(*args)


def _mac_bytes(text: object) -> bytes:
    """'aa:bb:cc:dd:ee:ff' -> 6 bytes."""
    if not isinstance(text, str):
        raise ValueError(f"no hardware address: {text!r}")
    return bytes.fromhex(text.replace(":", ""))


class VipManager:
    """Idempotent add/remove/inspect of VIPs; safe to call from inside an event loop."""

    def __init__(
        self, *, call_timeout: float = CALL_TIMEOUT_S, retry_budget: float = RETRY_BUDGET_S
    ) -> None:
        # The daemon passes a budget well below its dead interval (fast timers, fast give-up).
        self._budget = retry_budget
        self._timeout = call_timeout
        # pyroute2 0.9's sync IPRoute drives a private asyncio loop with run_until_complete(),
        # which raises inside a running loop (the daemon's). So one dedicated thread owns the
        # IPRoute for its whole life; calls hop to it and block for the sub-millisecond answer.
        # The thread starts here, so it lives in the caller's network namespace.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hapair-netlink")
        self._closed = False
        self._addr = AddressSocket(timeout=call_timeout)
        try:
            self._ipr: Any = self._run("open rtnetlink", IPRoute)
        except BaseException:
            self._closed = True
            self._addr.close()
            self._worker.shutdown(wait=False, cancel_futures=True)
            raise

    def add(self, vip: Vip) -> bool:
        """Add the VIP; True if added now, False if it was already there."""
        return self._direct(f"add {vip}", self._add_now, vip)

    def remove(self, vip: Vip) -> bool:
        """Remove the VIP; True if removed now, False if it (or its interface) was already gone."""
        return self._direct(f"remove {vip}", self._remove_now, vip)

    def _direct(self, what: str, fn: Callable[[Vip], bool], vip: Vip) -> bool:
        """Run an address change on the fast socket; failures become VipError naming `what`."""
        if self._closed:
            raise VipError(f"cannot {what}: the netlink socket is closed")
        try:
            return fn(vip)
        except VipError:
            raise
        except Exception as exc:
            raise VipError(f"cannot {what}: {_describe(exc)}") from exc

    def present(self, vip: Vip) -> bool:
        """True if the address, with this prefix length, is on the interface."""
        return self._run(f"check {vip}", self._present_now, vip)

    def interface_index(self, name: str) -> int:
        """The ifindex of `name`; VipError if there is no such interface."""
        return int(self._require_link(name)["index"])

    def mac(self, name: str) -> bytes:
        """The interface's hardware address (6 bytes on Ethernet)."""
        text = self._require_link(name).get("address")
        try:
            return _mac_bytes(text)
        except ValueError as exc:
            raise VipError(f"interface {name!r} has no usable hardware address") from exc

    def carrier(self, name: str) -> bool:
        """True if the interface is admin-up with carrier (IFF_LOWER_UP)."""
        # The kernel reports LOWER_UP only while the device is running, so this is also
        # False after "ip link set down"; on veth it drops when the peer end goes down.
        return bool(self._require_link(name)["flags"] & IFF_LOWER_UP)

    def close(self) -> None:
        """Release the netlink socket and the worker thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._addr.close()
        # pyroute2 keeps per-thread state, so close it on the thread that used it.
        with contextlib.suppress(Exception):
            self._worker.submit(self._ipr.close).result(timeout=self._timeout)
        self._worker.shutdown(wait=False, cancel_futures=True)

    # -- runs on the worker thread -------------------------------------------------------

    def _index(self, name: str) -> int | None:
        """The interface index from libc (no netlink round trip); None if there is none."""
        if not name or len(name.encode()) >= IFNAMSIZ:
            return None  # cannot exist; the kernel would answer EINVAL, not ENODEV
        try:
            return socket.if_nametoindex(name)
        except OSError:
            return None

    def _add_now(self, vip: Vip) -> bool:
        """add(), in the calling thread: it is on the takeover path."""
        index = self._index(vip.interface)
        if index is None:
            raise VipError(f"no such interface {vip.interface!r}")
        # No DAD (RFC 4862 §5.4) for IPv6: a tentative address is not usable as a source and
        # traffic to it is dropped for ~1 s (RetransTimer x DupAddrDetectTransmits plus a
        # random delay), all of which would be added to every takeover. Uniqueness is what
        # the election already guarantees; and in a split brain DAD would only mark our copy
        # "dadfailed" and unusable instead of letting the NA settle it.
        flags = IFA_F_NODAD if vip.family == 6 else 0
        try:
            _netlink_now(
                self._addr.add, index, vip.af, str(vip.ip), vip.address.network.prefixlen, flags
            )
        except Exception as exc:
            if _errno_of(exc) == errno.EEXIST:
                return False
            raise
        return True

    def _remove_now(self, vip: Vip) -> bool:
        """remove(), in the calling thread."""
        index = self._index(vip.interface)
        if index is None:
            return False  # no interface, no address: clean-up after a crash must not fail
        try:
            _netlink_now(
                self._addr.delete, index, vip.af, str(vip.ip), vip.address.network.prefixlen
            )
        except Exception as exc:
            if _errno_of(exc) in _ABSENT_ON_DELETE:
                return False
            raise
        return True

    def _present_now(self, vip: Vip) -> bool:
        """Worker side of present()."""
        link = self._link_now(vip.interface)
        if link is None:
            return False
        index = link["index"]
        prefixlen = vip.address.network.prefixlen
        for msg in _netlink(
            self._ipr.addr, "dump", index=index, family=vip.af, budget=self._budget
        ):
            if msg.get("index") != index or msg.get("prefixlen") != prefixlen:
                continue
            # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on p2p links.
            text = msg.get("local") or msg.get("address")
            try:
                if text is not None and ip_address(text) == vip.ip:
                    return True
            except ValueError:
                continue
        return False

    def _link_now(self, name: str) -> Any:
        """The RTM_NEWLINK message for `name`, or None when there is no such interface."""
        if not name or len(name.encode()) >= IFNAMSIZ:
            return None  # cannot exist; the kernel would answer EINVAL, not ENODEV
        try:
            links = _netlink(self._ipr.link, "get", ifname=name, budget=self._budget)
        except Exception as exc:
            if _errno_of(exc) == errno.ENODEV:
                return None
            raise
        return links[0] if links else None

    # -- caller side ----------------------------------------------------------------------

    def _require_link(self, name: str) -> Any:
        """The link message for `name`; VipError if there is no such interface."""
        link = self._run(f"read interface {name!r}", self._link_now, name)
        if link is None:
            raise VipError(f"no such interface {name!r}")
        return link

    def _run(self, what: str, fn: Callable[..., _T], *args: Any) -> _T:
        """Run `fn` on the netlink thread; failures become VipError naming `what`."""
        if self._closed:
            raise VipError(f"cannot {what}: VipManager is closed")
        future = self._worker.submit(fn, *args)
        try:
            return future.result(timeout=self._timeout)
        except FutureTimeout as exc:
            raise VipError(f"cannot {what}: no netlink answer within {self._timeout:.3f}s") from exc
        except VipError:
            raise
        except Exception as exc:
            raise VipError(f"cannot {what}: {_describe(exc)}") from exc

"""The I/O half of peer discovery: python-zeroconf on a thread of its own.

Announcing, answering queries, probing and goodbyes never run on the heartbeat loop:
:class:`Announcer` updates are coalesced and handed over, :class:`PeerWatch` hands sightings
over through a bounded mailbox. The records and the choice of a peer are pure and live in
``hapair.ops.discovery``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from ipaddress import (
    ip_address,
)

# Re-exported by zeroconf for compatibility, though not listed in its __all__.
from zeroconf import (  # type: ignore[attr-defined]
    DNSOutgoing,
    DNSQuestion,
    InterfaceChoice,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

from hapair.iptypes import IpAddress
from hapair.ops.discovery import (
    CLASS_IN,
    FLAGS_QUERY,
    MAX_PENDING,
    MAX_SERVICES,
    REFRESH_INTERVAL,
    REQUERY_BELOW,
    REQUERY_EVERY,
    RESOLVE_TIMEOUT_MS,
    RETRY_DELAY,
    SERVICE_TYPE,
    THREAD_CALL_TIMEOUT,
    TYPE_SRV,
    TYPE_TXT,
    NodeRecord,
    PeerFinder,
    Quiet,
    Seen,
    Sighting,
    WarnLog,
    service_info,
    sighting_of,
)


def open_zeroconf(interfaces: Sequence[str | int] | None = None) -> Zeroconf:
    """A zeroconf instance on its own thread, even when called on a running asyncio loop.

    `interfaces`: IPv4 addresses and/or IPv6 interface indexes to serve on (None: every
    interface, IPv4). The daemon passes the VIP interface's own addresses.
    """
    choice: InterfaceChoice | list[str | int] = (
        InterfaceChoice.All if interfaces is None else list(interfaces)
    )
    return Zeroconf(interfaces=choice, use_asyncio=False)


def interface_addresses(ifname: str) -> list[tuple[IpAddress, int]]:
    """`ifname`'s own addresses with their prefix lengths, read over rtnetlink (start-up only).

    pyroute2's synchronous API runs an event loop of its own, which cannot nest in a running
    one: called on a loop, the dump runs on a short-lived thread (a few milliseconds).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _dump_addresses(ifname)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(_dump_addresses, ifname).result(THREAD_CALL_TIMEOUT)


def _dump_addresses(ifname: str) -> list[tuple[IpAddress, int]]:
    from pyroute2.iproute.linux import IPRoute  # not pyroute2's top level: see hapair.net

    out: list[tuple[IpAddress, int]] = []
    with IPRoute() as ipr:
        indexes = ipr.link_lookup(ifname=ifname)
        if not indexes:
            return out
        for msg in ipr.addr("dump", index=indexes[0]):
            if msg.get("index") != indexes[0]:
                continue
            # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on p2p links.
            text = msg.get("local") or msg.get("address")
            try:
                out.append((ip_address(str(text).split("%", 1)[0]), int(msg.get("prefixlen"))))
            except (TypeError, ValueError):
                continue
    return out


def _loop_of(zc: Zeroconf) -> asyncio.AbstractEventLoop:
    loop = zc.loop
    if loop is None:
        raise RuntimeError("zeroconf is not running")
    return loop


def _remaining_ttl(zc: Zeroconf, name: str) -> float:
    """Seconds until the first of `name`'s PTR, SRV and TXT records expires (0: one is gone)."""
    now = current_time_millis()
    pointer = zc.cache.current_entry_with_name_and_alias(SERVICE_TYPE, name)
    if pointer is None:
        return 0.0
    left = [float(pointer.get_remaining_ttl(now))]
    for rtype in (TYPE_SRV, TYPE_TXT):
        records = zc.cache.get_all_by_details(name, rtype, CLASS_IN)
        left.append(max((float(r.get_remaining_ttl(now)) for r in records), default=0.0))
    return min(left)


class Announcer:
    """This node's service: registered, updated and withdrawn on zeroconf's own thread.

    Every method returns at once (except `stop`, which waits at most `timeout`): the caller
    states what it wants and the latest wish wins, so a flapping role sends at most one update
    per announcement round.
    """

    def __init__(
        self,
        zc: Zeroconf,
        record: NodeRecord,
        addresses: Sequence[IpAddress],
        *,
        log: WarnLog | None = None,
    ) -> None:
        self._zc = zc
        self._loop = _loop_of(zc)
        self._addresses = tuple(addresses)
        self._log: WarnLog = log or Quiet()
        self._lock = threading.Lock()
        self._want = record
        self._version = 0
        self._info: ServiceInfo | None = None
        self._sent: NodeRecord | None = None
        self._registered = threading.Event()
        self._kick: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self.failures = 0
        self._loop.call_soon_threadsafe(self._spawn)

    @property
    def record(self) -> NodeRecord:
        """What this node wants announced now."""
        with self._lock:
            return self._want

    def wait_registered(self, timeout: float) -> bool:
        """Block until the first announcement went out (tests, start-up logs)."""
        return self._registered.wait(timeout)

    def update(self, *, role: str | None = None, priority: int | None = None) -> None:
        """Announce a new role and/or priority; returns at once, never raises."""
        with self._lock:
            new = replace(
                self._want,
                role=self._want.role if role is None else role,
                priority=self._want.priority if priority is None else priority,
            )
            if new == self._want:
                return
            self._want = new
            self._version += 1
        # After zeroconf closed (shutdown), a late role change has nobody left to tell.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._poke)

    def stop(self, timeout: float = 1.0) -> bool:
        """Withdraw the service with goodbye packets; False if not done within `timeout`."""
        if self._loop.is_closed():
            return False
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            return False
        return True

    # -- zeroconf's thread -----------------------------------------------------------------

    def _spawn(self) -> None:
        self._kick = asyncio.Event()
        self._runner = self._loop.create_task(self._run())

    def _poke(self) -> None:
        if self._kick is not None:
            self._kick.set()

    async def _run(self) -> None:
        kick = self._kick
        assert kick is not None
        while True:
            with self._lock:
                want, version = self._want, self._version
            kick.clear()
            try:
                await self._apply(want)
            except Exception as exc:  # zeroconf errors are not one family; never kill the loop
                self.failures += 1
                if self.failures == 1:
                    self._log.warning(
                        "discovery_announce_failed",
                        error=repr(exc)[:200],
                        retry_in=RETRY_DELAY,
                        note="logged once; then only counted",
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(kick.wait(), RETRY_DELAY)
                continue
            with self._lock:
                if self._version != version:
                    continue
            await kick.wait()

    async def _apply(self, want: NodeRecord) -> None:
        if self._info is None:
            info = service_info(want, self._addresses)
            await (await self._zc.async_register_service(info, allow_name_change=True))
            self._info, self._sent = info, want
            self._registered.set()
        elif want != self._sent:
            info = service_info(want, self._addresses, name=self._info.name)
            await (await self._zc.async_update_service(info))
            self._info, self._sent = info, want

    async def _shutdown(self) -> None:
        runner = self._runner
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        info, self._info = self._info, None
        if info is not None:
            await (await self._zc.async_unregister_service(info))


class PeerWatch:
    """Browses ``_hapair._udp.local.`` on zeroconf's thread; hands sightings to the caller.

    The mailbox keeps the latest sighting per service name (a goodbye is None), at most
    MAX_PENDING names; `wake` is called (on zeroconf's thread) when something arrived. Live
    services are re-read from the cache every `refresh` seconds, so their expiry moves on.
    """

    def __init__(
        self,
        zc: Zeroconf,
        wake: Callable[[], object] | None = None,
        *,
        refresh: float = REFRESH_INTERVAL,
    ) -> None:
        self._zc = zc
        self._loop = _loop_of(zc)
        self._wake = wake
        self._refresh_every = refresh
        self._lock = threading.Lock()
        self._mail: dict[str, Sighting | None] = {}
        self._known: set[str] = set()
        self._asked: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._browser: AsyncServiceBrowser | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(THREAD_CALL_TIMEOUT)

    def drain(self) -> list[tuple[str, Sighting | None]]:
        """Everything that arrived since the last call (latest per name)."""
        with self._lock:
            mail, self._mail = self._mail, {}
        return list(mail.items())

    def close(self) -> None:
        """Stop browsing (bounded wait)."""
        if self._loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(self._stop(), self._loop)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            future.result(THREAD_CALL_TIMEOUT)

    # -- zeroconf's thread -----------------------------------------------------------------

    async def _start(self) -> None:
        self._browser = AsyncServiceBrowser(self._zc, [SERVICE_TYPE], handlers=[self._changed])
        self._timer = self._loop.call_later(self._refresh_every, self._refresh)

    async def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()

    def _changed(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        del zeroconf, service_type
        if state_change is ServiceStateChange.Removed:
            self._known.discard(name)
            self._post(name, None)
            return
        if name not in self._known and len(self._known) >= MAX_SERVICES:
            self.dropped += 1
            return
        self._known.add(name)
        task = self._loop.create_task(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if await info.async_request(self._zc, RESOLVE_TIMEOUT_MS) and name in self._known:
            self._post(name, sighting_of(info, _remaining_ttl(self._zc, name)))

    def _refresh(self) -> None:
        now = self._loop.time()
        for name in list(self._known):
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            ttl = _remaining_ttl(self._zc, name)
            if ttl > 0 and info.load_from_cache(self._zc):
                self._post(name, sighting_of(info, ttl))
            if ttl < REQUERY_BELOW and now - self._asked.get(name, -REQUERY_EVERY) >= REQUERY_EVERY:
                # zeroconf refreshes PTRs on its own (RFC 6762 §5.2), not SRV/TXT/addresses.
                self._asked[name] = now
                self._query(name)
        for name in set(self._asked) - self._known:
            del self._asked[name]
        self._timer = self._loop.call_later(self._refresh_every, self._refresh)

    def _query(self, name: str) -> None:
        """Ask for `name`'s SRV and TXT (answers carry the addresses), with no known answers."""
        out = DNSOutgoing(FLAGS_QUERY)
        out.add_question(DNSQuestion(name, TYPE_SRV, CLASS_IN))
        out.add_question(DNSQuestion(name, TYPE_TXT, CLASS_IN))
        self._zc.async_send(out)

    def _post(self, name: str, sighting: Sighting | None) -> None:
        with self._lock:
            if name not in self._mail and len(self._mail) >= MAX_PENDING:
                self.dropped += 1
                return
            self._mail[name] = sighting
        if self._wake is not None:
            self._wake()


def browse(
    cluster: str | None = None,
    timeout: float = 1.5,
    *,
    interfaces: Sequence[str | int] | None = None,
    log: WarnLog | None = None,
) -> list[Seen]:
    """The hapair nodes that answer within `timeout` seconds (of `cluster` if given)."""
    finder = PeerFinder(log=log)
    zc = open_zeroconf(interfaces)
    try:
        watch = PeerWatch(zc)
        try:
            time.sleep(max(0.0, timeout))
        finally:
            watch.close()
    finally:
        zc.close()
    now = time.monotonic()
    finder.take_at(watch.drain(), now)
    return finder.nodes_at(now, cluster)

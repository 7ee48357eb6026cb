"""Hooks: run the configured programs (argv, no shell) on role and backend changes.

Two halves, as everywhere in hapair. ``plan_hooks`` is pure: an event, the configured hooks and
the node's context in, the ordered invocations (argv, env, timeout) out. ``HookRunner`` is the
asyncio edge that runs them: ``submit`` returns at once; each *lane* (one for role changes, one
per backend) runs its chain sequentially in config order, each hook under its timeout (SIGTERM
to its process group, SIGKILL after a grace). A newer event on the same lane supersedes the
older chain: its running hook is stopped the same way and the rest is skipped, and the newer
chain starts only once the older process is gone, so two role hooks never run at the same time
(Patroni's callback executor does the same for role changes). Lanes run independently.

Every planned hook ends in exactly one of ``hook_finished``, ``hook_timeout``,
``hook_cancelled`` or ``hook_failed`` (could not exec); ``hook_started`` comes before the first
three. A hook runs in its own session (a timeout or a newer event signals its whole process
group), in ``/``, with stdin on /dev/null and only PATH and LANG of the daemon's environment;
its stdout and stderr share one pipe whose last few KiB go into the log. Once the hook has
exited its pipe is read only briefly more: a background child it left must not hold it open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from hapair.config.hooks import Hook
from hapair.core.roles import Role
from hapair.spawn import Child, spawn

#: The lane of every role change: a newer role change supersedes the older chain.
ROLE_LANE: Final = "role"
#: Backend lanes that may exist at once (each runs or waits for one chain); more are dropped.
MAX_BACKEND_LANES: Final = 8
#: From SIGTERM to SIGKILL, for a hook that timed out or was superseded.
KILL_GRACE: Final = 1.0
#: How long a SIGKILLed hook may take to be reaped before it is given up on.
REAP_WAIT: Final = 2.0
#: After the hook exits, how long its pipe is still read (a background child may hold it).
OUTPUT_DRAIN: Final = 0.2
#: Bytes of output kept per hook for the log (the end of it).
OUTPUT_TAIL: Final = 4096
#: systemd's default PATH, for a daemon started without one.
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The only variables a hook inherits from the daemon (plus its own ``env`` table).
INHERITED: Final = ("PATH", "LANG")


class HookLog(Protocol):
    """The structlog-like logger the runner writes to."""

    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def error(self, event: str, **kw: Any) -> Any: ...


# -- the pure half ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoleEvent:
    """This node's role changed."""

    role: Role
    previous: Role
    reason: str
    peer: str = ""


@dataclass(frozen=True, slots=True)
class BackendEvent:
    """A balancer backend went up or down (``role`` is this node's role at the time)."""

    backend: str
    up: bool
    reason: str
    role: Role
    peer: str = ""


HookEvent = RoleEvent | BackendEvent


@dataclass(frozen=True, slots=True)
class HookContext:
    """What every hook is told about this node: cluster, node name and VIPs."""

    cluster: str
    node: str
    vips: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Invocation:
    """One hook to run: ``hook`` names it in logs (``hook[2]``)."""

    hook: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    timeout: float


@dataclass(frozen=True, slots=True)
class Plan:
    """The hooks one event runs, in config order, on one lane."""

    lane: str
    trigger: str
    backend: str
    invocations: tuple[Invocation, ...]


def trigger_of(event: HookEvent) -> str:
    """The event's name in ``on`` and ``HAPAIR_EVENT``: ``master``, ``backend_down``..."""
    if isinstance(event, RoleEvent):
        return event.role.name.lower()
    return "backend_up" if event.up else "backend_down"


def lane_of(event: HookEvent) -> str:
    """Events on one lane supersede each other: all role changes, or one backend's changes."""
    return ROLE_LANE if isinstance(event, RoleEvent) else f"backend:{event.backend}"


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of the daemon's environment a hook gets: PATH (or a default) and LANG."""
    env = {name: environ[name] for name in INHERITED if environ.get(name)}
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def event_env(event: HookEvent, context: HookContext) -> dict[str, str]:
    """The ``HAPAIR_*`` variables; all are always set, empty where they do not apply."""
    previous = backend = state = ""
    if isinstance(event, RoleEvent):
        previous = event.previous.name
    else:
        backend, state = event.backend, "up" if event.up else "down"
    return {
        "HAPAIR_EVENT": trigger_of(event),
        "HAPAIR_ROLE": event.role.name,
        "HAPAIR_PREVIOUS_ROLE": previous,
        "HAPAIR_REASON": event.reason,
        "HAPAIR_CLUSTER": context.cluster,
        "HAPAIR_NODE": context.node,
        "HAPAIR_PEER": event.peer,
        "HAPAIR_VIPS": " ".join(context.vips),
        "HAPAIR_BACKEND": backend,
        "HAPAIR_BACKEND_STATE": state,
    }


def plan_hooks(
    event: HookEvent,
    hooks: Iterable[Hook],
    context: HookContext,
    inherited: Mapping[str, str],
) -> Plan:
    """The hooks ``event`` runs, in config order, each with its full environment."""
    trigger = trigger_of(event)
    variables = event_env(event, context)
    invocations = tuple(
        Invocation(
            hook=f"hook[{index}]",
            argv=hook.command,
            # The hook's own table may override PATH/LANG; HAPAIR_* always come from hapair.
            env={**inherited, **dict(hook.env), **variables},
            timeout=hook.timeout,
        )
        for index, hook in enumerate(hooks)
        if trigger in hook.triggers
    )
    backend = event.backend if isinstance(event, BackendEvent) else ""
    return Plan(lane_of(event), trigger, backend, invocations)


def missing_programs(hooks: Iterable[Hook]) -> list[str]:
    """Hook programs not found (on PATH, or at their path), to warn about at start-up."""
    return sorted({h.command[0] for h in hooks if shutil.which(h.command[0]) is None})


class OutputTail:
    """The last ``limit`` bytes of a stream, and whether anything before them was dropped."""

    def __init__(self, limit: int = OUTPUT_TAIL) -> None:
        self.limit = limit
        self.total = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        """Append ``data``, dropping the oldest bytes beyond the limit."""
        self.total += len(data)
        self._buf += data
        if len(self._buf) > self.limit:
            del self._buf[: len(self._buf) - self.limit]

    @property
    def truncated(self) -> bool:
        """True if earlier output was dropped."""
        return self.total > len(self._buf)

    def text(self) -> str:
        """The kept output as text (invalid UTF-8 replaced), trailing whitespace removed."""
        return self._buf.decode("utf-8", "replace").rstrip()


# -- the asyncio half ------------------------------------------------------------------------


class _Lane:
    """One lane: its worker task, the newest chain waiting to run, and the stop signal."""

    __slots__ = ("pending", "stop", "task")

    def __init__(self) -> None:
        self.pending: Plan | None = None
        self.task: asyncio.Task[None] | None = None
        self.stop = asyncio.Event()


async def _settled(future: asyncio.Future[None], timeout: float) -> bool:
    """Wait up to ``timeout`` for ``future`` without cancelling it; True if it is done."""
    done, _ = await asyncio.wait({future}, timeout=timeout)
    return bool(done)


class HookRunner:
    """Runs hooks for submitted events without ever blocking the loop (see the module doc)."""

    def __init__(
        self,
        hooks: Iterable[Hook],
        context: HookContext,
        log: HookLog,
        *,
        environ: Mapping[str, str] | None = None,
        grace: float = KILL_GRACE,
        max_backend_lanes: int = MAX_BACKEND_LANES,
        output_limit: int = OUTPUT_TAIL,
    ) -> None:
        self.hooks = tuple(hooks)
        self.context = context
        self.log = log
        self.grace = grace
        self.max_backend_lanes = max_backend_lanes
        self.output_limit = output_limit
        #: Backend events dropped because every backend lane was taken.
        self.dropped = 0
        self._inherited = inherited_env(os.environ if environ is None else environ)
        self._lanes: dict[str, _Lane] = {}
        self._accepting = True
        self._closing = False
        self._drop_logged = False

    @property
    def busy(self) -> bool:
        """True while any chain runs or waits."""
        return bool(self._lanes)

    def reconfigure(self, hooks: Iterable[Hook], context: HookContext) -> None:
        """Use these hooks for events submitted from now on; running chains keep theirs."""
        self.hooks = tuple(hooks)
        self.context = context

    def submit(self, event: HookEvent) -> None:
        """Start ``event``'s hooks on its lane, superseding an older chain there; never waits."""
        if not self._accepting:
            return
        plan = plan_hooks(event, self.hooks, self.context, self._inherited)
        if not plan.invocations:
            return
        lane = self._lanes.get(plan.lane)
        if lane is not None:
            if lane.pending is not None:
                self._skip(lane.pending, 0, "superseded")
            lane.pending = plan
            lane.stop.set()
            return
        backend_lanes = len(self._lanes) - (ROLE_LANE in self._lanes)
        if plan.lane != ROLE_LANE and backend_lanes >= self.max_backend_lanes:
            self._drop(plan)
            return
        lane = self._lanes[plan.lane] = _Lane()
        lane.pending = plan
        lane.task = asyncio.get_running_loop().create_task(
            self._drive(plan.lane, lane), name=f"hooks {plan.lane}"
        )

    async def wait_idle(self) -> None:
        """Return once no chain runs or waits."""
        while self._lanes:
            await asyncio.wait(self._tasks())

    async def close(self, wait: float = 0.0) -> None:
        """Accept no more events; let chains run for up to ``wait`` seconds, then stop them
        (SIGTERM, SIGKILL after the grace) and reap them. Bounded: the few seconds past ``wait``
        are spent only on a hook that ignores SIGTERM or cannot be reaped."""
        self._accepting = False
        if wait > 0 and self._lanes:
            await asyncio.wait(self._tasks(), timeout=wait)
        self._closing = True
        for lane in self._lanes.values():
            if lane.pending is not None:
                self._skip(lane.pending, 0, "closing")
                lane.pending = None
            lane.stop.set()
        tasks = self._tasks()
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.grace + REAP_WAIT + OUTPUT_DRAIN + 0.5)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=REAP_WAIT + 0.5)

    # -- internals -----------------------------------------------------------------------

    def _tasks(self) -> set[asyncio.Task[None]]:
        return {lane.task for lane in self._lanes.values() if lane.task is not None}

    def _reason(self) -> str:
        return "closing" if self._closing else "superseded"

    async def _drive(self, key: str, lane: _Lane) -> None:
        """The lane's worker: run the newest pending chain until none is left."""
        try:
            while lane.pending is not None:
                plan, lane.pending = lane.pending, None
                lane.stop.clear()
                await self._chain(plan, lane.stop)
        except Exception as exc:  # a bug here must not end hooks silently
            self.log.error("hook_runner_error", lane=key, error=repr(exc))
        finally:
            if lane.pending is not None:
                self._skip(lane.pending, 0, "closing")
            del self._lanes[key]
            if key != ROLE_LANE:
                self._drop_logged = False

    async def _chain(self, plan: Plan, stop: asyncio.Event) -> None:
        for index, invocation in enumerate(plan.invocations):
            if stop.is_set():
                self._skip(plan, index, self._reason())
                return
            try:
                await self._run(plan, invocation, stop)
            except asyncio.CancelledError:
                self._skip(plan, index + 1, "closing")
                raise

    async def _run(self, plan: Plan, inv: Invocation, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        fields = self._fields(plan, inv)
        started = loop.time()
        output = OutputTail(self.output_limit)
        try:
            # Started off the loop (fork + exec take milliseconds), in its own session: a
            # timeout or a newer event stops the hook's children too, and a shell script's
            # `sleep` cannot keep running with our pipe.
            child = await spawn(inv.argv, env=inv.env, cwd="/", output=output.feed)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self.log.error("hook_failed", **fields, error=str(exc))
            return
        except asyncio.CancelledError:  # spawn() kills and reaps a child started by then
            self.log.info("hook_cancelled", **fields, reason="closing", started=False)
            raise
        pid = child.pid
        self.log.info("hook_started", **fields, pid=pid, timeout=inv.timeout)
        try:
            outcome = await self._wait(child, inv.timeout, stop)
            killed = False
            if outcome != "finished":
                killed = await self._terminate(child)
            await _settled(child.closed, OUTPUT_DRAIN)
        except asyncio.CancelledError:
            # close() gave up waiting: kill at once, reap briefly, and let the cancel through.
            child.signal_group(signal.SIGKILL)
            await _settled(child.exited, REAP_WAIT)
            child.close()
            self.log.info(
                "hook_cancelled", **fields, pid=pid, reason="closing", started=True, killed=True
            )
            raise
        child.close()
        status = child.returncode
        result: dict[str, Any] = {
            **fields,
            "pid": pid,
            "duration": round(loop.time() - started, 3),
            "exit_status": status,
            "output": output.text(),
        }
        if status is not None and status < 0:
            with contextlib.suppress(ValueError):
                result["signal"] = signal.Signals(-status).name
        if output.truncated:
            result["output_truncated"] = True
        if outcome == "finished":
            log = self.log.info if status == 0 else self.log.warning
            log("hook_finished", **result)
        elif outcome == "timeout":
            self.log.warning("hook_timeout", **result, timeout=inv.timeout, killed=killed)
        else:
            self.log.info(
                "hook_cancelled", **result, reason=self._reason(), started=True, killed=killed
            )

    async def _wait(self, child: Child, timeout: float, stop: asyncio.Event) -> str:
        """Wait for the hook's exit, its timeout or a stop; say which came first."""
        stopper = asyncio.ensure_future(stop.wait())
        waiters: set[asyncio.Future[Any]] = {child.exited, stopper}
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if child.exited.done():
            return "finished"
        return "cancelled" if stop.is_set() else "timeout"

    async def _terminate(self, child: Child) -> bool:
        """SIGTERM the hook's group, SIGKILL after the grace; True if SIGKILL was needed."""
        child.signal_group(signal.SIGTERM)
        if await _settled(child.exited, self.grace):
            return False
        child.signal_group(signal.SIGKILL)
        await _settled(child.exited, REAP_WAIT)
        return True

    @staticmethod
    def _fields(plan: Plan, inv: Invocation) -> dict[str, Any]:
        fields: dict[str, Any] = {"trigger": plan.trigger, "hook": inv.hook}
        if plan.backend:
            fields["backend"] = plan.backend
        fields["program"] = inv.argv[0]
        return fields

    def _skip(self, plan: Plan, start: int, reason: str) -> None:
        for inv in plan.invocations[start:]:
            self.log.info("hook_cancelled", **self._fields(plan, inv), reason=reason, started=False)

    def _drop(self, plan: Plan) -> None:
        self.dropped += 1
        if not self._drop_logged:
            self._drop_logged = True
            self.log.warning(
                "hook_dropped",
                trigger=plan.trigger,
                backend=plan.backend,
                lanes=self.max_backend_lanes,
                note="every backend lane is busy; further drops are only counted until one frees",
            )

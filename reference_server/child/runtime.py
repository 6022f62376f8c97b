"""A child process of the server: worker, task worker, custom process or admin.

After the fork the master calls :func:`child_main`, which never returns. The
:class:`Runtime` runs one asyncio loop with:

* the ctl channel to the master (connection hand-overs, stop orders; its EOF
  means the master died and the child stops);
* the peer inbox (pushes, closes, tasks, results, pipe messages, RPCs);
* the sessions this process owns (workers only), the heartbeat and keepalive;
* the application's hooks and timers.

Stopping (SIGTERM, a ``stop`` order, or the master gone): ``on_worker_exit``
runs with the loop alive; timers the application left are cleared with one
warning naming them; sessions get a 1001 close frame and up to
``close_timeout`` to answer; ``on_worker_stop`` runs; the process exits.

Retiring (a ``retire`` order: a reload replaced this process, and its
successor is ready; the master no longer sends it anything new):

1. ``on_worker_exit`` runs; timers it left are cleared with one warning.
2. A sync round (every process answers on its own link) makes sure that no
   task or message addressed to this process before it was marked stopping is
   still on the way.
3. A task worker hands its queued, unstarted tasks to its successor (and any
   that still arrive); the task it is running finishes here.
4. A worker hands every live session to the new generation by migration
   (``session/mover.py``): its successor with the same id, else the least
   busy new worker. Sessions still in their handshake are handed over once
   established. The application's ``on_migrate_out``/``on_migrate_in`` carry
   per-session state (the contract app's tick subscriptions).
5. It waits for the results of tasks it dispatched (their ``on_finish`` runs
   here) and for its migrations' barrier rounds, then stops, and its last
   ctl message to the master is a report (sessions handed over, timers left,
   counters, which the master keeps so that stats stay whole).

What is left at 90% of ``max_wait_ms`` (sessions that could not be moved) is
closed with 1001; the master kills a process still alive at ``max_wait_ms``.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import importlib
import inspect
import itertools
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..app import Application, ProcessSpec
from ..config import Config
from ..core.metrics import Counters
from ..core.proctable import QUIET_KINDS, ProcEntry, ProcKind, ProcState, ProcTable
from ..core.registry import SessionTable
from ..errors import CloseCode, ErrorCode, ServerError
from ..ipc import links as ipc
from ..ipc import messages as msg
from ..logs import Log, RateLimitedLog
from ..session.channels import Channels
from ..session.mover import Mover
from ..session.session import CloseCause, Session
from .api import DEAD_CODES, Server
from .timers import Timers

if TYPE_CHECKING:
    from ..roles.broadcaster import Broadcaster

#: Sessions a retiring worker hands over at once.
HANDOVER_CONCURRENCY = 32
#: Share of ``max_wait_ms`` after which a retiring process closes what it could not hand over.
RETIRE_BUDGET = 0.9
#: How long a sync round waits for every process to answer.
SYNC_TIMEOUT = 2.0
#: While retiring, the share of ``max_wait_ms`` a sync or barrier round waits for a silent peer.
SILENT_PEER_SHARE = 0.25
#: How long an exiting process waits for its queued inter-process messages to leave.
DRAIN_ON_EXIT = 2.0

#: A handler of one kind of message: the message and the fds that came with it (its result is ignored).
Handler = Callable[[Any, list[int]], object]

_current_task: contextvars.ContextVar[tuple[int, int, int] | None] = contextvars.ContextVar(
    "current_task", default=None
)


@dataclass
class ChildBoot:
    """Everything a child needs, prepared by the master before the fork."""

    kind: ProcKind
    index: int
    name: str
    generation: int
    config: Config
    token: str
    table: SessionTable
    procs: ProcTable
    ctl: socket.socket
    log: Log
    app: Application
    master_pid: int
    spec: ProcessSpec | None = None
    extra_socket: socket.socket | None = None  # admin listener / broker listener
    broker_url: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


def load_app(spec: str) -> Application:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr)
    if isinstance(obj, type):
        obj = obj()
    if not isinstance(obj, Application):
        raise TypeError(f"{spec} is not an Application")
    return obj


def _set_parent_death_signal(sig: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def child_main(boot: ChildBoot) -> None:
    """Entry point of a forked child; exits the process, never returns."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master coordinates Ctrl-C
        for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != boot.master_pid:
            os._exit(0)  # the master died before we could watch it
        boot.log.rebind(boot.name)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runtime = Runtime(boot, loop)
        code = loop.run_until_complete(runtime.run())
    except BaseException as exc:  # the last line of defence
        try:
            boot.log.error("process.crash", error=repr(exc), trace=traceback.format_exc())
        finally:
            code = 1
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(code)


READY_WAIT = 5.0  # broadcast: the longest a broadcaster or a worker delays its readiness


class Runtime:
    def __init__(self, boot: ChildBoot, loop: asyncio.AbstractEventLoop) -> None:
        self.boot = boot
        self.kind = boot.kind
        self.index = boot.index
        self.name = boot.name
        self.generation = boot.generation
        self.config = boot.config
        self.table = boot.table
        self.procs = boot.procs
        self.log = boot.log
        self.app = boot.app
        self.loop = loop
        self.counters = Counters()
        self.dead_log = RateLimitedLog(self.log, self.counters)
        self.links = ipc.PeerLinks(boot.token, loop, on_gone=self._peer_gone)
        self.inbox: ipc.Inbox | None = None
        self.timers = Timers(loop, self.log, self.counters)
        self.sessions: dict[int, Session] = {}
        self.handler_names = [name for name, _ in self.app.handler_table()]
        self.handler_sets = [handlers for _, handlers in self.app.handler_table()]
        self.mover = Mover(self)
        self.channels = Channels(self)
        self.broadcaster: Broadcaster | None = None  # in the broadcaster process
        self.api = Server(self)
        self.stopping = asyncio.Event()
        self._stop_reason = ""
        self._rpc_ids = itertools.count(1)
        self._rpc_waiting: dict[int, asyncio.Future] = {}
        self._task_ids = itertools.count(1)
        self._task_rr = itertools.count()
        self._task_queue: asyncio.Queue | None = None
        self._background: set[asyncio.Task] = set()
        self._session_gone = asyncio.Event()
        # reload
        self.retiring = False
        self.retire_report: dict[str, Any] = {}
        self._exit_hook_done = False
        self._progress = asyncio.Event()  # something a retiring process waits for happened
        self._task_running = False
        self._awaiting_tasks: dict[int, int] = {}  # task id -> pid of the task worker that has it
        self._master_calls: dict[int, asyncio.Future] = {}
        self._call_ids = itertools.count(1)
        self._syncs: dict[int, tuple[set[int], asyncio.Future]] = {}
        self._sync_ids = itertools.count(1)
        self._handover_rr = itertools.count()
        self._redis: Any = None
        self._ctl_handlers = self._ctl_table()
        self._peer_handlers = self._peer_table()

    # -- life cycle -------------------------------------------------------------

    async def run(self) -> int:
        loop = self.loop
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_reader(self.boot.ctl.fileno(), self._on_ctl_readable)
        inbox = self.inbox = ipc.Inbox(self.boot.token, loop, self._on_peer_message, self._on_ipc_error)
        exit_code = 0
        try:
            if self.kind is ProcKind.TASK:
                self._task_queue = asyncio.Queue()
                self.spawn(self._task_loop())
            if self.kind is ProcKind.WORKER:
                self.spawn(self._housekeeping())
            self.spawn(self._periodic())
            if self.kind in (ProcKind.WORKER, ProcKind.TASK):
                await self._hook("on_worker_start", self.api)

            main: asyncio.Task | None = None
            if self.kind is ProcKind.CUSTOM and self.boot.spec is not None:
                main = self.spawn(self.boot.spec.target(self.api))
            elif self.kind is ProcKind.ADMIN:
                from ..roles.admin import serve_admin

                main = self.spawn(serve_admin(self, self.boot.extra_socket))
            elif self.kind is ProcKind.BROKER:
                from ..roles.broker import serve_broker

                main = self.spawn(serve_broker(self, self.boot.extra_socket))
            elif self.kind is ProcKind.BROADCASTER:
                from ..roles.broadcaster import serve_broadcaster

                main = self.spawn(serve_broadcaster(self))
                await self._ready_to_broadcast()
            if self.kind is ProcKind.WORKER:
                await self.channels.start()
            self.ctl_send(msg.Ready())
            self.log.info("process.start", kind=self.kind.label, id=self.index, generation=self.generation)
            if main is not None:
                done, _ = await asyncio.wait(
                    {main, asyncio.ensure_future(self.stopping.wait())},
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if main in done and not self.stopping.is_set():
                    exc = main.exception()
                    if exc is not None:
                        self.log.error("process.main_failed", error=repr(exc))
                        exit_code = 1
                    self.request_stop("process returned")
            await self.stopping.wait()
            await self._shutdown()
            if self.retiring:
                report = {**self.retire_report, "counters": self.counters.snapshot()}
                self.ctl_send(msg.Retired(report))
            # What this process still has queued for others (a task result pushed on its
            # way out, a forwarded operation) must leave before the links close.
            if not await self.links.drain(DRAIN_ON_EXIT):
                self.log.warning("ipc.undelivered_at_exit", pending_bytes=self.links.pending_bytes())
        finally:
            inbox.close()
            loop.remove_reader(self.boot.ctl.fileno())
            self.links.close()
            for task in list(self._background):
                task.cancel()
        self.log.info("process.exit", reason=self._stop_reason, code=exit_code)
        return exit_code

    async def _ready_to_broadcast(self) -> None:
        """The broadcaster says ready once Redis confirmed its subscription (or after 5 s, an outage)."""
        deadline = self.loop.time() + READY_WAIT
        while self.broadcaster is None and self.loop.time() < deadline:
            await asyncio.sleep(0)  # serve_broadcaster has not run its first step yet
        if self.broadcaster is not None:
            try:
                await asyncio.wait_for(self.broadcaster.subscribed.wait(), max(0.0, deadline - self.loop.time()))
            except TimeoutError:
                self.log.warning("broadcast.not_subscribed_at_start", waited_s=READY_WAIT)

    def request_stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            self._stop_reason = reason
            self.stopping.set()

    async def _shutdown(self) -> None:
        await self._run_exit_hook()
        self.clear_leftover_timers()
        for sess in list(self.sessions.values()):
            sess.close(CloseCode.GOING_AWAY, "server shutting down", cause=CloseCause.SHUTDOWN)
        deadline = time.monotonic() + self.config.close_timeout_ms / 1000.0
        while self.sessions and time.monotonic() < deadline:
            self._session_gone.clear()
            try:
                await asyncio.wait_for(self._session_gone.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        for sess in list(self.sessions.values()):
            sess.abort(CloseCause.SHUTDOWN)
        if self.kind in (ProcKind.WORKER, ProcKind.TASK):
            await self._hook("on_worker_stop", self.api)
        if self._redis is not None:  # the publishing connection
            try:
                await self._redis.aclose()
            except Exception as exc:  # a broken connection: nothing is lost by dropping it
                self.log.debug("redis.close_failed", error=repr(exc))
        # Let written data (close frames, IPC) drain before the process ends.
        for _ in range(3):
            await asyncio.sleep(0)

    async def _run_exit_hook(self) -> None:
        if self.kind in (ProcKind.WORKER, ProcKind.TASK) and not self._exit_hook_done:
            self._exit_hook_done = True
            await self._hook("on_worker_exit", self.api)

    def clear_leftover_timers(self) -> int:
        """Clear the timers the application left after its exit hook: one warning names them."""
        left = self.timers.describe()
        if left:
            self.log.warning(
                "timers.left_after_exit",
                count=len(left),
                timers=left[:20],
                hint="clear timers in on_worker_exit; the framework cleared these",
            )
            self.timers.clear_all(reason="process exit")
        return len(left)

    # -- retiring (reload) ------------------------------------------------------------

    async def _retire(self, reload_id: int, max_wait_ms: int) -> None:
        """Replaced by a reload: see the module docstring, "Retiring"."""
        if self.retiring or self.stopping.is_set():
            return
        self.retiring = True
        started = time.monotonic()
        budget = started + RETIRE_BUDGET * max_wait_ms / 1000.0
        report = self.retire_report = {
            "reload": reload_id,
            "name": self.name,
            "kind": self.kind.label,
            "pid": os.getpid(),
            "generation": self.generation,
            "sessions_at_retire": len(self.sessions),
            "handed_over": 0,
            "handover_retries": 0,
            "closed_unmovable": 0,
            "tasks_handed_back": 0,
            "timers_after_exit_hook": 0,
            "timers_at_exit": 0,
        }
        self.log.info("reload.retiring", reload=reload_id, sessions=len(self.sessions), timers=len(self.timers))
        # A silent peer (blocked, or dying in the same reload) may delay us only so long:
        # the master kills whatever is left at max_wait_ms.
        patience = min(SYNC_TIMEOUT, SILENT_PEER_SHARE * max_wait_ms / 1000.0)
        self.mover.barrier_timeout = min(self.mover.barrier_timeout, patience)
        if self.kind in (ProcKind.WORKER, ProcKind.TASK):
            await self._run_exit_hook()
            report["timers_after_exit_hook"] = len(self.timers)
            self.clear_leftover_timers()
            await self.sync_peers(patience)
            if self.kind is ProcKind.TASK:
                self._hand_back_queued_tasks()
            await self._hand_over_sessions(budget)
            await self._wait_for(lambda: not self._task_running and not self._pending_task_results())
        report["timers_at_exit"] = len(self.timers)
        report["duration_ms"] = round((time.monotonic() - started) * 1000.0, 3)
        self.log.info("reload.handover_done", reload=reload_id, **{k: v for k, v in report.items() if k != "reload"})
        self.request_stop("reload")

    async def _wait_for(self, condition, *, until: float | None = None) -> bool:
        """Wait until ``condition()`` holds (re-checked whenever something progresses)."""
        while not condition():
            if until is not None and time.monotonic() >= until:
                return False
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), 0.1)
            except TimeoutError:
                pass
        return True

    def _successor(self) -> ProcEntry | None:
        """Where a retiring worker sends a session: its successor, else the least busy new worker."""
        entry = self.find_worker(self.index)
        if entry is not None:
            return entry
        me = os.getpid()
        ready = [
            e for e in self.procs.entries()
            if e.kind is ProcKind.WORKER and e.state is ProcState.READY and e.pid != me
        ]
        if not ready:
            return None
        return ready[next(self._handover_rr) % len(ready)]

    async def _hand_over_sessions(self, budget: float) -> None:
        report = self.retire_report
        moving: dict[int, asyncio.Task] = {}
        retry_at: dict[int, float] = {}
        gate = asyncio.Semaphore(HANDOVER_CONCURRENCY)
        chosen: list[ProcEntry | None] = [None]  # the successor, looked up again after a failure

        async def one(sid: int) -> None:
            try:
                async with gate:
                    target = chosen[0] = chosen[0] or self._successor()
                    if target is None:
                        retry_at[sid] = time.monotonic() + 0.05
                        return
                    await self.mover.move_out(sid, target.index, target=target)
                    report["handed_over"] += 1
            except ServerError as exc:
                if exc.code in (ErrorCode.MIGRATION_FAILED, ErrorCode.MIGRATION_IN_PROGRESS):
                    report["handover_retries"] += 1
                    retry_at[sid] = time.monotonic() + 0.05
                    chosen[0] = None
                # otherwise it closed or left on its own: nothing to hand over
            finally:
                moving.pop(sid, None)
                self._progress.set()

        def settled() -> bool:
            now = time.monotonic()
            for sid, sess in list(self.sessions.items()):
                if sid in moving or retry_at.get(sid, 0.0) > now:
                    continue
                if sess.established and sess.movable:
                    moving[sid] = self.spawn(one(sid))
            return not self.sessions and not moving and self.mover.idle

        if await self._wait_for(settled, until=budget):
            return
        for sess in list(self.sessions.values()):
            report["closed_unmovable"] += 1
            if sess.closing:
                sess.abort(CloseCause.RETIRE_BUDGET)
            else:
                sess.close(CloseCode.GOING_AWAY, "server reloading", cause=CloseCause.RETIRE)
        self.log.warning(
            "reload.unmovable_sessions",
            count=report["closed_unmovable"],
            hint="sessions that could not be handed over in time were closed with 1001",
        )
        await self._wait_for(lambda: not self.sessions and not moving and self.mover.idle)

    def _pending_task_results(self) -> bool:
        for task_id, pid in list(self._awaiting_tasks.items()):
            if not self.process_alive(pid):
                del self._awaiting_tasks[task_id]
        return bool(self._awaiting_tasks)

    def _task_successor(self) -> ProcEntry | None:
        me = os.getpid()
        ready = sorted(
            (e for e in self.procs.entries() if e.kind is ProcKind.TASK and e.state is ProcState.READY and e.pid != me),
            key=lambda e: (e.index != self.index, -e.generation, e.index),
        )
        return ready[0] if ready else None

    def _hand_back_queued_tasks(self) -> None:
        assert self._task_queue is not None
        while not self._task_queue.empty():
            item = self._task_queue.get_nowait()
            if not self._hand_back(item):
                self._task_queue.put_nowait(item)  # nobody to take it: run it here
                return

    def _hand_back(self, task: msg.Task) -> bool:
        target = self._task_successor()
        if target is None or not self.links.send(target.pid, task):
            return False
        self.links.send(task.src_pid, msg.TaskMoved(task.task_id, target.pid))
        self.retire_report["tasks_handed_back"] += 1
        self.counters["tasks_handed_back"] += 1
        return True

    async def sync_peers(self, timeout: float = SYNC_TIMEOUT) -> list[int]:
        """Every other process answers on its link to us: what it sent before has arrived.

        Returns the pids that did not answer in time (logged).
        """
        token = next(self._sync_ids)
        me = os.getpid()
        waiting: set[int] = set()
        for entry in self.procs.entries():
            if entry.pid == me or entry.state is ProcState.EMPTY or entry.kind in QUIET_KINDS:
                continue
            if self.links.send(entry.pid, msg.Sync(token, me)):
                waiting.add(entry.pid)
        if not waiting:
            return []
        fut = self.loop.create_future()
        self._syncs[token] = (waiting, fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self.log.warning("sync.timeout", silent_pids=sorted(waiting))
        finally:
            self._syncs.pop(token, None)
        return sorted(waiting)

    def _peer_gone(self, pid: int) -> None:
        """Process ``pid`` exited: once what it sent is handled, it counts as having answered."""
        if self.inbox is not None:
            self.inbox.drain_from(pid)
        self.mover.peer_gone(pid)
        for token in list(self._syncs):
            self._on_sync_ack(token, pid)

    def _on_sync_ack(self, token: int, pid: int) -> None:
        entry = self._syncs.get(token)
        if entry is None:
            return
        waiting, fut = entry
        waiting.discard(pid)
        if not waiting and not fut.done():
            fut.set_result(None)

    async def master_call(self, method: str, args: Any, timeout: float = 10.0) -> Any:
        """Ask the master (``reload``, ``reload_status``); raises ServerError."""
        token = next(self._call_ids)
        fut = self.loop.create_future()
        self._master_calls[token] = fut
        try:
            self.ctl_send(msg.Call(token, method, args))
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ServerError(ErrorCode.OWNER_UNREACHABLE, f"the master did not answer {method}") from None
        finally:
            self._master_calls.pop(token, None)

    def progressed(self) -> None:
        """Something a retiring process waits for has happened (see ``_wait_for``)."""
        self._progress.set()

    def spawn(self, coro) -> asyncio.Task:
        task = self.loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _hook(self, name: str, *args: Any) -> Any:
        """Run an application hook; errors are logged, never fatal."""
        try:
            result = getattr(self.app, name)(*args)
            if inspect.isawaitable(result):
                result = await result
            return result
        except Exception as exc:
            self.log.error("app.hook_failed", hook=name, error=repr(exc), trace=traceback.format_exc())
            return None

    def call_hook(self, name: str, *args: Any, target: Any = None) -> None:
        """Run a hook (of the application, or ``target``) from synchronous code; a coroutine becomes a task."""
        try:
            result = getattr(self.app if target is None else target, name)(*args)
            if inspect.isawaitable(result):
                self.spawn(self._await_hook(name, result))
        except Exception as exc:
            self.log.error("app.hook_failed", hook=name, error=repr(exc), trace=traceback.format_exc())

    async def _await_hook(self, name: str, awaitable) -> None:
        try:
            await awaitable
        except Exception as exc:
            self.log.error("app.hook_failed", hook=name, error=repr(exc), trace=traceback.format_exc())

    # -- ctl channel --------------------------------------------------------------

    def ctl_send(self, message: Any) -> None:
        try:
            self.boot.ctl.send(ipc.ctl_encode(message))
        except (BlockingIOError, InterruptedError):
            # The master is far behind; a blocking retry keeps ordering.
            self.boot.ctl.setblocking(True)
            try:
                self.boot.ctl.send(ipc.ctl_encode(message))
            finally:
                self.boot.ctl.setblocking(False)
        except OSError:
            self.request_stop("master gone")

    def _on_ctl_readable(self) -> None:
        while True:
            try:
                received = ipc.ctl_recv(self.boot.ctl)
            except BlockingIOError:
                return
            except OSError as exc:
                self.log.error("ctl.recv_failed", error=repr(exc))
                self.request_stop("ctl failure")
                return
            if received is None:
                self.loop.remove_reader(self.boot.ctl.fileno())
                self.request_stop("master gone")
                return
            message, fds = received
            handler = self._ctl_handlers.get(type(message))
            if handler is None:
                self.log.warning("ctl.unknown", kind=type(message).__name__)
            if not isinstance(message, msg.Accept):
                for fd in fds:
                    os.close(fd)
            if handler is not None:
                handler(message, fds)

    def _ctl_table(self) -> dict[type, Handler]:
        """What the master sends a child (``ipc/messages.py``), and who handles it here."""
        return {
            msg.Accept: lambda m, fds: self._adopt(m.sid, fds[0], m.local_port, m.handler, m.refuse),
            msg.CloseSessions: lambda m, _: [self.api.close(sid, m.code, m.reason) for sid in m.sids],
            msg.Stop: lambda m, _: self.request_stop(m.reason),
            msg.Retire: lambda m, _: self.spawn(self._retire(m.reload_id, m.max_wait_ms)),
            msg.Reply: lambda m, _: self._settle(self._master_calls.get(m.token), m.ok, m.value),
        }

    @staticmethod
    def _settle(fut: asyncio.Future | None, ok: bool, value: Any) -> None:
        """Resolve a call's future with an answer: a value, or (code, message) as a ServerError."""
        if fut is None or fut.done():
            return
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(ServerError(ErrorCode(value[0]), value[1]))

    # -- sessions (workers) ---------------------------------------------------------

    def _adopt(self, sid: int, fd: int, local_port: int, handler: int, refuse: tuple[int, str] | None) -> None:
        """Serve a connection the master accepted (its handshake comes first).

        With ``refuse`` (code, message), the handshake is answered with an
        HTTP 503 naming the error instead (its port is at its connection
        limit, or was removed with policy close).
        """
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sess = Session(
            sid,
            self,
            max_message_size=self.config.max_message_size,
            close_timeout=self.config.close_timeout_ms / 1000.0,
            handshake_timeout=self.config.handshake_timeout_ms / 1000.0,
            handler=handler,
            refuse=(refuse[0], ErrorCode(refuse[0]).name, refuse[1]) if refuse else None,
        )
        self.sessions[sid] = sess
        try:
            self.table.set_os_fd(sid, fd)
        except KeyError:
            pass
        self.log.debug("session.accept", sid=sid, fd=fd, local_port=local_port)
        sess.attach(self.loop, sock)

    def session_activity(self, sess: Session, now: float) -> None:
        try:
            self.table.touch(sess.sid, now)
        except KeyError:
            pass

    def session_opened(self, sess: Session, request) -> None:
        try:
            self.table.establish(sess.sid, time.time())
        except KeyError:
            return
        self.counters["sessions_opened"] += 1
        info = self.table.lookup(sess.sid)
        self.log.info(
            "session.open",
            sid=sess.sid,
            worker=self.index,
            remote=f"{info.remote_addr}:{info.remote_port}" if info else "",
            path=request.path,
        )
        self._progress.set()
        self.channels.opened(sess)
        self.call_hook("on_open", self.api, sess.sid, request, target=self.handler_sets[sess.handler])

    def session_message(self, sess: Session, data: str | bytes) -> None:
        self.counters["messages_received"] += 1
        self.call_hook("on_message", self.api, sess.sid, data, target=self.handler_sets[sess.handler])

    def session_closing(self, sess: Session) -> None:
        self.channels.drop(sess)  # no broadcast frame is written once its close is known
        try:
            self.table.set_closing(sess.sid)
        except KeyError:
            pass

    def session_lost(self, sess: Session) -> None:
        self.sessions.pop(sess.sid, None)
        try:
            info = self.table.lookup(sess.sid)
            self.table.set_closed(sess.sid)
        except KeyError:
            info = None
        self.ctl_send(msg.Closed(sess.sid))
        self.counters["sessions_closed"] += 1
        if sess.close_cause == CloseCause.PROTOCOL_ERROR:
            self.counters["protocol_errors"] += 1
        if sess.close_cause == CloseCause.REFUSED:
            self.counters["handshakes_refused"] += 1
        elif not sess.established:
            self.counters["handshake_failed"] += 1
        # Refusals are counted, not logged one by one: a flood over a port's limit makes no log storm.
        log = self.log.debug if sess.close_cause == CloseCause.REFUSED else self.log.info
        log(
            "session.close",
            sid=sess.sid,
            worker=self.index,
            code=sess.close_code,
            reason=sess.close_reason,
            cause=sess.close_cause,
            lived_s=round(time.time() - info.connect_time, 3) if info else None,
        )
        self._session_gone.set()
        self._progress.set()
        if sess.established:
            self.call_hook(
                "on_close", self.api, sess.sid, sess.close_code or 1006, sess.close_reason,
                target=self.handler_sets[sess.handler],
            )

    def close_local(
        self, sid: int, code: int, reason: str, last_message: str | bytes | None = None, cause: CloseCause = CloseCause.SERVER
    ) -> bool:
        sess = self.sessions.get(sid)
        if sess is None:
            return False
        if last_message is not None and not sess.send(last_message):
            self.note_push_failed(sid, ErrorCode.SESSION_CLOSED)
        return sess.close(code, reason, cause)

    def deliver(self, op: msg.SessionOp, forwarded: bool = False, in_flight: bool = False) -> ErrorCode:
        """Apply an operation on a session this process owns (or route it if it is moving).

        A failed push is counted here. ``in_flight``: the operation was sent
        (routed, forwarded or held during a move) while the session was
        alive, so a failure means it closed meanwhile: that is counted as
        ``pushes_lost_in_flight``, not as a push to a dead session (the
        sender checked the session before sending).
        """
        if self.mover.intercept(op, forwarded):
            return ErrorCode.OK
        sid = op.sid
        sess = self.sessions.get(sid)
        if isinstance(op, msg.Push):
            if sess is not None and sess.send(op.data):
                return ErrorCode.OK
            code = ErrorCode.SESSION_CLOSED if sess is not None else ErrorCode.SESSION_NOT_EXIST
            self.note_push_failed(sid, code, in_flight=in_flight)
            return code
        if sess is None:
            return ErrorCode.SESSION_NOT_EXIST
        if isinstance(op, msg.Close):
            closed = self.close_local(sid, op.code, op.reason, op.last_message)
            return ErrorCode.OK if closed else ErrorCode.SESSION_CLOSED
        try:
            if isinstance(op, msg.Protect):
                self.table.set_protected(sid, op.value)
            elif isinstance(op, msg.Bind):
                self.table.set_uid(sid, op.value)
            else:
                self.table.set_group(sid, op.value)
        except KeyError:
            return ErrorCode.SESSION_NOT_EXIST
        return ErrorCode.OK

    def find_worker(self, index: int) -> ProcEntry | None:
        """The running worker ``index``, if there is one (the newest, while a reload runs)."""
        found = None
        for entry in self.procs.entries():
            if entry.kind is ProcKind.WORKER and entry.index == index and entry.state is ProcState.READY:
                if found is None or entry.generation > found.generation:
                    found = entry
        return found

    def process_alive(self, pid: int) -> bool:
        return any(e.pid == pid and e.state is not ProcState.EMPTY for e in self.procs.entries())

    def note_push_failed(self, sid: int, code: ErrorCode, *, in_flight: bool = False) -> None:
        self.counters["push_failed"] += 1
        if in_flight:
            self.counters["pushes_lost_in_flight"] += 1
            self.log.debug("push.lost_in_flight", sid=sid, code=int(code), error=code.name)
        elif code in DEAD_CODES:
            self.counters["dead_session_pushes"] += 1
            self.dead_log.once("warning", "push.dead_session", sid, sid=sid, code=int(code), error=code.name)

    async def _housekeeping(self) -> None:
        """Heartbeat and keepalive for the sessions this worker owns."""
        cfg = self.config
        idle = cfg.heartbeat_idle_ms / 1000.0
        ping_every = cfg.ping_interval_ms / 1000.0
        ping_timeout = cfg.ping_timeout_ms / 1000.0
        periods = [p for p in (cfg.heartbeat_check_interval_ms / 1000.0 if idle else 0, ping_every) if p]
        if not periods:
            return
        period = min(periods)
        next_ping = time.monotonic() + ping_every if ping_every else float("inf")
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            if idle:
                for sess in list(self.sessions.values()):
                    if sess.closing or now - sess.last_recv <= idle:
                        continue
                    info = self.table.lookup(sess.sid)
                    if info is not None and info.protected:
                        continue
                    self.counters["heartbeat_closes"] += 1
                    sess.close(CloseCode.IDLE_TIMEOUT, "idle timeout", cause=CloseCause.HEARTBEAT)
            if ping_every:
                for sess in list(self.sessions.values()):
                    if sess.ping_payload is not None and now - sess.ping_sent_at > ping_timeout:
                        sess.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout", cause=CloseCause.KEEPALIVE)
                if now >= next_ping:
                    next_ping = now + ping_every
                    for sess in list(self.sessions.values()):
                        if sess.ping_payload is None:
                            sess.ping(os.urandom(4))

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.dead_log.flush()
            self.mover.housekeeping(time.monotonic())
            self._pending_task_results()  # forget tasks whose task worker died

    # -- peer messages ----------------------------------------------------------------

    def _on_ipc_error(self, event: str, exc: Exception) -> None:
        self.log.warning(event, error=repr(exc))

    def _on_peer_message(self, message: Any, fds: list[int]) -> None:
        """One message from a peer link; the ordering rules are in ``ipc/messages.py``."""
        if isinstance(message, msg.Broadcast):
            self.channels.on_batch(message.batch)
            return
        if self.channels.pending:
            self.channels.flush()  # broadcast frames that came first are written first
        if fds and not isinstance(message, msg.Adopt):
            for fd in fds:
                os.close(fd)
            self.log.warning("ipc.unexpected_fds", kind=type(message).__name__, count=len(fds))
        handler = self._peer_handlers.get(type(message))
        if handler is None:
            self.log.warning("ipc.unknown_message", kind=type(message).__name__)
            return
        handler(message, fds)

    def _peer_table(self) -> dict[type, Handler]:
        """What other processes send this one (``ipc/messages.py``), and who handles it here.

        The broadcaster's own messages are handled only in the broadcaster process.
        """
        me = os.getpid()
        table: dict[type, Handler] = {
            **{op: lambda m, _: self.deliver(m, in_flight=True) for op in msg.SESSION_OPS},
            msg.Forwarded: lambda m, _: self.deliver(m.op, forwarded=True, in_flight=True),
            msg.Adopt: lambda m, fds: self.mover.adopt(m.snapshot, m.deadline, m.src_pid, m.src_worker, fds),
            msg.Adopted: lambda m, _: self.mover.on_adopted(m.sid, m.ok, m.code, m.why),
            msg.Drained: lambda m, _: self.mover.on_drained(m.sid),
            msg.Barrier: lambda m, _: self.links.send(m.src_pid, msg.BarrierAck(m.token, me)),
            msg.BarrierAck: lambda m, _: self.mover.on_barrier_ack(m.token, m.pid),
            msg.Task: lambda m, _: self._on_task(m),
            msg.TaskDone: lambda m, _: self._on_task_done(m.task_id),
            msg.TaskMoved: lambda m, _: self._on_task_moved(m.task_id, m.pid),
            msg.Sync: lambda m, _: self.links.send(m.src_pid, msg.SyncAck(m.token, me)),
            msg.SyncAck: lambda m, _: self._on_sync_ack(m.token, m.pid),
            msg.Finish: lambda m, _: self._on_finish(m.task_id, m.result),
            msg.Pipe: lambda m, _: self.call_hook("on_pipe_message", self.api, m.src, m.data),
            msg.Rpc: lambda m, _: self.spawn(self._serve_rpc(m.req_id, m.reply_pid, m.method, m.args)),
            msg.RpcReply: lambda m, _: self._settle(self._rpc_waiting.pop(m.req_id, None), m.ok, m.value),
            msg.BcRegistered: lambda m, _: self.channels.on_registered(m.token, m.result),
            msg.BcHello: lambda m, _: self.channels.on_hello(m.pid),
            msg.BcSynced: lambda m, _: self.channels.on_synced(m.token),
        }
        if self.kind is ProcKind.BROADCASTER:
            table[msg.BcRegister] = lambda m, _: self._to_broadcaster(m, lambda b: b.on_register(m.token, m.pid, m.wanted))
            table[msg.BcSync] = lambda m, _: self._to_broadcaster(m, lambda b: b.on_sync(m.token, m.pid, m.channel))
            table[msg.BcUnregister] = lambda m, _: self._to_broadcaster(m, lambda b: b.on_unregister(m.pid, m.channel))
        return table

    def _to_broadcaster(self, message: Any, handle: Callable[[Broadcaster], None]) -> None:
        if self.broadcaster is None:  # serve_broadcaster has not made it yet
            self.log.warning("broadcast.not_started", kind=type(message).__name__)
        else:
            handle(self.broadcaster)

    def _on_task(self, m: msg.Task) -> None:
        assert self._task_queue is not None
        if not (self.retiring and self._hand_back(m)):
            self._task_queue.put_nowait(m)

    def _on_task_done(self, task_id: int) -> None:
        self._awaiting_tasks.pop(task_id, None)
        self._progress.set()

    def _on_task_moved(self, task_id: int, pid: int) -> None:
        if task_id in self._awaiting_tasks:
            self._awaiting_tasks[task_id] = pid

    def _on_finish(self, task_id: int, result: Any) -> None:
        self.counters["tasks_finished"] += 1
        self.call_hook("on_finish", self.api, task_id, result)

    def redis(self) -> Any:
        """This process's Redis client (made on first use) for publishing."""
        if self._redis is None:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(self.boot.broker_url, socket_connect_timeout=1.0, socket_timeout=5.0)
        return self._redis

    # -- RPC -----------------------------------------------------------------------------

    async def call(self, pid: int, method: str, args: Any, timeout: float) -> Any:
        req_id = next(self._rpc_ids)
        fut = self.loop.create_future()
        self._rpc_waiting[req_id] = fut
        if not self.links.send(pid, msg.Rpc(req_id, os.getpid(), method, args)):
            self._rpc_waiting.pop(req_id, None)
            raise ServerError(ErrorCode.OWNER_UNREACHABLE, f"process {pid} cannot be reached")
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ServerError(ErrorCode.OWNER_UNREACHABLE, f"process {pid} did not answer {method}") from None
        finally:
            self._rpc_waiting.pop(req_id, None)

    async def _serve_rpc(self, req_id: int, reply_pid: int, method: str, args: Any) -> None:
        try:
            if method == "stats":
                value = self.local_stats()
            elif method == "migrate":
                sid, to_worker = args
                value = await self.mover.move_out(sid, to_worker)
            elif method == "app_request":
                src, data = args
                hook = getattr(self.app, "on_request", None)
                if hook is None:
                    raise ServerError(ErrorCode.UNSUPPORTED, "the application has no on_request hook")
                value = hook(self.api, src, data)
                if inspect.isawaitable(value):
                    value = await value
            else:
                raise ServerError(ErrorCode.NOT_FOUND, f"unknown RPC method {method!r}")
            reply = msg.RpcReply(req_id, True, value)
        except ServerError as exc:
            reply = msg.RpcReply(req_id, False, (int(exc.code), exc.message))
        except Exception as exc:
            self.log.error("rpc.failed", method=method, error=repr(exc), trace=traceback.format_exc())
            reply = msg.RpcReply(req_id, False, (int(ErrorCode.INTERNAL), repr(exc)))
        self.links.send(reply_pid, reply)

    def local_stats(self) -> dict[str, Any]:
        try:
            fds = len(os.listdir("/proc/self/fd"))
        except OSError:
            fds = -1
        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            rss = -1
        return {
            "name": self.name,
            "kind": self.kind.label,
            "id": self.index,
            "pid": os.getpid(),
            "generation": self.generation,
            "retiring": self.retiring,
            "sessions": len(self.sessions),
            "timers": len(self.timers),
            "fds": fds,
            "rss_bytes": rss,
            "ipc_pending_bytes": self.links.pending_bytes(),
            "counters": self.counters.snapshot(),
            **({"broadcast": self.broadcaster.status()} if self.broadcaster is not None else {}),
            **({"channels": self.channels.status()} if self.kind is ProcKind.WORKER and self.channels.enabled else {}),
        }

    async def gather_stats(self, timeout: float) -> list[dict[str, Any]]:
        me = os.getpid()
        entries = [e for e in self.procs.entries() if e.state in (ProcState.READY, ProcState.STOPPING)]

        async def one(entry):
            if entry.pid == me:
                return self.local_stats()
            try:
                return await self.call(entry.pid, "stats", None, timeout)
            except ServerError as exc:
                return {"name": entry.name, "pid": entry.pid, "error": exc.message}

        return list(await asyncio.gather(*(one(e) for e in entries)))

    # -- tasks ------------------------------------------------------------------------------

    def dispatch_task(self, data: Any, dst_worker: int) -> int:
        workers = sorted(
            (e for e in self.procs.entries() if e.kind is ProcKind.TASK and e.state is ProcState.READY),
            key=lambda e: e.index,
        )
        if not workers:
            raise ServerError(ErrorCode.NO_TASK_WORKER, "no task worker is running")
        if dst_worker >= 0:
            chosen = [e for e in workers if e.index == dst_worker]
            if not chosen:
                raise ServerError(ErrorCode.UNKNOWN_PROCESS, f"no task worker {dst_worker}")
            target = chosen[0]
        else:
            target = workers[next(self._task_rr) % len(workers)]
        task_id = next(self._task_ids)
        if not self.links.send(target.pid, msg.Task(task_id, os.getpid(), self.index, data)):
            self.counters["ipc_send_failed"] += 1
            raise ServerError(ErrorCode.OWNER_UNREACHABLE, f"task worker {target.index} cannot be reached")
        self.counters["tasks_dispatched"] += 1
        self._awaiting_tasks[task_id] = target.pid
        return task_id

    async def _task_loop(self) -> None:
        """Run tasks one at a time, in arrival order (a task worker's contract)."""
        assert self._task_queue is not None
        while True:
            task_id, src_pid, src_worker, data = await self._task_queue.get()  # a msg.Task
            token = _current_task.set((task_id, src_pid, 0))
            self._task_running = True
            try:
                result = await self._hook("on_task", self.api, task_id, src_worker, data)
                self.counters["tasks_done"] += 1
                if result is not None:
                    self.links.send(src_pid, msg.Finish(task_id, result))
            finally:
                _current_task.reset(token)
                self._task_running = False
                self.links.send(src_pid, msg.TaskDone(task_id))  # after any finish: same link
                self._progress.set()

    def finish_current_task(self, data: Any) -> None:
        current = _current_task.get()
        if current is None:
            raise ServerError(ErrorCode.BAD_REQUEST, "finish() called outside a task")
        task_id, src_pid, _ = current
        self.links.send(src_pid, msg.Finish(task_id, data))

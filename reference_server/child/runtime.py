"""A child process of the server: the loop every child runs, whatever its role.

After the fork the master calls ``child/main.child_main``, which runs a :class:`Runtime`:
one asyncio loop with what every child has:

* the ctl channel to the master (its EOF means the master died and the child stops);
* the peer inbox and links to every other child (``ipc/``), both dispatched by message
  type through tables (``ipc/messages.py`` lists the messages and their ordering rules);
* the application's hooks and timers, RPCs between processes and the stats of this one;

and the role the master gave it, each in its own module:

* a worker owns sessions (``roles/worker.py``), with their heartbeat
  (``roles/heartbeat.py``), moves (``session/mover.py``) and broadcast channels
  (``session/channels.py``);
* a task worker runs tasks (``roles/taskworker.py``); every child can submit them
  (``child/tasks.py``);
* the broadcaster, the admin API and the broker run their main coroutine
  (``roles/broadcaster.py``, ``roles/admin.py``, ``roles/broker.py``), a custom process its
  application target;
* a worker or task worker replaced by a reload retires (``roles/retiring.py``).

The services see the runtime only as a ``child/context.ChildContext``.

Stopping (SIGTERM, a :class:`~reference_server.ipc.messages.Stop`, or the master gone):
``on_worker_exit`` runs with the loop alive; timers the application left are cleared with
one warning naming them; sessions get a 1001 close frame and up to ``close_timeout`` to
answer; ``on_worker_stop`` runs; what is queued for other processes is given
``DRAIN_ON_EXIT`` to leave; the process exits.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import itertools
import os
import signal
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.countertable import SharedCounters
from ..core.placement import running
from ..core.proctable import ProcEntry, ProcKind, ProcState
from ..errors import CloseCode, ErrorCode, ServerError
from ..ipc import links as ipc
from ..ipc import messages as msg
from ..logs import RateLimitedLog
from ..roles.heartbeat import heartbeat
from ..roles.retiring import Retirer
from ..roles.taskworker import TaskWorker, finish_current_task
from ..roles.worker import Worker
from ..session.channels import Channels
from ..session.mover import Mover
from ..session.session import CloseCause, Session
from .api import Server
from .boot import ChildBoot
from .rpc import Rpc
from .sync import SYNC_TIMEOUT, SyncRounds
from .tasks import TaskBook
from .timers import Timers

if TYPE_CHECKING:
    from ..roles.broadcaster import Broadcaster

class ProcessPhase(enum.Enum):
    """Where a child process stands; it only ever moves forward (STOPPING may follow any phase)."""

    STARTING = "starting"  # hooks and its main coroutine are starting; the master waits for Ready
    SERVING = "serving"  # it said Ready
    RETIRING = "retiring"  # a reload replaced it: it hands its sessions and tasks over (roles/retiring.py)
    STOPPING = "stopping"  # exit hook, sessions closed, messages drained, exit


#: How long an exiting process waits for its queued inter-process messages to leave.
DRAIN_ON_EXIT = 2.0

#: A handler of one kind of message: the message and the fds that came with it (its result is ignored).
Handler = Callable[[Any, list[int]], object]
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
        table = boot.counters
        self.counters = SharedCounters(table.row_view(boot.counter_row) if table and boot.counter_row else None)
        #: Failures of application code (hooks, ops): the trace once per place, then summaries.
        self.failures = RateLimitedLog(self.log, self.counters)
        self.links = ipc.PeerLinks(boot.token, loop, on_gone=self._peer_gone)
        self.inbox: ipc.Inbox | None = None
        self.timers = Timers(loop, self.log, self.counters)
        self.sessions: dict[int, Session] = {}
        self.handler_names = [name for name, _ in self.app.handler_table()]
        self.worker = Worker(self, [handlers for _, handlers in self.app.handler_table()])
        self.tasks = TaskBook(self)
        self.task_worker = TaskWorker(self) if self.kind is ProcKind.TASK else None
        self.retirer = Retirer(self, self)
        self.mover = Mover(self)
        self.channels = Channels(self)
        self.broadcaster: Broadcaster | None = None  # in the broadcaster process
        self.api = Server(self)
        self.phase = ProcessPhase.STARTING
        #: set when the phase becomes STOPPING (what services wait on)
        self.stopping = asyncio.Event()
        self._stop_reason = ""
        self.rpc = Rpc(self, self.local_stats)
        self._background: set[asyncio.Task] = set()
        #: the reload that retired this process, if one did (it then reports to the master at exit)
        self.retired_in: int | None = None
        self._exit_hook_done = False
        self._progress = asyncio.Event()  # something a retiring process waits for happened
        self._master_calls: dict[int, asyncio.Future] = {}
        self._call_ids = itertools.count(1)
        self.syncs = SyncRounds(self)
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
            if self.task_worker is not None:
                self.spawn(self.task_worker.run())
            if self.kind is ProcKind.WORKER:
                self.spawn(heartbeat(self))
            self.spawn(self._periodic())
            if self.kind in (ProcKind.WORKER, ProcKind.TASK):
                await self.run_hook("on_worker_start", self.api)

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
            if self.phase is ProcessPhase.STARTING:
                self.phase = ProcessPhase.SERVING
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
            if self.retired_in is not None:
                report = {**self.retirer.report, "counters": self.counters.snapshot()}
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

    @property
    def retiring(self) -> bool:
        """Whether a reload retired this process (it stays so while it stops)."""
        return self.retired_in is not None

    def request_stop(self, reason: str) -> None:
        if self.phase is not ProcessPhase.STOPPING:
            self.phase = ProcessPhase.STOPPING
            self._stop_reason = reason
            self.stopping.set()

    async def _shutdown(self) -> None:
        await self.run_exit_hook()
        self.clear_leftover_timers()
        await self.worker.close_all(
            CloseCode.GOING_AWAY, "server shutting down", CloseCause.SHUTDOWN, self.config.close_timeout_ms / 1000.0
        )
        if self.kind in (ProcKind.WORKER, ProcKind.TASK):
            await self.run_hook("on_worker_stop", self.api)
        if self._redis is not None:  # the publishing connection
            try:
                await self._redis.aclose()
            except Exception as exc:  # a broken connection: nothing is lost by dropping it
                self.log.debug("redis.close_failed", error=repr(exc))
        # Let written data (close frames, IPC) drain before the process ends.
        for _ in range(3):
            await asyncio.sleep(0)

    async def run_exit_hook(self) -> None:
        """``on_worker_exit``, once (a retiring process runs it before it hands over)."""
        if self.kind in (ProcKind.WORKER, ProcKind.TASK) and not self._exit_hook_done:
            self._exit_hook_done = True
            await self.run_hook("on_worker_exit", self.api)

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

    # -- reload ---------------------------------------------------------------------------

    async def _retire(self, reload_id: int, max_wait_ms: int) -> None:
        """A :class:`~reference_server.ipc.messages.Retire` order: see ``roles/retiring.py``."""
        if self.phase not in (ProcessPhase.STARTING, ProcessPhase.SERVING):
            return
        self.phase = ProcessPhase.RETIRING
        self.retired_in = reload_id
        await self.retirer.retire(reload_id, max_wait_ms)

    async def wait_for(self, condition: Callable[[], bool], *, until: float | None = None) -> bool:
        """Wait until ``condition()`` holds (re-checked whenever something progresses, and every 0.1 s)."""
        while not condition():
            if until is not None and time.monotonic() >= until:
                return False
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), 0.1)
            except TimeoutError:
                pass
        return True

    async def sync_peers(self, timeout: float = SYNC_TIMEOUT) -> list[int]:
        """A sync round (``child/sync.py``): the pids that did not answer in time."""
        return await self.syncs.run(timeout)

    def _peer_gone(self, pid: int) -> None:
        """Process ``pid`` exited: once what it sent is handled, it counts as having answered."""
        if self.inbox is not None:
            self.inbox.drain_from(pid)
        self.mover.peer_gone(pid)
        self.syncs.peer_gone(pid)
        self.tasks.lost(pid)

    def task_worker_gone(self, pid: int) -> None:
        """A task worker with some of our tasks no longer runs: handle what it sent, then report the rest lost."""
        if self.inbox is not None:
            self.inbox.drain_from(pid)
        self.tasks.lost(pid)

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

    def log_failure(self, event: str, exc: BaseException, **fields: Any) -> None:
        """Log a failure of application code: with its trace the first time at a place, then summarised.

        The place is the exception's type and the line that raised it, so a client that makes
        the same op fail a thousand times writes one trace and a periodic count, not a thousand.
        """
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
        key = (type(exc).__name__, where)
        self.failures.once("error", event, key, error=repr(exc)[:500], where=where,
                           trace="".join(traceback.format_exception(exc))[-4000:], **fields)

    async def run_hook(self, name: str, *args: Any) -> Any:
        """Run an application hook; errors are logged (rate-limited), never fatal."""
        try:
            result = getattr(self.app, name)(*args)
            if inspect.isawaitable(result):
                result = await result
            return result
        except Exception as exc:
            self.log_failure("app.hook_failed", exc, hook=name)
            return None

    def call_hook(self, name: str, *args: Any, target: Any = None) -> None:
        """Run a hook (of the application, or ``target``) from synchronous code; a coroutine becomes a task."""
        try:
            result = getattr(self.app if target is None else target, name)(*args)
            if inspect.isawaitable(result):
                self.spawn(self._await_hook(name, result))
        except Exception as exc:
            self.log_failure("app.hook_failed", exc, hook=name)

    async def _await_hook(self, name: str, awaitable) -> None:
        try:
            await awaitable
        except Exception as exc:
            self.log_failure("app.hook_failed", exc, hook=name)

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
            except ipc.FdsTruncated as exc:  # at the open-file limit: refuse what came, stay up
                if isinstance(exc.message, msg.Accept):
                    self.worker.shed(exc.message.sid, "no descriptor left to receive it")
                else:
                    self.failures.once("warning", "ctl.fds_truncated", type(exc.message).__name__,
                                       kind=type(exc.message).__name__, error=str(exc),
                                       note="logged once per kind; later ones are counted and summarised")
                continue
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
            msg.Accept: lambda m, fds: self.worker.accept(m.sid, fds[0], m.local_port, m.handler, m.refuse),
            msg.CloseSessions: lambda m, _: [self.api.close(sid, m.code, m.reason) for sid in m.sids],
            msg.Stop: lambda m, _: self.request_stop(m.reason),
            msg.Retire: lambda m, _: self.spawn(self._retire(m.reload_id, m.max_wait_ms)),
            msg.Reply: lambda m, _: self._settle(self._master_calls.get(m.token), m.ok, m.value),
            msg.Ping: lambda m, _: self.ctl_send(msg.Pong(m.n)),
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

    def find_worker(self, index: int) -> ProcEntry | None:
        """The running worker ``index``, if there is one (the newest, while a reload runs)."""
        return running(self.procs.entries(), ProcKind.WORKER, index)

    def process_alive(self, pid: int) -> bool:
        return any(e.pid == pid and e.state is not ProcState.EMPTY for e in self.procs.entries())

    # -- the worker role, as services reach it ---------------------------------------------

    @property
    def host(self) -> Worker:
        """The host of this process's sessions."""
        return self.worker

    def deliver(
        self, op: msg.SessionOp, forwarded: bool = False, in_flight: bool = False, *, local: bool = False
    ) -> ErrorCode:
        return self.worker.deliver(op, forwarded, in_flight, local=local)

    def note_push_failed(self, sid: int, code: ErrorCode, *, in_flight: bool = False) -> None:
        self.worker.note_push_failed(sid, code, in_flight=in_flight)

    def dispatch_task(self, data: Any, dst_worker: int) -> int:
        return self.tasks.dispatch(data, dst_worker)

    def finish_current_task(self, data: Any) -> None:
        finish_current_task(self.links, data)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.worker.dead_log.flush()
            self.failures.flush()
            self.mover.housekeeping(time.monotonic())
            self.tasks.pending()  # tasks whose task worker died without a word: reported lost

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
            msg.Adopt: lambda m, fds: self.mover.adopt(m.snapshots, m.deadline, m.src_pid, m.src_worker, fds),
            msg.Adopted: lambda m, _: self.mover.on_adopted(m.answers),
            msg.Drained: lambda m, _: self.mover.on_drained(m.sids),
            msg.Barrier: lambda m, _: self.links.send(m.src_pid, msg.BarrierAck(m.token, me)),
            msg.BarrierAck: lambda m, _: self.mover.on_barrier_ack(m.token, m.pid),
            msg.Task: lambda m, _: self._on_task(m),
            msg.TaskDone: lambda m, _: self.tasks.on_done(m.task_id),
            msg.TaskMoved: lambda m, _: self.tasks.on_moved(m.task_id, m.pid),
            msg.Sync: lambda m, _: self.links.send(m.src_pid, msg.SyncAck(m.token, me)),
            msg.SyncAck: lambda m, _: self.syncs.ack(m.token, m.pid),
            msg.Finish: lambda m, _: self.tasks.on_finish(m.task_id, m.result),
            msg.Pipe: lambda m, _: self.call_hook("on_pipe_message", self.api, m.src, m.data),
            msg.Rpc: lambda m, _: self.spawn(self.rpc.serve(m)),
            msg.RpcReply: lambda m, _: self.rpc.on_reply(m),
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

    def _on_task(self, task: msg.Task) -> None:
        if self.task_worker is None:
            self.log.warning("task.not_a_task_worker", task=task.task_id)
        else:
            self.task_worker.on_task(task)

    def redis(self) -> Any:
        """This process's Redis client (made on first use) for publishing."""
        if self._redis is None:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(self.boot.broker_url, socket_connect_timeout=1.0, socket_timeout=5.0)
        return self._redis

    # -- RPC and stats (child/rpc.py) ----------------------------------------------------

    async def call(self, pid: int, method: str, args: Any, timeout: float) -> Any:
        return await self.rpc.call(pid, method, args, timeout)

    async def gather_stats(self, timeout: float) -> list[dict[str, Any]]:
        return await self.rpc.gather_stats(timeout)

    def local_stats(self) -> dict[str, Any]:
        # Either read needs a descriptor: at the open-file limit they fail, and the figure is left out.
        fds: int | None = None
        rss: int | None = None
        try:
            fds = len(os.listdir("/proc/self/fd"))
        except OSError:
            pass
        try:
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
        return {
            "name": self.name,
            "kind": self.kind.label,
            "id": self.index,
            "pid": os.getpid(),
            "generation": self.generation,
            "retiring": self.retiring,
            "phase": self.phase.value,
            "sessions": len(self.sessions),
            "timers": len(self.timers),
            **({"fds": fds} if fds is not None else {}),
            **({"rss_bytes": rss} if rss is not None else {}),
            "ipc_pending_bytes": self.links.pending_bytes(),
            "counters": self.counters.snapshot(),
            **({"broadcast": self.broadcaster.status()} if self.broadcaster is not None else {}),
            **({"channels": self.channels.status()} if self.kind is ProcKind.WORKER and self.channels.enabled else {}),
        }

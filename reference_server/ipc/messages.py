"""Every message between the server's processes, as a typed record.

Two channels carry them (``ipc/links.py``): the **ctl** socketpair between the master
and each child, and the **peer** links between any two children. Each record below is
a ``NamedTuple`` (pickled as a tuple and a class reference, so it costs little more
than the bare tuples it replaces); its docstring names who sends it and who handles it.
A receiver dispatches on the record's type through a table (``CtlHandlers`` in the
master and in the child runtime, ``PeerHandlers`` in the child runtime); a message of a
type that is not in the receiver's table is logged (``ctl.unknown``,
``ipc.unknown_message``) and dropped, with any file descriptor that came with it closed.

Ordering rules the receivers keep (each link delivers in the order sent):

* **Broadcast frames first.** A worker buffers broadcast frames (:class:`Broadcast`)
  and writes them in batches; any other peer message flushes the buffered frames
  before it is handled, so a push or a close sent after a broadcast never overtakes it.
* **Session operations** (:data:`SESSION_OPS`) addressed to a session that is moving
  are held or forwarded by the mover (``session/mover.py``) and applied in the order
  they were sent; a :class:`Forwarded` operation keeps its place behind the ones the
  source forwarded before it.
* **Results after finishes.** A task worker sends :class:`TaskDone` after any
  :class:`Finish` of the same task, on the same link, so the submitter sees the result
  before it forgets the task.
* **Barriers.** A :class:`BarrierAck` (and a :class:`SyncAck`) is sent on the link
  the request came on, behind everything the answering process sent before: once every
  ack is in, nothing sent earlier is still on its way.
* **File descriptors** travel only with :class:`Accept` (ctl) and :class:`Adopt`
  (peer); a receiver closes any other fd that arrives.
"""

from __future__ import annotations

from typing import Any, NamedTuple

# -- ctl: master -> child ---------------------------------------------------------------------


class Accept(NamedTuple):
    """Master -> worker: serve this accepted connection (its socket rides along).

    ``refuse`` (code, message): answer the handshake with HTTP 503 naming the error
    instead (the port is at its connection limit, or was removed with policy close).
    """

    sid: int
    local_port: int
    handler: int
    refuse: tuple[int, str] | None


class CloseSessions(NamedTuple):
    """Master -> worker: close these sessions (their port was removed with policy close)."""

    sids: list[int]
    code: int
    reason: str


class Stop(NamedTuple):
    """Master -> child: stop now (server shutdown, or a process no longer wanted)."""

    reason: str


class Retire(NamedTuple):
    """Master -> worker or task worker: a reload replaced you and your successor is ready."""

    reload_id: int
    max_wait_ms: int


class Ping(NamedTuple):
    """Master -> worker: answer :class:`Pong` with the same ``n`` at once (it proves the worker's loop runs)."""

    n: int


class Reply(NamedTuple):
    """Master -> child: the answer to its :class:`Call` ``token``; ``value`` is (code, message) when not ``ok``."""

    token: int
    ok: bool
    value: Any


# -- ctl: child -> master ---------------------------------------------------------------------


class Ready(NamedTuple):
    """Child -> master: started and serving (a broadcaster: once Redis confirmed its subscription)."""


class Retired(NamedTuple):
    """Child -> master, its last ctl message after a :class:`Retire`: what it handed over and counted."""

    report: dict[str, Any]


class Call(NamedTuple):
    """Child -> master: run ``method`` (``reload``, ``reload_status``, ports); answered by :class:`Reply`, unless ``token`` is 0."""

    token: int
    method: str
    args: Any


class Pong(NamedTuple):
    """Worker -> master: the answer to :class:`Ping` ``n`` (``master/liveness.py``)."""

    n: int


class Load(NamedTuple):
    """Worker -> master: it is ``full`` (no descriptor to spare for another connection) or has room again."""

    full: bool


class Closed(NamedTuple):
    """Worker -> master: session ``sid`` has ended; its id and registry row may be freed."""

    sid: int


class Shutdown(NamedTuple):
    """Child -> master: the application asked the whole server to stop."""


# -- peer: session operations (any process -> the owner of the session) -------------------------


class Push(NamedTuple):
    """Any process -> the worker that owns ``sid``: write one message to the session."""

    sid: int
    data: str | bytes


class Close(NamedTuple):
    """Any process -> the owner of ``sid``: close it; ``last_message``, if any, goes out just before the close frame."""

    sid: int
    code: int
    reason: str
    last_message: str | bytes | None


class Protect(NamedTuple):
    """Any process -> the owner of ``sid``: exempt the session from the heartbeat (or not)."""

    sid: int
    value: bool


class Bind(NamedTuple):
    """Any process -> the owner of ``sid``: bind the session to a user id."""

    sid: int
    value: int


class Group(NamedTuple):
    """Any process -> the owner of ``sid``: put the session in a group."""

    sid: int
    value: int


#: The operations on one session, applied by its owner (``Runtime.deliver``).
SessionOp = Push | Close | Protect | Bind | Group
SESSION_OPS: tuple[type, ...] = (Push, Close, Protect, Bind, Group)


class Forwarded(NamedTuple):
    """Old owner -> new owner of a session that moved: a session operation that reached the old one late."""

    op: SessionOp


# -- peer: migration (session/mover.py) ------------------------------------------------------


class Adopt(NamedTuple):
    """Source worker -> target worker: take these sessions (their sockets ride along, in the
    same order), before ``deadline``. One session for a migration; up to ``BATCH_MAX`` when a
    retiring worker hands its sessions over."""

    snapshots: tuple[Any, ...]  # SessionSnapshots as Mover.transfer_snapshot() prepares them
    deadline: float
    src_pid: int
    src_worker: int


class Adopted(NamedTuple):
    """Target -> source: for each session of one :class:`Adopt`, ``(sid, ok, code, why)``."""

    answers: tuple[tuple[int, bool, int, str], ...]


class Drained(NamedTuple):
    """Source -> target: every operation addressed to these sessions at the source has arrived;
    apply what you held (one message per barrier round)."""

    sids: tuple[int, ...]


class Barrier(NamedTuple):
    """Source of a move -> every other process: answer on your link to me (a :class:`BarrierAck`)."""

    token: int
    src_pid: int


class BarrierAck(NamedTuple):
    """Any process -> the source of a barrier round: everything I sent you before this has arrived."""

    token: int
    pid: int


# -- peer: synchronisation of a retiring process ------------------------------------------------


class Sync(NamedTuple):
    """Retiring process -> every other process: answer on your link to me (a :class:`SyncAck`)."""

    token: int
    src_pid: int


class SyncAck(NamedTuple):
    """Any process -> a retiring process: everything I sent you before this has arrived."""

    token: int
    pid: int


# -- peer: tasks ---------------------------------------------------------------------------------


class Task(NamedTuple):
    """Worker (or retiring task worker, handing it on) -> task worker: run this task."""

    task_id: int
    src_pid: int
    src_worker: int
    data: Any


class Finish(NamedTuple):
    """Task worker -> the task's submitter: a result of task ``task_id`` (its ``on_finish`` runs)."""

    task_id: int
    result: Any


class TaskDone(NamedTuple):
    """Task worker -> the task's submitter: task ``task_id`` ended (after any :class:`Finish`)."""

    task_id: int


class TaskMoved(NamedTuple):
    """Retiring task worker -> the task's submitter: task ``task_id`` now waits at ``pid``."""

    task_id: int
    pid: int


# -- peer: application messages and RPC ----------------------------------------------------------


class Pipe(NamedTuple):
    """Any process -> any process: the application's ``send_message`` (its ``on_pipe_message`` runs)."""

    src: str
    data: Any


class Rpc(NamedTuple):
    """Any process -> any process: run ``method`` (``stats``, ``migrate``, ``app_request``); answered by :class:`RpcReply`."""

    req_id: int
    reply_pid: int
    method: str
    args: Any


class RpcReply(NamedTuple):
    """The answer to :class:`Rpc` ``req_id``; ``value`` is (code, message) when not ``ok``."""

    req_id: int
    ok: bool
    value: Any


# -- peer: Redis broadcast (roles/broadcaster.py, session/channels.py) -------------------------


class Broadcast(NamedTuple):
    """Broadcaster -> worker: frames to write, ``(channel, position, frame)`` in publish order."""

    batch: list[tuple[str, int, bytes]]


class BcHello(NamedTuple):
    """Broadcaster -> every worker, when it (re)starts: register your channels with me (pid ``pid``)."""

    pid: int


class BcRegister(NamedTuple):
    """Worker -> broadcaster: the channels I have members in, with the position each wants from (durable mode)."""

    token: int
    pid: int
    wanted: dict[str, int | None]


class BcRegistered(NamedTuple):
    """Broadcaster -> worker: the answer to :class:`BcRegister` ``token``, per channel."""

    token: int
    result: dict[str, dict[str, Any]]


class BcSync(NamedTuple):
    """Worker -> broadcaster: answer once what was published to ``channel`` before now has been sent to me."""

    token: int
    pid: int
    channel: str


class BcSynced(NamedTuple):
    """Broadcaster -> worker: the answer to :class:`BcSync` ``token``."""

    token: int


class BcUnregister(NamedTuple):
    """Worker -> broadcaster: I have no member left in ``channel``."""

    channel: str
    pid: int


#: What travels on the ctl channel, by direction, and on the peer links.
TO_CHILD: tuple[type, ...] = (Accept, CloseSessions, Stop, Retire, Ping, Reply)
TO_MASTER: tuple[type, ...] = (Ready, Retired, Call, Closed, Load, Pong, Shutdown)
PEER: tuple[type, ...] = (
    *SESSION_OPS, Forwarded, Adopt, Adopted, Drained, Barrier, BarrierAck, Sync, SyncAck,
    Task, Finish, TaskDone, TaskMoved, Pipe, Rpc, RpcReply,
    Broadcast, BcHello, BcRegister, BcRegistered, BcSync, BcSynced, BcUnregister,
)

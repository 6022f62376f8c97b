"""The master process: uvicorn's own worker supervisor, plus task workers and reload records.

:class:`Supervisor` is uvicorn's ``Multiprocess`` (the supervisor behind
``uvicorn --workers N``). What uvicorn does is left as it is:

* it spawns the workers, pings them, and replaces one that dies;
* **SIGHUP is uvicorn's reload signal**: ``restart_all`` replaces the workers
  one by one, starting the new worker, waiting until it serves, then sending
  SIGTERM to the old one. uvicorn's graceful shutdown closes the old
  worker's WebSockets (close code 1012, "service restart"): uvicorn has no
  way to hand a live connection to another process, so every session of a
  reloaded worker is lost. The reload records count them (``sessions_lost``).

What this subclass adds, for the contract:

* the admin API (``admin.py``), in a thread of this process: the master is
  the one process a reload never replaces;
* task worker processes (``taskworker.py``), started, watched and reloaded
  here (new one first, then SIGTERM to the old, killed after ``max_wait_ms``);
* SIGUSR1 reloads like SIGHUP, SIGUSR2 reloads the task workers only;
* a thread that serves reload requests from the workers and the admin API
  (the Redis list ``reload_inbox``): it starts a reload, or merges the
  request into the one that runs (``reloads.py``), and answers at once or,
  with ``wait``, when that reload is done. The main thread, uvicorn's loop,
  does the work between its health checks.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing import resource_tracker
from multiprocessing.context import SpawnProcess
from socket import socket
from typing import Any

import redis
from redis.exceptions import RedisError
from uvicorn.config import Config
from uvicorn.supervisors.multiprocess import Multiprocess

from . import taskworker
from .admin import AdminThread
from .outage import RETRY_ON, OutageLog, sync_retry
from .reloads import ReloadBook
from .settings import Settings

log = logging.getLogger("uvs.master")
spawn = multiprocessing.get_context("spawn")


class Supervisor(Multiprocess):
    def __init__(self, config: Config, sockets: list[socket], settings: Settings, admin_socket: socket) -> None:
        super().__init__(config, sockets)
        self.admin = AdminThread(settings, admin_socket)
        self.settings = settings
        self.keys = settings.keys
        # Two threads use it, one command at a time each (uvicorn's loop and the reload inbox): a
        # pool of two, opened at start, so the master's fds do not drift.
        pool = redis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=2, timeout=10.0, socket_connect_timeout=2.0, socket_timeout=10.0,
            decode_responses=True, retry=sync_retry(), retry_on_error=RETRY_ON,
        )
        conns = [pool.get_connection() for _ in range(pool.max_connections)]
        for conn in conns:
            pool.release(conn)
        self.redis = redis.Redis(connection_pool=pool)
        self.task_procs: list[SpawnProcess] = []
        self.book = ReloadBook()
        self.lock = threading.Lock()
        self.pending = threading.Event()
        self.closing = threading.Event()
        self.waiters: list[tuple[str, bool]] = []  # reload requests answered when the reload is done
        self.inbox = threading.Thread(target=self.serve_inbox, name="reload-inbox", daemon=True)
        for sig in (signal.SIGTERM, signal.SIGINT):  # stop at once, even in the middle of a reload
            signal.signal(sig, self._exit_signal)

    def _exit_signal(self, sig: int, frame: Any) -> None:
        self.signal_queue.append(sig)
        self.should_exit.set()

    # -- the whole life -----------------------------------------------------------------

    def run(self) -> None:
        self.redis.hset(self.keys.procs, "master", json.dumps({
            "kind": "master", "id": 0, "pid": os.getpid(), "name": "master", "generation": 1, "started": time.time(),
        }))
        self.redis.set(self.keys.generation, 1)
        self.save()
        self.task_procs = [self.start_task_worker(i, 1) for i in range(self.settings.task_workers)]
        self.inbox.start()
        self.admin.start()
        try:
            super().run()  # uvicorn: start the workers, supervise them, stop them on SIGTERM
        finally:
            self.closing.set()
            self.admin.stop()
            self.admin.join(timeout=5.0)
            self.stop_task_workers(self.task_procs)
            self.inbox.join(timeout=2.0)
            self.forget_namespace()
            self.redis.close()
            stop_resource_tracker()

    def forget_namespace(self) -> None:
        try:
            keys = list(self.redis.scan_iter(match=f"{self.keys.ns}*", count=500))
            if keys:
                self.redis.delete(*keys)
        except RedisError as exc:
            log.warning("could not remove this server's keys from Redis: %r", exc)

    # -- task workers -------------------------------------------------------------------

    def start_task_worker(self, index: int, generation: int) -> SpawnProcess:
        proc = spawn.Process(target=taskworker.main, args=(self.settings, index, generation), name=f"task-{index}")
        proc.start()
        return proc

    def stop_task_workers(self, procs: list[SpawnProcess]) -> int:
        """SIGTERM, wait up to max_wait_ms, then kill; the number killed."""
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000.0
        killed = 0
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("task worker pid=%s still alive after %d ms: killed", proc.pid, self.settings.max_wait_ms)
                proc.kill()
                proc.join()
                killed += 1
            proc.close()
        return killed

    def registered(self, pid: int | None) -> bool:
        return any(json.loads(raw).get("pid") == pid for raw in self.redis.hvals(self.keys.procs))

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        if self.should_exit.is_set():
            return
        for index, proc in enumerate(self.task_procs):
            if not proc.is_alive():
                log.warning("task worker %d (pid=%s) died with %s: restarted", index, proc.pid, proc.exitcode)
                try:  # a dead process did not unregister: its entry would list a second task-<index>
                    self.redis.hdel(self.keys.procs, f"task-{index}-{proc.pid}")
                except RedisError as exc:
                    log.warning("could not unregister dead task worker %d: %r", index, exc)
                proc.close()
                self.task_procs[index] = self.start_task_worker(index, self.book.generation)

    # -- signals ------------------------------------------------------------------------

    def handle_hup(self) -> None:
        log.info("SIGHUP: reload of the workers and task workers (uvicorn's rolling restart)")
        self.request("all", "signal:SIGHUP")

    def handle_usr1(self) -> None:
        self.request("all", "signal:SIGUSR1")

    def handle_usr2(self) -> None:
        self.request("task_workers", "signal:SIGUSR2")

    def handle_signals(self) -> None:
        super().handle_signals()
        if self.pending.is_set() and not self.should_exit.is_set():
            self.pending.clear()
            self.perform_reload()

    # -- reloads ------------------------------------------------------------------------

    def request(self, scope: str, source: str, answer_to: str | None = None, wait: bool = False) -> dict[str, Any]:
        with self.lock:
            record, merged = self.book.request(scope, source)
            if answer_to is not None and wait:
                self.waiters.append((answer_to, merged))
            self.save()
            self.pending.set()
            return {**record.as_dict(), "merged": merged}

    def serve_inbox(self) -> None:
        outage = OutageLog(log, "reload inbox")
        while not self.closing.is_set():
            try:
                item = self.redis.blpop([self.keys.reload_inbox], timeout=0.5)
            except RedisError as exc:
                outage.failed(exc)
                self.closing.wait(0.2)
                continue
            outage.ok()
            if item is None:
                continue
            try:
                req = json.loads(item[1])
                answer = self.request(req["scope"], req["source"], req["request"], bool(req.get("wait")))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("reload inbox: bad request dropped: %r", exc)
                continue
            if not req.get("wait"):
                self.answer(req["request"], answer)

    def answer(self, request: str, doc: dict[str, Any]) -> None:
        key = self.keys.answer(request)
        self.redis.lpush(key, json.dumps(doc))
        self.redis.expire(key, 60)

    def save(self) -> None:
        self.redis.set(self.keys.reloads, json.dumps(self.book.doc()))

    def perform_reload(self) -> None:
        record = self.book.running
        if record is None:
            return
        self.redis.set(self.keys.generation, record.generation)
        done: set[str] = set()
        while not self.should_exit.is_set():
            with self.lock:
                todo = sorted(record.kinds - done, reverse=True)  # "workers" first, then "task_workers"
                if not todo:
                    self.book.finish()
                    waiters, self.waiters = self.waiters, []
                    self.save()
                    break
            kind = todo[0]
            names = self.registered_names()  # before: a process killed on the way cannot say its name
            old = self.reload_workers(record) if kind == "workers" else self.reload_task_workers(record)
            self.collect_retired(record, old, names)
            done.add(kind)
        else:
            return  # stopping: nobody waits for this reload any more
        final = record.as_dict()
        for request, merged in waiters:
            self.answer(request, {**final, "merged": merged})
        log.info("reload %d done in %.0f ms, %d sessions lost", record.id, final["duration_ms"], record.sessions_lost)

    def reload_workers(self, record: Any) -> list[int]:
        before = [p.pid for p in self.processes]
        self.restart_all()  # uvicorn's own rolling restart, what SIGHUP does
        now = {p.pid for p in self.processes}
        old = [pid for pid in before if pid not in now and pid is not None]
        if len(old) < len(before):
            record.error = "uvicorn kept some old workers: a new worker was not ready in time"
        return old

    def reload_task_workers(self, record: Any) -> list[int]:
        old_procs, old = list(self.task_procs), []
        for index, proc in enumerate(old_procs):
            new = self.start_task_worker(index, record.generation)
            deadline = time.monotonic() + 10.0
            while not self.registered(new.pid) and new.is_alive() and time.monotonic() < deadline:
                self.should_exit.wait(0.02)
            self.task_procs[index] = new
            old.append(proc.pid)
            record.forced_kills += self.stop_task_workers([proc])
        return old

    def registered_names(self) -> dict[int, tuple[str, str]]:
        """pid -> (its key in the process table, its name), for every registered process."""
        out = {}
        for key, raw in self.redis.hgetall(self.keys.procs).items():
            entry = json.loads(raw)
            if isinstance(entry.get("pid"), int):
                out[entry["pid"]] = (key, entry.get("name") or key)
        return out

    def collect_retired(self, record: Any, pids: list[int], names: dict[int, tuple[str, str]]) -> None:
        """Each old process's exit record; one killed before its exit hook ran is recorded by name, and
        its entry in the process table (which it could not remove) goes, or its name would be listed twice."""
        for pid in pids:
            raw = self.redis.hget(self.keys.retired, str(pid))
            if raw is None:  # killed before its exit hook ran
                key, name = names.get(pid, (None, f"pid-{pid}"))
                if key is not None:
                    self.redis.hdel(self.keys.procs, key)
                record.retired.append({"name": name, "pid": pid, "exit_hook": False})
                continue
            self.redis.hdel(self.keys.retired, str(pid))
            entry = json.loads(raw)
            record.retired.append(entry)
            record.sessions_lost += int(entry.get("sessions_lost", 0))


def stop_resource_tracker() -> None:
    """Stop multiprocessing's resource tracker and wait for it.

    The first spawned process starts it; left alone it exits a moment after
    this process, and a server must leave no process behind when it exits.
    ``_stop`` is the interpreter's own way to do it (there is no public one).
    """
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    stop = getattr(tracker, "_stop", None)
    if stop is not None:
        stop()

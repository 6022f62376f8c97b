"""A task worker of the uvicorn target: a process of its own, started by the supervisor.

* It pops tasks from the Redis list ``tasks`` (``BRPOP``), runs them (a task
  may block: that is what task workers are for), and casts the result to the
  worker that sent it, which writes it to the session if the session lives.
* Task worker 0 also runs the sweep rule (contract section 4.3): it lists
  every session of every worker from the registry in Redis, reads the
  records there just before their turn (``READ_AHEAD`` per round trip; one
  worker's sessions after the other, the workers side by side), and asks the
  owner, over the bus, to close the matching ones; an owner that finds the
  session closing answers 1004 (``close_failed``). An ``idle_ms`` rule reads the live record from the owner.
  The rule is kept in Redis, so a new task worker 0 (after a reload) picks
  it up again.
* SIGTERM (a stop or a reload): it takes no new task, finishes the one it
  runs, adds its counters to the retired ones and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

from redis.exceptions import RedisError

from .. import kit
from .bus import Bus, Unreachable
from .cluster import open_pool, redis_client
from .outage import OutageLog
from .settings import Settings

log = logging.getLogger("uvs.task")
REPORTS_KEPT = 200
#: Session records read in one round trip by the sweep: at most this many paces old when used.
READ_AHEAD = 8


class TaskWorker:
    def __init__(self, settings: Settings, index: int, generation: int) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.index = index
        self.generation = generation
        self.name = f"task-{index}"
        self.pid = os.getpid()
        self.bus_name = f"task-{index}-{self.pid}"  # unique: old and new task-0 overlap during a reload
        self.redis = redis_client(settings.redis_url)
        self.bus = Bus(self.redis, self.keys.bus, self.bus_name)
        self.counters: Counter = Counter()
        self.running_task: dict[str, Any] | None = None
        self.current: asyncio.Task | None = None
        self.rule: dict[str, Any] | None = None
        self.rule_changed = asyncio.Event()
        self.sweeper: asyncio.Task | None = None
        self.sweeping = False
        self.stop = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        self.bus.handle("stats", self.bus_stats)
        self.bus.handle("sweep_rule", self.bus_sweep_rule)
        self.bus.handle("sweep_running", lambda: self.sweeping)
        await open_pool(self.redis)
        await self.bus.start()
        await self.redis.hset(self.keys.procs, self.bus_name, json.dumps({
            "kind": "task_worker", "id": self.index, "pid": self.pid, "name": self.name,
            "generation": self.generation, "started": time.time(),
        }))
        if self.index == 0:  # after registering: a rule put since then is told to this process too
            raw = await self.redis.get(self.keys.sweep_rule)
            self.bus_sweep_rule(json.loads(raw) if raw else None)
            self.sweeper = asyncio.create_task(self.sweep_forever())
        log.info("%s ready pid=%d generation=%d", self.name, self.pid, self.generation)
        consumer = asyncio.create_task(self.consume())
        await self.stop.wait()
        consumer.cancel()  # stops waiting in BRPOP; a task already popped runs to its end
        await asyncio.gather(consumer, return_exceptions=True)
        if self.current is not None:
            await asyncio.gather(self.current, return_exceptions=True)
        self.bus_sweep_rule(None)
        if self.sweeper is not None:
            self.sweeper.cancel()
            await asyncio.gather(self.sweeper, return_exceptions=True)
        await self.bus.stop()
        try:
            await asyncio.wait_for(self.retire(), 3.0)
        except (RedisError, OSError, TimeoutError) as exc:  # Redis is gone: exit all the same
            log.warning("%s: could not record its exit in Redis: %r", self.name, exc)
        await self.redis.aclose()
        log.info("%s stopped", self.name)

    async def retire(self) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.procs, self.bus_name)
            pipe.hset(self.keys.retired, str(self.pid), json.dumps({
                "name": self.name, "pid": self.pid, "generation": self.generation,
                "timers_at_exit": 0, "timers_after_exit_hook": 0, "exited": time.time(),
            }))
            for name, value in self.counters.items():
                if value:
                    pipe.hincrby(self.keys.counters_retired, name, value)
            await pipe.execute()

    async def consume(self) -> None:
        outage = OutageLog(log, f"{self.name} task queue")
        while True:
            try:
                popped = await self.redis.brpop([self.keys.tasks], timeout=1)
            except (RedisError, OSError) as exc:
                outage.failed(exc)
                await asyncio.sleep(0.2)
                continue
            outage.ok()
            if popped is None:
                continue
            self.current = asyncio.create_task(self.run_task(json.loads(popped[1])))
            await asyncio.shield(self.current)

    async def run_task(self, job: dict[str, Any]) -> None:
        self.running_task = job
        try:
            if job.get("sleep_ms"):
                await asyncio.sleep(job["sleep_ms"] / 1000.0)
            result = {"data": job.get("data"), "task_worker": self.index}
            self.counters["tasks_done"] += 1
            try:
                await self.bus.cast(job["worker"], "task_result", sid=job["session"], task=job["task"], re=job.get("re"), result=result)
            except (RedisError, OSError) as exc:
                log.warning("%s: result of task %s not sent: %r", self.name, job.get("task"), exc)
        finally:
            self.running_task = None

    def bus_stats(self) -> dict[str, Any]:
        from .node import fds_of

        return {
            "counters": dict(self.counters),
            "process": {
                "kind": "task_worker", "id": self.index, "name": self.name, "pid": self.pid,
                "generation": self.generation, "sessions": 0, "timers": 0, **fds_of(self.pid),
                "running_task": self.running_task is not None,
            },
            "broadcast": None,
        }

    # -- the sweep ----------------------------------------------------------------------

    def bus_sweep_rule(self, rule: dict[str, Any] | None) -> dict[str, Any]:
        """Replace the rule. A sweep under way stops before its next session; none starts after."""
        self.rule = rule
        self.rule_changed.set()
        return {"rule": rule}

    async def sweep_forever(self) -> None:
        """A sweep every ``interval_ms`` from the rule's start; one that overruns is followed at once.

        Never cancelled in the middle of a sweep (a Redis command cut in two
        would cost its connection): a sweep running when the rule changes
        finishes with the rule it started with (contract 4.3).
        """
        while True:
            rule = self.rule
            self.rule_changed.clear()
            if rule is None:
                await self.rule_changed.wait()
                continue
            interval = rule["interval_ms"] / 1000.0
            next_at = time.monotonic() + interval
            while self.rule is rule:
                try:
                    await asyncio.wait_for(self.rule_changed.wait(), max(0.0, next_at - time.monotonic()))
                    break  # a new rule (or the same one put again): start over
                except TimeoutError:
                    pass
                next_at = max(next_at + interval, time.monotonic())
                number = int(await self.redis.incr(self.keys.sweep_number))
                report = await self.sweep(rule, number)
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(self.keys.sweep_reports, json.dumps(report))
                    pipe.ltrim(self.keys.sweep_reports, -REPORTS_KEPT, -1)
                    await pipe.execute()

    async def sweep(self, rule: dict[str, Any], number: int) -> dict[str, Any]:
        """One sweep: the workers side by side, the sessions of each one after the other."""
        self.sweeping = True
        report = kit.new_sweep_report(number, self.name, time.time())
        try:
            by_worker: dict[int, list[int]] = {}
            for sid, raw in (await self.redis.hgetall(self.keys.registry)).items():
                by_worker.setdefault(json.loads(raw)["worker"], []).append(int(sid))
            await asyncio.gather(*(self.sweep_worker(sorted(sids), rule, number, report) for sids in by_worker.values()))
        except (RedisError, OSError) as exc:
            report["errors"].append([0, repr(exc)])  # id 0: the sweep as a whole (contract 4.3)
        finally:
            report["ended"] = time.time()
            self.sweeping = False
        return report

    async def sweep_worker(self, sids: list[int], rule: dict[str, Any], number: int, report: dict[str, Any]) -> None:
        uids, idle, pace = set(rule["uids"]), rule.get("idle_ms"), rule["pace_ms"] / 1000.0
        closing: list[asyncio.Task] = []  # the owners answer while the sweep goes on
        ahead: dict[int, str | None] = {}
        for i, sid in enumerate(sids):
            report["seen"].append(sid)
            if sid not in ahead:  # records are read a few at a time, just before their turn
                batch = sids[i : i + READ_AHEAD]
                ahead = dict(zip(batch, await self.redis.hmget(self.keys.registry, [str(x) for x in batch]), strict=True))
            raw = ahead[sid]
            record = json.loads(raw) if raw else None
            owner = f"worker-{record['worker']}" if record else ""
            if record is not None and idle is not None:  # the live last_recv_time is the owner's
                try:
                    record = await self.bus.call(owner, "record", sid=sid)
                except (Unreachable, TimeoutError):
                    record = None
            if record is None:
                report["info_missing"].append(sid)
            else:
                idle_for = (time.time() - record["last_recv_time"]) * 1000.0
                if (record["uid"] and record["uid"] in uids) or (idle is not None and idle_for > idle):
                    report["matched"].append(sid)
                    notice = json.dumps({"ev": "notice", "reason": rule["notice"], "session": sid, "sweep": number})
                    closing.append(asyncio.create_task(self.close(owner, sid, rule["notice"], notice, report)))
            if pace:
                await asyncio.sleep(pace)
        await asyncio.gather(*closing)

    async def close(self, owner: str, sid: int, reason: str, notice: str, report: dict[str, Any]) -> None:
        try:
            code = await self.bus.call(owner, "close", sid=sid, code=kit.SWEPT, reason=reason, notice=notice)
        except (Unreachable, TimeoutError):
            code = 1005
        if code is None:
            report["closed"].append(sid)
        else:
            report["close_failed"].append([sid, kit.NAMES.get(code, str(code))])


def main(settings: Settings, index: int, generation: int) -> None:
    """Entry point of the process (``multiprocessing``, spawn)."""
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(TaskWorker(settings, index, generation).run())

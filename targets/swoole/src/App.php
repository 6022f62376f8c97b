<?php
/**
 * The contract's application (docs/contract-v1.md, section 3) on Swoole's worker callbacks.
 *
 * One App lives in each worker and task worker. It is written the way the
 * seeds recommend to a Swoole user ("fixed" pattern):
 *
 * - a push first checks exists() and isEstablished(), so a dead session costs
 *   a counted failure and no "session#N does not exists" warning;
 * - a session's own timers are cleared in onClose and, before each tick,
 *   stop without pushing once the session no longer exists (its close is known);
 * - timers of the worker are cleared in onWorkerExit (Timer::clearAll()).
 *
 * With --app naive-push (Options), a session's timers are neither cleared in
 * onClose nor check exists() before they push: they push to the dead session
 * until the worker exits, as a closure over $fd given to Timer::tick does.
 *
 * In SWOOLE_BASE mode a worker holds only its own connections: exists(),
 * isEstablished() and push() are false for another worker's session. A push
 * to such a session is sent to its owner (known from the shared registry) with
 * sendMessage(), the way Swoole's documentation answers that question; the
 * owner pushes and sends the outcome back.
 */

declare(strict_types=1);

namespace SwooleTarget;

use ContractKit\ContractError;
use ContractKit\Protocol;
use Swoole\Coroutine\Channel;
use Swoole\Http\Request;
use Swoole\Timer;
use Swoole\WebSocket\Frame;
use Swoole\WebSocket\Server;

final class App
{
    /** The most timers one session may have running. */
    public const MAX_TIMERS_PER_SESSION = 64;
    /** The longest task sleep accepted, and the longest pause of a sweep per session. */
    public const MAX_SLEEP_MS = 60_000;

    /** Ops of capabilities this target does not declare: answered UNSUPPORTED like any unknown op. */
    private const OPS = ['whoami', 'echo', 'ping', 'timer_start', 'timer_stop', 'timer_status', 'push', 'task', 'bind', 'protect', 'close'];

    /** @var array<int,array{id:int,owner:int,to:int,seq:int,sent:int,failed:array<string,int>,last_error:string,remaining:?int,handle:int}> */
    private array $timers = [];
    /** @var array<int,array<int,true>> timer ids by the session that started them */
    private array $timersOf = [];
    /** @var array<int,callable> outcomes awaited from another worker (SWOOLE_BASE), by request number */
    private array $pending = [];
    private int $nextRequest = 0;

    public function __construct(
        private readonly Server $server,
        private readonly Shared $shared,
        private readonly Options $options,
        private readonly \Swoole\Process $admin,
        private readonly SessionOps $ops,
    ) {
    }

    private function workerId(): int
    {
        return $this->server->worker_id;
    }

    // ---------------------------------------------------------------- session hooks

    public function onConnect(Server $server, int $fd, int $reactorId): void
    {
        $info = $server->getClientInfo($fd);
        $ok = $this->shared->sessions->set((string) $fd, [
            'worker' => $this->workerId(), 'pid' => getmypid(), 'state' => Shared::CONNECTING, 'uid' => 0, 'protected' => 0,
            'remote_addr' => $info['remote_ip'] ?? '', 'remote_port' => $info['remote_port'] ?? 0,
            'local_port' => $info['server_port'] ?? $this->options->port, 'os_fd' => $info['socket_fd'] ?? -1,
            'connect_time' => microtime(true), 'last_recv' => microtime(true),
        ]);
        $this->shared->count('connections_accepted');
        if (!$ok) { // the registry is full: the bound on sessions
            Log::warn('registry_full', ['session' => $fd, 'max_sessions' => $this->options->maxSessions]);
            $server->close($fd);
        }
    }

    public function onOpen(Server $server, Request $request): void
    {
        $fd = $request->fd;
        $info = $server->getClientInfo($fd);
        $this->shared->sessions->set((string) $fd, [
            'state' => Shared::ESTABLISHED, 'os_fd' => $info['socket_fd'] ?? -1, 'last_recv' => microtime(true),
        ]);
        $this->shared->count('sessions_opened');
    }

    public function onMessage(Server $server, Frame $frame): void
    {
        $fd = $frame->fd;
        $this->shared->sessions->set((string) $fd, ['last_recv' => microtime(true)]);
        $this->shared->count('messages_received');
        $id = null;
        $after = null;
        try {
            [$id, $op, $msg] = Protocol::parse($frame->data);
            [$reply, $after] = $this->handle($fd, $op, $msg, $id);
        } catch (ContractError $e) {
            $reply = Protocol::fail($e->reqId ?? $id, $e->getCode(), $e->getMessage());
        }
        $server->push($fd, $reply);
        if ($after !== null) {
            $after();
        }
    }

    public function onClose(Server $server, int $fd, int $reactorId): void
    {
        $state = $this->shared->state($fd);
        $info = $server->getClientInfo($fd);
        if (!$this->options->naive('push')) { // the naive pattern never clears a session's timers
            foreach (array_keys($this->timersOf[$fd] ?? []) as $tid) {
                $this->clearTimer($tid);
            }
            unset($this->timersOf[$fd]);
        }
        if ($state === null) {
            return;
        }
        $this->shared->sessions->del((string) $fd);
        $this->shared->count('sessions_closed');
        // Swoole does not say why a connection closed: a heartbeat close looks like the
        // client's. It is one when the connection was idle past heartbeat_idle_time (Swoole's
        // own last_recv_time counts every frame, pings included) and nobody here closed it.
        $idleTime = $server->setting['heartbeat_idle_time'] ?? 0;
        if ($idleTime > 0 && $state !== Shared::CLOSING && is_array($info) && !($info['close_errno'] ?? 0)
            && microtime(true) - ($info['last_recv_time'] ?? INF) >= $idleTime - 0.001) {
            $this->shared->count('heartbeat_closes');
        }
    }

    // ---------------------------------------------------------------- ops

    /** @return array{0:string,1:?callable} the reply, and what to do once it is sent */
    private function handle(int $fd, string $op, array $msg, mixed $id): array
    {
        if (!in_array($op, self::OPS, true)) {
            throw new ContractError('UNSUPPORTED', "op '$op' is not supported by this server", $id);
        }
        try {
            return match ($op) {
                'whoami' => [Protocol::ok($id, ['session' => $fd, 'worker' => $this->workerId(), 'pid' => getmypid()]), null],
                'echo' => [Protocol::ok($id, ['seq' => $msg['seq'] ?? null, 'data' => $msg['data'] ?? null, 'worker' => $this->workerId()]), null],
                'ping' => [Protocol::ok($id, ['pong' => true]), null],
                'timer_start' => [Protocol::ok($id, ['timer' => $this->startTimer($fd, $msg)]), null],
                'timer_stop' => [Protocol::ok($id, $this->stopTimer($fd, $msg)), null],
                'timer_status' => [Protocol::ok($id, $this->status($this->ownTimer($fd, $msg))), null],
                'push' => [$this->opPush($fd, $msg, $id), null],
                'task' => [Protocol::ok($id, ['task' => $this->dispatchTask($fd, $msg, $id)]), null],
                'bind' => $this->opBind($fd, $msg, $id),
                'protect' => $this->opProtect($fd, $msg, $id),
                'close' => $this->opClose($fd, $msg, $id),
            };
        } catch (ContractError $e) {
            throw new ContractError($e->errName, $e->getMessage(), $id);
        }
    }

    private function opPush(int $fd, array $msg, mixed $id): string
    {
        $to = Protocol::int($msg, 'to', null, 1);
        $text = Protocol::encode(['ev' => 'push', 'from' => $fd, 'to' => $to, 'data' => $msg['data'] ?? null]);
        $code = $this->deliverWait($to, $text);
        return $code === null ? Protocol::ok($id) : Protocol::fail($id, $code, "push to session $to failed");
    }

    private function opBind(int $fd, array $msg, mixed $id): array
    {
        $this->shared->sessions->set((string) $fd, ['uid' => Protocol::int($msg, 'uid', null, 0)]);
        return [Protocol::ok($id), null];
    }

    private function opProtect(int $fd, array $msg, mixed $id): array
    {
        $on = Protocol::bool($msg, 'on', true);
        $this->server->protect($fd, $on);
        $this->shared->sessions->set((string) $fd, ['protected' => $on ? 1 : 0]);
        return [Protocol::ok($id), null];
    }

    private function opClose(int $fd, array $msg, mixed $id): array
    {
        [$code, $reason] = Protocol::closeArgs($msg);
        $this->shared->count('closes_requested');
        return [Protocol::ok($id), function () use ($fd, $code, $reason): void {
            $this->shared->sessions->set((string) $fd, ['state' => Shared::CLOSING]);
            $this->server->disconnect($fd, $code, $reason);
        }];
    }

    // ---------------------------------------------------------------- pushing

    /** Push from this process (counted); null on success, else the contract's code. */
    public function pushLocal(int $to, string $text): ?int
    {
        return $this->ops->push($to, $text);
    }

    /** The worker that handles session ``$to``'s events, or null when it is unknown. */
    private function ownerOf(int $to): ?int
    {
        $worker = $this->shared->sessions->get((string) $to, 'worker');
        return $worker === false ? null : $worker;
    }

    /** Push to ``$to`` wherever it lives; ``$done(?int $code)`` gets the outcome. */
    public function deliver(int $to, string $text, callable $done): void
    {
        $owner = $this->ownerOf($to);
        if ($this->options->mode === SWOOLE_PROCESS || $owner === null || $owner === $this->workerId()) {
            $done($this->pushLocal($to, $text));
            return;
        }
        $rid = ++$this->nextRequest;
        $this->pending[$rid] = $done;
        $this->server->sendMessage(['t' => 'push', 'to' => $to, 'text' => $text, 'rid' => $rid, 'from' => $this->workerId()], $owner);
    }

    /** deliver(), waiting (in this coroutine) for the outcome. */
    public function deliverWait(int $to, string $text): ?int
    {
        $chan = new Channel(1);
        $this->deliver($to, $text, fn (?int $code) => $chan->push([$code]));
        $outcome = $chan->pop(5.0);
        return $outcome === false ? 2001 : $outcome[0];
    }

    /** Messages between the processes (SWOOLE_BASE delivery, admin requests). */
    public function onPipeMessage(Server $server, int $from, mixed $msg): void
    {
        if (!is_array($msg)) {
            return;
        }
        switch ($msg['t'] ?? null) {
            case 'push': // another worker's push to one of our sessions
                $code = $this->pushLocal($msg['to'], $msg['text']);
                $server->sendMessage(['t' => 'outcome', 'rid' => $msg['rid'], 'code' => $code], $msg['from']);
                break;
            case 'outcome':
                $done = $this->pending[$msg['rid']] ?? null;
                unset($this->pending[$msg['rid']]);
                if ($done !== null) {
                    $done($msg['code']);
                }
                break;
            case 'sweep_close': // the sweep closes one of our sessions: notice, then close, in this callback
                $this->shared->reply($msg['rid'], $this->sweepClose($msg['sid'], $msg['notice']));
                break;
            case 'admin': // the admin process asks this worker to act on one of its sessions
                $this->admin->write(serialize(['t' => 'reply', 'rid' => $msg['rid'], 'result' => $this->adminRequest($msg)]));
                break;
        }
    }

    /** The sweep's close of a session of this worker (section 4.3): the notice is its last message. */
    private function sweepClose(int $sid, string $notice): ?int
    {
        if ($this->server->isEstablished($sid)) {
            $this->ops->push($sid, Protocol::encode(['ev' => 'notice', 'reason' => $notice, 'session' => $sid]));
        }
        return $this->ops->close($sid, \ContractKit\Codes::CLOSES['SWEPT'], $notice);
    }

    /** What the admin process asks of the worker that owns a session (SWOOLE_BASE). */
    private function adminRequest(array $msg): ?int
    {
        return match ($msg['op']) {
            'push' => $this->ops->push($msg['sid'], $msg['text']),
            'close' => $this->ops->close($msg['sid'], $msg['code'], $msg['reason']),
            default => 4501,
        };
    }

    // ---------------------------------------------------------------- timers

    private function startTimer(int $fd, array $msg): int
    {
        $interval = Protocol::int($msg, 'interval_ms', null, 1, 3_600_000);
        $to = Protocol::int($msg, 'to', $fd, 1);
        $count = array_key_exists('count', $msg) ? Protocol::int($msg, 'count', null, 1) : null;
        if (count($this->timersOf[$fd] ?? []) >= self::MAX_TIMERS_PER_SESSION) {
            throw new ContractError('BAD_REQUEST', 'a session may run at most ' . self::MAX_TIMERS_PER_SESSION . ' timers');
        }
        $tid = $this->shared->ids->add(1);
        $this->timers[$tid] = [
            'id' => $tid, 'owner' => $fd, 'to' => $to, 'seq' => 0, 'sent' => 0, 'failed' => [], 'last_error' => '',
            'remaining' => $count, 'handle' => Timer::tick($interval, fn () => $this->tick($tid)),
        ];
        $this->timersOf[$fd][$tid] = true;
        $this->shared->count('timers_created');
        return $tid;
    }

    private function tick(int $tid): void
    {
        $t = $this->timers[$tid] ?? null;
        if ($t === null) {
            return;
        }
        if ($t['to'] === $t['owner'] && !$this->options->naive('push') && !$this->server->exists($t['owner'])) {
            // Its own session's close is known: stop without pushing (the seed's fix).
            $this->clearTimer($tid);
            return;
        }
        $seq = ++$this->timers[$tid]['seq'];
        $text = Protocol::encode(['ev' => 'tick', 'timer' => $tid, 'seq' => $seq, 'to' => $t['to'], 'from' => $t['owner']]);
        $last = $t['remaining'] !== null && --$this->timers[$tid]['remaining'] <= 0;
        $this->deliver($t['to'], $text, function (?int $code) use ($tid): void {
            $this->tickOutcome($tid, $code);
        });
        if ($last) { // count attempts done: from now on the timer is unknown
            $this->clearTimer($tid);
        }
    }

    /** A tick's outcome (at once, or from the owner in SWOOLE_BASE): counted if the timer still runs. */
    private function tickOutcome(int $tid, ?int $code): void
    {
        if (!isset($this->timers[$tid])) {
            return;
        }
        if ($code === null) {
            $this->timers[$tid]['sent']++;
        } else {
            $key = (string) $code;
            $this->timers[$tid]['failed'][$key] = ($this->timers[$tid]['failed'][$key] ?? 0) + 1;
            $this->timers[$tid]['last_error'] = \ContractKit\Codes::name($code);
        }
    }

    private function clearTimer(int $tid): void
    {
        if (!isset($this->timers[$tid])) {
            return;
        }
        $t = $this->timers[$tid];
        Timer::clear($t['handle']);
        unset($this->timers[$tid], $this->timersOf[$t['owner']][$tid]);
        $this->shared->count('timers_cleared');
    }

    private function ownTimer(int $fd, array $msg): array
    {
        $tid = Protocol::int($msg, 'timer');
        $t = $this->timers[$tid] ?? null;
        if ($t === null || $t['owner'] !== $fd) {
            throw new ContractError('BAD_REQUEST', "no running timer $tid of this session");
        }
        return $t;
    }

    private function stopTimer(int $fd, array $msg): array
    {
        $t = $this->ownTimer($fd, $msg);
        $this->clearTimer($t['id']);
        return $this->status($t);
    }

    private function status(array $t): array
    {
        ksort($t['failed']);
        return [
            'timer' => $t['id'], 'to' => $t['to'], 'seq' => $t['seq'], 'sent' => $t['sent'],
            'failed' => (object) $t['failed'], 'last_error' => $t['last_error'],
        ];
    }

    /** The exit hook: clear every timer of this process (the seed's fix for reloads). */
    public function onWorkerExit(): void
    {
        Timer::clearAll();
        foreach (array_keys($this->timers) as $tid) {
            unset($this->timers[$tid]);
            $this->shared->count('timers_cleared');
        }
        $this->timersOf = [];
    }

    // ---------------------------------------------------------------- tasks

    private function dispatchTask(int $fd, array $msg, mixed $id): int
    {
        $sleep = Protocol::int($msg, 'sleep_ms', 0, 0, self::MAX_SLEEP_MS);
        if ($this->options->taskWorkers === 0) {
            throw new ContractError('NO_TASK_WORKER', 'this server runs no task worker');
        }
        $tid = $this->shared->ids->add(1);
        $job = ['t' => 'task', 'task' => $tid, 'fd' => $fd, 're' => $id, 'data' => $msg['data'] ?? null, 'sleep_ms' => $sleep];
        if ($this->server->task($job) === false) {
            throw new ContractError('NO_TASK_WORKER', 'no task worker took the task');
        }
        $this->shared->count('tasks_dispatched');
        return $tid;
    }

    /** In a task worker: run a task (sleep, then give its data back). */
    public function onTask(Server $server, int $taskId, int $srcWorker, mixed $job): mixed
    {
        if (!is_array($job) || ($job['t'] ?? null) !== 'task') {
            return null;
        }
        if ($job['sleep_ms'] > 0) {
            usleep($job['sleep_ms'] * 1000);
        }
        $this->shared->count('tasks_done');
        return $job + ['task_worker' => $server->worker_id - $this->options->workers];
    }

    /** In the worker that dispatched it: push the task's result to its session. */
    public function onFinish(Server $server, int $taskId, mixed $job): void
    {
        if (!is_array($job)) {
            return;
        }
        $this->shared->count('tasks_finished');
        $text = Protocol::encode([
            'ev' => 'task_result', 'task' => $job['task'], 're' => $job['re'],
            'result' => ['data' => $job['data'], 'task_worker' => $job['task_worker']],
        ]);
        $this->deliver($job['fd'], $text, static fn () => null);
    }
}

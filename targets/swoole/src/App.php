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
 * Reload (section 8): a session timer lives in the shared timer table too, and
 * is held by one process at a time. The exit hook clears this process's timers
 * (Timer::clearAll()) and releases them; the next generation of the worker
 * takes them over and continues their tick numbers. With --app naive-reload the
 * exit hook is left out, as in the seed: the old worker's timers keep it alive,
 * and ticking, until Swoole kills it after max_wait_time; only then does the
 * new generation take them over.
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
use ContractKit\Log;
use ContractKit\Protocol;
use Swoole\Coroutine\Channel;
use Swoole\Http\Request;
use Swoole\Timer;
use Swoole\WebSocket\Frame;
use Swoole\WebSocket\Server;

final class App
{
    /** The longest task sleep accepted, and the longest pause of a sweep per session. */
    public const MAX_SLEEP_MS = 60_000;

    /** Ops of capabilities this target does not declare: answered UNSUPPORTED like any unknown op. */
    private const OPS = ['whoami', 'echo', 'ping', 'timer_start', 'timer_stop', 'timer_status', 'push', 'task', 'bind', 'protect', 'close'];
    private const BROADCAST_OPS = ['subscribe', 'unsubscribe', 'channels', 'publish'];

    /** @var array<int,array{id:int,owner:int,to:int,interval:int,seq:int,sent:int,failed:array<string,int>,last_error:string,remaining:?int,handle:int}> */
    private array $timers = [];
    /** @var array<int,array<int,true>> timer ids by the session that started them */
    private array $timersOf = [];
    /** @var array<int,int> tasks submitted from a session whose result has not come back (contract 12.2) */
    private array $tasksOf = [];
    /** @var array<int,callable> outcomes awaited from another worker (SWOOLE_BASE), by request number */
    private array $pending = [];
    private int $nextRequest = 0;
    /** This worker's Redis connection for publish (connected on first use). */
    private ?\Redis $redis = null;
    private ?Channel $redisLock = null;
    /** When Swoole called the exit hook (null: not yet), and the timers left after it. */
    private ?float $exitHookAt = null;
    private int $timersAfterHook = 0;

    public function __construct(
        private readonly Server $server,
        private readonly Shared $shared,
        private readonly Options $options,
        private readonly \Swoole\Process $admin,
        private readonly SessionOps $ops,
        private readonly int $generation = 1,
        private readonly ?\Swoole\Process $broadcaster = null,
    ) {
    }

    /**
     * Once the worker runs: take over what the previous generation of this worker
     * left (its sessions' registry rows, its timers), and keep taking over timers
     * as their holder releases them or is gone.
     */
    public function start(): void
    {
        if ($this->options->mode === SWOOLE_PROCESS) { // the master kept the sessions: they are ours now
            foreach ($this->shared->sessions as $key => $row) {
                if ($row['worker'] === $this->workerId() && $row['pid'] !== getmypid()) {
                    $this->shared->sessions->set((string) $key, ['pid' => getmypid()]);
                }
            }
        }
        $this->adoptTimers();
        Timer::tick(5, fn () => $this->adoptTimers());
        if ($this->broadcaster !== null) {
            // The publish connection opens now, not at the first publish: a process's fds must
            // not drift with what its clients ask (the harness compares them with a baseline).
            \Swoole\Coroutine::create(function (): void {
                try {
                    $this->redis ??= $this->options->connectRedis();
                } catch (\Throwable $e) {
                    Log::warn('broadcast.publish_connection', ['error' => $e->getMessage()]);
                }
            });
        }
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
        if ($this->shared->sessions->exists((string) $fd)) { // a partial set() of a gone row would re-create it, zeroed
            $this->shared->sessions->set((string) $fd, [
                'state' => Shared::ESTABLISHED, 'os_fd' => $info['socket_fd'] ?? -1, 'last_recv' => microtime(true),
            ]);
        }
        $this->shared->count('sessions_opened');
    }

    public function onMessage(Server $server, Frame $frame): void
    {
        $fd = $frame->fd;
        $this->shared->setField($fd, 'last_recv', microtime(true));
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
        unset($this->tasksOf[$fd]);
        if ($state === null) {
            return;
        }
        $this->broadcaster?->write(serialize(['t' => 'gone', 'sid' => $fd]));
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
        $declared = in_array($op, self::OPS, true) || ($op === 'reload' && $this->options->reload)
            || (in_array($op, self::BROADCAST_OPS, true) && $this->broadcaster !== null);
        if (!$declared) {
            throw new ContractError('UNSUPPORTED', "op '$op' is not supported by this server", $id);
        }
        try {
            return match ($op) {
                'whoami' => [Protocol::ok($id, ['session' => $fd, 'worker' => $this->workerId(), 'pid' => getmypid()]), null],
                'echo' => [Protocol::ok($id, ['seq' => $msg['seq'] ?? null, 'data' => $msg['data'] ?? null, 'worker' => $this->workerId()]), null],
                'ping' => [Protocol::ok($id, ['pong' => true]), null],
                'timer_start' => [Protocol::ok($id, ['timer' => $this->startTimer($fd, $msg)]), null],
                'timer_stop' => [Protocol::ok($id, $this->stopTimer($fd, $msg)), null],
                'timer_status' => [Protocol::ok($id, Protocol::timerStatus($this->ownTimer($fd, $msg))), null],
                'push' => [$this->opPush($fd, $msg, $id), null],
                'task' => [Protocol::ok($id, ['task' => $this->dispatchTask($fd, $msg, $id)]), null],
                'bind' => $this->opBind($fd, $msg, $id),
                'protect' => $this->opProtect($fd, $msg, $id),
                'close' => $this->opClose($fd, $msg, $id),
                'reload' => [$this->opReload($msg, $id), null],
                'subscribe' => [$this->opSubscribe($fd, $msg, $id), null],
                'unsubscribe' => [$this->opUnsubscribe($fd, $msg, $id), null],
                'channels' => [$this->opChannels($fd, $id), null],
                'publish' => [$this->opPublish($msg, $id), null],
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

    /** Ask the admin process (which runs reloads) for a reload, and wait for its answer. */
    private function opReload(array $msg, mixed $id): string
    {
        $scope = $msg['scope'] ?? 'all';
        if (!in_array($scope, ['all', 'task_workers'], true)) {
            throw new ContractError('BAD_REQUEST', "scope must be 'all' or 'task_workers'");
        }
        $rid = $this->shared->ids->add(1);
        $this->admin->write(serialize(['t' => 'reload', 'rid' => $rid, 'scope' => $scope, 'via' => 'app:worker-' . $this->workerId()]));
        $code = $this->shared->awaitReply($rid, 5.0, $text);
        if ($code === false) {
            return Protocol::fail($id, 2001, 'the admin process did not answer the reload request');
        }
        if ($code !== null) {
            return Protocol::fail($id, $code, 'reload refused');
        }
        return Protocol::ok($id, json_decode($text, true));
    }

    // ---------------------------------------------------------------- broadcast (section 10)

    /** Ask the broadcaster process about session ``$fd``: [code or null, text], or 5006 if it does not answer. */
    private function askBroadcaster(array $request): array
    {
        $rid = $this->shared->ids->add(1);
        if ($this->broadcaster->write(serialize(['rid' => $rid] + $request)) === false) {
            Log::warn('broadcast.pipe_write_failed', ['op' => $request['t'], 'error' => swoole_strerror(swoole_last_error())]);
            return [5006, 'the broadcaster process could not be reached'];
        }
        $code = $this->shared->awaitReply($rid, 5.0, $text);
        if ($code === false) {
            Log::warn('broadcast.no_answer', ['op' => $request['t'], 'rid' => $rid, 'session' => $request['sid'] ?? null]);
            return [5006, 'the broadcaster process did not answer in 5 s'];
        }
        return [$code, (string) $text];
    }

    private function opSubscribe(int $fd, array $msg, mixed $id): string
    {
        $channel = Protocol::channel($msg);
        if (array_key_exists('since', $msg)) {
            throw new ContractError('HISTORY_UNAVAILABLE', 'since: this target runs in pub/sub mode and keeps no history');
        }
        [$code, $text] = $this->askBroadcaster(['t' => 'sub', 'sid' => $fd, 'channel' => $channel]);
        if ($code !== null) {
            return Protocol::fail($id, $code, $text !== '' ? $text : "subscribe to $channel failed");
        }
        return Protocol::ok($id, ['channel' => $channel, 'history' => 0, 'complete' => true, 'id' => null]);
    }

    private function opUnsubscribe(int $fd, array $msg, mixed $id): string
    {
        $channel = Protocol::channel($msg);
        [$code, $text] = $this->askBroadcaster(['t' => 'unsub', 'sid' => $fd, 'channel' => $channel]);
        if ($code !== null) {
            return Protocol::fail($id, $code, "unsubscribe from $channel failed");
        }
        return Protocol::ok($id, ['channel' => $channel, 'was_member' => $text === 'true']);
    }

    private function opChannels(int $fd, mixed $id): string
    {
        [$code, $text] = $this->askBroadcaster(['t' => 'channels', 'sid' => $fd]);
        if ($code !== null) {
            return Protocol::fail($id, $code, 'the broadcaster did not answer');
        }
        return Protocol::ok($id, ['channels' => json_decode($text, true) ?? []]);
    }

    private function opPublish(array $msg, mixed $id): string
    {
        $channel = Protocol::channel($msg, true);
        $payload = json_encode($msg['data'] ?? null, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION);
        $this->redisLock ??= new Channel(1);
        $this->redisLock->push(true); // the worker's coroutines take turns on its connection
        try {
            $this->redis ??= $this->options->connectRedis();
            $this->redis->publish($this->options->broadcastPrefix . $channel, $payload);
        } catch (\Throwable $e) {
            $this->redis = null;
            return Protocol::fail($id, 5005, 'Redis cannot be reached: ' . $e->getMessage());
        } finally {
            $this->redisLock->pop();
        }
        return Protocol::ok($id, ['channel' => $channel, 'msg_id' => null]);
    }

    private function opBind(int $fd, array $msg, mixed $id): array
    {
        $this->shared->setField($fd, 'uid', Protocol::int($msg, 'uid', null, 0));
        return [Protocol::ok($id), null];
    }

    private function opProtect(int $fd, array $msg, mixed $id): array
    {
        $on = Protocol::bool($msg, 'on', true);
        $this->server->protect($fd, $on);
        $this->shared->setField($fd, 'protected', $on ? 1 : 0);
        return [Protocol::ok($id), null];
    }

    private function opClose(int $fd, array $msg, mixed $id): array
    {
        [$code, $reason] = Protocol::closeArgs($msg);
        $this->shared->count('closes_requested');
        return [Protocol::ok($id), function () use ($fd, $code, $reason): void {
            $this->shared->setField($fd, 'state', Shared::CLOSING);
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
            case 'bc': // SWOOLE_BASE: the broadcaster's message for our sessions
                foreach ($msg['sids'] as $sid) {
                    $this->ops->deliverBroadcast($sid, $msg['text']);
                }
                break;
            case 'bc_all': // SWOOLE_BASE: an @all message, for every session of this worker
                foreach ($server->connections as $sid) {
                    $this->ops->deliverBroadcast((int) $sid, $msg['text']);
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
        $interval = Protocol::int($msg, 'interval_ms', null, 1, Protocol::MAX_INTERVAL_MS);
        $to = Protocol::int($msg, 'to', $fd, 1);
        $count = array_key_exists('count', $msg) ? Protocol::int($msg, 'count', null, 1) : null;
        if (count($this->timersOf[$fd] ?? []) >= Protocol::MAX_TIMERS) {
            throw Protocol::limit('timers', Protocol::MAX_TIMERS);
        }
        if ($this->shared->timers->count() >= Shared::MAX_TIMERS) { // the shared table is the bound of the server
            throw new ContractError('LIMIT_REACHED', 'the server runs at most ' . Shared::MAX_TIMERS . ' timers');
        }
        $tid = $this->shared->ids->add(1);
        $this->timers[$tid] = [
            'id' => $tid, 'owner' => $fd, 'to' => $to, 'interval' => $interval, 'seq' => 0, 'sent' => 0, 'failed' => [],
            'last_error' => '', 'remaining' => $count, 'handle' => Timer::tick($interval, fn () => $this->tick($tid)),
        ];
        $this->timersOf[$fd][$tid] = true;
        $this->saveTimer($tid);
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
        $text = Protocol::encode(['ev' => 'tick', 'timer' => $tid, 'seq' => $seq, 'to' => $t['to'], 'from' => $t['owner'], 'gen' => $this->generation]);
        $last = $t['remaining'] !== null && --$this->timers[$tid]['remaining'] <= 0;
        $this->saveTimer($tid);
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
        Protocol::timerOutcome($this->timers[$tid], $code);
        $this->saveTimer($tid);
    }

    /** Write a running timer through to the shared table: held by this process, or released. */
    private function saveTimer(int $tid, bool $release = false): void
    {
        $t = $this->timers[$tid];
        $this->shared->timers->set((string) $tid, [
            'owner' => $t['owner'], 'to' => $t['to'], 'interval' => $t['interval'], 'seq' => $t['seq'], 'sent' => $t['sent'],
            'remaining' => $t['remaining'] ?? -1, 'worker' => $this->workerId(), 'holder' => $release ? 0 : getmypid(),
            'last_error' => $t['last_error'], 'failed' => json_encode((object) $t['failed']),
        ]);
    }

    /** Take over the timers of this worker's sessions that their holder released or left behind. */
    private function adoptTimers(): void
    {
        foreach ($this->shared->timers as $key => $row) {
            if ($row['worker'] === $this->workerId() && !isset($this->timers[(int) $key])) {
                $this->adopt((int) $key, $row);
            }
        }
    }

    /** Take over timer ``$tid`` if its holder released it or is gone; whether this process now runs it. */
    private function adopt(int $tid, array $row): bool
    {
        $holder = $row['holder'];
        if ($holder === getmypid()) {
            return isset($this->timers[$tid]);
        }
        if ($holder !== 0 && \Swoole\Process::kill($holder, 0)) {
            return false; // still held by a live process (the previous generation, exiting)
        }
        $this->timers[$tid] = [
            'id' => $tid, 'owner' => $row['owner'], 'to' => $row['to'], 'interval' => $row['interval'], 'seq' => $row['seq'],
            'sent' => $row['sent'], 'failed' => json_decode($row['failed'], true) ?: [], 'last_error' => $row['last_error'],
            'remaining' => $row['remaining'] < 0 ? null : $row['remaining'],
            'handle' => Timer::tick($row['interval'], fn () => $this->tick($tid)),
        ];
        $this->timersOf[$row['owner']][$tid] = true;
        $this->saveTimer($tid);
        return true;
    }

    private function clearTimer(int $tid): void
    {
        if (!isset($this->timers[$tid])) {
            return;
        }
        $t = $this->timers[$tid];
        Timer::clear($t['handle']);
        unset($this->timers[$tid], $this->timersOf[$t['owner']][$tid]);
        $this->shared->timers->del((string) $tid);
        $this->shared->count('timers_cleared');
    }

    private function ownTimer(int $fd, array $msg): array
    {
        $tid = Protocol::int($msg, 'timer');
        if (!isset($this->timers[$tid])) { // maybe still held by this worker's previous generation, exiting
            $deadline = microtime(true) + $this->options->maxWaitMs / 1000 + 1;
            while (($row = $this->shared->timers->get((string) $tid)) !== false && $row['worker'] === $this->workerId()
                && !$this->adopt($tid, $row) && microtime(true) < $deadline) {
                \Swoole\Coroutine::sleep(0.005);
            }
        }
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
        return Protocol::timerStatus($t);
    }

    /**
     * The exit hook (Swoole calls it again and again while the event loop of an exiting
     * worker is not empty): clear every timer of this process, the seed's fix for reloads,
     * and release the session timers to the next generation. With --app naive-reload it
     * does nothing, as in the seed.
     */
    public function onWorkerExit(): void
    {
        if ($this->exitHookAt !== null) {
            return;
        }
        $this->exitHookAt = microtime(true);
        if (!$this->options->naive('reload')) {
            Timer::clearAll();
            foreach (array_keys($this->timers) as $tid) {
                $this->saveTimer($tid, release: true);
            }
            $this->timers = $this->timersOf = [];
        }
        $this->timersAfterHook = iterator_count(Timer::list());
    }

    /**
     * The process stops: what it still held. Swoole calls the exit hook once; if the event
     * loop is still busy max_wait_time later, Swoole ends it by force ("worker exit timeout,
     * forced termination") and the process stops all the same: that is a forced kill.
     */
    public function onWorkerStop(): void
    {
        if ($this->exitHookAt === null) {
            $this->onWorkerExit(); // a task worker has no exit hook of its own: this is it
        }
        $forced = microtime(true) - $this->exitHookAt >= ($this->server->setting['max_wait_time'] ?? 3) - 0.05;
        $this->shared->exits->set((string) getmypid(), [
            'timers_after_exit_hook' => $this->timersAfterHook, 'timers_at_exit' => iterator_count(Timer::list()),
            'stopped' => $forced ? 0 : 1,
        ]);
    }

    // ---------------------------------------------------------------- tasks

    private function dispatchTask(int $fd, array $msg, mixed $id): int
    {
        $sleep = Protocol::int($msg, 'sleep_ms', 0, 0, Protocol::MAX_SLEEP_MS);
        if ($this->options->taskWorkers === 0) {
            throw new ContractError('NO_TASK_WORKER', 'this server runs no task worker');
        }
        if (($this->tasksOf[$fd] ?? 0) >= Protocol::MAX_TASKS) {
            throw Protocol::limit('tasks outstanding', Protocol::MAX_TASKS);
        }
        $tid = $this->shared->ids->add(1);
        $job = ['t' => 'task', 'task' => $tid, 'fd' => $fd, 're' => $id, 'data' => $msg['data'] ?? null, 'sleep_ms' => $sleep];
        if ($this->server->task($job) === false) {
            throw new ContractError('NO_TASK_WORKER', 'no task worker took the task');
        }
        $this->tasksOf[$fd] = ($this->tasksOf[$fd] ?? 0) + 1;
        $this->shared->count('tasks_dispatched');
        return $tid;
    }

    /** In a task worker: run a task (sleep, then give its data back). */
    public function onTask(Server $server, int $taskId, int $srcWorker, mixed $job): mixed
    {
        if (!is_array($job) || ($job['t'] ?? null) !== 'task') {
            return null;
        }
        // The full sleep_ms, reload or not: SIGTERM (a reload) interrupts usleep(), so sleep
        // again until the deadline (the seed saw a 2 s task cut to 110 ms).
        $until = microtime(true) + $job['sleep_ms'] / 1000;
        while (($left = $until - microtime(true)) > 0) {
            usleep((int) ceil($left * 1_000_000));
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
        $fd = (int) $job['fd'];
        if (isset($this->tasksOf[$fd]) && --$this->tasksOf[$fd] <= 0) {
            unset($this->tasksOf[$fd]);
        }
        $text = Protocol::encode([
            'ev' => 'task_result', 'task' => $job['task'], 're' => $job['re'],
            'result' => ['data' => $job['data'], 'task_worker' => $job['task_worker']],
        ]);
        $this->deliver($job['fd'], $text, static fn () => null);
    }
}

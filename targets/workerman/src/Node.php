<?php
/**
 * A worker process: it owns the sockets of its sessions and runs the contract's
 * application (docs/contract-v1.md, section 3) on Workerman's WebSocket protocol.
 *
 * Everything that crosses processes goes through the hub (Hub.php) on this worker's
 * Link: pushes to sessions (even its own, so that each sender's pushes keep their
 * order while a session moves), tasks, migrations. The worker tells the hub when a
 * session opens, completes its handshake, starts closing and is gone.
 *
 * What the application does that a plain Workerman server does not, each a seed's fix:
 * - session ids are global (this process's pid, shifted, plus a counter): Workerman's
 *   connection id is per process and repeats in every worker;
 * - a close sends a close frame and waits (1 s at most) for the client's, as RFC 6455
 *   says: Workerman's close() sends none;
 * - a session's timers are stopped as soon as its close is known;
 * - the heartbeat counts every frame received, pings and pongs included, and closes with
 *   a 4408 close frame.
 * A migration (section 7) passes the socket to the other worker with SCM_RIGHTS (FdPass)
 * and, through the hub, what Workerman holds for it: bytes read but not parsed, the state
 * of a half-received message, output not yet written, and the session's timers.
 */

declare(strict_types=1);

namespace WorkermanTarget;

use ContractKit\Codes;
use ContractKit\ContractError;
use ContractKit\Log;
use ContractKit\Protocol;
use Workerman\Connection\AsyncTcpConnection;
use Workerman\Connection\TcpConnection;
use Workerman\Protocols\Websocket;
use Workerman\Timer;
use Workerman\Worker;

final class Node
{
    private const OPS = ['whoami', 'echo', 'ping', 'timer_start', 'timer_stop', 'timer_status', 'push', 'task',
        'bind', 'protect', 'close', 'migrate', 'join', 'block'];
    private const RELOAD_OPS = ['reload'];
    /** How long a close waits for the client's close frame before dropping the connection. */
    private const CLOSE_WAIT_S = 1.0;

    public ?Link $link = null;
    /** @var array<int,Session> by session id */
    private array $sessions = [];
    /** @var array<int,array<string,mixed>> by timer id */
    private array $timers = [];
    private int $nextSession = 0;
    private int $nextTimer = 0;
    /** @var array<string,int> */
    public array $counters = [];
    private Worker $worker;
    /** The generation the hub gave this process (with reload: in every tick). */
    private int $generation = 1;

    public function __construct(private readonly Options $options, private readonly FdPass $fdPass)
    {
        $this->counters = array_fill_keys(Hub::COUNTERS, 0);
    }

    /** Set Workerman's hooks on the WebSocket worker. */
    public function install(Worker $worker): void
    {
        $worker->onWorkerStart = fn (Worker $w) => $this->start($w);
        $worker->onWorkerStop = fn () => $this->stop();
        $worker->onConnect = fn (TcpConnection $c) => $this->onConnect($c);
        $worker->onWebSocketConnected = fn (TcpConnection $c) => $this->onHandshake($c);
        $worker->onMessage = fn (TcpConnection $c, mixed $data) => $this->onMessage($c, (string) $data);
        $worker->onClose = fn (TcpConnection $c) => $this->onClose($c);
        $worker->onWebSocketClose = fn (TcpConnection $c) => $this->onCloseFrame($c);
        $worker->onWebSocketPing = fn (TcpConnection $c, string $data) => $this->onPing($c, $data);
        $worker->onWebSocketPong = fn (TcpConnection $c) => $this->touch($c);
    }

    private function start(Worker $worker): void
    {
        $this->worker = $worker;
        Log::$process = "worker-$worker->id";
        $this->link = Hub::connect($this->options, ['kind' => 'worker', 'id' => $worker->id], fn (Link $l, array $m) => $this->onHub($l, $m));
        $this->fdPass->listen($worker->id);
        if ($this->options->heartbeatIdleMs > 0) {
            Timer::add($this->options->heartbeatCheckMs() / 1000, fn () => $this->heartbeat());
        }
    }

    /**
     * Workerman stops this process (a reload, or the server's stop): its timers go now (the
     * exit hook), and the hub hears what the stop closes: Workerman close()s every
     * connection of the worker next, without a close frame, and the process exits.
     */
    private function stop(): void
    {
        foreach (array_keys($this->timers) as $tid) {
            $this->clearTimer($tid);
        }
        $open = count(array_filter($this->sessions, fn (Session $s) => $s->exists()));
        $this->link?->send(['t' => 'bye', 'timers' => count($this->timers), 'sessions' => $open, 'counters' => $this->counters]);
    }

    private function index(): int
    {
        return $this->worker->id;
    }

    private function count(string $name, int $n = 1): void
    {
        $this->counters[$name] = ($this->counters[$name] ?? 0) + $n;
    }

    private function sessionOf(TcpConnection $c): ?Session
    {
        $sid = $c->context->sid ?? null;
        return $sid === null ? null : ($this->sessions[$sid] ?? null);
    }

    // ---------------------------------------------------------------- connection hooks

    private function onConnect(TcpConnection $c): void
    {
        $this->count('connections_accepted');
        if (count($this->sessions) >= $this->options->maxSessions) {
            Log::warn('session.refused', ['reason' => 'this worker holds its maximum of sessions', 'max' => $this->options->maxSessions]);
            $c->destroy();
            return;
        }
        // Global and never reused: the pid (below 2^22 on Linux) above a per-process counter.
        $sid = (getmypid() << 24) | ++$this->nextSession;
        $c->context->sid = $sid;
        $c->websocketType = Websocket::BINARY_TYPE_BLOB;   // "\x81": text frames
        $c->maxSendBufferSize = 8 << 20;
        $c->maxPackageSize = 1 << 20;
        $this->sessions[$sid] = new Session($sid, $c);
        $this->link?->send(['t' => 'open', 'sid' => $sid, 'worker' => $this->index()]);
    }

    private function onHandshake(TcpConnection $c): void
    {
        $s = $this->sessionOf($c);
        if ($s === null || $s->state !== SessionState::Connecting) {
            return;
        }
        $s->state = SessionState::Established;
        $s->lastRecv = microtime(true);
        $this->count('sessions_opened');
        $this->link?->send(['t' => 'est', 'sid' => $s->id]);
    }

    private function touch(TcpConnection $c): void
    {
        $s = $this->sessionOf($c);
        if ($s !== null && !$this->options->naive('heartbeat')) {
            $s->lastRecv = microtime(true);
        }
    }

    private function onPing(TcpConnection $c, string $data): void
    {
        $this->touch($c);
        $s = $this->sessionOf($c);
        if ($s !== null && $s->exists()) {
            $c->send($data);   // the protocol set the frame type to pong for this call
        }
    }

    private function onMessage(TcpConnection $c, string $data): void
    {
        $s = $this->sessionOf($c);
        if ($s === null || !$s->exists()) {
            return;   // nothing is handled once the close is known
        }
        $s->lastRecv = microtime(true);
        $this->count('messages_received');
        Link::go(fn () => $this->handle($s, $data));
    }

    /** The client's close frame: answer it, then drop the connection once the answer is out. */
    private function onCloseFrame(TcpConnection $c): void
    {
        $s = $this->sessionOf($c);
        if ($s !== null && $s->exists()) {
            $this->markClosing($s);
            $c->close(self::closeFrame(1000, ''), true);
            return;
        }
        $c->close();   // our close frame went out before: this is the client's answer
    }

    private function onClose(TcpConnection $c): void
    {
        $s = $this->sessionOf($c);
        if ($s === null || $s->conn !== $c) {
            return;
        }
        if ($s->exists()) {
            $this->markClosing($s);
        }
        unset($this->sessions[$s->id]);
        $this->count('sessions_closed');
        $this->link?->send(['t' => 'gone', 'sid' => $s->id]);
    }

    /** The close is known: no more pushes, the session's own timers stop (section 3.4). */
    private function markClosing(Session $s): void
    {
        $s->state = SessionState::Closing;
        foreach (array_keys($s->timers) as $tid) {
            $this->clearTimer($tid);
        }
        $this->link?->send(['t' => 'closing', 'sid' => $s->id]);
    }

    public static function closeFrame(int $code, string $reason): string
    {
        $payload = pack('n', $code) . substr($reason, 0, 123);
        return "\x88" . chr(strlen($payload)) . $payload;
    }

    /** Close with a close frame and wait for the client's; null, or the contract's code. */
    private function closeSession(Session $s, int $code, string $reason): ?int
    {
        if ($s->state === SessionState::Closing) {
            return 1004;
        }
        $established = $s->state === SessionState::Established;
        $this->markClosing($s);
        $conn = $s->conn;
        if (!$established) {
            $conn->destroy();
            return null;
        }
        $conn->send(self::closeFrame($code, $reason), true);
        Timer::add(self::CLOSE_WAIT_S, static function () use ($conn): void {
            if ($conn->getStatus() !== TcpConnection::STATUS_CLOSED) {
                $conn->destroy();
            }
        }, [], false);
        return null;
    }

    private function heartbeat(): void
    {
        $idle = $this->options->heartbeatIdleMs / 1000;
        $now = microtime(true);
        foreach ($this->sessions as $s) {
            if ($s->state !== SessionState::Established || $s->protected || $now - $s->lastRecv <= $idle) {
                continue;
            }
            $this->count('heartbeat_closes');
            if ($this->options->naive('heartbeat')) {
                $s->conn->close();   // Workerman's manual: close(), no close frame
            } else {
                $this->closeSession($s, Codes::CLOSES['IDLE_TIMEOUT'], 'idle');
            }
        }
    }

    // ---------------------------------------------------------------- the application protocol

    private function handle(Session $s, string $data): void
    {
        $id = null;
        try {
            [$id, $op, $msg] = Protocol::parse($data);
            if (!in_array($op, self::OPS, true) && !($this->options->reload && in_array($op, self::RELOAD_OPS, true))) {
                throw new ContractError('UNSUPPORTED', "op '$op' is not supported by this server", $id);
            }
            $reply = $this->op($s, $op, $msg, $id);
        } catch (ContractError $e) {
            $reply = Protocol::fail($e->reqId ?? $id, $e->getCode(), $e->getMessage());
        }
        if ($reply !== null) {
            $this->sendOwn($s, $reply);
        }
    }

    /** Write to a session from its own handling (a reply): only while it exists here. */
    private function sendOwn(Session $s, string $text): void
    {
        $now = $this->sessions[$s->id] ?? null;
        if ($now !== null && $now->exists()) {
            $now->conn->send($text);
        }
    }

    /** The reply to one request, or null when another process sends it (a migration's). */
    private function op(Session $s, string $op, array $msg, mixed $id): ?string
    {
        try {
            return match ($op) {
                'whoami' => Protocol::ok($id, ['session' => $s->id, 'worker' => $this->index(), 'pid' => getmypid()]),
                'echo' => Protocol::ok($id, ['seq' => $msg['seq'] ?? null, 'data' => $msg['data'] ?? null, 'worker' => $this->index()]),
                'ping' => Protocol::ok($id, ['pong' => true]),
                'timer_start' => Protocol::ok($id, ['timer' => $this->startTimer($s, $msg)]),
                'timer_stop' => Protocol::ok($id, $this->stopTimer($s, $msg)),
                'timer_status' => Protocol::ok($id, Protocol::timerStatus($this->ownTimer($s, $msg))),
                'push' => $this->opPush($s, $msg, $id),
                'task' => $this->opTask($s, $msg, $id),
                'bind' => $this->set($s, $id, fn () => $s->uid = Protocol::int($msg, 'uid', null, 0)),
                'protect' => $this->set($s, $id, fn () => $s->protected = Protocol::bool($msg, 'on', true)),
                'join' => $this->set($s, $id, fn () => $s->group = Protocol::int($msg, 'group', null, 0)),
                'close' => $this->opClose($s, $msg, $id),
                'migrate' => $this->opMigrate($s, $msg, $id),
                'block' => $this->opBlock($msg, $id),
                'reload' => $this->opReload($msg, $id),
            };
        } catch (ContractError $e) {
            throw new ContractError($e->errName, $e->getMessage(), $id);
        }
    }

    private function set(Session $s, mixed $id, callable $apply): string
    {
        $apply();
        return Protocol::ok($id);
    }

    private function opPush(Session $s, array $msg, mixed $id): string
    {
        $to = Protocol::int($msg, 'to', null, 1);
        $text = Protocol::encode(['ev' => 'push', 'from' => $s->id, 'to' => $to, 'data' => $msg['data'] ?? null]);
        $s->inflight++;
        try {
            $code = $this->route($to, ['act' => 'push', 'text' => $text]);
        } finally {
            $s->inflight--;
        }
        return $code === null ? Protocol::ok($id) : Protocol::fail($id, $code, "push to session $to failed");
    }

    /** Ask the owner of session ``$sid`` (through the hub) to act on it: null, or the code. */
    private function route(int $sid, array $request): ?int
    {
        $reply = $this->link?->call(['op' => 'session', 'sid' => $sid] + $request);
        return $reply === null ? 2001 : ($reply['code'] ?? null);
    }

    private function opTask(Session $s, array $msg, mixed $id): string
    {
        $sleep = Protocol::int($msg, 'sleep_ms', 0, 0, Protocol::MAX_SLEEP_MS);
        if ($s->tasksOut >= Protocol::MAX_TASKS) {
            throw Protocol::limit('tasks outstanding', Protocol::MAX_TASKS);
        }
        $s->tasksOut++; // before the call: its result may come back while we wait for the answer
        $s->inflight++;
        try {
            $reply = $this->link?->call(['op' => 'task', 'sid' => $s->id, 're' => $id, 'data' => $msg['data'] ?? null, 'sleep_ms' => $sleep]);
        } finally {
            $s->inflight--;
        }
        if ($reply === null || isset($reply['code'])) {
            $s->tasksOut = max(0, $s->tasksOut - 1);
            return $reply === null
                ? Protocol::fail($id, 2001, 'the hub did not answer')
                : Protocol::fail($id, $reply['code'], 'no task worker is running');
        }
        $this->count('tasks_dispatched');
        return Protocol::ok($id, ['task' => $reply['task']]);
    }

    private function opClose(Session $s, array $msg, mixed $id): ?string
    {
        [$code, $reason] = Protocol::closeArgs($msg);
        $this->count('closes_requested');
        $s->conn->send(Protocol::ok($id));
        $this->closeSession($s, $code, $reason);
        return null;
    }

    /** The app op: the reply comes from the new owner, after the move (section 7). */
    private function opMigrate(Session $s, array $msg, mixed $id): ?string
    {
        $to = Protocol::int($msg, 'worker');
        $reply = $this->link?->call(['op' => 'migrate', 'sid' => $s->id, 'worker' => $to, 're' => $id], 12.0);
        if ($reply === null) {
            return Protocol::fail($id, 2012, 'the hub did not answer');
        }
        if (isset($reply['code'])) {
            return Protocol::fail($id, $reply['code'], $reply['message'] ?? 'migration refused');
        }
        return null;
    }

    /** Ask the hub (which keeps the reloads) for one. */
    private function opReload(array $msg, mixed $id): string
    {
        $reply = $this->link?->call(['op' => 'reload', 'scope' => $msg['scope'] ?? 'all', 'via' => 'app:worker-' . $this->index()]);
        if ($reply === null) {
            return Protocol::fail($id, 2001, 'the hub did not answer the reload request');
        }
        if (isset($reply['code'])) {
            return Protocol::fail($id, $reply['code'], $reply['message'] ?? 'reload refused');
        }
        return Protocol::ok($id, array_diff_key($reply, ['t' => 1, 'rid' => 1]));
    }

    private function opBlock(array $msg, mixed $id): string
    {
        $ms = Protocol::int($msg, 'ms', null, 0, 5000);
        usleep($ms * 1000);   // on purpose: a slow synchronous hook
        return Protocol::ok($id, ['blocked_ms' => $ms, 'worker' => $this->index()]);
    }

    // ---------------------------------------------------------------- timers

    private function startTimer(Session $s, array $msg): int
    {
        $interval = Protocol::int($msg, 'interval_ms', null, 1, Protocol::MAX_INTERVAL_MS);
        $to = Protocol::int($msg, 'to', $s->id, 1);
        $count = array_key_exists('count', $msg) ? Protocol::int($msg, 'count', null, 1) : null;
        if (count($s->timers) >= Protocol::MAX_TIMERS) {
            throw Protocol::limit('timers', Protocol::MAX_TIMERS);
        }
        $tid = (getmypid() << 24) | ++$this->nextTimer;
        $this->timers[$tid] = ['timer' => $tid, 'owner' => $s->id, 'to' => $to, 'interval' => $interval, 'count' => $count,
            'seq' => 0, 'sent' => 0, 'failed' => [], 'last_error' => '', 'handle' => 0];
        $s->timers[$tid] = true;
        $this->count('timers_created');
        $this->arm($tid);
        return $tid;
    }

    private function arm(int $tid): void
    {
        $this->timers[$tid]['handle'] = Timer::add($this->timers[$tid]['interval'] / 1000, fn () => $this->tick($tid));
    }

    private function tick(int $tid): void
    {
        $t = &$this->timers[$tid];
        $owner = $this->sessions[$t['owner']] ?? null;
        if ($owner === null || !$owner->exists()) {
            $this->clearTimer($tid);   // its session's close is known: a session's own timer stops
            return;
        }
        $seq = ++$t['seq'];
        $tick = ['ev' => 'tick', 'timer' => $tid, 'seq' => $seq, 'to' => $t['to'], 'from' => $t['owner']];
        $text = Protocol::encode($this->options->reload ? $tick + ['gen' => $this->generation] : $tick);
        $last = $t['count'] !== null && $seq >= $t['count'];
        if ($t['to'] === $t['owner']) {
            $owner->conn->send($text);
            $this->count('pushes');
            $t['sent']++;
        } else {
            Link::go(function () use ($tid, $text): void {
                $code = $this->route($this->timers[$tid]['to'] ?? 0, ['act' => 'push', 'text' => $text]);
                if (isset($this->timers[$tid])) {
                    Protocol::timerOutcome($this->timers[$tid], $code);
                }
            });
        }
        if ($last) {
            $this->clearTimer($tid);
        }
    }

    private function clearTimer(int $tid): void
    {
        $t = $this->timers[$tid] ?? null;
        if ($t === null) {
            return;
        }
        Timer::del($t['handle']);
        unset($this->timers[$tid]);
        if (isset($this->sessions[$t['owner']])) {
            unset($this->sessions[$t['owner']]->timers[$tid]);
        }
        $this->count('timers_cleared');
    }

    private function ownTimer(Session $s, array $msg): array
    {
        $tid = Protocol::int($msg, 'timer', null, 1);
        if (!isset($s->timers[$tid], $this->timers[$tid])) {
            throw new ContractError('BAD_REQUEST', "no timer $tid of this session");
        }
        return $this->timers[$tid];
    }

    private function stopTimer(Session $s, array $msg): array
    {
        $t = $this->ownTimer($s, $msg);
        $this->clearTimer($t['timer']);
        return Protocol::timerStatus($t);
    }

    // ---------------------------------------------------------------- the hub's requests

    private function onHub(Link $link, array $m): void
    {
        if (($m['t'] ?? null) === 'welcome') {
            $this->generation = (int) $m['generation'];
            return;
        }
        $reply = match ($m['op'] ?? $m['t'] ?? null) {
            'session' => $this->act($m),
            'records' => $this->records(),
            'stats' => $this->stats(),
            'move_out' => $this->moveOut($m),
            'adopt' => $this->adopt($m),
            'move_done' => $this->moveDone($m),
            'move_abort' => $this->moveAbort($m),
            default => ['code' => 4501],
        };
        $link->reply($m, $reply);
    }

    /** The hub forwards what another process asks of one of our sessions. */
    private function act(array $m): array
    {
        $s = $this->sessions[$m['sid']] ?? null;
        switch ($m['act'] ?? null) {
            case 'push':
                return ['code' => $this->push($s, (string) $m['text'])];
            case 'event':   // a task's result: not a push, no counter
                if ($s !== null && $s->tasksOut > 0) {
                    $s->tasksOut--;
                }
                if ($s !== null && $s->exists()) {
                    $s->conn->send((string) $m['text']);
                    $this->count('tasks_finished');
                }
                return [];
            case 'info':
                return $s === null || $s->state === SessionState::Moving
                    ? ['code' => 1005]
                    : ['record' => $s->record($this->index(), $this->osFd($s))];
            case 'close':
                if ($s === null) {
                    return ['code' => 1005];
                }
                if ($s->state === SessionState::Connecting) {
                    return ['code' => 8503];
                }
                $this->count('closes_requested');
                return ['code' => $this->closeSession($s, (int) $m['code'], (string) $m['reason'])];
            case 'sweep_close':   // the notice is the session's last message before the 4001 close
                if ($s === null) {
                    return ['code' => 1005];
                }
                if ($s->state === SessionState::Established) {
                    $s->conn->send(Protocol::encode(['ev' => 'notice', 'reason' => $m['notice'], 'session' => $s->id]));
                }
                $code = $this->closeSession($s, Codes::CLOSES['SWEPT'], (string) $m['notice']);
                if ($code === null) {
                    $this->count('sweep_closes');
                }
                return ['code' => $code];
        }
        return ['code' => 4501];
    }

    /** A push to one of our sessions: null, or the code of the failure (counted). */
    private function push(?Session $s, string $text): ?int
    {
        $code = match (true) {
            $s === null => 1005,
            $s->state === SessionState::Closing => 1004,
            $s->state === SessionState::Connecting => 8503,
            $s->state === SessionState::Moving => 2011,   // the hub holds pushes during a move: not reached
            default => null,
        };
        if ($code === null) {
            $s->conn->send($text);
            $this->count('pushes');
            return null;
        }
        $this->count('push_failed');
        if ($code === 1004 || $code === 1005) {
            $this->count('dead_session_pushes');
        }
        return $code;
    }

    private function osFd(Session $s, ?array $map = null): ?int
    {
        $map ??= Session::fdsByInode();
        return $s->inode === null ? null : ($map[$s->inode] ?? null);
    }

    private function records(): array
    {
        $map = Session::fdsByInode();
        $records = [];
        foreach ($this->sessions as $s) {
            $records[] = $s->record($this->index(), $this->osFd($s, $map));
        }
        return ['records' => $records];
    }

    private function stats(): array
    {
        return ['counters' => $this->counters, 'sessions' => count($this->sessions), 'timers' => count($this->timers)];
    }

    // ---------------------------------------------------------------- migration (section 7)

    /**
     * Hand session ``sid`` to worker ``to``: stop reading it, wait for its requests in
     * flight, pass the socket (SCM_RIGHTS) and answer the state that goes with it. The
     * session stays here, frozen, until the hub says the move is done (then this worker
     * drops its copy of the descriptor, without a FIN) or aborted (then it goes on here).
     */
    private function moveOut(array $m): array
    {
        $s = $this->sessions[$m['sid']] ?? null;
        $code = match (true) {
            $s === null => 1005,
            $s->state === SessionState::Closing => 1004,
            $s->state === SessionState::Connecting => 8503,
            $s->state === SessionState::Moving => 2011,
            default => null,
        };
        if ($code !== null) {
            return ['code' => $code];
        }
        $s->state = SessionState::Moving;
        $s->conn->pauseRecv();
        Wire::holdOutput($s->conn);
        for ($waited = 0; $s->inflight > 0 && $waited < 2000; $waited += 5) {
            Link::sleep(5);
        }
        if ($s->inflight > 0 || $s->conn->getStatus() !== TcpConnection::STATUS_ESTABLISHED) {
            $this->resume($s, null);
            return ['code' => 2012, 'message' => 'the session was busy or its connection ended'];
        }
        $timers = [];
        foreach (array_keys($s->timers) as $tid) {
            Timer::del($this->timers[$tid]['handle']);
            $timers[] = $this->timers[$tid];
        }
        $naive = $this->options->naive('migrate');
        $state = [
            'uid' => $s->uid, 'group' => $s->group, 'protected' => $s->protected, 'migrations' => $s->migrations,
            'connect_time' => $s->connectTime, 'last_recv' => $s->lastRecv,
            'remote' => $s->conn->getRemoteAddress(),
            // The seed's pitfall (workerman #1001 passes the socket alone): what Workerman read
            // but did not parse, the half-received message and the unsent output stay behind.
            'wire' => $naive ? null : base64_encode(serialize(Wire::export($s->conn))),
            'timers' => $naive ? [] : $timers,
        ];
        if (!$this->fdPass->send((int) $m['to'], $s->conn->getSocket(), $s->id)) {
            $this->resume($s, null);
            return ['code' => 2012, 'message' => 'the socket could not be passed to worker ' . $m['to']];
        }
        return ['state' => $state, 'record' => $s->record($this->index(), null)];
    }

    private function moveDone(array $m): array
    {
        $s = $this->sessions[$m['sid']] ?? null;
        if ($s !== null && $s->state === SessionState::Moving) {
            foreach (array_keys($s->timers) as $tid) {
                unset($this->timers[$tid]);
            }
            unset($this->sessions[$s->id]);
            Wire::detach($s->conn, $this->worker);
            $this->count('migrations_out');
        }
        return [];
    }

    private function moveAbort(array $m): array
    {
        $s = $this->sessions[$m['sid']] ?? null;
        if ($s !== null && $s->state === SessionState::Moving) {
            $this->resume($s, array_keys($s->timers));
        }
        return [];
    }

    /** The move did not happen: the session goes on here. */
    private function resume(Session $s, ?array $timers): void
    {
        $s->state = SessionState::Established;
        foreach ($timers ?? [] as $tid) {
            $this->arm($tid);
        }
        Wire::releaseOutput($s->conn);
        $s->conn->resumeRecv();
    }

    /** The hub hands us a session another worker passed: re-create its connection here. */
    private function adopt(array $m): array
    {
        $sid = (int) $m['sid'];
        $socket = $this->fdPass->await($sid, 3.0);
        if ($socket === null) {
            return ['code' => 2012, 'message' => "the socket of session $sid did not arrive"];
        }
        $state = $m['state'];
        $stream = socket_export_stream($socket);
        $conn = new TcpConnection(Worker::getEventLoop(), $stream, (string) $state['remote']);
        $conn->context->sid = $sid;
        $conn->websocketType = Websocket::BINARY_TYPE_BLOB;
        $conn->maxSendBufferSize = 8 << 20;
        $conn->maxPackageSize = 1 << 20;
        Wire::attach($conn, $this->worker, $state['wire'] === null ? null : unserialize(base64_decode($state['wire'])));
        $s = new Session($sid, $conn);
        $s->state = SessionState::Established;
        $s->uid = $state['uid'];
        $s->group = $state['group'];
        $s->protected = $state['protected'];
        $s->migrations = $state['migrations'] + 1;
        $s->connectTime = $state['connect_time'];
        $s->lastRecv = $state['last_recv'];
        $this->sessions[$sid] = $s;
        if (isset($m['reply'])) {
            $conn->send((string) $m['reply']);   // the app op's answer comes from here, after the move
        }
        foreach ($state['timers'] as $t) {
            $this->timers[$t['timer']] = $t;
            $s->timers[$t['timer']] = true;
            $this->arm($t['timer']);
        }
        $this->count('migrations_in');
        return [];
    }
}

<?php
/**
 * The contract's application (section 3) in one process, on Swoole's coroutine HTTP
 * server: each connection is a coroutine that upgrades it and reads its frames in order.
 * Every port serves a handler set (9.3): "default" (this protocol) or "echo".
 *
 * One process means no task workers and no workers to move sessions between: a task is a
 * coroutine of this process (task worker 0), and the process lists itself as worker 0.
 */

declare(strict_types=1);

namespace SwooleTarget\Co;

use ContractKit\Codes;
use ContractKit\ContractError;
use ContractKit\Protocol;
use Swoole\Coroutine;
use Swoole\Http\Request;
use Swoole\Http\Response;
use Swoole\Timer;
use Swoole\WebSocket\CloseFrame;
use Swoole\WebSocket\Frame;

final class CoSession
{
    public bool $closing = false;
    public int $uid = 0;
    public bool $protected = false;
    public float $connectTime;
    public float $lastRecv;
    /** @var array<int,true> */
    public array $timers = [];
    /** Tasks submitted whose result has not been pushed (contract 12.2). */
    public int $tasksOut = 0;

    public function __construct(public readonly int $id, public readonly Response $resp, public readonly Listener $listener, public readonly string $remoteAddr, public readonly int $remotePort)
    {
        $this->connectTime = $this->lastRecv = microtime(true);
    }
}

final class CoApp
{
    private const OPS = ['whoami', 'echo', 'ping', 'timer_start', 'timer_stop', 'timer_status', 'push', 'task',
        'bind', 'protect', 'close', 'listen', 'unlisten', 'listeners'];
    private const CLOSE_WAIT_S = 1.0;

    /** @var array<int,CoSession> */
    public array $sessions = [];
    /** @var array<int,array<string,mixed>> */
    private array $timers = [];
    private int $nextSession = 0;
    private int $nextTimer = 0;
    private int $nextTask = 0;
    /** @var array<string,int> */
    public array $counters;
    public Ports $ports;

    public function __construct(string $host, bool $naivePorts)
    {
        $this->counters = array_fill_keys(['connections_accepted', 'sessions_opened', 'sessions_closed', 'messages_received',
            'pushes', 'push_failed', 'dead_session_pushes', 'closes_requested', 'heartbeat_closes', 'sweep_closes',
            'tasks_dispatched', 'tasks_done', 'tasks_finished', 'timers_created', 'timers_cleared'], 0);
        $this->ports = new Ports($host, $naivePorts, fn ($l, $req, $resp) => $this->serve($l, $req, $resp), fn (Listener $l) => $this->closePort($l));
    }

    private function count(string $name, int $n = 1): void
    {
        $this->counters[$name] += $n;
    }

    /** One connection of port ``$l``, from its HTTP request to its end. */
    private function serve(Listener $l, Request $req, Response $resp): void
    {
        $l->open++;
        try {
            $this->serveConnection($l, $req, $resp);
        } finally {
            $l->open--;
        }
    }

    private function serveConnection(Listener $l, Request $req, Response $resp): void
    {
        $this->count('connections_accepted');
        if ($l->removed) {   // in the backlog of a port removed with policy close
            $l->refuse('removed');
            self::refuseHttp($resp, 3008, "port {$l->port()} was removed");
            return;
        }
        $max = $l->settings['max_connections'];
        if ($max > 0 && count($l->sessions) >= $max) {
            $l->refuse('limit');
            self::refuseHttp($resp, 3006, "port {$l->port()} holds its maximum of $max sessions");
            return;
        }
        if (!$resp->upgrade()) {
            return;   // not a WebSocket handshake: Swoole answered it
        }
        $l->accepted++;
        $s = new CoSession(++$this->nextSession, $resp, $l, (string) ($req->server['remote_addr'] ?? ''), (int) ($req->server['remote_port'] ?? 0));
        $this->sessions[$s->id] = $s;
        $l->sessions[$s->id] = true;
        $this->count('sessions_opened');
        try {
            $this->read($s);
        } finally {
            $this->gone($s);
        }
    }

    private static function refuseHttp(Response $resp, int $code, string $message): void
    {
        $resp->status(503);
        $resp->header('X-Error-Code', (string) $code);
        $resp->header('Content-Type', 'application/json');
        $resp->end(Protocol::encode(['error' => ['code' => $code, 'name' => Codes::name($code), 'message' => $message]]));
    }

    private function read(CoSession $s): void
    {
        while (true) {
            $frame = $s->resp->recv();
            if ($frame === '' || $frame === false) {
                return;   // the connection ended
            }
            $s->lastRecv = microtime(true);
            if ($frame instanceof CloseFrame || ($frame instanceof Frame && $frame->opcode === WEBSOCKET_OPCODE_CLOSE)) {
                if (!$s->closing) {   // the client closes: answer, then end
                    $this->markClosing($s);
                    $s->resp->push(self::closeFrame(1000, ''));
                }
                $s->resp->close();
                return;
            }
            if (!$frame instanceof Frame || $s->closing) {
                continue;
            }
            $this->count('messages_received');
            if ($s->listener->settings['handler'] === 'echo') {
                $s->resp->push($frame->data, $frame->opcode);
                continue;
            }
            $this->handle($s, (string) $frame->data);
        }
    }

    private function gone(CoSession $s): void
    {
        if (!$s->closing) {
            $this->markClosing($s);
        }
        unset($this->sessions[$s->id], $s->listener->sessions[$s->id]);
        if ($s->listener->removed) {
            $s->listener->drained++;
        }
        $this->count('sessions_closed');
    }

    private function markClosing(CoSession $s): void
    {
        $s->closing = true;
        foreach (array_keys($s->timers) as $tid) {
            $this->clearTimer($tid);
        }
    }

    private static function closeFrame(int $code, string $reason): CloseFrame
    {
        $frame = new CloseFrame();
        $frame->code = $code;
        $frame->reason = substr($reason, 0, 123);
        return $frame;
    }

    /** Close with a close frame, then wait (1 s at most) for the client's. */
    public function close(CoSession $s, int $code, string $reason): ?int
    {
        if ($s->closing) {
            return 1004;
        }
        $this->markClosing($s);
        $s->resp->push(self::closeFrame($code, $reason));
        $resp = $s->resp;
        Timer::after((int) (self::CLOSE_WAIT_S * 1000), static fn () => $resp->close());
        return null;
    }

    private function closePort(Listener $l): void
    {
        foreach (array_keys($l->sessions) as $sid) {
            if (isset($this->sessions[$sid])) {
                $this->close($this->sessions[$sid], Codes::CLOSES['GOING_AWAY'], 'port removed');
            }
        }
    }

    /** A push from this process: null, or the code of the failure (counted). */
    public function push(int $to, string $text): ?int
    {
        $s = $this->sessions[$to] ?? null;
        $code = $s === null ? 1005 : ($s->closing ? 1004 : null);
        if ($code === null && $s->resp->push($text) === false) {
            $code = 1004;   // the connection ended under us
        }
        if ($code === null) {
            $this->count('pushes');
            return null;
        }
        $this->count('push_failed');
        $this->count('dead_session_pushes');
        return $code;
    }

    // ---------------------------------------------------------------- ops

    private function handle(CoSession $s, string $data): void
    {
        $id = null;
        try {
            [$id, $op, $msg] = Protocol::parse($data);
            if (!in_array($op, self::OPS, true)) {
                throw new ContractError('UNSUPPORTED', "op '$op' is not supported by this server", $id);
            }
            $reply = $this->op($s, $op, $msg, $id);
        } catch (ContractError $e) {
            $reply = Protocol::fail($e->reqId ?? $id, $e->getCode(), $e->getMessage());
        }
        if ($reply !== null && !$s->closing) {
            $s->resp->push($reply);
        }
    }

    private function op(CoSession $s, string $op, array $msg, mixed $id): ?string
    {
        try {
            return match ($op) {
                'whoami' => Protocol::ok($id, ['session' => $s->id, 'worker' => 0, 'pid' => getmypid(),
                    'port' => $s->listener->port(), 'handler' => $s->listener->settings['handler']]),
                'echo' => Protocol::ok($id, ['seq' => $msg['seq'] ?? null, 'data' => $msg['data'] ?? null, 'worker' => 0]),
                'ping' => Protocol::ok($id, ['pong' => true]),
                'timer_start' => Protocol::ok($id, ['timer' => $this->startTimer($s, $msg)]),
                'timer_stop' => Protocol::ok($id, $this->stopTimer($s, $msg)),
                'timer_status' => Protocol::ok($id, Protocol::timerStatus($this->ownTimer($s, $msg))),
                'push' => $this->opPush($s, $msg, $id),
                'task' => Protocol::ok($id, ['task' => $this->task($s, $msg, $id)]),
                'bind' => $this->set($id, fn () => $s->uid = Protocol::int($msg, 'uid', null, 0)),
                'protect' => $this->set($id, fn () => $s->protected = Protocol::bool($msg, 'on', true)),
                'close' => $this->opClose($s, $msg, $id),
                'listen' => Protocol::ok($id, ['listener' => $this->ports->listen(array_diff_key($msg, ['op' => 1, 'id' => 1]), 'api')->record()]),
                'unlisten' => Protocol::ok($id, ['listener' => $this->ports->unlisten($msg['port'] ?? null, $msg['on_remove'] ?? null)->record()]),
                'listeners' => Protocol::ok($id, $this->ports->listing()),
            };
        } catch (ContractError $e) {
            throw new ContractError($e->errName, $e->getMessage(), $id);
        }
    }

    private function set(mixed $id, callable $apply): string
    {
        $apply();
        return Protocol::ok($id);
    }

    private function opPush(CoSession $s, array $msg, mixed $id): string
    {
        $to = Protocol::int($msg, 'to', null, 1);
        $code = $this->push($to, Protocol::encode(['ev' => 'push', 'from' => $s->id, 'to' => $to, 'data' => $msg['data'] ?? null]));
        return $code === null ? Protocol::ok($id) : Protocol::fail($id, $code, "push to session $to failed");
    }

    private function opClose(CoSession $s, array $msg, mixed $id): ?string
    {
        [$code, $reason] = Protocol::closeArgs($msg);
        $this->count('closes_requested');
        $s->resp->push(Protocol::ok($id));
        $this->close($s, $code, $reason);
        return null;
    }

    /** A task: a coroutine of this process (task worker 0) that holds it for sleep_ms. */
    private function task(CoSession $s, array $msg, mixed $id): int
    {
        $sleep = Protocol::int($msg, 'sleep_ms', 0, 0, Protocol::MAX_SLEEP_MS);
        if ($s->tasksOut >= Protocol::MAX_TASKS) {
            throw Protocol::limit('tasks outstanding', Protocol::MAX_TASKS);
        }
        $s->tasksOut++;
        $task = ++$this->nextTask;
        $this->count('tasks_dispatched');
        $data = $msg['data'] ?? null;
        Coroutine::create(function () use ($s, $task, $id, $data, $sleep): void {
            if ($sleep > 0) {
                Coroutine::sleep($sleep / 1000);
            }
            $this->count('tasks_done');
            $s->tasksOut--;
            if (!$s->closing) {
                $s->resp->push(Protocol::encode(['ev' => 'task_result', 'task' => $task, 're' => $id, 'result' => ['data' => $data, 'task_worker' => 0]]));
                $this->count('tasks_finished');
            }
        });
        return $task;
    }

    // ---------------------------------------------------------------- timers

    private function startTimer(CoSession $s, array $msg): int
    {
        $interval = Protocol::int($msg, 'interval_ms', null, 1, Protocol::MAX_INTERVAL_MS);
        $to = Protocol::int($msg, 'to', $s->id, 1);
        $count = array_key_exists('count', $msg) ? Protocol::int($msg, 'count', null, 1) : null;
        if (count($s->timers) >= Protocol::MAX_TIMERS) {
            throw Protocol::limit('timers', Protocol::MAX_TIMERS);
        }
        $tid = ++$this->nextTimer;
        $this->timers[$tid] = ['timer' => $tid, 'owner' => $s->id, 'to' => $to, 'count' => $count, 'seq' => 0, 'sent' => 0,
            'failed' => [], 'last_error' => '', 'handle' => Timer::tick($interval, fn () => $this->tick($tid))];
        $s->timers[$tid] = true;
        $this->count('timers_created');
        return $tid;
    }

    private function tick(int $tid): void
    {
        $t = &$this->timers[$tid];
        $seq = ++$t['seq'];
        $code = $this->push($t['to'], Protocol::encode(['ev' => 'tick', 'timer' => $tid, 'seq' => $seq, 'to' => $t['to'], 'from' => $t['owner']]));
        Protocol::timerOutcome($t, $code);
        if ($t['count'] !== null && $seq >= $t['count']) {
            $this->clearTimer($tid);
        }
    }

    private function clearTimer(int $tid): void
    {
        $t = $this->timers[$tid] ?? null;
        if ($t === null) {
            return;
        }
        Timer::clear($t['handle']);
        unset($this->timers[$tid]);
        if (isset($this->sessions[$t['owner']])) {
            unset($this->sessions[$t['owner']]->timers[$tid]);
        }
        $this->count('timers_cleared');
    }

    private function ownTimer(CoSession $s, array $msg): array
    {
        $tid = Protocol::int($msg, 'timer', null, 1);
        if (!isset($s->timers[$tid], $this->timers[$tid])) {
            throw new ContractError('BAD_REQUEST', "no timer $tid of this session");
        }
        return $this->timers[$tid];
    }

    private function stopTimer(CoSession $s, array $msg): array
    {
        $t = $this->ownTimer($s, $msg);
        $this->clearTimer($t['timer']);
        return Protocol::timerStatus($t);
    }

    public function timerCount(): int
    {
        return count($this->timers);
    }

    public function record(CoSession $s): array
    {
        return [
            'session' => $s->id, 'state' => $s->closing ? 'closing' : 'established', 'established' => !$s->closing,
            'worker' => 0, 'pid' => getmypid(), 'remote_addr' => $s->remoteAddr, 'remote_port' => $s->remotePort,
            'local_port' => $s->listener->port(), 'connect_time' => $s->connectTime, 'last_recv_time' => $s->lastRecv,
            'uid' => $s->uid, 'protected' => $s->protected, 'os_fd' => $s->closing ? null : $s->resp->fd,
            'handler' => $s->listener->settings['handler'],
        ];
    }
}

<?php
/**
 * What the processes of the Swoole target share: Swoole\Table and Swoole\Atomic,
 * created before the server starts so that every forked process maps them.
 *
 * - sessions: the application's registry of sessions (what GET /v1/sessions lists),
 *   written by the worker that handles each session's events;
 * - counters: the contract's counters (section 4.2), never reset, so that a
 *   process that exits still counts;
 * - procs: every process of the server, by its unique name (section 4);
 * - rule: the sweep rule (section 4.3), as JSON, with a version number;
 * - replies: answers of one process to another's request (the sweep's closes, reloads);
 * - timers: every session timer (section 3.1), written through on each tick, so
 *   that the next generation of a worker continues it after a reload (section 8);
 * - exits: what each process that exited said of its timers (reload records);
 * - generation: the generation of the processes starting now (section 8).
 */

declare(strict_types=1);

namespace SwooleTarget;

use Swoole\Atomic;
use Swoole\Table;

final class Shared
{
    public const CONNECTING = 0;
    public const ESTABLISHED = 1;
    public const CLOSING = 2;
    private const STATES = ['connecting', 'established', 'closing'];

    /** The most session timers the server runs at once (every session may run MAX_TIMERS_PER_SESSION). */
    public const MAX_TIMERS = 16384;

    public const COUNTERS = [
        'connections_accepted', 'sessions_opened', 'sessions_closed', 'messages_received', 'pushes', 'push_failed',
        'dead_session_pushes', 'closes_requested', 'heartbeat_closes', 'sweep_closes', 'tasks_dispatched',
        'tasks_done', 'tasks_finished', 'timers_created', 'timers_cleared',
        'bc_deliveries', 'bc_slow_closed', 'bc_received', 'bc_rejected',
    ];
    private const MAX_OUTAGES = 64;

    public readonly Table $sessions;
    public readonly Table $counters;
    public readonly Table $procs;
    public readonly Table $rule;
    /** Answers of one process to another's request, by request id (see awaitReply()). */
    public readonly Table $replies;
    public readonly Table $timers;
    /** Broadcast outages (section 10.5), oldest first by number, the last MAX_OUTAGES kept. */
    public readonly Table $outages;
    /** 1 while the broadcaster's subscription is confirmed. */
    public readonly Atomic $broadcastConnected;
    /** The number of the last outage (0: none yet). */
    public readonly Atomic $outageCount;
    public readonly Table $exits;
    /** The generation a process starting now belongs to: reload n sets n + 1 before it starts. */
    public readonly Atomic $generation;
    /** Timer and task ids, unique across processes. */
    public readonly Atomic $ids;
    /** 1 while a sweep runs. */
    public readonly Atomic $sweeping;
    public readonly float $started;

    public function __construct(int $maxSessions)
    {
        $this->started = microtime(true);
        $this->sessions = new Table($maxSessions);
        foreach (['worker', 'pid', 'state', 'uid', 'protected', 'remote_port', 'local_port', 'os_fd'] as $col) {
            $this->sessions->column($col, Table::TYPE_INT);
        }
        $this->sessions->column('connect_time', Table::TYPE_FLOAT);
        $this->sessions->column('last_recv', Table::TYPE_FLOAT);
        $this->sessions->column('remote_addr', Table::TYPE_STRING, 46);
        $this->sessions->create();

        $this->counters = new Table(64);
        $this->counters->column('n', Table::TYPE_INT);
        $this->counters->create();
        foreach (self::COUNTERS as $name) {
            $this->counters->set($name, ['n' => 0]);
        }

        $this->procs = new Table(256);
        $this->procs->column('kind', Table::TYPE_STRING, 16);
        $this->procs->column('id', Table::TYPE_INT);
        $this->procs->column('pid', Table::TYPE_INT);
        $this->procs->column('started', Table::TYPE_FLOAT);
        $this->procs->column('generation', Table::TYPE_INT);
        $this->procs->create();

        $this->rule = new Table(2);
        $this->rule->column('version', Table::TYPE_INT);
        $this->rule->column('json', Table::TYPE_STRING, 65536);
        $this->rule->create();
        $this->rule->set('rule', ['version' => 0, 'json' => '']);

        $this->replies = new Table(1024);
        $this->replies->column('code', Table::TYPE_INT);
        $this->replies->column('text', Table::TYPE_STRING, 512);
        $this->replies->column('at', Table::TYPE_FLOAT);
        $this->replies->create();

        $this->timers = new Table(self::MAX_TIMERS);
        foreach (['owner', 'to', 'interval', 'seq', 'sent', 'remaining', 'worker', 'holder'] as $col) {
            $this->timers->column($col, Table::TYPE_INT);
        }
        $this->timers->column('last_error', Table::TYPE_STRING, 40);
        $this->timers->column('failed', Table::TYPE_STRING, 400);
        $this->timers->create();

        $this->exits = new Table(1024);
        foreach (['timers_after_exit_hook', 'timers_at_exit', 'stopped'] as $col) {
            $this->exits->column($col, Table::TYPE_INT);
        }
        $this->exits->create();
        $this->generation = new Atomic(1);
        $this->outages = new Table(self::MAX_OUTAGES * 2);
        $this->outages->column('start', Table::TYPE_FLOAT);
        $this->outages->column('end', Table::TYPE_FLOAT);
        $this->outages->column('attempts', Table::TYPE_INT);
        $this->outages->column('error', Table::TYPE_STRING, 200);
        $this->outages->create();
        $this->broadcastConnected = new Atomic(0);
        $this->outageCount = new Atomic(0);

        $this->ids = new Atomic(0);
        $this->sweeping = new Atomic(0);
    }

    /**
     * Read a custom process's pipe until it closes (in a coroutine): each message that
     * unserializes to an array goes to ``$handle``.
     */
    public static function readPipe(\Swoole\Process $process, callable $handle): void
    {
        $socket = $process->exportSocket();
        while (true) {
            $data = $socket->recv(4 << 20, -1);
            if ($data === '' || $data === false) {
                if ($socket->errCode === SOCKET_ETIMEDOUT || $socket->errCode === SOCKET_EINTR) {
                    continue;
                }
                return;
            }
            $msg = @unserialize($data, ['allowed_classes' => false]);
            if (is_array($msg)) {
                $handle($msg);
            }
        }
    }

    /** Answer request ``$rid``: null (done) or a contract code, and optionally a JSON text. */
    public function reply(int $rid, ?int $code, string $text = ''): void
    {
        if ($this->replies->count() > 512) { // answers nobody waited for any more: drop the old ones
            $stale = [];
            foreach ($this->replies as $key => $row) {
                if ($row['at'] < microtime(true) - 30) {
                    $stale[] = $key;
                }
            }
            foreach ($stale as $key) {
                $this->replies->del((string) $key);
            }
        }
        $this->replies->set((string) $rid, ['code' => $code ?? 0, 'text' => $text, 'at' => microtime(true)]);
    }

    /**
     * Wait (at most ``$timeout`` s; in a coroutine it yields, else it blocks this process)
     * for the answer to request ``$rid``: null (done), a contract code, or false when none
     * came in time. With ``$text``, the answer's text is put there.
     */
    public function awaitReply(int $rid, float $timeout, ?string &$text = null): int|null|false
    {
        $deadline = microtime(true) + $timeout;
        $co = \Swoole\Coroutine::getCid() > 0;
        do {
            $row = $this->replies->get((string) $rid);
            if ($row !== false) {
                $this->replies->del((string) $rid);
                $text = $row['text'];
                return $row['code'] === 0 ? null : $row['code'];
            }
            $co ? \Swoole\Coroutine::sleep(0.002) : usleep(200);
        } while (microtime(true) < $deadline);
        return false;
    }

    /** An outage starts at ``$start`` (the last time Redis was heard). */
    public function outageStart(float $start, string $error): void
    {
        $n = $this->outageCount->add(1);
        $this->outages->set((string) $n, ['start' => $start, 'end' => 0.0, 'attempts' => 0, 'error' => substr($error, 0, 199)]);
        $this->outages->del((string) ($n - self::MAX_OUTAGES));
    }

    /** A failed attempt to subscribe again, during the current outage. */
    public function outageAttempt(int $attempts, string $error): void
    {
        $n = (string) $this->outageCount->get();
        if ($this->outages->exists($n) && $this->outages->get($n, 'end') == 0.0) {
            $this->outages->set($n, ['attempts' => $attempts, 'error' => substr($error, 0, 199)]);
        }
    }

    /** The subscription is confirmed again: whether an outage ended. */
    public function outageEnd(float $end): bool
    {
        $n = (string) $this->outageCount->get();
        if ($this->outages->exists($n) && $this->outages->get($n, 'end') == 0.0) {
            $this->outages->set($n, ['end' => $end]);
            return true;
        }
        return false;
    }

    /** @return list<array{start:float,end:?float,ms:?float,error:string,attempts:int}> */
    public function outageList(): array
    {
        $out = [];
        $last = $this->outageCount->get();
        for ($n = max(1, $last - self::MAX_OUTAGES + 1); $n <= $last; $n++) {
            $row = $this->outages->get((string) $n);
            if ($row !== false) {
                $end = $row['end'] > 0 ? $row['end'] : null;
                $out[] = ['start' => $row['start'], 'end' => $end, 'ms' => $end === null ? null : round(($end - $row['start']) * 1000, 1),
                    'error' => $row['error'], 'attempts' => $row['attempts']];
            }
        }
        return $out;
    }

    public function count(string $name, int $by = 1): void
    {
        $this->counters->incr($name, 'n', $by);
    }

    /** @return array<string,int> */
    public function counters(): array
    {
        $out = [];
        foreach ($this->counters as $name => $row) {
            $out[$name] = $row['n'];
        }
        ksort($out);
        return $out;
    }

    public function register(string $name, string $kind, int $id, int $pid, int $generation = 1): void
    {
        $this->procs->set($name, ['kind' => $kind, 'id' => $id, 'pid' => $pid, 'started' => microtime(true), 'generation' => $generation]);
    }

    /** The session record of section 4.1, or null when the id is unknown. */
    public function record(int $sid): ?array
    {
        $row = $this->sessions->get((string) $sid);
        return $row === false ? null : self::asRecord($sid, $row);
    }

    /** @return list<array<string,mixed>> */
    public function records(): array
    {
        $out = [];
        foreach ($this->sessions as $key => $row) {
            $out[] = self::asRecord((int) $key, $row);
        }
        usort($out, fn ($a, $b) => $a['session'] <=> $b['session']);
        return $out;
    }

    private static function asRecord(int $sid, array $row): array
    {
        return [
            'session' => $sid,
            'state' => self::STATES[$row['state']],
            'established' => $row['state'] === self::ESTABLISHED,
            'worker' => $row['worker'],
            'pid' => $row['pid'],
            'remote_addr' => $row['remote_addr'],
            'remote_port' => $row['remote_port'],
            'local_port' => $row['local_port'],
            'connect_time' => $row['connect_time'],
            'last_recv_time' => $row['last_recv'],
            'uid' => $row['uid'],
            'protected' => $row['protected'] === 1,
            'os_fd' => $row['os_fd'] >= 0 ? $row['os_fd'] : null,
            'handler' => 'default',
        ];
    }

    public function state(int $sid): ?int
    {
        $state = $this->sessions->get((string) $sid, 'state');
        return $state === false ? null : $state;
    }

    public function setField(int $sid, string $field, int|float $value): void
    {
        if ($this->sessions->exists((string) $sid)) {
            $this->sessions->set((string) $sid, [$field => $value]);
        }
    }

    /** @return array<string,mixed>|null */
    public function sweepRule(): ?array
    {
        $json = $this->rule->get('rule', 'json');
        return $json === '' || $json === false ? null : json_decode($json, true);
    }

    public function ruleVersion(): int
    {
        return (int) $this->rule->get('rule', 'version');
    }

    public function setSweepRule(?array $rule): void
    {
        $this->rule->set('rule', ['version' => $this->ruleVersion() + 1, 'json' => $rule === null ? '' : json_encode($rule)]);
    }
}

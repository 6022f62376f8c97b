<?php
/**
 * The hub: one process that every other one links to (a Unix socket, Link.php), and
 * that serves the admin API (docs/contract-v1.md, section 4). Workerman gives its
 * processes no channel between them; this is the one the target brings.
 *
 * It keeps the session directory (id => owner worker and state) from the workers'
 * events, routes every request for a session to its owner, holds those requests while
 * the session moves (then sends them on, in the order they came, to the new owner),
 * runs migrations, hands tasks to the task workers, and keeps the sweep rule and its
 * reports. Counters are summed from every process's own when asked.
 */

declare(strict_types=1);

namespace WorkermanTarget;

use ContractKit\Codes;
use ContractKit\ContractError;
use ContractKit\Http;
use ContractKit\HttpError;
use ContractKit\HttpReader;
use ContractKit\HttpRequest;
use ContractKit\Log;
use ContractKit\Protocol;
use Workerman\Connection\AsyncTcpConnection;
use Workerman\Connection\TcpConnection;
use Workerman\Timer;
use Workerman\Worker;

final class Hub
{
    public const COUNTERS = ['connections_accepted', 'sessions_opened', 'sessions_closed', 'messages_received', 'pushes',
        'push_failed', 'dead_session_pushes', 'closes_requested', 'heartbeat_closes', 'sweep_closes', 'tasks_dispatched',
        'tasks_done', 'tasks_finished', 'timers_created', 'timers_cleared', 'migrations_in', 'migrations_out'];
    private const MAX_REPORTS = 200;
    private const MAX_ADMIN_CONNECTIONS = 256;

    /** @var array<string,Link> by process name */
    private array $links = [];
    /** @var array<int,array{owner:int,state:string,moving:bool,held:list<\Fiber>}> */
    private array $dir = [];
    /** @var array<string,int> this process's own counters, and those of processes gone */
    private array $counters;
    private int $nextTask = 0;
    private int $taskTurn = 0;
    private ?array $rule = null;
    private bool $sweeping = false;
    private array $reports = [];
    private int $adminConnections = 0;
    private float $started;
    private ?Reloads $reloads = null;
    /** @var array<string,array<string,int>> each linked process's counters, as it last told them */
    private array $lastCounters = [];

    public function __construct(private readonly Options $options)
    {
        $this->counters = array_fill_keys(self::COUNTERS, 0);
        $this->started = microtime(true);
        if ($options->reload) {
            $this->reloads = new Reloads(fn (): array => $this->links);
        }
    }

    public static function socketPath(Options $options): string
    {
        return $options->runDir . '/hub.sock';
    }

    /**
     * From any other process: link to the hub (retrying until it listens), say who we
     * are, and hand its requests and events to ``$onMessage``.
     */
    public static function connect(Options $options, array $hello, \Closure $onMessage): Link
    {
        $conn = new AsyncTcpConnection('unix://' . self::socketPath($options));
        $link = new Link($conn, $onMessage);
        $conn->onConnect = static fn () => $link->send(['t' => 'hello', 'pid' => getmypid()] + $hello);
        $conn->onMessage = static fn ($c, $data) => $link->feed((string) $data);
        $conn->onClose = static function () use ($conn, $link): void {
            $link->fail();
            Timer::add(0.1, static fn () => $conn->reconnect(0), [], false);
        };
        $conn->connect();
        return $link;
    }

    // ---------------------------------------------------------------- start

    /**
     * The hub's Worker listens on the Unix socket the others link to: the master binds it
     * before it forks, so a process that starts before the hub runs queues in its backlog.
     * The admin API's port is opened by the hub itself, once it runs.
     */
    public function install(Worker $hub): void
    {
        $hub->onWorkerStart = fn () => $this->start();
        $hub->onConnect = function (TcpConnection $c): void {
            $c->context->link = new Link($c, fn (Link $l, array $m) => $this->onLink($l, $m));
        };
        $hub->onMessage = fn (TcpConnection $c, mixed $data) => $c->context->link->feed((string) $data);
        $hub->onClose = fn (TcpConnection $c) => $this->linkGone($c->context->link);
    }

    private function start(): void
    {
        Log::$process = 'hub';
        $admin = new Worker("tcp://127.0.0.1:{$this->options->adminPort}");
        $admin->onConnect = fn (TcpConnection $c) => $this->onAdminConnect($c);
        $admin->onMessage = fn (TcpConnection $c, mixed $data) => $this->onAdminData($c, (string) $data);
        $admin->onClose = function (TcpConnection $c): void {
            if (isset($c->context->reader)) {
                $this->adminConnections--;
            }
        };
        $admin->listen();
    }

    // ---------------------------------------------------------------- links

    private function onLink(Link $link, array $m): void
    {
        switch ($m['t'] ?? null) {
            case 'hello':
                $link->hello = $m;
                $link->name = ($m['kind'] === 'worker' ? 'worker-' : 'task-') . (int) $m['id'];
                $old = $this->links[$link->name] ?? null;
                $this->links[$link->name] = $link;
                $old?->conn->close();
                $link->generation = $this->reloads?->generation ?? 1;
                $link->send(['t' => 'welcome', 'generation' => $link->generation]);
                Log::info('process.linked', ['name' => $link->name, 'pid' => $m['pid'], 'generation' => $link->generation]);
                $this->reloads?->maybeDone();
                return;
            case 'bye':   // from onWorkerStop: its last counters, and what its stop closes
                $this->lastCounters[$link->name] = $m['counters'];
                $this->reloads?->goodbye((int) ($link->hello['pid'] ?? 0), $m);
                return;
            case 'open':
                $this->dir[(int) $m['sid']] = ['owner' => (int) $m['worker'], 'state' => 'connecting', 'moving' => false, 'held' => []];
                return;
            case 'est':
            case 'closing':
                if (isset($this->dir[$m['sid']])) {
                    $this->dir[$m['sid']]['state'] = $m['t'] === 'est' ? 'established' : 'closing';
                }
                return;
            case 'gone':
                $this->forget((int) $m['sid']);
                return;
            case 'task_done':
                $text = Protocol::encode(['ev' => 'task_result', 'task' => $m['task'], 're' => $m['re'], 'result' => $m['result']]);
                $this->toOwner((int) $m['sid'], ['act' => 'event', 'text' => $text]);
                return;
            case 'sweep_running':
                $this->sweeping = (bool) $m['on'];
                return;
            case 'sweep_report':
                $this->reports[] = $m['report'];
                if (count($this->reports) > self::MAX_REPORTS) {
                    array_shift($this->reports);
                }
                return;
            case 'req':
                $link->reply($m, $this->request($m));
                return;
        }
    }

    private function forget(int $sid): void
    {
        $entry = $this->dir[$sid] ?? null;
        unset($this->dir[$sid]);
        foreach ([...$entry['readers'] ?? [], ...$entry['held'] ?? []] as $fiber) {
            $fiber->resume();
        }
    }

    private function linkGone(Link $link): void
    {
        $link->fail();
        if (($this->links[$link->name] ?? null) !== $link) {
            return;
        }
        unset($this->links[$link->name]);
        foreach ($this->lastCounters[$link->name] ?? [] as $key => $n) {
            $this->counters[$key] = ($this->counters[$key] ?? 0) + $n;   // counters never go down (section 4.2)
        }
        unset($this->lastCounters[$link->name]);
        Log::info('process.unlinked', ['name' => $link->name]);
        $this->reloads?->gone($link->name, (int) ($link->hello['pid'] ?? 0));
        if (($link->hello['kind'] ?? '') === 'worker') {
            // Its sessions died with it (Workerman's connections belong to one process).
            foreach ($this->dir as $sid => $entry) {
                if ($entry['owner'] === (int) $link->hello['id']) {
                    $this->forget($sid);
                }
            }
        }
    }

    /** A request of another process. */
    private function request(array $m): array
    {
        return match ($m['op'] ?? null) {
            'session' => $this->toOwner((int) $m['sid'], array_diff_key($m, ['t' => 1, 'rid' => 1, 'op' => 1, 'sid' => 1])),
            'task' => $this->dispatchTask($m),
            'migrate' => $this->appMigrate($m),
            'list' => ['sids' => array_keys($this->dir)],
            'reload' => $this->appReload($m),
            default => ['code' => 4501],
        };
    }

    private function worker(int $index): ?Link
    {
        return $this->links["worker-$index"] ?? null;
    }

    /**
     * Forward ``$request`` to the owner of session ``$sid`` and answer what it answers;
     * while the session moves, wait (in order of arrival) until the move is over.
     */
    private function toOwner(int $sid, array $request): array
    {
        if (!isset($this->dir[$sid])) {
            $this->drainLinks();   // the owner's "open" may sit unread behind this request
        }
        if (isset($this->dir[$sid]) && $this->dir[$sid]['moving']) {
            $this->dir[$sid]['held'][] = \Fiber::getCurrent();
            \Fiber::suspend();
        }
        $entry = $this->dir[$sid] ?? null;
        if ($entry === null) {
            if (($request['act'] ?? '') === 'push') {
                $this->counters['push_failed']++;
                $this->counters['dead_session_pushes']++;
            }
            return ['code' => 1005];
        }
        $owner = $this->worker($entry['owner']);
        $reply = $owner?->call(['op' => 'session', 'sid' => $sid] + $request);
        return $reply === null ? ['code' => 2001] : array_diff_key($reply, ['t' => 1, 'rid' => 1]);
    }

    /**
     * Read whatever the other processes have sent already (their events come first).
     * Straight from the sockets: Workerman's baseRead() would hand a link the bytes it is
     * still handling again when called from inside that link's own callback.
     */
    private function drainLinks(): void
    {
        foreach ($this->links as $link) {
            $socket = $link->conn->getSocket();
            while (is_resource($socket) && is_string($data = @fread($socket, 65536)) && $data !== '') {
                $link->feed($data);
            }
        }
    }

    // ---------------------------------------------------------------- tasks

    private function dispatchTask(array $m): array
    {
        $tasks = array_values(array_filter($this->links, fn (Link $l) => ($l->hello['kind'] ?? '') === 'task'));
        if ($tasks === []) {
            return ['code' => 2002];
        }
        $task = ++$this->nextTask;
        $tasks[$this->taskTurn++ % count($tasks)]->send(['t' => 'task', 'task' => $task, 'sid' => $m['sid'], 're' => $m['re'],
            'data' => $m['data'], 'sleep_ms' => $m['sleep_ms']]);
        return ['task' => $task];
    }

    // ---------------------------------------------------------------- migration (section 7)

    /** Move session ``$sid`` to worker ``$to``: the Move record, or a ContractError. */
    private function migrate(int $sid, int $to, ?string $reply = null): array
    {
        $t0 = microtime(true);
        if (!isset($this->dir[$sid])) {
            $this->drainLinks();
        }
        $entry = $this->dir[$sid] ?? throw new ContractError('SESSION_NOT_EXIST', "no session $sid");
        if ($entry['state'] === 'closing') {
            throw new ContractError('SESSION_CLOSED', "session $sid is closing");
        }
        if ($entry['state'] === 'connecting') {
            throw new ContractError('NOT_ESTABLISHED', "the handshake of session $sid is not complete");
        }
        $target = $this->worker($to) ?? throw new ContractError('UNKNOWN_PROCESS', "no running worker $to");
        $from = $entry['owner'];
        if ($from === $to) {
            throw new ContractError('ALREADY_THERE', "session $sid is in worker $to already");
        }
        if ($entry['moving']) {
            throw new ContractError('MIGRATION_IN_PROGRESS', "session $sid is moving already");
        }
        $source = $this->worker($from) ?? throw new ContractError('OWNER_UNREACHABLE', "worker $from is not linked");
        $this->dir[$sid]['moving'] = true;
        $out = $source->call(['op' => 'move_out', 'sid' => $sid, 'to' => $to]);
        if (isset($out['record'], $this->dir[$sid])) {
            // While the session is in flight, its record is the one the old owner gave up.
            $this->dir[$sid]['snapshot'] = ['migrating' => true, 'os_fd' => null] + $out['record'];
        }
        $this->wake($sid, 'readers');
        if ($out === null || isset($out['code'])) {
            $this->endMove($sid, null);
            throw new ContractError(Codes::name($out['code'] ?? 2012), $out['message'] ?? "worker $from did not hand session $sid over");
        }
        $in = $target->call(['op' => 'adopt', 'sid' => $sid, 'from' => $from, 'state' => $out['state']] + ($reply === null ? [] : ['reply' => $reply]));
        if ($in === null || isset($in['code'])) {
            $source->send(['t' => 'req', 'op' => 'move_abort', 'sid' => $sid]);
            $this->endMove($sid, null);
            throw new ContractError('MIGRATION_FAILED', $in['message'] ?? "worker $to did not take session $sid");
        }
        $source->send(['t' => 'req', 'op' => 'move_done', 'sid' => $sid]);
        $this->endMove($sid, $to);
        return ['session' => $sid, 'from' => $from, 'to' => $to, 'elapsed_ms' => round((microtime(true) - $t0) * 1000, 3)];
    }

    /** The move is over (``$owner``: the new one, or null if it failed): send on what waited. */
    private function endMove(int $sid, ?int $owner): void
    {
        if (!isset($this->dir[$sid])) {
            return;
        }
        if ($owner !== null) {
            $this->dir[$sid]['owner'] = $owner;
        }
        $this->dir[$sid]['moving'] = false;
        unset($this->dir[$sid]['snapshot']);
        $this->wake($sid, 'readers');
        $this->wake($sid, 'held');
    }

    /** Resume, in order, the Fibers waiting in the session's list ``$list``. */
    private function wake(int $sid, string $list): void
    {
        $fibers = $this->dir[$sid][$list] ?? [];
        unset($this->dir[$sid][$list]);
        foreach ($fibers as $fiber) {
            $fiber->resume();
        }
    }

    /** The app op ``migrate``: on success the new owner sends the op's reply. */
    private function appMigrate(array $m): array
    {
        try {
            $to = (int) $m['worker'];
            $reply = Protocol::ok($m['re'], ['from' => $this->dir[(int) $m['sid']]['owner'] ?? null, 'to' => $to]);
            $this->migrate((int) $m['sid'], $to, $reply);
            return ['moved' => true];
        } catch (ContractError $e) {
            return ['code' => $e->getCode(), 'message' => $e->getMessage()];
        }
    }

    /** The app op ``reload`` (a worker asks). */
    private function appReload(array $m): array
    {
        if ($this->reloads === null) {
            return ['code' => 4501];
        }
        try {
            $record = $this->reloads->request($m['scope'] ?? 'all', (string) ($m['via'] ?? 'app'));
        } catch (ContractError $e) {
            return ['code' => $e->getCode(), 'message' => $e->getMessage()];
        }
        return ['reload' => $record['reload'], 'merged' => $record['merged'], 'generation' => $record['generation']];
    }

    private function reload(array $body): array
    {
        $wait = $body['wait'] ?? false;
        if (!is_bool($wait)) {
            throw new ContractError('BAD_REQUEST', "'wait' must be a boolean");
        }
        $timeout = Protocol::int($body, 'timeout_ms', 30_000, 1, 600_000);
        $record = $this->reloads->request($body['scope'] ?? 'all', 'admin');
        if (!$wait) {
            return $record;
        }
        return $this->reloads->wait($record['reload'], $timeout / 1000) + ['merged' => $record['merged']];
    }

    // ---------------------------------------------------------------- admin API

    private function onAdminConnect(TcpConnection $c): void
    {
        if ($this->adminConnections >= self::MAX_ADMIN_CONNECTIONS) {
            $c->close();
            return;
        }
        $this->adminConnections++;
        $c->context->reader = new HttpReader();
        $c->context->queue = [];
        $c->context->busy = false;
    }

    private function onAdminData(TcpConnection $c, string $data): void
    {
        try {
            $c->context->reader->feed($data);
            while (($request = $c->context->reader->next()) !== null) {
                $c->context->queue[] = $request;
            }
        } catch (HttpError $e) {
            $c->close($e->response(), true);
            return;
        }
        if (!$c->context->busy) {
            Link::go(fn () => $this->serve($c));
        }
    }

    /** Answer the connection's requests one after the other, in order. */
    private function serve(TcpConnection $c): void
    {
        $c->context->busy = true;
        while (($request = array_shift($c->context->queue)) !== null) {
            $response = $this->answer($request);
            if ($c->getStatus() !== TcpConnection::STATUS_ESTABLISHED) {
                break;
            }
            if ($request->wantsClose()) {
                $c->close($response, true);
                break;
            }
            $c->send($response, true);
        }
        $c->context->busy = false;
    }

    private function answer(HttpRequest $request): string
    {
        return Http::answer($request, fn (HttpRequest $r) => $this->route($r), static fn (\Throwable $e) => Log::warn(
            'admin.internal_error', ['route' => "$request->method $request->path", 'error' => $e->getMessage(), 'at' => $e->getFile() . ':' . $e->getLine()]
        ));
    }

    /** @return array{0:int,1:mixed} */
    private function route(HttpRequest $r): array
    {
        if ($r->path === '/ready') {
            return $this->ready() ? [200, ['ready' => true]] : [503, ['ready' => false]];
        }
        if ($r->path === '/metrics') {
            return [200, $this->metrics()];
        }
        if (!hash_equals("Bearer {$this->options->token}", $r->header('authorization') ?? '')) {
            throw Http::error(401, 'UNAUTHORIZED', 'missing or wrong bearer token');
        }
        $routes = [
            'GET /v1/sessions' => fn () => ['sessions' => $this->records()],
            'GET /v1/stats' => fn () => $this->stats(),
            'GET /v1/processes' => fn () => ['processes' => $this->processes()],
            'GET /v1/sweep' => fn () => ['rule' => $this->rule, 'running' => $this->sweeping, 'reports' => $this->reports],
            'PUT /v1/sweep' => fn () => $this->putRule(Http::body($r)),
            'DELETE /v1/sweep' => fn () => $this->putRule(null),
            'POST /v1/migrations' => fn () => $this->migrations(Http::body($r)),
            'POST /v1/affinity' => fn () => $this->affinity(Http::body($r)),
            'POST /v1/rebalance' => fn () => $this->rebalance(),
        ];
        if ($this->reloads !== null) {
            $routes['POST /v1/reload'] = fn () => $this->reload(Http::body($r));
            $routes['GET /v1/reloads'] = fn () => $this->reloads->status();
        }
        $key = "$r->method $r->path";
        if (isset($routes[$key])) {
            return [200, $routes[$key]()];
        }
        foreach (array_keys($routes) as $route) {
            if (explode(' ', $route)[1] === $r->path) {
                throw Http::error(405, 'METHOD_NOT_ALLOWED', "$r->method is not allowed on $r->path");
            }
        }
        if (preg_match('#^/v1/sessions/(\d{1,18})(/push|/close|/migrate)?$#', $r->path, $m)) {
            return [200, $this->sessionRoute($r, (int) $m[1], $m[2] ?? '')];
        }
        throw Http::error(404, 'NOT_FOUND', "no route $r->path");
    }

    private function sessionRoute(HttpRequest $r, int $sid, string $action): array
    {
        $want = $action === '' ? 'GET' : 'POST';
        if ($r->method !== $want) {
            throw Http::error(405, 'METHOD_NOT_ALLOWED', "$r->method is not allowed on $r->path");
        }
        $body = $action === '' ? [] : Http::body($r);
        $request = match ($action) {
            '' => ['act' => 'info'],
            '/push' => ['act' => 'push', 'text' => is_string($body['data'] ?? null) ? $body['data'] : throw new ContractError('BAD_REQUEST', "'data' must be a string")],
            '/close' => ['act' => 'close'] + array_combine(['code', 'reason'], Protocol::closeArgs($body)),
            '/migrate' => null,
        };
        if ($request === null) {
            return $this->migrate($sid, Protocol::int($body, 'worker'));
        }
        if ($action === '' && ($this->dir[$sid]['moving'] ?? false)) {
            if (!isset($this->dir[$sid]['snapshot'])) {   // the old owner is handing it over: wait for that, not for the move
                $this->dir[$sid]['readers'][] = \Fiber::getCurrent();
                \Fiber::suspend();
            }
            if (isset($this->dir[$sid]['snapshot'])) {
                return $this->dir[$sid]['snapshot'];
            }
        }
        $reply = $this->toOwner($sid, $request);
        if (isset($reply['code'])) {
            throw new ContractError(Codes::name($reply['code']), "session $sid: " . Codes::name($reply['code']));
        }
        return $action === '' ? $reply['record'] : ['ok' => true];
    }

    private function ready(): bool
    {
        $workers = $tasks = 0;
        foreach ($this->links as $link) {
            ($link->hello['kind'] ?? '') === 'worker' ? $workers++ : $tasks++;
        }
        return $workers >= $this->options->workers && $tasks >= $this->options->taskWorkers;
    }

    /** Ask every linked process ``$op`` at once; their answers by name. @return array<string,array> */
    private function gather(string $op, ?string $kind = null): array
    {
        $answers = [];
        $links = array_filter($this->links, fn (Link $l) => $kind === null || ($l->hello['kind'] ?? '') === $kind);
        $pending = count($links);
        if ($pending === 0) {
            return [];
        }
        $me = \Fiber::getCurrent();
        foreach ($links as $name => $link) {
            Link::go(function () use ($link, $name, $op, &$answers, &$pending, $me): void {
                $answers[$name] = $link->call(['op' => $op], 3.0);
                if (--$pending === 0 && $me->isSuspended()) {
                    $me->resume();
                }
            });
        }
        if ($pending > 0) {
            \Fiber::suspend();
        }
        return array_filter($answers);
    }

    private function records(): array
    {
        $records = [];
        foreach ($this->gather('records', 'worker') as $answer) {
            foreach ($answer['records'] ?? [] as $record) {
                $entry = $this->dir[$record['session']] ?? null;
                if (isset($entry['snapshot'])) {
                    $records[$record['session']] = $entry['snapshot'];
                } elseif ($entry !== null && $entry['owner'] === $record['worker'] && !isset($records[$record['session']])) {
                    $records[$record['session']] = $record;   // one owner: a moved session's old copy is not listed
                }
            }
        }
        ksort($records);
        return array_values($records);
    }

    private function stats(): array
    {
        $counters = $this->counters;
        $processes = [['name' => 'hub', 'pid' => getmypid(), 'fds' => self::fds()]];
        foreach ($this->gather('stats') as $name => $answer) {
            $this->lastCounters[$name] = $answer['counters'] ?? [];
            foreach ($answer['counters'] ?? [] as $key => $n) {
                $counters[$key] = ($counters[$key] ?? 0) + $n;
            }
            $link = $this->links[$name] ?? null;
            $processes[] = ['name' => $name, 'pid' => $link?->hello['pid'] ?? 0, 'sessions' => $answer['sessions'] ?? 0, 'timers' => $answer['timers'] ?? 0];
        }
        $byWorker = [];
        $established = 0;
        foreach ($this->dir as $entry) {
            $byWorker[(string) $entry['owner']] = ($byWorker[(string) $entry['owner']] ?? 0) + 1;
            $established += $entry['state'] === 'established' ? 1 : 0;
        }
        $stats = ['contract' => '1.1',
            'sessions' => ['open' => count($this->dir), 'established' => $established, 'by_worker' => (object) $byWorker],
            'counters' => $counters, 'processes' => $processes];
        if ($this->reloads !== null) {
            $stats['reloads'] = $this->reloads->counters();
            $stats['generation'] = $this->reloads->generation;
        }
        return $stats;
    }

    private static function fds(): int
    {
        return max(0, count(@scandir('/proc/self/fd') ?: []) - 2);
    }

    private function processes(): array
    {
        $list = [['kind' => 'master', 'id' => 0, 'pid' => posix_getppid(), 'name' => 'master'],
            ['kind' => 'custom', 'id' => 0, 'pid' => getmypid(), 'name' => 'hub', 'started' => $this->started]
                + ($this->reloads !== null ? ['generation' => 1] : [])];
        foreach ($this->links as $name => $link) {
            $list[] = ['kind' => $link->hello['kind'] === 'worker' ? 'worker' : 'task_worker', 'id' => (int) $link->hello['id'],
                'pid' => (int) $link->hello['pid'], 'name' => $name] + ($this->reloads !== null ? ['generation' => $link->generation] : []);
        }
        return $list;
    }

    private function metrics(): string
    {
        $lines = [];
        foreach ($this->stats()['counters'] as $name => $n) {
            $lines[] = "workerman_target_{$name}_total $n";
        }
        return implode("\n", $lines) . "\n";
    }

    // ---------------------------------------------------------------- sweep (section 4.3)

    private function putRule(?array $body): array
    {
        $this->rule = $body === null ? null : Protocol::sweepRule($body);
        $task = $this->links['task-0'] ?? null;
        $task?->send(['t' => 'sweep_rule', 'rule' => $this->rule]);
        return $body === null ? ['ok' => true] : ['rule' => $this->rule];
    }

    // ---------------------------------------------------------------- several moves

    /** @return array{0:list<array>,1:list<array>} moved, failed */
    private function moveAll(array $moves): array
    {
        $moved = $failed = [];
        foreach ($moves as [$sid, $to]) {
            try {
                $moved[] = $this->migrate($sid, $to);
            } catch (ContractError $e) {
                $failed[] = ['session' => $sid, 'code' => $e->getCode(), 'name' => $e->errName, 'message' => $e->getMessage()];
            }
        }
        return [$moved, $failed];
    }

    private function migrations(array $body): array
    {
        $moves = $body['moves'] ?? null;
        if (!is_array($moves) || !array_is_list($moves) || count($moves) > 10000) {
            throw new ContractError('BAD_REQUEST', "'moves' must be a list of [session, worker] pairs");
        }
        $results = [];
        foreach ($moves as $move) {
            if (!is_array($move) || count($move) !== 2 || !is_int($move[0] ?? null) || !is_int($move[1] ?? null)) {
                throw new ContractError('BAD_REQUEST', "each move must be [session, worker]");
            }
        }
        foreach ($moves as [$sid, $to]) {
            try {
                $this->migrate($sid, $to);
                $results[] = ['session' => $sid, 'to' => $to, 'ok' => true];
            } catch (ContractError $e) {
                $results[] = ['session' => $sid, 'to' => $to, 'ok' => false, 'error' => $e->asArray()];
            }
        }
        return ['results' => $results];
    }

    private function affinity(array $body): array
    {
        $group = array_key_exists('group', $body) ? Protocol::int($body, 'group', null, 0) : null;
        $worker = array_key_exists('worker', $body) ? Protocol::int($body, 'worker', null, 0) : null;
        if ($group === null) {
            $sessions = $body['sessions'] ?? null;
            if (!is_array($sessions) || !array_is_list($sessions) || array_filter($sessions, fn ($s) => !is_int($s)) !== []) {
                throw new ContractError('BAD_REQUEST', "give 'group' (an integer) or 'sessions' (a list of ids)");
            }
        }
        if ($worker !== null && $this->worker($worker) === null) {
            throw new ContractError('UNKNOWN_PROCESS', "no running worker $worker");
        }
        $owners = [];
        foreach ($this->records() as $record) {
            if ($group !== null ? $record['group'] === $group : in_array($record['session'], $sessions, true)) {
                $owners[$record['session']] = $record['worker'];
            }
        }
        $members = $group !== null ? count($owners) : count($sessions);
        if ($worker === null && $owners !== []) {
            $counts = array_count_values($owners);
            ksort($counts);
            arsort($counts);
            $worker = (int) array_key_first($counts);
        }
        $moves = [];
        foreach ($owners as $sid => $owner) {
            if ($owner !== $worker) {
                $moves[] = [$sid, $worker];
            }
        }
        [$moved, $failed] = $this->moveAll($moves);
        if ($group === null) {
            foreach (array_diff($sessions, array_keys($owners)) as $sid) {
                $failed[] = ['session' => $sid, 'code' => 1005, 'name' => 'SESSION_NOT_EXIST', 'message' => "no session $sid"];
            }
        }
        return ['group' => $group, 'worker' => $worker, 'members' => $members,
            'already_there' => count($owners) - count($moves), 'moved' => $moved, 'failed' => $failed];
    }

    /** As few moves as make the workers' counts differ by at most one. */
    private function rebalance(): array
    {
        $by = [];
        for ($w = 0; $w < $this->options->workers; $w++) {
            if ($this->worker($w) !== null) {
                $by[$w] = [];
            }
        }
        foreach ($this->records() as $record) {
            if ($record['established'] && isset($by[$record['worker']])) {
                $by[$record['worker']][] = $record['session'];
            }
        }
        $before = array_map('count', $by);
        $total = array_sum($before);
        $n = count($by);
        if ($n === 0) {
            return ['before' => (object) [], 'planned' => (object) [], 'moved' => [], 'failed' => []];
        }
        // Targets: floor(total/n) each, the remainder to the fullest workers (fewest moves).
        $order = array_keys($before);
        usort($order, fn ($a, $b) => [$before[$b], $a] <=> [$before[$a], $b]);
        $planned = [];
        foreach ($order as $i => $w) {
            $planned[$w] = intdiv($total, $n) + ($i < $total % $n ? 1 : 0);
        }
        $surplus = [];
        foreach ($by as $w => $sids) {
            for ($k = $planned[$w]; $k < count($sids); $k++) {
                $surplus[] = $sids[$k];
            }
        }
        $moves = [];
        foreach ($by as $w => $sids) {
            for ($k = count($sids); $k < $planned[$w]; $k++) {
                $moves[] = [array_shift($surplus), $w];
            }
        }
        [$moved, $failed] = $this->moveAll($moves);
        ksort($planned);
        return ['before' => self::byKey($before), 'planned' => self::byKey($planned), 'moved' => $moved, 'failed' => $failed];
    }

    private static function byKey(array $counts): object
    {
        $out = [];
        foreach ($counts as $w => $n) {
            $out[(string) $w] = $n;
        }
        return (object) $out;
    }
}

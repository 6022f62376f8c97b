<?php
/**
 * The admin API (docs/contract-v1.md, section 4), served by a custom process
 * (Server::addProcess) on a coroutine TCP server, with the kit's HTTP reader.
 *
 * In SWOOLE_PROCESS mode a custom process can reach every session (push,
 * disconnect, exists) itself. In SWOOLE_BASE mode it cannot: it asks the
 * session's owner (from the shared registry) with sendMessage() and reads the
 * answer from its own pipe. The pipe also brings the sweep reports, and the
 * workers' reload requests (the app op), which Reloads runs from here.
 */

declare(strict_types=1);

namespace SwooleTarget;

use ContractKit\Codes;
use ContractKit\ContractError;
use ContractKit\Http;
use ContractKit\Log;
use ContractKit\HttpError;
use ContractKit\HttpReader;
use ContractKit\HttpRequest;
use ContractKit\Protocol;
use Swoole\Coroutine;
use Swoole\Coroutine\Channel;
use Swoole\Coroutine\Server as CoServer;
use Swoole\Coroutine\Server\Connection;
use Swoole\Process;
use Swoole\WebSocket\Server;

final class Admin
{
    public const MAX_REPORTS = 200;
    /** Connections the admin API serves at once; more are closed at accept. */
    public const MAX_CONNECTIONS = 256;

    /** @var list<array> */
    private array $reports = [];
    /** @var array<int,Channel> */
    private array $waiting = [];
    private int $nextRequest = 0;
    private int $connections = 0;
    private ?Reloads $reloads = null;

    public function __construct(
        private readonly Server $server,
        private readonly Shared $shared,
        private readonly Options $options,
        private readonly SessionOps $ops,
    ) {
    }

    /** The custom process's body. */
    public function run(Process $process): void
    {
        Log::$process = 'admin';
        $this->shared->register('admin', 'admin', 0, getmypid());
        $server = new CoServer('127.0.0.1', $this->options->adminPort, false, true);
        Process::signal(SIGTERM, function () use ($server): void {
            $server->shutdown();
            // exit() in a coroutine process throws Swoole\ExitException (a fatal error on
            // stderr at every stop); this process holds nothing to flush.
            Process::kill(getmypid(), SIGKILL);
        });
        if ($this->options->reload) {
            $this->reloads = new Reloads($this->server, $this->shared);
            Coroutine::create(fn () => $this->reloads->run());
        }
        Coroutine::create(fn () => Shared::readPipe($process, fn (array $msg) => $this->onPipe($msg)));
        $server->handle(function (Connection $conn): void {
            $this->serve($conn);
        });
        $server->start();
    }

    /** A message on this process's pipe: a sweep report, a worker's answer, a reload request. */
    private function onPipe(array $msg): void
    {
        if (($msg['t'] ?? null) === 'report') {
            $this->reports[] = $msg['report'];
            if (count($this->reports) > self::MAX_REPORTS) {
                array_shift($this->reports);
            }
        } elseif (($msg['t'] ?? null) === 'reply' && isset($this->waiting[$msg['rid']])) {
            $this->waiting[$msg['rid']]->push($msg['result']);
        } elseif (($msg['t'] ?? null) === 'reload') { // a worker's reload op
            $this->reloadFromPipe($msg);
        }
    }

    private function reloadFromPipe(array $msg): void
    {
        $rid = (int) ($msg['rid'] ?? 0);
        if ($this->reloads === null) {
            $rid > 0 && $this->shared->reply($rid, 4501);
            return;
        }
        try {
            $record = $this->reloads->request($msg['scope'] ?? null, (string) ($msg['via'] ?? 'pipe'));
            $rid > 0 && $this->shared->reply($rid, null, json_encode(
                ['reload' => $record['reload'], 'merged' => $record['merged'], 'generation' => $record['generation']]
            ));
        } catch (ContractError $e) {
            $rid > 0 && $this->shared->reply($rid, $e->getCode());
        }
    }

    private function serve(Connection $conn): void
    {
        if ($this->connections >= self::MAX_CONNECTIONS) {
            $conn->close();
            return;
        }
        $this->connections++;
        $socket = $conn->exportSocket();
        $reader = new HttpReader();
        try {
            while (true) {
                $data = $socket->recv(65536, 30);
                if ($data === '' || $data === false) {
                    return;
                }
                $reader->feed($data);
                while (($request = $reader->next()) !== null) {
                    $socket->sendAll($this->answer($request));
                    if ($request->wantsClose()) {
                        return;
                    }
                }
            }
        } catch (HttpError $e) {
            $socket->sendAll($e->response());
        } finally {
            $this->connections--;
            $conn->close();
        }
    }

    /** The whole HTTP response to one request. */
    public function answer(HttpRequest $request): string
    {
        return Http::answer($request, fn (HttpRequest $r) => $this->route($r), static fn (\Throwable $e) => Log::warn(
            'admin.internal_error', ['route' => "$request->method $request->path", 'error' => $e->getMessage()]
        ));
    }

    /** @return array{0:int,1:mixed} */
    private function route(HttpRequest $r): array
    {
        if ($r->path === '/ready') {
            return $this->ready() ? [200, ['ready' => true]] : [503, ['ready' => false]];
        }
        if ($r->path === '/metrics') {
            $lines = [];
            foreach ($this->shared->counters() as $name => $n) {
                $lines[] = "swoole_target_{$name}_total $n";
            }
            return [200, implode("\n", $lines) . "\n"];
        }
        if (!hash_equals("Bearer {$this->options->token}", $r->header('authorization') ?? '')) {
            throw Http::error(401, 'UNAUTHORIZED', 'missing or wrong bearer token');
        }
        $routes = [
            'GET /v1/sessions' => fn () => ['sessions' => $this->shared->records()],
            'GET /v1/stats' => fn () => $this->stats(),
            'GET /v1/processes' => fn () => ['processes' => $this->processes()],
            'GET /v1/sweep' => fn () => ['rule' => $this->shared->sweepRule(), 'running' => $this->shared->sweeping->get() === 1, 'reports' => $this->reports],
            'PUT /v1/sweep' => fn () => $this->putRule(Http::body($r)),
            'DELETE /v1/sweep' => fn () => $this->deleteRule(),
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
        if (preg_match('#^/v1/sessions/(\d{1,18})(/push|/close)?$#', $r->path, $m)) {
            $sid = (int) $m[1];
            $action = $m[2] ?? '';
            return match (true) {
                $action === '' && $r->method === 'GET' => [200, $this->shared->record($sid) ?? throw new ContractError('SESSION_NOT_EXIST', "no session $sid")],
                $action === '/push' && $r->method === 'POST' => [200, $this->push($sid, Http::body($r))],
                $action === '/close' && $r->method === 'POST' => [200, $this->close($sid, Http::body($r))],
                default => throw Http::error(405, 'METHOD_NOT_ALLOWED', "$r->method is not allowed on $r->path"),
            };
        }
        throw Http::error(404, 'NOT_FOUND', "no route $r->method $r->path (this server declares no such capability)");
    }

    private function ready(): bool
    {
        for ($i = 0; $i < $this->options->workers; $i++) {
            if (!$this->shared->procs->exists("worker-$i")) {
                return false;
            }
        }
        for ($i = 0; $i < $this->options->taskWorkers; $i++) {
            if (!$this->shared->procs->exists("task-$i")) {
                return false;
            }
        }
        return true;
    }

    private function push(int $sid, array $body): array
    {
        if (!is_string($body['data'] ?? null)) {
            throw Http::error(400, 'BAD_REQUEST', 'the body must be {"data": "text"}');
        }
        $code = $this->atOwner($sid, ['op' => 'push', 'sid' => $sid, 'text' => $body['data']]);
        if ($code !== null) {
            throw new ContractError(Codes::name($code), "push to session $sid failed");
        }
        return ['ok' => true];
    }

    private function close(int $sid, array $body): array
    {
        [$code, $reason] = Protocol::closeArgs($body);
        $failed = $this->atOwner($sid, ['op' => 'close', 'sid' => $sid, 'code' => $code, 'reason' => $reason]);
        if ($failed !== null) {
            throw new ContractError(Codes::name($failed), "close of session $sid failed");
        }
        return ['ok' => true];
    }

    /** Run a push or close where the session can be reached: here (PROCESS), or in its owner (BASE). */
    private function atOwner(int $sid, array $request): ?int
    {
        $owner = $this->shared->sessions->get((string) $sid, 'worker');
        if ($this->options->mode === SWOOLE_PROCESS || $owner === false) {
            return match ($request['op']) {
                'push' => $this->ops->push($sid, $request['text']),
                'close' => $this->ops->close($sid, $request['code'], $request['reason']),
            };
        }
        $rid = ++$this->nextRequest;
        $this->waiting[$rid] = $chan = new Channel(1);
        try {
            if (!$this->server->sendMessage(['t' => 'admin', 'rid' => $rid] + $request, $owner)) {
                return 2001;
            }
            $result = $chan->pop(5.0);
            return $result === false ? 2001 : $result;
        } finally {
            unset($this->waiting[$rid]);
        }
    }

    private function reload(array $body): array
    {
        $wait = \ContractKit\Protocol::bool($body, 'wait', false);
        $record = $this->reloads->request($body['scope'] ?? 'all', 'admin');
        if (!$wait) {
            return $record;
        }
        $timeout = 4 * $this->options->maxWaitMs / 1000 + 30;
        return $this->reloads->wait($record['reload'], $timeout) + ['merged' => $record['merged']];
    }

    private function putRule(array $body): array
    {
        $rule = Protocol::sweepRule($body);
        $this->shared->setSweepRule($rule);
        return ['rule' => $rule];
    }

    private function deleteRule(): array
    {
        $this->shared->setSweepRule(null);
        return ['ok' => true];
    }

    private function stats(): array
    {
        $open = $established = 0;
        $byWorker = [];
        foreach ($this->shared->sessions as $row) {
            $open++;
            $established += $row['state'] === Shared::ESTABLISHED ? 1 : 0;
            $byWorker[(string) $row['worker']] = ($byWorker[(string) $row['worker']] ?? 0) + 1;
        }
        $procs = [];
        foreach ($this->processes() as $p) {
            $procs[] = ['name' => $p['name'], 'pid' => $p['pid'], 'kind' => $p['kind']] + (self::fds($p['pid']) === null ? [] : ['fds' => self::fds($p['pid'])]);
        }
        $stats = [
            'contract' => '1.1',
            'mode' => $this->options->modeName(),
            'sessions' => ['open' => $open, 'established' => $established, 'by_worker' => (object) $byWorker],
            'counters' => $this->shared->counters(),
            'processes' => $procs,
        ];
        if ($this->reloads !== null) {
            $stats += ['reloads' => $this->reloads->counters(), 'generation' => $this->shared->generation->get()];
        }
        if ($this->options->broadcast) {
            $stats['broadcast'] = [
                'mode' => 'pubsub', 'connected' => $this->shared->broadcastConnected->get() === 1,
                'outages' => $this->shared->outageList(),
            ];
        }
        return $stats;
    }

    /** @return list<array{kind:string,id:int,pid:int,name:string}> */
    private function processes(): array
    {
        $out = [];
        foreach ($this->shared->procs as $name => $row) {
            if ($row['pid'] > 0 && Process::kill($row['pid'], 0)) {
                $out[] = ['kind' => $row['kind'], 'id' => $row['id'], 'pid' => $row['pid'], 'name' => $name, 'started' => $row['started']]
                    + ($this->reloads !== null ? ['generation' => $row['generation']] : []);
            }
        }
        usort($out, fn ($a, $b) => [$a['kind'], $a['id']] <=> [$b['kind'], $b['id']]);
        return $out;
    }

    private static function fds(int $pid): ?int
    {
        $entries = @scandir("/proc/$pid/fd");
        return $entries === false ? null : count($entries) - 2;
    }
}

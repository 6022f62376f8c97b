<?php
/**
 * The admin API (docs/contract-v1.md, section 4) of the coroutine target, on a
 * coroutine TCP server with the kit's HTTP reader: one coroutine per connection.
 */

declare(strict_types=1);

namespace SwooleTarget\Co;

use ContractKit\Codes;
use ContractKit\ContractError;
use ContractKit\Http;
use ContractKit\HttpError;
use ContractKit\HttpReader;
use ContractKit\HttpRequest;
use ContractKit\Log;
use ContractKit\Protocol;
use Swoole\Coroutine\Server as CoServer;
use Swoole\Coroutine\Server\Connection;

final class CoAdmin
{
    private const MAX_CONNECTIONS = 256;
    private int $connections = 0;

    public function __construct(private readonly CoApp $app, private readonly string $token)
    {
    }

    public function serve(int $port): CoServer
    {
        $server = new CoServer('127.0.0.1', $port, false, true);
        $server->handle(function (Connection $conn): void {
            if ($this->connections >= self::MAX_CONNECTIONS) {
                $conn->close();
                return;
            }
            $this->connections++;
            $socket = $conn->exportSocket();
            $reader = new HttpReader();
            try {
                while (($data = $socket->recv(65536, 30)) !== '' && $data !== false) {
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
        });
        return $server;
    }

    private function answer(HttpRequest $request): string
    {
        return Http::answer($request, fn (HttpRequest $r) => $this->route($r), static fn (\Throwable $e) => Log::warn(
            'admin.internal_error', ['route' => "$request->method $request->path", 'error' => $e->getMessage()]
        ));
    }

    /** @return array{0:int,1:mixed} */
    private function route(HttpRequest $r): array
    {
        if ($r->path === '/ready') {
            return [200, ['ready' => true]];
        }
        if ($r->path === '/metrics') {
            return [200, $this->metrics()];
        }
        if (!hash_equals("Bearer $this->token", $r->header('authorization') ?? '')) {
            throw Http::error(401, 'UNAUTHORIZED', 'missing or wrong bearer token');
        }
        $ports = $this->app->ports;
        $routes = [
            'GET /v1/sessions' => fn () => ['sessions' => array_values(array_map(fn ($s) => $this->app->record($s), $this->app->sessions))],
            'GET /v1/stats' => fn () => $this->stats(),
            'GET /v1/processes' => fn () => ['processes' => [['kind' => 'worker', 'id' => 0, 'pid' => getmypid(), 'name' => 'worker-0']]],
            'GET /v1/listeners' => fn () => $ports->listing(),
            'POST /v1/listeners' => fn () => $ports->listen(Http::body($r), 'api')->record(),
        ];
        $key = "$r->method $r->path";
        if (isset($routes[$key])) {
            return [200, $routes[$key]()];
        }
        foreach (array_keys($routes) as $route) {
            if (explode(' ', $route)[1] === $r->path) {
                throw Http::error(405, 'METHOD_NOT_ALLOWED', "$r->method is not allowed on $r->path");
            }
        }
        if (preg_match('#^/v1/listeners/([^/]+)$#', $r->path, $m)) {
            if ($r->method !== 'DELETE') {
                throw Http::error(405, 'METHOD_NOT_ALLOWED', "$r->method is not allowed on $r->path");
            }
            if (!preg_match('/^\d{1,5}$/D', $m[1])) {
                throw new ContractError('BAD_REQUEST', 'the port must be a number, got ' . substr($m[1], 0, 20));
            }
            $body = $r->body === '' ? [] : Http::body($r);
            return [200, $ports->unlisten((int) $m[1], $body['on_remove'] ?? null)->record()];
        }
        if (preg_match('#^/v1/sessions/(\d{1,18})(/push|/close)?$#', $r->path, $m)) {
            return [200, $this->session($r, (int) $m[1], $m[2] ?? '')];
        }
        throw Http::error(404, 'NOT_FOUND', "no route $r->path");
    }

    private function session(HttpRequest $r, int $sid, string $action): array
    {
        if ($r->method !== ($action === '' ? 'GET' : 'POST')) {
            throw Http::error(405, 'METHOD_NOT_ALLOWED', "$r->method is not allowed on $r->path");
        }
        $body = $action === '' ? [] : Http::body($r);
        $s = $this->app->sessions[$sid] ?? null;
        if ($action === '/push' && !is_string($body['data'] ?? null)) {
            throw new ContractError('BAD_REQUEST', "'data' must be a string");
        }
        if ($action === '/close') {
            [$code, $reason] = Protocol::closeArgs($body);
        }
        if ($s === null) {
            throw new ContractError('SESSION_NOT_EXIST', "no session $sid");
        }
        return match ($action) {
            '' => $this->app->record($s),
            '/push' => ($code = $this->app->push($sid, $body['data'])) === null ? ['ok' => true] : throw new ContractError(Codes::name($code), "session $sid: " . Codes::name($code)),
            '/close' => $this->app->close($s, $code, $reason) === null ? ['ok' => true] : throw new ContractError('SESSION_CLOSED', "session $sid is closing"),
        };
    }

    private function stats(): array
    {
        $established = count(array_filter($this->app->sessions, fn ($s) => !$s->closing));
        $ports = [];
        foreach ($this->app->ports->all() as $l) {
            $record = $l->record();
            $ports[(string) $l->port()] = array_intersect_key($record, array_flip(['connections', 'accepted', 'refused', 'refused_by_reason']));
        }
        return ['contract' => '1.1',
            'sessions' => ['open' => count($this->app->sessions), 'established' => $established, 'by_worker' => (object) ($this->app->sessions ? ['0' => count($this->app->sessions)] : [])],
            'counters' => $this->app->counters,
            'processes' => [['name' => 'worker-0', 'pid' => getmypid(), 'sessions' => count($this->app->sessions), 'timers' => $this->app->timerCount()]],
            'ports' => (object) $ports];
    }

    private function metrics(): string
    {
        $lines = [];
        foreach ($this->app->counters as $name => $n) {
            $lines[] = "swoole_co_target_{$name}_total $n";
        }
        foreach ($this->app->ports->all() as $l) {
            $record = $l->record();
            $lines[] = "port_connections{port=\"{$l->port()}\"} {$record['connections']}";
            $lines[] = "port_accepted_total{port=\"{$l->port()}\"} {$record['accepted']}";
            foreach ($l->refusedBy as $reason => $n) {
                $lines[] = "port_refused_total{port=\"{$l->port()}\",reason=\"$reason\"} $n";
            }
        }
        return implode("\n", $lines) . "\n";
    }
}

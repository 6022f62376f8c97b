<?php
/**
 * Listening ports added and removed at run time (docs/contract-v1.md, section 9), on
 * Swoole's coroutine HTTP server: one Swoole\Coroutine\Http\Server per port, in the one
 * process of the coroutine target. Swoole\WebSocket\Server cannot do this: it listens
 * only on the ports set before start().
 *
 * A port is removed with Server::shutdown(), which stops accepting but leaves the
 * listening socket bound (swoole-src #4098): connections keep arriving in its backlog
 * and hang, and no other socket can bind the port. The socket is closed only when the
 * server object is freed, and every connection it accepted holds it. So the fixed
 * pattern drops every reference to a removed server and closes the sessions of a port
 * removed with policy "close" first; under "keep" the port stays bound while its
 * sessions live, and the manifest says so. With --app naive-ports the application keeps
 * the removed server in its records (as the seed's code does), so the port is never released.
 */

declare(strict_types=1);

namespace SwooleTarget\Co;

use ContractKit\ContractError;
use ContractKit\Log;
use Swoole\Coroutine;
use Swoole\Coroutine\Channel;
use Swoole\Coroutine\Http\Server;

final class Listener
{
    public ?Server $server = null;
    /** Done once the server's start() has returned (after shutdown()). */
    public Channel $stopped;
    public bool $removed = false;
    public float $addedAt;
    public ?float $removedAt = null;
    public int $accepted = 0;
    public int $drained = 0;
    /** @var array<string,int> */
    public array $refusedBy = [];
    /** @var array<int,true> session ids of this port now */
    public array $sessions = [];
    /** Connections of this port's server now, sessions or not yet (each holds the server). */
    public int $open = 0;

    /** @param array{port:int,host:string,reuse_port:bool,on_remove:string,max_connections:int,handler:string,backlog:?int} $settings */
    public function __construct(public array $settings, public readonly string $source)
    {
        $this->addedAt = microtime(true);
        $this->stopped = new Channel(1);
    }

    public function port(): int
    {
        return $this->settings['port'];
    }

    public function refuse(string $reason): void
    {
        $this->refusedBy[$reason] = ($this->refusedBy[$reason] ?? 0) + 1;
    }

    public function record(): array
    {
        $record = $this->settings + [
            'source' => $this->source, 'added_at' => $this->addedAt, 'connections' => count($this->sessions),
            'accepted' => $this->accepted, 'refused' => array_sum($this->refusedBy), 'refused_by_reason' => (object) $this->refusedBy,
        ];
        if ($this->removed) {
            $record += ['removed_at' => $this->removedAt, 'drained' => $this->drained];
        }
        return $record;
    }
}

final class Ports
{
    public const HANDLERS = ['default', 'echo'];
    private const MAX_REMOVED = 50;
    /** How long an unlisten waits for the removed port's connections to end (policy close). */
    private const DRAIN_MS = 2000;

    /** @var array<int,Listener> by port */
    private array $listeners = [];
    /** @var list<Listener> the last removed ones, oldest first */
    private array $removed = [];

    /**
     * @param \Closure(Listener,\Swoole\Http\Request,\Swoole\Http\Response):void $serve a connection's whole life
     * @param \Closure(Listener):void $closeSessions closes a port's sessions with 1001
     */
    public function __construct(
        private readonly string $defaultHost,
        private readonly bool $naive,
        private readonly \Closure $serve,
        private readonly \Closure $closeSessions,
    ) {
    }

    /** @return list<Listener> */
    public function all(): array
    {
        return array_values($this->listeners);
    }

    public function get(int $port): ?Listener
    {
        return $this->listeners[$port] ?? null;
    }

    public function listing(): array
    {
        return ['listeners' => array_map(fn (Listener $l) => $l->record(), $this->all()),
            'removed' => array_map(fn (Listener $l) => $l->record(), $this->removed)];
    }

    /** A listen request (9.1), validated; ContractError with the 9.2 codes. */
    public function settings(mixed $req): array
    {
        if (!is_array($req) || (array_is_list($req) && $req !== [])) {
            throw new ContractError('BAD_REQUEST', 'a listen request is a JSON object');
        }
        $port = $req['port'] ?? null;
        if (!is_int($port) || $port < 0 || $port > 65535) {
            throw new ContractError('BAD_REQUEST', 'port must be an integer in 0..65535, got ' . json_encode($port));
        }
        $host = $req['host'] ?? $this->defaultHost;
        if (!is_string($host) || filter_var($host, FILTER_VALIDATE_IP) === false) {
            throw new ContractError('BAD_ADDRESS', "port $port: host must be an IP address, got " . substr((string) json_encode($host), 0, 60));
        }
        $bool = static function (string $key) use ($req, $port): bool {
            $v = $req[$key] ?? false;
            return is_bool($v) ? $v : throw new ContractError('BAD_REQUEST', "port $port: $key must be a boolean");
        };
        $onRemove = $req['on_remove'] ?? 'keep';
        if (!in_array($onRemove, ['keep', 'close'], true)) {
            throw new ContractError('BAD_REQUEST', "port $port: on_remove must be 'keep' or 'close'");
        }
        $max = $req['max_connections'] ?? 0;
        if (!is_int($max) || $max < 0) {
            throw new ContractError('BAD_REQUEST', "port $port: max_connections must be an integer >= 0");
        }
        $handler = $req['handler'] ?? 'default';
        if (!is_string($handler)) {
            throw new ContractError('BAD_REQUEST', "port $port: handler must be a string");
        }
        if (!in_array($handler, self::HANDLERS, true)) {
            throw new ContractError('HANDLER_UNKNOWN', "port $port: no handler set " . json_encode($handler) . ' (there are ' . implode(', ', self::HANDLERS) . ')');
        }
        $backlog = $req['backlog'] ?? null;
        if ($backlog !== null && (!is_int($backlog) || $backlog < 1)) {
            throw new ContractError('BAD_REQUEST', "port $port: backlog must be an integer >= 1");
        }
        $unknown = array_diff(array_keys($req), ['port', 'host', 'reuse_port', 'on_remove', 'max_connections', 'handler', 'backlog']);
        if ($unknown) {
            throw new ContractError('BAD_REQUEST', "port $port: unknown fields " . implode(', ', $unknown));
        }
        return ['port' => $port, 'host' => $host, 'reuse_port' => $bool('reuse_port'), 'on_remove' => $onRemove,
            'max_connections' => $max, 'handler' => $handler, 'backlog' => $backlog];
    }

    /** Listen: the port accepts connections when this returns. */
    public function listen(mixed $req, string $source): Listener
    {
        $settings = $this->settings($req);
        $port = $settings['port'];
        if ($port !== 0 && isset($this->listeners[$port])) {
            throw new ContractError('ALREADY_LISTENING', "port $port: this server listens on it already");
        }
        try {
            $server = new Server($settings['host'], $port, false, $settings['reuse_port']);
        } catch (\Swoole\Exception $e) {
            $errno = $e->getCode();
            throw match ($errno) {
                SOCKET_EADDRINUSE => new ContractError('PORT_IN_USE', "port $port: address in use (EADDRINUSE)"),
                SOCKET_EACCES => new ContractError('PORT_PRIVILEGED', "port $port: permission denied (EACCES)"),
                SOCKET_EADDRNOTAVAIL => new ContractError('BAD_ADDRESS', "port $port: {$settings['host']} is not an address of this machine (EADDRNOTAVAIL)"),
                default => new ContractError('LISTEN_FAILED', "port $port: " . $e->getMessage() . " (errno $errno)"),
            };
        }
        $settings['port'] = $server->port;   // port 0: the kernel's choice
        // The close frame comes to the application (it answers it, RFC 6455), not only to Swoole.
        $server->set(['open_websocket_close_frame' => true] + ($settings['backlog'] !== null ? ['backlog' => $settings['backlog']] : []));
        $listener = new Listener($settings, $source);
        $listener->server = $server;
        $server->handle('/', fn ($request, $response) => ($this->serve)($listener, $request, $response));
        $this->listeners[$server->port] = $listener;
        unset($server);   // the listener holds the only reference: dropping it closes the socket
        Coroutine::create(static function () use ($listener): void {
            $listener->server->start();
            $listener->stopped->push(true);
        });
        Log::info('ports.listen', ['port' => $listener->port(), 'source' => $source, 'handler' => $settings['handler']]);
        return $listener;
    }

    /** Unlisten: stop accepting, apply the policy, release what can be released. */
    public function unlisten(mixed $port, mixed $policy = null): Listener
    {
        if (!is_int($port)) {
            throw new ContractError('BAD_REQUEST', 'port must be an integer');
        }
        if ($policy !== null && !in_array($policy, ['keep', 'close'], true)) {
            throw new ContractError('BAD_REQUEST', "port $port: on_remove must be 'keep' or 'close'");
        }
        $listener = $this->listeners[$port] ?? throw new ContractError('NOT_LISTENING', "port $port: this server does not listen on it");
        unset($this->listeners[$port]);
        $listener->removed = true;
        $listener->removedAt = microtime(true);
        $listener->settings['on_remove'] = $policy ?? $listener->settings['on_remove'];
        if ($listener->settings['on_remove'] === 'close') {
            ($this->closeSessions)($listener);
        }
        $listener->server?->shutdown();
        $listener->stopped->pop(2.0);   // start() has returned: the accept loop is over
        if (!$this->naive) {
            // The listening socket closes when the last reference to its server goes: drop
            // ours (its handler refers to the listener: a cycle, which the collector frees).
            // Every connection the server accepted holds one too: wait (bounded) for those
            // that are not sessions kept under "keep" (closed ones, handshakes under way).
            $listener->server = null;
            $kept = $listener->settings['on_remove'] === 'keep' ? count($listener->sessions) : 0;
            for ($waited = 0; $listener->open > $kept && $waited < self::DRAIN_MS; $waited += 5) {
                Coroutine::sleep(0.005);
                $kept = $listener->settings['on_remove'] === 'keep' ? count($listener->sessions) : 0;
            }
            Coroutine::sleep(0.001);   // the start() coroutine ends and lets go of it
            gc_collect_cycles();
        }
        $this->removed[] = $listener;
        if (count($this->removed) > self::MAX_REMOVED) {
            array_shift($this->removed);
        }
        Log::info('ports.unlisten', ['port' => $port, 'policy' => $listener->settings['on_remove'], 'sessions' => count($listener->sessions)]);
        return $listener;
    }
}

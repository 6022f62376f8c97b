<?php
/** The command line of the Swoole target (its manifests fill it from the contract's placeholders). */

declare(strict_types=1);

namespace SwooleTarget;

final class Options
{
    public int $port = 9501;
    public int $adminPort = 9502;
    public string $token = '';
    public int $workers = 3;
    public int $taskWorkers = 1;
    /** SWOOLE_PROCESS or SWOOLE_BASE */
    public int $mode = SWOOLE_PROCESS;
    public int $heartbeatIdleMs = 0;
    public int $heartbeatCheckMs = 0;
    public int $maxSessions = 16384;
    /** How long an exiting worker may take before Swoole kills it (max_wait_time, whole seconds). */
    public int $maxWaitMs = 3000;
    /** Whether the reload capability is on (its op and routes; else they are refused as undeclared). */
    public bool $reload = false;
    /** Redis broadcast (section 10): on with --broadcast; pub/sub mode only. */
    public bool $broadcast = false;
    public string $redisUrl = 'redis://127.0.0.1:6379/0';
    public string $broadcastPrefix = 'bc:';
    public int $bufferBytes = 1 << 20;
    /**
     * The application pattern: "fixed" (the seeds' recommended fixes, the default) or one
     * pattern a Swoole user starts from, which the seeds warn about:
     *
     * - "naive-push": push() without exists()/isEstablished(), and session timers that are
     *   never cleared when their session closes (Timer::tick with a closure over $fd);
     * - "naive-sweep": the task worker walks getClientList() pages, as Swoole's manual
     *   shows, and takes every listed session to be still there;
     * - "naive-reload": no Timer::clearAll() in the workerExit hook;
     * - "naive-broadcast": the broadcaster pushes to every member that isEstablished(),
     *   with no bound on what waits for a slow client.
     */
    public string $app = 'fixed';

    public const APPS = ['fixed', 'naive-push', 'naive-sweep', 'naive-reload', 'naive-broadcast'];

    /** @param list<string> $argv */
    public static function parse(array $argv): self
    {
        $o = new self();
        $opts = getopt('', [
            'port:', 'admin-port:', 'admin-token:', 'workers:', 'task-workers:', 'mode:',
            'heartbeat-idle-ms:', 'heartbeat-check-ms:', 'max-sessions:', 'app:', 'max-wait-ms:', 'reload',
            'broadcast', 'redis-url:', 'broadcast-mode:', 'broadcast-prefix:', 'buffer-bytes:',
        ]);
        $int = static function (string $key, int $low, int $high) use ($opts): ?int {
            if (!isset($opts[$key])) {
                return null;
            }
            $v = $opts[$key];
            if (!is_string($v) || !preg_match('/^\d+$/', $v) || (int) $v < $low || (int) $v > $high) {
                fwrite(STDERR, "swoole-target: --$key must be an integer in $low..$high, got " . json_encode($v) . "\n");
                exit(2);
            }
            return (int) $v;
        };
        $o->port = $int('port', 1, 65535) ?? $o->port;
        $o->adminPort = $int('admin-port', 1, 65535) ?? $o->adminPort;
        $o->workers = $int('workers', 1, 64) ?? $o->workers;
        $o->taskWorkers = $int('task-workers', 0, 64) ?? $o->taskWorkers;
        $o->heartbeatIdleMs = $int('heartbeat-idle-ms', 0, 86_400_000) ?? 0;
        $o->heartbeatCheckMs = $int('heartbeat-check-ms', 0, 86_400_000) ?? 0;
        $o->maxSessions = $int('max-sessions', 16, 1_000_000) ?? $o->maxSessions;
        $o->maxWaitMs = $int('max-wait-ms', 1, 600_000) ?? $o->maxWaitMs;
        $o->reload = array_key_exists('reload', $opts);
        $o->broadcast = array_key_exists('broadcast', $opts);
        $o->bufferBytes = $int('buffer-bytes', 4096, 64 << 20) ?? $o->bufferBytes;
        $o->redisUrl = (string) ($opts['redis-url'] ?? $o->redisUrl);
        $o->broadcastPrefix = (string) ($opts['broadcast-prefix'] ?? $o->broadcastPrefix);
        $url = parse_url($o->redisUrl);
        if ($o->broadcast && (!is_array($url) || ($url['scheme'] ?? '') !== 'redis' || !isset($url['host']))) {
            fwrite(STDERR, 'swoole-target: --redis-url must be redis://host:port/db, got ' . json_encode($o->redisUrl) . "\n");
            exit(2);
        }
        $mode = $opts['broadcast-mode'] ?? 'pubsub';
        if ($mode !== 'pubsub') {
            fwrite(STDERR, 'swoole-target: --broadcast-mode must be pubsub (this target keeps no Redis Streams), got ' . json_encode($mode) . "\n");
            exit(2);
        }
        $o->token = (string) ($opts['admin-token'] ?? '');
        if ($o->token === '') {
            fwrite(STDERR, "swoole-target: --admin-token is required\n");
            exit(2);
        }
        $mode = $opts['mode'] ?? 'process';
        $o->mode = match ($mode) {
            'process' => SWOOLE_PROCESS,
            'base' => SWOOLE_BASE,
            default => (fwrite(STDERR, "swoole-target: --mode must be process or base, got " . json_encode($mode) . "\n") && exit(2)),
        };
        $app = $opts['app'] ?? 'fixed';
        if (!in_array($app, self::APPS, true)) {
            fwrite(STDERR, 'swoole-target: --app must be one of ' . implode(', ', self::APPS) . ', got ' . json_encode($app) . "\n");
            exit(2);
        }
        $o->app = $app;
        return $o;
    }

    /** A php-redis connection to --redis-url (1 s connect timeout), its database selected. */
    public function connectRedis(): \Redis
    {
        $url = parse_url($this->redisUrl);
        $redis = new \Redis();
        if (!$redis->connect($url['host'] ?? '127.0.0.1', (int) ($url['port'] ?? 6379), 1.0)) {
            throw new \RedisException('cannot connect to ' . $this->redisUrl);
        }
        $db = (int) ltrim($url['path'] ?? '', '/');
        if ($db > 0) {
            $redis->select($db);
        }
        return $redis;
    }

    public function naive(string $pattern): bool
    {
        return $this->app === 'naive-' . $pattern;
    }

    public function modeName(): string
    {
        return $this->mode === SWOOLE_BASE ? 'base' : 'process';
    }
}

<?php
/** The command line of the Workerman target (its manifests fill it from the contract's placeholders). */

declare(strict_types=1);

namespace WorkermanTarget;

final class Options
{
    public int $port = 9601;
    public int $adminPort = 9602;
    public string $token = '';
    public int $workers = 3;
    public int $taskWorkers = 1;
    public int $heartbeatIdleMs = 0;
    public int $heartbeatCheckMs = 0;
    /** Sessions one worker holds at most; connections over it are closed at accept. */
    public int $maxSessions = 10000;
    /** Whether the reload capability is on (its op and routes; else they are refused as undeclared). */
    public bool $reload = false;
    /** How long an old process may take to stop before the master kills it (Worker::$stopTimeout, whole seconds). */
    public int $maxWaitMs = 3000;
    /** Where the pid file, Workerman's own log and the hub's socket go (one folder per instance). */
    public string $runDir = '';
    /**
     * The application pattern: "fixed" (the seeds' recommended fixes, the default) or one
     * pattern a Workerman user starts from, which the seeds warn about:
     *
     * - "naive-migrate": the worker passes only the socket (SCM_RIGHTS) and the session's
     *   identity, as workerman #1001 does in the connect hook; bytes it read but did not
     *   parse, a half-received message, its unsent output and the session's timers stay behind;
     * - "naive-heartbeat": Workerman's manual's heartbeat, a timer that close()s connections
     *   whose last onMessage is too old: no close frame, and pings do not count.
     */
    public string $app = 'fixed';

    public const APPS = ['fixed', 'naive-migrate', 'naive-heartbeat'];

    /** @param list<string> $argv */
    public static function parse(array $argv): self
    {
        $o = new self();
        $opts = getopt('', [
            'port:', 'admin-port:', 'admin-token:', 'workers:', 'task-workers:',
            'heartbeat-idle-ms:', 'heartbeat-check-ms:', 'max-sessions:', 'app:', 'run-dir:', 'reload', 'max-wait-ms:',
        ]);
        $int = static function (string $key, int $low, int $high) use ($opts): ?int {
            if (!isset($opts[$key])) {
                return null;
            }
            $v = $opts[$key];
            if (!is_string($v) || !preg_match('/^\d+$/', $v) || (int) $v < $low || (int) $v > $high) {
                self::fail("--$key must be an integer in $low..$high, got " . json_encode($v));
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
        $o->token = (string) ($opts['admin-token'] ?? '');
        if ($o->token === '') {
            self::fail('--admin-token is required');
        }
        $o->app = (string) ($opts['app'] ?? 'fixed');
        if (!in_array($o->app, self::APPS, true)) {
            self::fail('--app must be one of ' . implode(', ', self::APPS) . ', got ' . json_encode($o->app));
        }
        $o->runDir = (string) ($opts['run-dir'] ?? '');
        if ($o->runDir === '') {
            $o->runDir = sys_get_temp_dir() . '/workerman-target-' . getmypid();
        }
        if (!is_dir($o->runDir) && !@mkdir($o->runDir, 0700, true)) {
            self::fail('--run-dir ' . json_encode($o->runDir) . ' cannot be created');
        }
        return $o;
    }

    public function naive(string $pattern): bool
    {
        return $this->app === "naive-$pattern";
    }

    /** The heartbeat's check interval: as asked, or idle / 2 (section 3.5). */
    public function heartbeatCheckMs(): int
    {
        return $this->heartbeatCheckMs > 0 ? $this->heartbeatCheckMs : max(10, intdiv($this->heartbeatIdleMs, 2));
    }

    private static function fail(string $message): never
    {
        fwrite(STDERR, "workerman-target: $message\n");
        exit(2);
    }
}

<?php
/**
 * Structured log lines (one JSON object per line, on stderr), rate-limited per
 * event: at most BURST lines of one event per second, then one summary line
 * with the count of what was left out.
 */

declare(strict_types=1);

namespace ContractKit;

final class Log
{
    private const BURST = 5;
    /** @var array<string,array{0:int,1:int,2:int}> event => [second, written, dropped] */
    private static array $seen = [];
    public static string $process = 'main';

    public static function info(string $event, array $fields = []): void
    {
        self::write('info', $event, $fields);
    }

    public static function warn(string $event, array $fields = []): void
    {
        self::write('warning', $event, $fields);
    }

    private static function write(string $level, string $event, array $fields): void
    {
        $now = time();
        [$second, $written, $dropped] = self::$seen[$event] ?? [$now, 0, 0];
        if ($second !== $now) {
            if ($dropped > 0) {
                self::line('warning', 'log.suppressed', ['of' => $event, 'lines' => $dropped]);
            }
            [$second, $written, $dropped] = [$now, 0, 0];
        }
        if ($written >= self::BURST) {
            self::$seen[$event] = [$second, $written, $dropped + 1];
            return;
        }
        self::$seen[$event] = [$second, $written + 1, $dropped];
        self::line($level, $event, $fields);
    }

    private static function line(string $level, string $event, array $fields): void
    {
        $doc = ['ts' => round(microtime(true), 3), 'level' => $level, 'event' => $event, 'process' => self::$process, 'pid' => getmypid()] + $fields;
        fwrite(STDERR, json_encode($doc, JSON_UNESCAPED_SLASHES) . "\n");
    }
}

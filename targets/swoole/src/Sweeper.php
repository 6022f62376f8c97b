<?php
/**
 * The sweep of section 4.3, run by the first task worker: every interval_ms it
 * walks $server->connections, reads each session with getClientInfo() and
 * closes those the rule matches, after a notice.
 *
 * This is the seed's pattern with the seed's fixes: the connection list is a
 * live scan, so a session may be gone (getClientInfo() false: info_missing) or
 * closing (the close fails: close_failed) by the time it is used, and neither
 * is an error. In SWOOLE_BASE mode a task worker's $server->connections is
 * empty: that is Swoole's behaviour, and the scenario task_sweep shows it.
 *
 * Finished reports go to the admin process over its pipe.
 */

declare(strict_types=1);

namespace SwooleTarget;

use ContractKit\Codes;
use ContractKit\Protocol;
use Swoole\Process;
use Swoole\Timer;
use Swoole\WebSocket\Server;

final class Sweeper
{
    private int $version = 0;
    private ?array $rule = null;
    private ?float $due = null;
    private int $number = 0;

    public function __construct(
        private readonly Server $server,
        private readonly Shared $shared,
        private readonly SessionOps $ops,
        private readonly Process $admin,
        private readonly string $name,
    ) {
    }

    public function start(): void
    {
        Timer::tick(5, fn () => $this->poll());
    }

    private function poll(): void
    {
        $version = $this->shared->ruleVersion();
        if ($version !== $this->version) { // a new rule: its first sweep is one interval from now
            $this->version = $version;
            $this->rule = $this->shared->sweepRule();
            $this->due = $this->rule === null ? null : microtime(true) + $this->rule['interval_ms'] / 1000;
        }
        if ($this->rule === null || microtime(true) < $this->due) {
            return;
        }
        $rule = $this->rule;
        $this->sweep($rule);
        $interval = $rule['interval_ms'] / 1000;
        $now = microtime(true);
        while ($this->due <= $now) { // a sweep due while one ran is skipped
            $this->due += $interval;
        }
    }

    /** One sweep; the report goes to the admin process. */
    public function sweep(array $rule): void
    {
        $this->shared->sweeping->set(1);
        $report = [
            'sweep' => ++$this->number, 'process' => $this->name, 'started' => microtime(true), 'ended' => null,
            'seen' => [], 'matched' => [], 'closed' => [], 'info_missing' => [], 'close_failed' => [], 'errors' => [],
        ];
        $uids = array_flip($rule['uids']);
        $idleMs = $rule['idle_ms'] ?? null;
        $notice = $rule['notice'];
        try {
            foreach ($this->server->connections as $fd) {
                $report['seen'][] = $fd;
                $info = $this->server->getClientInfo($fd);
                $row = $this->shared->sessions->get((string) $fd);
                if ($info === false || $row === false) {
                    $report['info_missing'][] = $fd;
                } elseif (($row['uid'] !== 0 && isset($uids[$row['uid']]))
                    || ($idleMs !== null && (microtime(true) - ($info['last_recv_time'] ?: $row['last_recv'])) * 1000 > $idleMs)) {
                    $report['matched'][] = $fd;
                    $this->closeOne($fd, $notice, $report);
                }
                if ($rule['pace_ms'] > 0) {
                    usleep($rule['pace_ms'] * 1000);
                }
            }
        } catch (\Throwable $e) {
            $report['errors'][] = [0, get_class($e) . ': ' . $e->getMessage()];
        }
        $report['ended'] = microtime(true);
        $this->admin->write(serialize(['t' => 'report', 'report' => $report]));
        $this->shared->sweeping->set(0);
    }

    private function closeOne(int $fd, string $notice, array &$report): void
    {
        if ($this->server->isEstablished($fd)) {
            $this->ops->push($fd, Protocol::encode(['ev' => 'notice', 'reason' => $notice, 'session' => $fd]));
        }
        $code = $this->ops->close($fd, Codes::CLOSES['SWEPT'], $notice);
        if ($code === null) {
            $report['closed'][] = $fd;
            $this->shared->count('sweep_closes');
        } else {
            $report['close_failed'][] = [$fd, Codes::name($code)];
        }
    }
}

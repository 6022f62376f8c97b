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
 *
 * With --app naive-sweep, the sweep is the pattern the seed starts from: it
 * lists sessions by pages of getClientList() (as Swoole's manual shows), pushes
 * the notice and closes from the task worker, and assumes every listed session
 * is still there, so getClientInfo() returning false, and a push() or
 * disconnect() failing because the session closed meanwhile, are reported as
 * errors.
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
    /** How long a sweep waits for the owner worker of a session to answer a close. */
    private const OWNER_TIMEOUT_S = 2.0;

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
        private readonly bool $naive = false,
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
            if ($this->naive) {
                $this->naiveSweep($uids, $idleMs, $notice, $rule['pace_ms'], $report);
            } else {
                $this->tolerantSweep($uids, $idleMs, $notice, $rule['pace_ms'], $report);
            }
        } catch (\Throwable $e) {
            $report['errors'][] = [0, get_class($e) . ': ' . $e->getMessage()];
        }
        $report['ended'] = microtime(true);
        $this->admin->write(serialize(['t' => 'report', 'report' => $report]));
        $this->shared->sweeping->set(0);
    }

    /** The seed's fix: the list is a live scan, so a session gone or closing meanwhile is no error. */
    private function tolerantSweep(array $uids, ?int $idleMs, string $notice, int $paceMs, array &$report): void
    {
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
            if ($paceMs > 0) {
                usleep($paceMs * 1000);
            }
        }
    }

    /**
     * The sessions, by pages of 10 ids from getClientList(), as Swoole's manual
     * shows a task worker broadcasting: each page is a snapshot.
     *
     * @return \Generator<int>
     */
    private function pages(): \Generator
    {
        $start = 0;
        while (true) {
            $page = $this->server->getClientList($start, 10);
            if (!$page) {
                return;
            }
            yield from $page;
            $start = end($page);
        }
    }

    /** The seed's starting point: every listed session is taken to be there, so any failure is an error. */
    private function naiveSweep(array $uids, ?int $idleMs, string $notice, int $paceMs, array &$report): void
    {
        $server = $this->server;
        foreach ($this->pages() as $fd) {
            $report['seen'][] = $fd;
            $info = $server->getClientInfo($fd);
            if ($info === false) {
                $report['errors'][] = [$fd, 'getClientInfo() returned false'];
                continue;
            }
            $uid = (int) $this->shared->sessions->get((string) $fd, 'uid');
            $idle = $idleMs !== null && (microtime(true) - $info['last_recv_time']) * 1000 > $idleMs;
            if (($uid !== 0 && isset($uids[$uid])) || $idle) {
                $report['matched'][] = $fd;
                if (!$server->push($fd, Protocol::encode(['ev' => 'notice', 'reason' => $notice, 'session' => $fd]))) {
                    $report['errors'][] = [$fd, 'push() failed: ' . swoole_strerror($server->getLastError(), 9)];
                    $this->ops->countFailure(Protocol::sessionCode($server->getLastError()));
                } elseif (!$server->disconnect($fd, Codes::CLOSES['SWEPT'], $notice)) {
                    $report['errors'][] = [$fd, 'disconnect() failed: ' . swoole_strerror($server->getLastError(), 9)];
                } else {
                    $report['closed'][] = $fd;
                    $this->shared->count('sweep_closes');
                }
            }
            if ($paceMs > 0) {
                usleep($paceMs * 1000);
            }
        }
    }

    /**
     * Close one matched session: its owner worker pushes the notice and closes, in one
     * callback, so none of the owner's own pushes (its timers' ticks) can come between the
     * notice and the close frame. Pushed from here, the notice and a tick of the owner
     * race each other to the reactor (the suite saw a tick after the notice in about one
     * run in ten). The owner writes its answer to the shared reply table.
     */
    private function closeOne(int $fd, string $notice, array &$report): void
    {
        $owner = $this->shared->sessions->get((string) $fd, 'worker');
        if ($owner === false) { // gone since it was listed
            $report['close_failed'][] = [$fd, Codes::name(1005)];
            return;
        }
        $rid = $this->shared->ids->add(1);
        $this->server->sendMessage(['t' => 'sweep_close', 'sid' => $fd, 'notice' => $notice, 'rid' => $rid], $owner);
        $code = $this->shared->awaitReply($rid, self::OWNER_TIMEOUT_S);
        if ($code === false) {
            $report['errors'][] = [$fd, sprintf('worker %d did not answer the close within %.0f s', $owner, self::OWNER_TIMEOUT_S)];
        } elseif ($code === null) {
            $report['closed'][] = $fd;
            $this->shared->count('sweep_closes');
        } else {
            $report['close_failed'][] = [$fd, Codes::name($code)];
        }
    }
}

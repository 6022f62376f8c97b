<?php
/**
 * A task worker: Workerman has none, so this is a Worker of its own (no listening
 * socket) that takes tasks from the hub, and runs the sweep rule (section 4.3).
 *
 * A task holds its worker for its full sleep_ms (a timer, so several can overlap),
 * then its result goes to the hub, which sends it to the session's owner of the moment.
 * The sweep uses only what any process has: the hub's list of sessions (a live scan:
 * a session may be gone by the time it is read) and requests routed to each owner.
 */

declare(strict_types=1);

namespace WorkermanTarget;

use ContractKit\Codes;
use ContractKit\Log;
use Workerman\Timer;
use Workerman\Worker;

final class TaskWorker
{
    private ?Link $link = null;
    private int $index = 0;
    /** @var array<string,int> */
    private array $counters;
    private ?array $rule = null;
    private int $sweepTimer = 0;
    private bool $sweeping = false;
    private int $sweeps = 0;

    public function __construct(private readonly Options $options)
    {
        $this->counters = array_fill_keys(Hub::COUNTERS, 0);
    }

    public function install(Worker $worker): void
    {
        $worker->onWorkerStart = function (Worker $w): void {
            $this->index = $w->id;
            Log::$process = "task-$w->id";
            $this->link = Hub::connect($this->options, ['kind' => 'task', 'id' => $w->id], fn (Link $l, array $m) => $this->onHub($l, $m));
        };
        // A reload stops this process at once: a task it runs ends with it (Workerman has no task workers to drain).
        $worker->onWorkerStop = fn () => $this->link?->send(['t' => 'bye', 'timers' => 0, 'sessions' => 0, 'counters' => $this->counters]);
    }

    private function onHub(Link $link, array $m): void
    {
        switch ($m['t'] ?? null) {
            case 'task':
                Link::sleep((float) $m['sleep_ms']);
                $this->counters['tasks_done']++;
                $link->send(['t' => 'task_done', 'task' => $m['task'], 'sid' => $m['sid'], 're' => $m['re'],
                    'result' => ['data' => $m['data'], 'task_worker' => $this->index]]);
                return;
            case 'sweep_rule':
                $this->setRule($m['rule']);
                return;
            case 'req':
                $link->reply($m, ($m['op'] ?? null) === 'stats'
                    ? ['counters' => $this->counters, 'sessions' => 0, 'timers' => $this->sweepTimer ? 1 : 0]
                    : ['code' => 4501]);
                return;
        }
    }

    /** A new rule (or none): the first sweep one interval from now; a sweep running finishes. */
    private function setRule(?array $rule): void
    {
        if ($this->sweepTimer) {
            Timer::del($this->sweepTimer);
            $this->sweepTimer = 0;
        }
        $this->rule = $rule;
        if ($rule !== null) {
            $this->sweepTimer = Timer::add($rule['interval_ms'] / 1000, function (): void {
                if (!$this->sweeping) {   // a sweep due while one runs is skipped
                    Link::go(fn () => $this->sweep($this->rule));
                }
            });
        }
    }

    private function sweep(array $rule): void
    {
        $this->sweeping = true;
        $this->link->send(['t' => 'sweep_running', 'on' => true]);
        $report = ['sweep' => ++$this->sweeps, 'process' => "task-$this->index", 'started' => microtime(true),
            'seen' => [], 'matched' => [], 'closed' => [], 'info_missing' => [], 'close_failed' => [], 'errors' => []];
        try {
            $this->sweepAll($rule, $report);
        } finally {
            $report['ended'] = microtime(true);
            $this->link->send(['t' => 'sweep_report', 'report' => $report]);
            $this->link->send(['t' => 'sweep_running', 'on' => false]);
            $this->sweeping = false;
        }
    }

    private function sweepAll(array $rule, array &$report): void
    {
        $list = $this->link->call(['op' => 'list']);
        if ($list === null) {
            $report['errors'][] = [0, 'the hub did not answer the session list'];
            return;
        }
        $uids = $rule['uids'] ?? [];
        foreach ($list['sids'] as $sid) {
            $report['seen'][] = $sid;
            $info = $this->link->call(['op' => 'session', 'sid' => $sid, 'act' => 'info']);
            $record = $info['record'] ?? null;
            if ($record === null) {
                if ($info === null || !in_array($info['code'] ?? null, [1004, 1005], true)) {
                    $report['errors'][] = [$sid, 'its record could not be read: ' . Codes::name($info['code'] ?? 2001)];
                } else {
                    $report['info_missing'][] = $sid;
                }
                continue;
            }
            $idle = isset($rule['idle_ms']) && (microtime(true) - $record['last_recv_time']) * 1000 > $rule['idle_ms'];
            if (!(($record['uid'] !== 0 && in_array($record['uid'], $uids, true)) || $idle)) {
                continue;
            }
            $report['matched'][] = $sid;
            $closed = $this->link->call(['op' => 'session', 'sid' => $sid, 'act' => 'sweep_close', 'notice' => $rule['notice']]);
            $code = $closed === null ? 2001 : ($closed['code'] ?? null);
            if ($code === null) {
                $report['closed'][] = $sid;
            } else {
                $report['close_failed'][] = [$sid, Codes::name($code)];
            }
            if ($rule['pace_ms'] > 0) {
                Link::sleep($rule['pace_ms']);
            }
        }
    }
}

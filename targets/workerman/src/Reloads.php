<?php
/**
 * Reloads (docs/contract-v1.md, section 8), kept by the hub on Workerman's own reload.
 *
 * Scope "all" is what `php start.php reload` does: SIGUSR1 to the master, which
 * restarts every reloadable process one after the other (the hub is not reloadable).
 * Scope "task_workers" has no Workerman command: SIGUSR1 to each task worker, which
 * makes it stop, and the master starts its successor. A Workerman process that stops
 * closes its connections (plain close(), no close frame) and exits at once: its
 * sessions and a task it runs end with it. The master kills one still alive after
 * Worker::$stopTimeout (max_wait_ms, rounded up to whole seconds).
 *
 * Workerman keeps no record of a reload. This class does: it numbers reloads, merges
 * a request that comes while one runs (widening a task-worker-only reload with the
 * master's), sets the generation the new processes get when they link, and watches
 * the old processes go (each says goodbye from its onWorkerStop; one that does not
 * was killed). A reload is done when every old process is gone and each has a successor.
 */

declare(strict_types=1);

namespace WorkermanTarget;

use ContractKit\ContractError;
use ContractKit\Log;

final class Reloads
{
    private const KINDS = ['all' => ['worker', 'task'], 'task_workers' => ['task']];
    private const SCOPES = ['all' => ['worker', 'task_worker'], 'task_workers' => ['task_worker']];
    private const MAX_HISTORY = 100;

    public int $generation = 1;
    private ?array $running = null;
    private array $history = [];
    /** @var array<string,int> */
    private array $counters = ['requested' => 0, 'merged' => 0, 'completed' => 0, 'forced_kills' => 0];
    private int $last = 0;
    /** @var array<int,string> the old processes not yet gone: pid => name */
    private array $retiring = [];
    /** @var array<int,array> what an old process said as it stopped, by pid */
    private array $goodbyes = [];

    /** @param \Closure():array<string,Link> $links the hub's links, by name */
    public function __construct(private readonly \Closure $links)
    {
    }

    /**
     * Start a reload, or join the one running: its record, plus ``merged``.
     *
     * @throws ContractError 4400 on a scope other than all or task_workers
     */
    public function request(mixed $scope, string $via): array
    {
        if (!is_string($scope) || !isset(self::KINDS[$scope])) {
            throw new ContractError('BAD_REQUEST', "scope must be 'all' or 'task_workers', got " . json_encode($scope));
        }
        $this->counters['requested']++;
        $request = ['via' => $via, 'scope' => $scope, 'at' => microtime(true)];
        if ($this->running !== null) {
            $this->counters['merged']++;
            $this->running['merged_requests']++;
            $this->running['requests'][] = $request;
            if ($scope === 'all' && $this->running['scope'] !== self::SCOPES['all']) {
                $this->running['scope'] = self::SCOPES['all'];
                $this->replace('all');
            }
            return $this->running + ['merged' => true];
        }
        $id = ++$this->last;
        $this->generation = $id + 1;
        $this->running = [
            'reload' => $id, 'generation' => $id + 1, 'scope' => self::SCOPES[$scope], 'state' => 'running',
            'started' => $request['at'], 'finished' => null, 'duration_ms' => null, 'requests' => [$request],
            'merged_requests' => 0, 'retired' => [], 'forced_kills' => 0, 'sessions_lost' => 0,
        ];
        Log::info('reload.start', ['reload' => $id, 'scope' => $scope, 'via' => $via]);
        $this->replace($scope);
        return $this->running + ['merged' => false];
    }

    /** Ask Workerman to replace the processes of ``$scope``, noting which ones go. */
    private function replace(string $scope): void
    {
        foreach (($this->links)() as $name => $link) {
            if (in_array($link->hello['kind'] ?? '', self::KINDS[$scope], true)) {
                $this->retiring[(int) $link->hello['pid']] = $name;
            }
        }
        if ($scope === 'all') {
            posix_kill(posix_getppid(), SIGUSR1);   // the master: `php start.php reload`
            return;
        }
        foreach ($this->retiring as $pid => $name) {
            if (str_starts_with($name, 'task-')) {
                posix_kill($pid, SIGUSR1);
            }
        }
    }

    /** An old process says goodbye from its onWorkerStop (its timers, the sessions it closes). */
    public function goodbye(int $pid, array $bye): void
    {
        $this->goodbyes[$pid] = $bye;
    }

    /** A process's link is gone (it exited): an old one retires. */
    public function gone(string $name, int $pid): void
    {
        if ($this->running === null || !isset($this->retiring[$pid])) {
            unset($this->goodbyes[$pid]);
            return;
        }
        unset($this->retiring[$pid]);
        $bye = $this->goodbyes[$pid] ?? null;
        unset($this->goodbyes[$pid]);
        $entry = ['name' => $name, 'pid' => $pid, 'reload' => $this->running['reload'], 'forced' => $bye === null];
        if ($bye !== null) {
            $entry += ['timers_after_exit_hook' => $bye['timers'], 'timers_at_exit' => $bye['timers'], 'sessions_closed' => $bye['sessions']];
            $this->running['sessions_lost'] += $bye['sessions'];
        } else {
            $this->running['forced_kills']++;
            $this->counters['forced_kills']++;
        }
        $this->running['retired'][] = $entry;
        $this->maybeDone();
    }

    /** A process linked: done once every old one is gone and each name runs again. */
    public function maybeDone(): void
    {
        if ($this->running === null || $this->retiring !== []) {
            return;
        }
        $links = ($this->links)();
        foreach ($this->running['retired'] as $old) {
            if (!isset($links[$old['name']])) {
                return;   // its successor has not linked yet
            }
        }
        $now = microtime(true);
        $record = ['state' => 'done', 'finished' => $now, 'duration_ms' => round(($now - $this->running['started']) * 1000, 1)] + $this->running;
        $this->running = null;
        $this->counters['completed']++;
        $this->history[] = $record;
        if (count($this->history) > self::MAX_HISTORY) {
            array_shift($this->history);
        }
        Log::info('reload.done', ['reload' => $record['reload'], 'duration_ms' => $record['duration_ms'],
            'forced_kills' => $record['forced_kills'], 'sessions_lost' => $record['sessions_lost']]);
    }

    /** Wait (this Fiber) until reload ``$id`` is done, at most ``$timeout`` s; its record. */
    public function wait(int $id, float $timeout): array
    {
        $deadline = microtime(true) + $timeout;
        while (true) {
            foreach (array_reverse($this->history) as $record) {
                if ($record['reload'] === $id) {
                    return $record;
                }
            }
            if ($this->running === null || microtime(true) >= $deadline) {
                return $this->running ?? throw new ContractError('INTERNAL', "reload $id neither ran nor finished");
            }
            Link::sleep(20);
        }
    }

    public function status(): array
    {
        return ['running' => $this->running, 'history' => $this->history, 'counters' => $this->counters, 'generation' => $this->generation];
    }

    /** @return array<string,int> */
    public function counters(): array
    {
        return $this->counters;
    }

    public function running(): bool
    {
        return $this->running !== null;
    }
}

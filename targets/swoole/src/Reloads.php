<?php
/**
 * Reloads (docs/contract-v1.md, section 8), run by the admin process on Swoole's
 * own reload: Server::reload() signals the manager, which (reload_async) sends
 * SIGTERM to every old worker and starts its successor at once, or replaces the
 * task workers one after the other.
 *
 * Swoole keeps no record of a reload. This class does: it numbers them, merges a
 * request that comes while one runs (widening a task-worker-only reload to a full
 * one by a second Swoole reload under the same record), sets the generation the
 * new processes read as they start, and watches the old processes go. A reload is
 * done when every old process has exited, its successor runs, and the successors
 * hold every session timer the old ones held. An old process whose event loop
 * Swoole had to end at max_wait_time ("worker exit timeout, forced
 * termination"), or that exited without its workerStop hook, is a forced kill.
 */

declare(strict_types=1);

namespace SwooleTarget;

use ContractKit\ContractError;
use ContractKit\Log;
use Swoole\Coroutine;
use Swoole\Process;
use Swoole\WebSocket\Server;

final class Reloads
{
    private const KINDS = ['all' => ['worker', 'task_worker'], 'task_workers' => ['task_worker']];
    private const MAX_HISTORY = 100;

    private ?array $running = null;
    /** @var list<array> */
    private array $history = [];
    /** @var array<string,int> */
    private array $counters = ['requested' => 0, 'merged' => 0, 'completed' => 0, 'forced_kills' => 0];
    private int $last = 0;
    /** @var array<int,array{name:string,generation:int}> the old processes not yet gone, by pid */
    private array $retiring = [];
    /** @var list<string> the names whose successor must run before the reload is done */
    private array $names = [];
    /** A widened reload's second part: the full reload that follows the task workers'. */
    private bool $widened = false;

    public function __construct(private readonly Server $server, private readonly Shared $shared)
    {
    }

    /** Watch the running reload (a coroutine of the admin process). */
    public function run(): void
    {
        while (true) {
            Coroutine::sleep(0.01);
            try {
                $this->poll();
            } catch (\Throwable $e) {
                Log::warn('reload.poll_failed', ['error' => $e->getMessage()]);
            }
        }
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
            if ($scope === 'all' && $this->running['scope'] === self::KINDS['task_workers'] && !$this->widened) {
                $this->running['scope'] = self::KINDS['all'];
                $this->widened = true;
            }
            return $this->running + ['merged' => true];
        }
        $id = ++$this->last;
        $this->running = [
            'reload' => $id, 'generation' => $id + 1, 'scope' => self::KINDS[$scope], 'state' => 'running',
            'started' => $request['at'], 'finished' => null, 'duration_ms' => null, 'requests' => [$request],
            'merged_requests' => 0, 'retired' => [], 'forced_kills' => 0, 'sessions_lost' => 0,
        ];
        $this->shared->generation->set($id + 1);
        $this->replace($scope);
        Log::info('reload.start', ['reload' => $id, 'scope' => $scope, 'via' => $via]);
        return $this->running + ['merged' => false];
    }

    /** Wait (this coroutine) until reload ``$id`` is done; its record. */
    public function wait(int $id, float $timeout): array
    {
        $deadline = microtime(true) + $timeout;
        while (microtime(true) < $deadline) {
            foreach (array_reverse($this->history) as $record) {
                if ($record['reload'] === $id) {
                    return $record;
                }
            }
            Coroutine::sleep(0.01);
        }
        return $this->running ?? throw new ContractError('INTERNAL', "reload $id neither ran nor finished");
    }

    public function status(): array
    {
        return [
            'running' => $this->running, 'history' => $this->history, 'counters' => $this->counters,
            'generation' => $this->shared->generation->get(),
        ];
    }

    /** @return array<string,int> */
    public function counters(): array
    {
        return $this->counters;
    }

    /** Ask Swoole to replace the processes of ``$scope``, noting which ones go. */
    private function replace(string $scope): void
    {
        $kinds = self::KINDS[$scope];
        foreach ($this->shared->procs as $name => $row) {
            if (in_array($row['kind'], $kinds, true) && $row['pid'] > 0 && Process::kill($row['pid'], 0)) {
                $this->retiring[$row['pid']] = ['name' => $name, 'generation' => $row['generation']];
                $this->names[] = $name;
            }
        }
        if (!$this->server->reload($scope === 'task_workers')) { // PHP: reload(bool $only_reload_taskworker)
            Log::warn('reload.refused', ['scope' => $scope, 'error' => swoole_strerror(swoole_last_error(), 9)]);
        }
    }

    private function poll(): void
    {
        if ($this->running === null) {
            return;
        }
        foreach ($this->retiring as $pid => $old) {
            if (!Process::kill($pid, 0)) {
                $this->retire($pid, $old);
                unset($this->retiring[$pid]);
            }
        }
        if ($this->retiring) {
            return;
        }
        $generation = $this->running['generation'];
        foreach (array_unique($this->names) as $name) {
            $row = $this->shared->procs->get($name);
            if ($row === false || $row['generation'] !== $generation || !Process::kill($row['pid'], 0)) {
                return; // its successor is not running yet
            }
        }
        $gone = array_column($this->running['retired'], 'pid');
        foreach ($this->shared->timers as $row) {
            if ($row['holder'] === 0 || in_array($row['holder'], $gone, true)) {
                return; // a session timer the successor has not taken over yet
            }
        }
        $this->names = [];
        $this->countLost();
        if ($this->widened) {
            $this->widened = false;
            $this->replace('all');
            return;
        }
        $now = microtime(true);
        $record = ['state' => 'done', 'finished' => $now, 'duration_ms' => round(($now - $this->running['started']) * 1000, 1)] + $this->running;
        $this->running = null;
        $this->counters['completed']++;
        $this->history[] = $record;
        if (count($this->history) > self::MAX_HISTORY) {
            array_shift($this->history);
        }
        Log::info('reload.done', ['reload' => $record['reload'], 'duration_ms' => $record['duration_ms'], 'forced_kills' => $record['forced_kills']]);
    }

    /** An old process is gone: what it said at exit, or a forced kill if it said nothing. */
    private function retire(int $pid, array $old): void
    {
        $exit = $this->shared->exits->get((string) $pid);
        $this->shared->exits->del((string) $pid);
        $forced = $exit === false || $exit['stopped'] !== 1;
        $entry = ['name' => $old['name'], 'pid' => $pid, 'generation' => $old['generation'], 'reload' => $this->running['reload'], 'forced' => $forced];
        if ($exit !== false) {
            $entry += ['timers_after_exit_hook' => $exit['timers_after_exit_hook'], 'timers_at_exit' => $exit['timers_at_exit']];
        }
        if ($forced) {
            $this->running['forced_kills']++;
            $this->counters['forced_kills']++;
        }
        $this->running['retired'][] = $entry;
    }

    /**
     * Once the successors run: sessions still registered to a retired process went with it
     * (SWOOLE_BASE, where a worker holds its own connections); in SWOOLE_PROCESS each
     * successor took over its predecessor's rows as it started, and none is left.
     */
    private function countLost(): void
    {
        $gone = array_column($this->running['retired'], 'pid');
        $lost = [];
        foreach ($this->shared->sessions as $key => $row) {
            if (in_array($row['pid'], $gone, true)) {
                $lost[] = $key;
            }
        }
        foreach ($lost as $key) {
            $this->shared->sessions->del((string) $key);
        }
        $this->running['sessions_lost'] += count($lost);
    }
}

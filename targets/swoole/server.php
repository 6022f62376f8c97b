<?php
/**
 * A contract target on Swoole\WebSocket\Server (docs/contract-v1.md).
 *
 *     php server.php --port P --admin-port A --admin-token T --workers 3 --task-workers 1 --mode process|base
 *
 * Processes: the master (this one), Swoole's manager, the workers, the task
 * workers and one custom process serving the admin API. The manifests
 * process.toml and base.toml run it in SWOOLE_PROCESS and SWOOLE_BASE mode.
 */

declare(strict_types=1);

use Swoole\Process;
use Swoole\WebSocket\Server;
use SwooleTarget\Admin;
use SwooleTarget\Broadcaster;
use SwooleTarget\App;
use ContractKit\Log;
use SwooleTarget\Options;
use SwooleTarget\SessionOps;
use SwooleTarget\Shared;
use SwooleTarget\Sweeper;

if (!extension_loaded('swoole')) {
    fwrite(STDERR, "swoole-target: the swoole extension is not loaded (run targets/swoole/install.sh)\n");
    exit(3);
}
require __DIR__ . '/../php_kit/autoload.php';
foreach (['Options', 'Shared', 'SessionOps', 'App', 'Sweeper', 'Reloads', 'Broadcaster', 'Admin'] as $class) {
    require __DIR__ . "/src/$class.php";
}

$options = Options::parse($argv);
$shared = new Shared($options->maxSessions);
$server = new Server('127.0.0.1', $options->port, $options->mode, SWOOLE_SOCK_TCP);
$settings = [
    'worker_num' => $options->workers,
    'task_worker_num' => $options->taskWorkers,
    'max_connection' => $options->maxSessions,
    'websocket_compression' => false,   // sessions must not negotiate permessage-deflate (section 3)
    'max_wait_time' => max(1, (int) ceil($options->maxWaitMs / 1000)),   // whole seconds
    'reload_async' => true,
    'log_level' => SWOOLE_LOG_WARNING,
    'package_max_length' => 1 << 20,
];
if ($options->broadcast) {
    $settings['hook_flags'] = SWOOLE_HOOK_TCP;   // php-redis in the workers' coroutines (publish)
}
if ($options->heartbeatIdleMs > 0) {
    // Swoole takes whole seconds: the manifest declares [heartbeat] granularity_ms = 1000.
    $idle = (int) ceil($options->heartbeatIdleMs / 1000);
    $settings['heartbeat_idle_time'] = $idle;
    $settings['heartbeat_check_interval'] = $options->heartbeatCheckMs > 0
        ? (int) ceil($options->heartbeatCheckMs / 1000) : max(1, intdiv($idle, 2));
}
$server->set($settings);

$ops = new SessionOps($server, $shared, $options);
$admin = new Admin($server, $shared, $options, $ops);
$adminProcess = new Process(fn (Process $p) => $admin->run($p), false, SOCK_DGRAM, true);
$server->addProcess($adminProcess);
$broadcasterProcess = null;
if ($options->broadcast) {
    $broadcaster = new Broadcaster($server, $shared, $options, $ops);
    $broadcasterProcess = new Process(fn (Process $p) => $broadcaster->run($p), false, SOCK_DGRAM, true);
    $server->addProcess($broadcasterProcess);
}

/** @var App|null $app the application of this worker or task worker */
$app = null;
$shared->register('master', 'master', 0, getmypid());

$server->on('managerStart', function (Server $s) use ($shared): void {
    $shared->register('manager', 'manager', 0, $s->manager_pid);
});
$server->on('workerStart', function (Server $s, int $workerId) use (&$app, $shared, $options, $adminProcess, $ops, $broadcasterProcess): void {
    $task = $s->taskworker;
    $index = $task ? $workerId - $options->workers : $workerId;
    $name = ($task ? 'task-' : 'worker-') . $index;
    $generation = $shared->generation->get();
    Log::$process = $name;
    $app = new App($s, $shared, $options, $adminProcess, $ops, $generation, $broadcasterProcess);
    if (!$task) {
        $app->start(); // before it registers: a reload is done once successors are registered
    }
    $shared->register($name, $task ? 'task_worker' : 'worker', $index, getmypid(), $generation);
    if ($task && $index === 0) {
        (new Sweeper($s, $shared, $ops, $adminProcess, $name, $options->naive('sweep')))->start();
    }
});
$server->on('workerExit', function () use (&$app): void {
    $app?->onWorkerExit();
});
$server->on('workerStop', function () use (&$app): void {
    $app?->onWorkerStop();
});
// Arrow functions would capture $app by value (null before workerStart): each event goes
// to the App of the process it runs in.
$server->on('connect', function (Server $s, int $fd, int $reactorId) use (&$app): void { $app->onConnect($s, $fd, $reactorId); });
$server->on('open', function (Server $s, Swoole\Http\Request $r) use (&$app): void { $app->onOpen($s, $r); });
$server->on('message', function (Server $s, Swoole\WebSocket\Frame $f) use (&$app): void { $app->onMessage($s, $f); });
$server->on('close', function (Server $s, int $fd, int $reactorId) use (&$app): void { $app->onClose($s, $fd, $reactorId); });
$server->on('request', function (Swoole\Http\Request $request, Swoole\Http\Response $response): void {
    $response->status(426);
    $response->header('Content-Type', 'application/json');
    $response->end('{"error":{"code":4400,"name":"BAD_REQUEST","message":"this port speaks WebSocket: send an Upgrade request"}}');
});
$server->on('task', function (Server $s, int $taskId, int $src, mixed $job) use (&$app): mixed { return $app->onTask($s, $taskId, $src, $job); });
$server->on('finish', function (Server $s, int $taskId, mixed $job) use (&$app): void { $app->onFinish($s, $taskId, $job); });
$server->on('pipeMessage', function (Server $s, int $src, mixed $msg) use (&$app): void { $app->onPipeMessage($s, $src, $msg); });

Log::info('start', ['mode' => $options->modeName(), 'port' => $options->port, 'admin_port' => $options->adminPort,
    'workers' => $options->workers, 'task_workers' => $options->taskWorkers, 'swoole' => SWOOLE_VERSION]);
$server->start();

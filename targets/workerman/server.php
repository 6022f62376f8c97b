<?php
/**
 * A contract target on Workerman 5 (docs/contract-v1.md).
 *
 *     php server.php --port P --admin-port A --admin-token T --workers 3 --task-workers 1 [--app fixed|naive-...]
 *
 * Processes: Workerman's master (this one), the WebSocket workers (Node), the task
 * workers (TaskWorker, a Worker without a socket) and the hub (Hub: the admin API and
 * the channel every other process links to). Workerman gives processes no channel of
 * their own: the hub is this target's. Live sockets move between workers over one
 * datagram socketpair per worker (FdPass).
 */

declare(strict_types=1);

use ContractKit\Log;
use Workerman\Worker;
use WorkermanTarget\FdPass;
use WorkermanTarget\Hub;
use WorkermanTarget\Node;
use WorkermanTarget\Options;
use WorkermanTarget\TaskWorker;

foreach (['pcntl', 'posix', 'sockets'] as $ext) {
    if (!extension_loaded($ext)) {
        fwrite(STDERR, "workerman-target: PHP lacks the $ext extension\n");
        exit(3);
    }
}
if (!is_file(__DIR__ . '/vendor/autoload.php')) {
    fwrite(STDERR, "workerman-target: Workerman is not installed (run targets/workerman/install.sh)\n");
    exit(3);
}
require __DIR__ . '/vendor/autoload.php';
require __DIR__ . '/../php_kit/autoload.php';
foreach (['Options', 'Link', 'Session', 'Wire', 'FdPass', 'Node', 'TaskWorker', 'Reloads', 'Hub'] as $class) {
    require __DIR__ . "/src/$class.php";
}

$options = Options::parse($argv);
Log::$process = 'master';

// One instance per run folder: Workerman's pid file in its default place would make a
// second server in the same folder refuse to start.
Worker::$pidFile = "$options->runDir/workerman.pid";
Worker::$logFile = "$options->runDir/workerman.log";
Worker::$statusFile = "$options->runDir/workerman.status";
Worker::$stopTimeout = max(1, (int) ceil($options->maxWaitMs / 1000));   // whole seconds
Worker::$onMasterStop = static function () use ($options): void {
    foreach (glob("$options->runDir/*") ?: [] as $file) {
        @unlink($file);
    }
    @rmdir($options->runDir);
};

$fdPass = new FdPass($options->workers);

$hub = new Worker('unix://' . Hub::socketPath($options));
$hub->name = 'hub';
$hub->count = 1;
$hub->reloadable = false;   // a reload replaces workers and task workers; the hub keeps its books
(new Hub($options))->install($hub);

$ws = new Worker("websocket://127.0.0.1:$options->port");
$ws->name = 'ws';
$ws->count = $options->workers;
$ws->reusePort = true;   // one listening socket per worker: the kernel spreads connections over them
(new Node($options, $fdPass))->install($ws);

if ($options->taskWorkers > 0) {
    $tasks = new Worker();
    $tasks->name = 'task';
    $tasks->count = $options->taskWorkers;
    (new TaskWorker($options))->install($tasks);
}


Log::info('start', ['app' => $options->app, 'port' => $options->port, 'admin_port' => $options->adminPort,
    'workers' => $options->workers, 'task_workers' => $options->taskWorkers, 'workerman' => Worker::VERSION]);
// Workerman reads its command from argv: the contract's options are ours, the command is start.
global $argv;
$argv = [$argv[0], 'start'];
Worker::runAll();

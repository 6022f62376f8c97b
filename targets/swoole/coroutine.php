<?php
/**
 * A contract target in Swoole's coroutine style (docs/contract-v1.md), in one process:
 * a Swoole\Coroutine\Http\Server per listening port, added and removed while it runs
 * (capability dynamic_ports, section 9), and the admin API on a coroutine TCP server.
 *
 *     php coroutine.php --port P --admin-port A --admin-token T [--app fixed|naive-ports]
 */

declare(strict_types=1);

use ContractKit\Log;
use Swoole\Coroutine;
use SwooleTarget\Co\CoAdmin;
use SwooleTarget\Co\CoApp;

if (!extension_loaded('swoole')) {
    fwrite(STDERR, "swoole-target: the swoole extension is not loaded (run targets/swoole/install.sh)\n");
    exit(3);
}
require __DIR__ . '/../php_kit/autoload.php';
foreach (['Ports', 'CoApp', 'CoAdmin'] as $class) {
    require __DIR__ . "/src/Co/$class.php";
}

$opts = getopt('', ['port:', 'admin-port:', 'admin-token:', 'app:', 'host:']);
$port = (int) ($opts['port'] ?? 0);
$adminPort = (int) ($opts['admin-port'] ?? 0);
$token = (string) ($opts['admin-token'] ?? '');
$app = (string) ($opts['app'] ?? 'fixed');
if ($port < 1 || $port > 65535 || $adminPort < 1 || $adminPort > 65535 || $token === '' || !in_array($app, ['fixed', 'naive-ports'], true)) {
    fwrite(STDERR, "swoole-target: usage: coroutine.php --port P --admin-port A --admin-token T [--app fixed|naive-ports]\n");
    exit(2);
}
Log::$process = 'worker-0';
Swoole\Coroutine::set(['hook_flags' => 0, 'log_level' => SWOOLE_LOG_WARNING]);

Coroutine\run(static function () use ($port, $adminPort, $token, $app): void {
    $application = new CoApp('127.0.0.1', $app === 'naive-ports');
    $application->ports->listen(['port' => $port], 'config');
    $admin = (new CoAdmin($application, $token))->serve($adminPort);
    Coroutine::create(static fn () => $admin->start());
    Log::info('start', ['app' => $app, 'port' => $port, 'admin_port' => $adminPort, 'swoole' => SWOOLE_VERSION]);
    $stop = new Coroutine\Channel(1);
    Swoole\Process::signal(SIGTERM, static fn () => $stop->push(true));
    $stop->pop();
    Log::info('stop', []);
    // Everything ends with the process: no close frames for a stop.
    Swoole\Process::kill(getmypid(), SIGKILL);
});

<?php
/**
 * Passing a live socket from one worker to another (workerman #1001): one AF_UNIX
 * datagram socketpair per worker index, made by the master before it forks, so every
 * process can send to every worker and each worker reads its own. A datagram carries
 * the session id and the descriptor (SCM_RIGHTS); the rest of the session travels
 * through the hub, and the receiving worker waits for both (await()).
 *
 * The pairs outlive a worker: a restarted worker reads the same one. A descriptor
 * that nobody asks for within STALE_S (its move was abandoned) is closed.
 */

declare(strict_types=1);

namespace WorkermanTarget;

use ContractKit\Log;
use Workerman\Timer;
use Workerman\Worker;

final class FdPass
{
    private const STALE_S = 10.0;

    /** @var list<array{0:\Socket,1:\Socket}> [read end, write end] per worker index */
    private array $pairs = [];
    /** @var array<int,array{0:\Socket,1:float}> session id => [socket, arrival] */
    private array $arrived = [];
    /** @var array<int,\Fiber> session id => the adopt waiting for it */
    private array $waiting = [];

    public function __construct(int $workers)
    {
        for ($i = 0; $i < $workers; $i++) {
            if (!socket_create_pair(AF_UNIX, SOCK_DGRAM, 0, $pair)) {
                throw new \RuntimeException('socket_create_pair: ' . socket_strerror(socket_last_error()));
            }
            $this->pairs[] = $pair;
        }
    }

    /** In worker ``$index``: read descriptors passed to it. */
    public function listen(int $index): void
    {
        $read = $this->pairs[$index][0];
        socket_set_nonblock($read);
        Worker::getEventLoop()->onReadable(socket_export_stream($read), fn () => $this->receive($read));
        Timer::add(self::STALE_S / 2, fn () => $this->dropStale());
    }

    /** Pass ``$stream``'s descriptor for session ``$sid`` to worker ``$to``. */
    public function send(int $to, mixed $stream, int $sid): bool
    {
        if (!isset($this->pairs[$to])) {
            return false;
        }
        $sent = @socket_sendmsg($this->pairs[$to][1], [
            'iov' => [(string) $sid],
            'control' => [['level' => SOL_SOCKET, 'type' => SCM_RIGHTS, 'data' => [$stream]]],
        ], 0);
        if ($sent === false) {
            Log::warn('fdpass.send_failed', ['to' => $to, 'session' => $sid, 'error' => socket_strerror(socket_last_error())]);
        }
        return $sent !== false;
    }

    private function receive(\Socket $read): void
    {
        while (true) {
            $msg = ['name' => [], 'buffer_size' => 64, 'controllen' => socket_cmsg_space(SOL_SOCKET, SCM_RIGHTS, 1)];
            if (@socket_recvmsg($read, $msg, MSG_DONTWAIT) === false) {
                return;
            }
            $socket = $msg['control'][0]['data'][0] ?? null;
            $sid = (int) ($msg['iov'][0] ?? 0);
            if (!$socket instanceof \Socket) {
                Log::warn('fdpass.no_descriptor', ['session' => $sid]);
                continue;
            }
            $this->arrived[$sid] = [$socket, microtime(true)];
            $fiber = $this->waiting[$sid] ?? null;
            unset($this->waiting[$sid]);
            $fiber?->resume();
        }
    }

    /** The descriptor passed for ``$sid``, waiting (in this Fiber) up to ``$timeout`` s. */
    public function await(int $sid, float $timeout): ?\Socket
    {
        if (!isset($this->arrived[$sid])) {
            $fiber = \Fiber::getCurrent();
            $this->waiting[$sid] = $fiber;
            $timer = Timer::add($timeout, function () use ($sid): void {
                $fiber = $this->waiting[$sid] ?? null;
                unset($this->waiting[$sid]);
                $fiber?->resume();
            }, [], false);
            \Fiber::suspend();
            Timer::del($timer);
        }
        $socket = $this->arrived[$sid][0] ?? null;
        unset($this->arrived[$sid]);
        return $socket;
    }

    private function dropStale(): void
    {
        foreach ($this->arrived as $sid => [$socket, $at]) {
            if (microtime(true) - $at > self::STALE_S) {
                unset($this->arrived[$sid]);
                socket_close($socket);
                Log::warn('fdpass.stale_descriptor', ['session' => $sid]);
            }
        }
    }
}

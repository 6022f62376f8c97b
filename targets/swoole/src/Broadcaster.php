<?php
/**
 * Redis broadcast (docs/contract-v1.md, section 10, pub/sub mode), as the seed
 * has it: a custom process (Server::addProcess) holds the Redis subscription and
 * pushes each message to the sessions of its channel, which in SWOOLE_PROCESS a
 * custom process can reach directly. In SWOOLE_BASE it reaches none (its
 * $server->connections is empty), so it hands each owner worker its share.
 *
 * - One pattern subscription, PSUBSCRIBE prefix*, with Debian's php-redis in a
 *   coroutine (Swoole's runtime hooks make its socket non-blocking).
 * - Markers: the process publishes to prefix + "@m:" + token (no contract channel
 *   can contain '@') and waits to hear it on its subscription. That confirms the
 *   subscription (the end of an outage), is the heartbeat ("the last time the
 *   target heard from Redis"), and is the barrier of an unsubscribe: once the
 *   marker is back, everything published before the request has been delivered.
 * - Memberships live here, sent by the workers over this process's pipe; the
 *   answer goes back through the shared reply table. A subscribe is answered
 *   only while the subscription is confirmed (else 5005 after a short wait).
 * - Each push is SessionOps::deliverBroadcast(): exists(), isEstablished() and
 *   the send queue first.
 */

declare(strict_types=1);

namespace SwooleTarget;

use ContractKit\Log;

use Swoole\Coroutine;
use Swoole\Coroutine\Channel;
use Swoole\Process;
use Swoole\WebSocket\Server;

final class Broadcaster
{
    /** Channels one session may be in. */
    public const MAX_CHANNELS_PER_SESSION = 64;
    /** How often the subscription is checked with a marker. */
    private const HEARTBEAT_S = 0.1;

    /** @var array<string,array<int,true>> sessions by channel */
    private array $members = [];
    /** @var array<int,array<string,true>> channels by session */
    private array $channelsOf = [];
    /** @var array<string,Channel> markers awaited, by token */
    private array $markers = [];
    private int $nextToken = 0;
    private float $lastHeard = 0.0;
    private bool $confirmed = false;
    private string $session = '';
    private ?\Redis $publisher = null;
    private ?Channel $publishLock = null;

    public function __construct(
        private readonly Server $server,
        private readonly Shared $shared,
        private readonly Options $options,
        private readonly SessionOps $ops,
    ) {
    }

    /** The custom process's body (a coroutine). */
    public function run(Process $process): void
    {
        Log::$process = 'broadcaster';
        $this->shared->register('broadcaster', 'broadcaster', 0, getmypid());
        \Swoole\Runtime::enableCoroutine(SWOOLE_HOOK_TCP | SWOOLE_HOOK_SLEEP);
        Process::signal(SIGTERM, static fn () => Process::kill(getmypid(), SIGKILL)); // see Admin::run()
        $this->session = getmypid() . '.' . bin2hex(random_bytes(4));
        Coroutine::create(fn () => Shared::readPipe($process, fn (array $msg) => Coroutine::create(fn () => $this->request($msg))));
        Coroutine::create(fn () => $this->heartbeat());
        $this->subscribeLoop();
    }

    // ---------------------------------------------------------------- Redis

    private function subscribeLoop(): void
    {
        $attempts = 0;
        while (true) {
            try {
                $redis = $this->options->connectRedis();
                $redis->setOption(\Redis::OPT_READ_TIMEOUT, -1);
                Coroutine::create(fn () => $this->confirm());
                $redis->psubscribe([$this->options->broadcastPrefix . '*'], function ($r, $pattern, $channel, $message): void {
                    $this->onMessage((string) $channel, (string) $message);
                });
                $error = 'the subscription ended';
            } catch (\Throwable $e) {
                $error = $e->getMessage();
            }
            $attempts++;
            $this->lost($error, $attempts);
            Coroutine::sleep(min(1.0, 0.05 * $attempts));
        }
    }

    /** The subscription failed: an outage starts (at the last time Redis was heard), or goes on. */
    private function lost(string $error, int $attempts): void
    {
        $this->publisher = null;
        if ($this->confirmed) {
            $this->confirmed = false;
            $this->shared->broadcastConnected->set(0);
            $this->shared->outageStart($this->lastHeard ?: microtime(true), $error);
            Log::warn('broadcast.outage', ['error' => $error]);
        }
        $this->shared->outageAttempt($attempts, $error);
    }

    /** Until a marker comes back on the new subscription: then it is confirmed. */
    private function confirm(): void
    {
        for ($i = 0; $i < 100 && !$this->confirmed; $i++) {
            if ($this->roundTrip(0.1)) {
                $this->confirmed = true;
                $this->shared->broadcastConnected->set(1);
                if ($this->shared->outageEnd(microtime(true))) {
                    Log::info('broadcast.outage_end', []);
                }
                return;
            }
        }
    }

    private function heartbeat(): void
    {
        while (true) {
            Coroutine::sleep(self::HEARTBEAT_S);
            if ($this->confirmed) {
                $this->roundTrip(1.0);
            }
        }
    }

    /** Publish a marker and wait for it on the subscription: whether it came back in time. */
    private function roundTrip(float $timeout): bool
    {
        $token = $this->session . '.' . (++$this->nextToken);
        $this->markers[$token] = $chan = new Channel(1);
        try {
            $this->publishLock ??= new Channel(1);
            $this->publishLock->push(true); // one coroutine at a time on the publisher connection
            try {
                $this->publisher ??= $this->options->connectRedis();
                $this->publisher->publish($this->options->broadcastPrefix . '@m:' . $token, '1');
            } finally {
                $this->publishLock->pop();
            }
            return $chan->pop($timeout) !== false;
        } catch (\Throwable) {
            $this->publisher = null;
            return false;
        } finally {
            unset($this->markers[$token]);
        }
    }

    private function onMessage(string $channel, string $message): void
    {
        $this->lastHeard = microtime(true);
        $name = substr($channel, strlen($this->options->broadcastPrefix));
        if (str_starts_with($name, '@m:')) {
            ($this->markers[substr($name, 3)] ?? null)?->push(true); // a late marker finds no one waiting
            return;
        }
        $this->shared->count('bc_received');
        json_decode($message);
        if (json_last_error() !== JSON_ERROR_NONE) {
            $this->shared->count('bc_rejected');
            return;
        }
        $text = '{"ev":"broadcast","channel":' . json_encode($name) . ',"id":null,"data":' . $message . '}';
        if ($name === '@all') {
            $this->fanOutAll($text);
            return;
        }
        $this->fanOut(array_keys($this->members[$name] ?? []), $text);
    }

    /**
     * Hand ``$text`` to sessions ``$sids``. In SWOOLE_PROCESS this process pushes itself. In
     * SWOOLE_BASE it reaches no session, so each owner worker (from the registry) gets its
     * share with sendMessage() and pushes (App::onPipeMessage()), in publish order.
     *
     * @param list<int> $sids
     */
    private function fanOut(array $sids, string $text): void
    {
        if ($this->options->mode === SWOOLE_PROCESS) {
            foreach ($sids as $sid) {
                if ($this->ops->deliverBroadcast($sid, $text) === 'slow') {
                    $this->leaveAll($sid);
                }
            }
            return;
        }
        $byOwner = [];
        foreach ($sids as $sid) {
            $owner = $this->shared->sessions->get((string) $sid, 'worker');
            if ($owner !== false) {
                $byOwner[$owner][] = $sid;
            }
        }
        foreach ($byOwner as $owner => $share) {
            $this->server->sendMessage(['t' => 'bc', 'sids' => $share, 'text' => $text], $owner);
        }
    }

    /**
     * Hand ``$text`` to every established session. Not by iterating the shared session table:
     * a Swoole\Table iterator skips rows while other processes delete rows (swoole-src #2984,
     * "deleting while iterating is not supported"), and workers delete a row at every close, so
     * one @all message missed 68 of 100 sessions of a node under churn. The connection list is
     * what the seed iterates: in SWOOLE_PROCESS this process walks `$server->connections` itself;
     * in SWOOLE_BASE it sees none, so every worker gets the message and walks its own.
     */
    private function fanOutAll(string $text): void
    {
        if ($this->options->mode === SWOOLE_PROCESS) {
            foreach ($this->server->connections as $sid) {
                if ($this->ops->deliverBroadcast((int) $sid, $text) === 'slow') {
                    $this->leaveAll((int) $sid);
                }
            }
            return;
        }
        for ($worker = 0; $worker < $this->options->workers; $worker++) {
            $this->server->sendMessage(['t' => 'bc_all', 'text' => $text], $worker);
        }
    }

    // ---------------------------------------------------------------- memberships

    /** A worker's request about one session; the answer goes to the reply table. */
    private function request(array $msg): void
    {
        $sid = (int) ($msg['sid'] ?? 0);
        $rid = (int) ($msg['rid'] ?? 0);
        switch ($msg['t'] ?? null) {
            case 'sub':
                $channel = (string) $msg['channel'];
                for ($i = 0; $i < 200 && !$this->confirmed; $i++) {
                    Coroutine::sleep(0.01);
                }
                if (!$this->confirmed) {
                    $this->shared->reply($rid, 5005);
                } elseif (!isset($this->channelsOf[$sid][$channel]) && count($this->channelsOf[$sid] ?? []) >= self::MAX_CHANNELS_PER_SESSION) {
                    $this->shared->reply($rid, 4400, 'a session may be in at most ' . self::MAX_CHANNELS_PER_SESSION . ' channels');
                } elseif (!$this->alive($sid)) {
                    $this->shared->reply($rid, 1004);
                } else {
                    $this->members[$channel][$sid] = true;
                    $this->channelsOf[$sid][$channel] = true;
                    $this->shared->reply($rid, null);
                }
                break;
            case 'unsub':
                $channel = (string) $msg['channel'];
                $was = isset($this->members[$channel][$sid]);
                if ($was) {
                    $this->roundTrip(1.0); // what was published before the request is delivered first
                    $this->leave($sid, $channel);
                }
                $this->shared->reply($rid, null, $was ? 'true' : 'false');
                break;
            case 'channels':
                $list = array_keys($this->channelsOf[$sid] ?? []);
                sort($list);
                $this->shared->reply($rid, null, json_encode($list));
                break;
            case 'gone':
                $this->leaveAll($sid);
                break;
        }
    }

    /** Whether ``$sid`` is open and not closing (SWOOLE_BASE: by the registry, exists() sees nothing here). */
    private function alive(int $sid): bool
    {
        if ($this->options->mode === SWOOLE_PROCESS) {
            return $this->server->exists($sid);
        }
        $state = $this->shared->state($sid);
        return $state !== null && $state !== Shared::CLOSING;
    }

    private function leave(int $sid, string $channel): void
    {
        unset($this->members[$channel][$sid], $this->channelsOf[$sid][$channel]);
        if (($this->members[$channel] ?? null) === []) {
            unset($this->members[$channel]);
        }
        if (($this->channelsOf[$sid] ?? null) === []) {
            unset($this->channelsOf[$sid]);
        }
    }

    private function leaveAll(int $sid): void
    {
        foreach (array_keys($this->channelsOf[$sid] ?? []) as $channel) {
            $this->leave($sid, $channel);
        }
    }
}

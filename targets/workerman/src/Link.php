<?php
/**
 * The target's own channel between processes (Workerman has none): one Unix-socket
 * connection from every process to the hub, carrying one JSON object per line.
 *
 * A message is either a request (`rid` set, `t` = "req"), its reply (`t` = "rep", same
 * `rid`) or an event (anything else). call() sends a request and suspends the calling
 * Fiber until the reply comes or the timeout passes (then it answers null). Messages on
 * one link arrive in the order they were sent, which the migration's ordering rests on.
 */

declare(strict_types=1);

namespace WorkermanTarget;

use ContractKit\Log;
use Workerman\Connection\TcpConnection;
use Workerman\Timer;

final class Link
{
    /** A line longer than this ends the link: no message of ours comes near it. */
    public const MAX_LINE = 64 << 20;

    private string $buffer = '';
    private int $nextRid = 0;
    /** @var array<int,\Fiber> */
    private array $waiting = [];
    /** What the other end says it is (hello), set by the hub. */
    public string $name = '';
    public array $hello = [];
    /** The generation the hub gave the process at the other end (section 8). */
    public int $generation = 1;

    /** @param \Closure(Link,array):void $onMessage gets every request and event */
    public function __construct(public readonly TcpConnection $conn, private readonly \Closure $onMessage)
    {
    }

    /** Feed bytes read from the connection; each whole line is handled in its own Fiber. */
    public function feed(string $data): void
    {
        $this->buffer .= $data;
        if (strlen($this->buffer) > self::MAX_LINE) {
            Log::warn('link.line_too_long', ['peer' => $this->name, 'bytes' => strlen($this->buffer)]);
            $this->conn->close();
            return;
        }
        while (($end = strpos($this->buffer, "\n")) !== false) {
            $line = substr($this->buffer, 0, $end);
            $this->buffer = substr($this->buffer, $end + 1);
            $msg = json_decode($line, true);
            if (!is_array($msg)) {
                Log::warn('link.bad_message', ['peer' => $this->name, 'line' => substr($line, 0, 200)]);
                continue;
            }
            if (($msg['t'] ?? null) === 'rep') {
                $fiber = $this->waiting[$msg['rid'] ?? -1] ?? null;
                unset($this->waiting[$msg['rid'] ?? -1]);
                $fiber?->resume($msg);
                continue;
            }
            self::go(fn () => ($this->onMessage)($this, $msg));
        }
    }

    public function send(array $msg): bool
    {
        return $this->conn->send(json_encode($msg, JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE) . "\n") !== false;
    }

    /** Answer the request ``$req`` with ``$fields``. */
    public function reply(array $req, array $fields = []): void
    {
        if (isset($req['rid'])) {
            $this->send(['t' => 'rep', 'rid' => $req['rid']] + $fields);
        }
    }

    /** Send a request and wait (in this Fiber) for its reply; null when none came in time. */
    public function call(array $msg, float $timeout = 5.0): ?array
    {
        $rid = ++$this->nextRid;
        $fiber = \Fiber::getCurrent() ?? throw new \LogicException('Link::call outside a Fiber');
        $this->waiting[$rid] = $fiber;
        $timer = Timer::add($timeout, function () use ($rid): void {
            $fiber = $this->waiting[$rid] ?? null;
            unset($this->waiting[$rid]);
            $fiber?->resume(null);
        }, [], false);
        if (!$this->send(['t' => 'req', 'rid' => $rid] + $msg)) {
            unset($this->waiting[$rid]);
            Timer::del($timer);
            return null;
        }
        $reply = \Fiber::suspend();
        Timer::del($timer);
        return $reply;
    }

    /** The link is gone: every call waiting on it answers null now. */
    public function fail(): void
    {
        $waiting = $this->waiting;
        $this->waiting = [];
        foreach ($waiting as $fiber) {
            $fiber->resume(null);
        }
    }

    /** Run ``$fn`` in a Fiber of its own (it may call() and sleep()). */
    public static function go(callable $fn): void
    {
        $fiber = new \Fiber(static function () use ($fn): void {
            try {
                $fn();
            } catch (\Throwable $e) {
                Log::warn('fiber.error', ['error' => get_class($e) . ': ' . $e->getMessage(), 'at' => $e->getFile() . ':' . $e->getLine()]);
            }
        });
        $fiber->start();
    }

    /** Suspend this Fiber for ``$ms`` milliseconds (the event loop runs meanwhile). */
    public static function sleep(float $ms): void
    {
        $fiber = \Fiber::getCurrent() ?? throw new \LogicException('Link::sleep outside a Fiber');
        Timer::add(max(0.001, $ms / 1000), static fn () => $fiber->resume(), [], false);
        \Fiber::suspend();
    }
}

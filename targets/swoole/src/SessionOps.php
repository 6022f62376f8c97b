<?php
/**
 * Push to and close a session from the process that can reach it, the way the
 * seeds recommend: check exists() and isEstablished() first, so that a dead
 * session costs a counted failure and no warning line (docs/contract-v1.md, 3.4).
 *
 * With --app naive-push, push() calls $server->push() straight away, as a user
 * does before meeting the seed: Swoole then prints one "session#N does not
 * exists" warning per push to a dead session. The failure is still counted (by
 * getLastError()), so only the warnings tell the two patterns apart.
 */

declare(strict_types=1);

namespace SwooleTarget;

use ContractKit\Protocol;
use Swoole\WebSocket\Server;

final class SessionOps
{
    private readonly bool $naive;

    public function __construct(private readonly Server $server, private readonly Shared $shared, private readonly Options $options)
    {
        $this->naive = $options->naive('push');
    }

    /**
     * Write one broadcast to ``$sid`` from a process that can reach it (section 10): nothing
     * to a session closing, gone or mid-handshake; a session whose send queue (the reactor's,
     * getClientInfo()'s send_queued_bytes) is past buffer_bytes is closed with 4429 instead.
     * What happened: "sent", "skipped", "slow" or "failed".
     *
     * With --app naive-broadcast it is the seed's loop body as users write it,
     * `if ($server->isEstablished($fd)) $server->push($fd, $data);`, with no look at the queue.
     */
    public function deliverBroadcast(int $sid, string $text): string
    {
        $server = $this->server;
        if ($this->options->naive('broadcast')) {
            if ($server->isEstablished($sid) && $server->push($sid, $text)) {
                $this->shared->count('bc_deliveries');
                return 'sent';
            }
            if ($server->getLastError() !== 0) {
                $this->countFailure(Protocol::sessionCode($server->getLastError()));
                return 'failed';
            }
            return 'skipped';
        }
        if (!$server->exists($sid) || !$server->isEstablished($sid)) {
            return 'skipped';
        }
        $info = $server->getClientInfo($sid);
        if (is_array($info) && ($info['send_queued_bytes'] ?? 0) > $this->options->bufferBytes) {
            $server->disconnect($sid, 4429, 'slow consumer');
            $this->shared->count('bc_slow_closed');
            return 'slow';
        }
        if ($this->push($sid, $text) === null) {
            $this->shared->count('bc_deliveries');
            return 'sent';
        }
        return 'failed';
    }

    /** Push ``$text`` to ``$to``: null on success, else the contract's code (counted). */
    public function push(int $to, string $text): ?int
    {
        $server = $this->server;
        if ($this->naive) {
            if ($server->push($to, $text)) {
                $this->shared->count('pushes');
                return null;
            }
            $code = Protocol::sessionCode($server->getLastError());
        } elseif (!$server->exists($to)) {
            $code = $this->shared->state($to) === null ? 1005 : 1004;
        } elseif (!$server->isEstablished($to)) {
            $code = 8503;
        } elseif ($server->push($to, $text)) {
            $this->shared->count('pushes');
            return null;
        } else {
            $code = Protocol::sessionCode($server->getLastError());
        }
        $this->countFailure($code);
        return $code;
    }

    public function countFailure(int $code): void
    {
        $this->shared->count('push_failed');
        if ($code === 1004 || $code === 1005) {
            $this->shared->count('dead_session_pushes');
        }
    }

    /** Close ``$sid`` with a close frame: null once started, else the contract's code. */
    public function close(int $sid, int $code, string $reason): ?int
    {
        $server = $this->server;
        if (!$server->exists($sid)) {
            return $this->shared->state($sid) === null ? 1005 : 1004;
        }
        if (!$server->isEstablished($sid)) {
            return 8503;
        }
        if (!$server->disconnect($sid, $code, $reason)) {
            return $server->exists($sid) ? 1004 : 1005;
        }
        $this->shared->count('closes_requested');
        return null;
    }
}

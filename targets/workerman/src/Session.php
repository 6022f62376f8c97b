<?php
/**
 * One WebSocket session held by a worker: its connection and the application state
 * that moves with it (uid, group, protection, the timers it started).
 */

declare(strict_types=1);

namespace WorkermanTarget;

use Workerman\Connection\TcpConnection;

enum SessionState: string
{
    case Connecting = 'connecting';
    case Established = 'established';
    /** The close is known (section 1): nothing but the close frame is written any more. */
    case Closing = 'closing';
    /** Handed to another worker; this one forgets it once the hub confirms the move. */
    case Moving = 'moving';
}

final class Session
{
    public SessionState $state = SessionState::Connecting;
    public int $uid = 0;
    public ?int $group = null;
    public bool $protected = false;
    public int $migrations = 0;
    public float $connectTime;
    public float $lastRecv;
    /** Requests of this session waiting for another process's answer (a move waits for none). */
    public int $inflight = 0;
    /** Tasks submitted whose result has not come back (contract 12.2). */
    public int $tasksOut = 0;
    /** Timer ids this session started (they live in Node::$timers). @var array<int,true> */
    public array $timers = [];
    /** Socket inode, to find the OS fd under /proc/self/fd. */
    public ?int $inode = null;

    public function __construct(public readonly int $id, public TcpConnection $conn)
    {
        $this->connectTime = $this->lastRecv = microtime(true);
        $stat = @fstat($conn->getSocket());
        $this->inode = is_array($stat) ? $stat['ino'] : null;
    }

    public function exists(): bool
    {
        return $this->state === SessionState::Connecting || $this->state === SessionState::Established;
    }

    /** The session record of section 4.1 (``$osFd``: the descriptor found for its inode, if any). */
    public function record(int $worker, ?int $osFd): array
    {
        return [
            'session' => $this->id,
            'state' => $this->state === SessionState::Moving ? 'established' : $this->state->value,
            'established' => $this->state === SessionState::Established || $this->state === SessionState::Moving,
            'worker' => $worker,
            'pid' => getmypid(),
            'remote_addr' => $this->conn->getRemoteIp(),
            'remote_port' => $this->conn->getRemotePort(),
            'local_port' => $this->conn->getLocalPort(),
            'connect_time' => $this->connectTime,
            'last_recv_time' => $this->lastRecv,
            'uid' => $this->uid,
            'protected' => $this->protected,
            'os_fd' => $this->state === SessionState::Moving ? null : $osFd,
            'group' => $this->group,
            'migrating' => $this->state === SessionState::Moving,
            'migrations' => $this->migrations,
            'handler' => 'default',
        ];
    }

    /** OS fds of this process's sockets, by inode (read once per listing). @return array<int,int> */
    public static function fdsByInode(): array
    {
        $map = [];
        foreach (@scandir('/proc/self/fd') ?: [] as $fd) {
            $link = @readlink("/proc/self/fd/$fd");
            if (is_string($link) && preg_match('/^socket:\[(\d+)\]$/', $link, $m)) {
                $map[(int) $m[1]] = (int) $fd;
            }
        }
        return $map;
    }
}

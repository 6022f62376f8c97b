<?php
/**
 * What Workerman holds for a connection, out of the application's reach (protected
 * members of TcpConnection, the WebSocket protocol's fields in its context), read and
 * written for a migration: bytes read but not parsed, the length of the packet being
 * read, output not yet written, and the state of a half-received WebSocket message.
 *
 * Workerman has no API for any of this: a connection is meant to live and die in the
 * process that accepted it. These helpers reach in with Closure::bind, the least a
 * server must do to move a live connection (the seed, workerman #1001, moves only the
 * socket, and loses them).
 */

declare(strict_types=1);

namespace WorkermanTarget;

use Workerman\Connection\TcpConnection;
use Workerman\Protocols\Websocket;
use Workerman\Worker;

final class Wire
{
    private const WS_FIELDS = ['websocketDataBuffer', 'websocketCurrentFrameLength', 'websocketCurrentFrameBuffer'];

    /** Run ``$fn`` with ``$this`` bound to the connection, protected members in reach. */
    private static function inside(TcpConnection $conn, \Closure $fn): mixed
    {
        return \Closure::bind($fn, $conn, TcpConnection::class)();
    }

    /** Stop writing the connection's output: what is queued stays queued (it moves). */
    public static function holdOutput(TcpConnection $conn): void
    {
        self::inside($conn, function (): void {
            $this->eventLoop?->offWritable($this->socket);
        });
    }

    /** Write the queued output again (the move was abandoned). */
    public static function releaseOutput(TcpConnection $conn): void
    {
        self::inside($conn, function (): void {
            if ($this->sendBuffer !== '' && $this->eventLoop !== null) {
                $this->eventLoop->onWritable($this->socket, $this->baseWrite(...));
            }
        });
    }

    /** @return array{recv:string,package:int,send:string,ws:array<string,mixed>} */
    public static function export(TcpConnection $conn): array
    {
        $wire = self::inside($conn, fn (): array => [
            'recv' => $this->recvBuffer, 'package' => $this->currentPackageLength, 'send' => $this->sendBuffer,
        ]);
        $wire['ws'] = [];
        foreach (self::WS_FIELDS as $field) {
            $wire['ws'][$field] = $conn->context->{$field} ?? null;
        }
        return $wire;
    }

    /**
     * Make a connection re-created from a passed socket one of ``$worker``'s, as its
     * accept would have, with its handshake done and ``$wire`` (null: nothing) restored.
     */
    public static function attach(TcpConnection $conn, Worker $worker, ?array $wire): void
    {
        $conn->worker = $worker;
        $conn->protocol = Websocket::class;
        $conn->onMessage = $worker->onMessage;
        $conn->onClose = $worker->onClose;
        $conn->onError = $worker->onError;
        $conn->onBufferDrain = $worker->onBufferDrain;
        $conn->onBufferFull = $worker->onBufferFull;
        $worker->connections[$conn->id] = $conn;
        $conn->context->websocketHandshake = true;
        $conn->context->websocketDataBuffer = '';
        $conn->context->websocketCurrentFrameLength = 0;
        $conn->context->websocketCurrentFrameBuffer = '';
        if ($wire === null) {
            return;
        }
        foreach ($wire['ws'] as $field => $value) {
            if ($value !== null) {
                $conn->context->{$field} = $value;
            }
        }
        self::inside($conn, function () use ($wire): void {
            $this->recvBuffer = $wire['recv'];
            $this->currentPackageLength = $wire['package'];
            if ($wire['send'] !== '') {
                $this->sendBuffer = $wire['send'];
                $this->eventLoop->onWritable($this->socket, $this->baseWrite(...));
            }
        });
    }

    /**
     * Forget a connection that now lives in another process: no callback runs, nothing
     * is written, and closing this process's descriptor sends no FIN (the other holds one).
     */
    public static function detach(TcpConnection $conn, Worker $worker): void
    {
        unset($worker->connections[$conn->id], TcpConnection::$connections[$conn->id]);
        self::inside($conn, function (): void {
            $this->eventLoop?->offReadable($this->socket);
            $this->eventLoop?->offWritable($this->socket);
            $this->onMessage = $this->onClose = $this->onError = $this->onBufferDrain = $this->onBufferFull = null;
            $this->status = self::STATUS_CLOSED;
            $this->sendBuffer = $this->recvBuffer = '';
            $this->eventLoop = null;
            $this->worker = null;
            @fclose($this->socket);
        });
    }
}

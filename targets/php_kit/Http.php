<?php
/**
 * The admin API's HTTP/1.1, without I/O (docs/contract-v1.md, section 4).
 *
 * HttpReader takes bytes as they arrive and hands out whole requests; every
 * refusal the contract names for the admin API's own errors is an HttpError
 * raised as soon as the request head shows it: 400 for a malformed head, 411
 * for a POST, PUT or DELETE without Content-Length (and for a chunked body),
 * 413 for a Content-Length over 1 MiB, answered without reading the body.
 * After an HttpError the connection must be answered and closed.
 */

declare(strict_types=1);

namespace ContractKit;

final class HttpRequest
{
    /** @param array<string,string> $headers lower-case names */
    public function __construct(
        public readonly string $method,
        public readonly string $path,
        public readonly array $headers,
        public readonly string $body,
    ) {
    }

    public function header(string $name): ?string
    {
        return $this->headers[strtolower($name)] ?? null;
    }

    /** Whether the client asked to close the connection after this request. */
    public function wantsClose(): bool
    {
        return strtolower($this->header('connection') ?? '') === 'close';
    }
}

final class HttpError extends \Exception
{
    public function __construct(public readonly int $status, public readonly string $errName, string $message)
    {
        parent::__construct($message, Codes::ERRORS[$errName]);
    }

    public function response(): string
    {
        return Http::json($this->status, ['error' => ['code' => $this->getCode(), 'name' => $this->errName, 'message' => $this->getMessage()]], true);
    }
}

final class HttpReader
{
    public const MAX_HEAD = 16384;
    public const MAX_BODY = 1 << 20;

    private string $buffer = '';
    /** @var array{0:string,1:string,2:array<string,string>,3:int}|null */
    private ?array $head = null;

    public function feed(string $data): void
    {
        $this->buffer .= $data;
    }

    /** The next whole request, or null until more bytes arrive. Throws HttpError. */
    public function next(): ?HttpRequest
    {
        if ($this->head === null) {
            $end = strpos($this->buffer, "\r\n\r\n");
            if ($end === false) {
                if (strlen($this->buffer) > self::MAX_HEAD) {
                    throw new HttpError(400, 'BAD_REQUEST', 'request head over 16 KiB');
                }
                return null;
            }
            $this->head = self::parseHead(substr($this->buffer, 0, $end));
            $this->buffer = substr($this->buffer, $end + 4);
        }
        [$method, $path, $headers, $length] = $this->head;
        if (strlen($this->buffer) < $length) {
            return null;
        }
        $body = substr($this->buffer, 0, $length);
        $this->buffer = substr($this->buffer, $length);
        $this->head = null;
        return new HttpRequest($method, $path, $headers, $body);
    }

    /** @return array{0:string,1:string,2:array<string,string>,3:int} */
    private static function parseHead(string $head): array
    {
        $lines = explode("\r\n", $head);
        $parts = explode(' ', (string) array_shift($lines));
        if (count($parts) !== 3 || !preg_match('/^[A-Z]{1,16}$/', $parts[0]) || !str_starts_with($parts[1], '/')
            || !preg_match('#^HTTP/1\.[01]$#', $parts[2])) {
            throw new HttpError(400, 'BAD_REQUEST', 'malformed request line');
        }
        $headers = [];
        foreach ($lines as $line) {
            $colon = strpos($line, ':');
            if ($colon === false || $colon === 0 || preg_match('/[\s]/', substr($line, 0, $colon))) {
                throw new HttpError(400, 'BAD_REQUEST', 'malformed header line');
            }
            $headers[strtolower(substr($line, 0, $colon))] = trim(substr($line, $colon + 1));
        }
        [$method, $target] = $parts;
        if (isset($headers['transfer-encoding'])) {
            throw new HttpError(411, 'LENGTH_REQUIRED', 'a chunked body is not accepted: send Content-Length');
        }
        $length = $headers['content-length'] ?? null;
        if ($length === null) {
            if (in_array($method, ['POST', 'PUT', 'DELETE'], true)) {
                throw new HttpError(411, 'LENGTH_REQUIRED', "$method needs a Content-Length header (0 for no body)");
            }
            $length = '0';
        }
        if (!preg_match('/^\d{1,12}$/', $length)) {
            throw new HttpError(400, 'BAD_REQUEST', 'Content-Length is not a number');
        }
        if ((int) $length > self::MAX_BODY) {
            throw new HttpError(413, 'TOO_LARGE', "a body of $length bytes is over 1 MiB");
        }
        $path = explode('?', $target, 2)[0];
        return [$method, $path, $headers, (int) $length];
    }
}

final class Http
{
    private const REASONS = [
        200 => 'OK', 400 => 'Bad Request', 401 => 'Unauthorized', 403 => 'Forbidden', 404 => 'Not Found',
        405 => 'Method Not Allowed', 409 => 'Conflict', 411 => 'Length Required', 413 => 'Payload Too Large',
        500 => 'Internal Server Error', 501 => 'Not Implemented', 503 => 'Service Unavailable',
    ];

    public static function response(int $status, string $body, string $type = 'application/json', bool $close = false): string
    {
        $reason = self::REASONS[$status] ?? 'Status';
        return "HTTP/1.1 $status $reason\r\ncontent-type: $type\r\ncontent-length: " . strlen($body)
            . ($close ? "\r\nconnection: close" : '') . "\r\n\r\n" . $body;
    }

    public static function json(int $status, mixed $doc, bool $close = false): string
    {
        return self::response($status, Protocol::encode($doc), 'application/json', $close);
    }

    /**
     * The whole response to ``$request``: ``$route`` answers [status, document] (a string
     * document is Prometheus text); its HttpError and ContractError become the contract's
     * error answers, anything else a 500 INTERNAL that ``$onBug`` hears of.
     *
     * @param callable(HttpRequest):array{0:int,1:mixed} $route
     * @param callable(\Throwable):void $onBug
     */
    public static function answer(HttpRequest $request, callable $route, callable $onBug): string
    {
        try {
            [$status, $doc] = $route($request);
            return is_string($doc) ? self::response($status, $doc, 'text/plain; version=0.0.4') : self::json($status, $doc);
        } catch (HttpError $e) {
            return self::json($e->status, ['error' => ['code' => $e->getCode(), 'name' => $e->errName, 'message' => $e->getMessage()]]);
        } catch (ContractError $e) {
            return self::json(Codes::STATUS_OF[$e->getCode()] ?? 400, ['error' => $e->asArray()]);
        } catch (\Throwable $e) {
            $onBug($e);
            return self::json(500, ['error' => ['code' => 4500, 'name' => 'INTERNAL', 'message' => get_class($e) . ': ' . $e->getMessage()]]);
        }
    }

    public static function error(int $status, string $name, string $message): HttpError
    {
        return new HttpError($status, $name, $message);
    }

    /** The JSON body of a request as an array (``{}`` for none); 400 if it is not JSON. */
    public static function body(HttpRequest $request): array
    {
        if ($request->body === '') {
            return [];
        }
        try {
            $doc = json_decode($request->body, true, 64, JSON_THROW_ON_ERROR);
        } catch (\JsonException) {
            throw new HttpError(400, 'BAD_REQUEST', 'the body is not JSON');
        }
        if (!is_array($doc)) {
            throw new HttpError(400, 'BAD_REQUEST', 'the body must be a JSON object');
        }
        return $doc;
    }
}

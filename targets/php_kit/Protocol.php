<?php
/**
 * What every PHP contract server needs, whatever its engine (docs/contract-v1.md, section 3).
 *
 * Pure helpers, no I/O: the refusal exception, reply builders, request field
 * validation, the sweep rule of section 4.3 and a timer's status.
 */

declare(strict_types=1);

namespace ContractKit;

/** A request refused with one of the contract's codes (the session stays open). */
final class ContractError extends \Exception
{
    public readonly string $errName;

    public function __construct(string $name, string $message, public readonly mixed $reqId = null)
    {
        parent::__construct($message, Codes::ERRORS[$name]);
        $this->errName = $name;
    }

    /** @return array{code:int,name:string,message:string} */
    public function asArray(): array
    {
        return ['code' => $this->getCode(), 'name' => $this->errName, 'message' => $this->getMessage()];
    }
}

final class Protocol
{
    public const JSON = JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PRESERVE_ZERO_FRACTION;
    /** Contract 12.1: the largest integer any field takes (2^53 - 1). */
    public const MAX_INT = 9007199254740991;
    public const MAX_INTERVAL_MS = 3_600_000;
    public const MAX_SLEEP_MS = 60_000;
    /** Contract 12.2: what one session may hold (past it: 4429 LIMIT_REACHED). */
    public const MAX_TIMERS = 100;
    public const MAX_TASKS = 100;

    /** The refusal of a request past a per-session bound (contract 12.2). */
    public static function limit(string $what, int $bound): ContractError
    {
        return new ContractError('LIMIT_REACHED', "a session holds at most $bound $what");
    }

    public static function encode(mixed $value): string
    {
        return json_encode($value, self::JSON | JSON_THROW_ON_ERROR);
    }

    /** An ok reply to request ``$id`` with ``$fields``. */
    public static function ok(mixed $id, array $fields = []): string
    {
        return self::encode(['re' => $id, 'ok' => true] + $fields);
    }

    public static function fail(mixed $id, int $code, string $message): string
    {
        return self::encode(['re' => $id, 'ok' => false, 'error' => ['code' => $code, 'name' => Codes::name($code), 'message' => $message]]);
    }

    /**
     * The id, op and fields of a request; a ContractError (BAD_REQUEST, with the id if one
     * could be read) when the text is not a JSON object with a string ``op``.
     *
     * @return array{0:mixed,1:string,2:array<string,mixed>}
     */
    public static function parse(string $text): array
    {
        try {
            $msg = json_decode($text, false, 64, JSON_THROW_ON_ERROR);
        } catch (\JsonException) {
            throw new ContractError('BAD_REQUEST', 'the message is not JSON');
        }
        if (!$msg instanceof \stdClass) {
            throw new ContractError('BAD_REQUEST', 'a request must be a JSON object');
        }
        if (self::hasNonFinite($msg)) { // 1e400 decodes to INF, which no reply could encode
            throw new ContractError('BAD_REQUEST', "a number past a double's range");
        }
        $fields = get_object_vars($msg);
        $id = $fields['id'] ?? null;
        if (!is_string($fields['op'] ?? null)) {
            throw new ContractError('BAD_REQUEST', "'op' must be a string", $id);
        }
        return [$id, $fields['op'], $fields];
    }

    private static function hasNonFinite(mixed $value): bool
    {
        if (is_float($value)) {
            return !is_finite($value);
        }
        if (is_array($value) || $value instanceof \stdClass) {
            foreach ((array) $value as $item) {
                if (self::hasNonFinite($item)) {
                    return true;
                }
            }
        }
        return false;
    }

    /** An integer field (``$default`` when absent), at least ``$low`` and at most ``$high`` (2^53 - 1 by default). */
    public static function int(array $msg, string $key, ?int $default = null, ?int $low = null, ?int $high = null): int
    {
        $high ??= self::MAX_INT;
        $value = array_key_exists($key, $msg) ? $msg[$key] : $default;
        if (!is_int($value)) {
            throw new ContractError('BAD_REQUEST', "'$key' must be an integer");
        }
        if (($low !== null && $value < $low) || ($high !== null && $value > $high)) {
            throw new ContractError('BAD_REQUEST', "'$key' must be in " . ($low ?? '-inf') . '..' . ($high ?? 'inf') . ", not $value");
        }
        return $value;
    }

    public static function bool(array $msg, string $key, bool $default): bool
    {
        $value = $msg[$key] ?? $default;
        if (!is_bool($value)) {
            throw new ContractError('BAD_REQUEST', "'$key' must be a boolean");
        }
        return $value;
    }

    /**
     * The ``close`` op's code (1000 or 3000..4999) and reason (at most 123 bytes).
     *
     * @return array{0:int,1:string}
     */
    public static function closeArgs(array $msg, int $defaultCode = 1000): array
    {
        $code = self::int($msg, 'code', $defaultCode);
        if (!($code === 1000 || ($code >= 3000 && $code <= 4999))) {
            throw new ContractError('BAD_REQUEST', "close code $code is not 1000 or 3000..4999");
        }
        $reason = $msg['reason'] ?? '';
        if (!is_string($reason) || strlen($reason) > 123) {
            throw new ContractError('BAD_REQUEST', "'reason' must be a string of at most 123 bytes");
        }
        return [$code, $reason];
    }

    /**
     * A validated sweep rule with its defaults filled in (section 4.3).
     *
     * @return array<string,mixed>
     */
    public static function sweepRule(mixed $body): array
    {
        if (!is_array($body) || array_is_list($body) && $body !== []) {
            throw new ContractError('BAD_REQUEST', 'the sweep rule must be a JSON object');
        }
        $uids = $body['uids'] ?? [];
        if (!is_array($uids) || !array_is_list($uids) || array_filter($uids, fn ($u) => !is_int($u)) !== []) {
            throw new ContractError('BAD_REQUEST', "'uids' must be a list of integers");
        }
        $rule = [
            'uids' => $uids,
            'interval_ms' => self::int($body, 'interval_ms', 1000, 10),
            'pace_ms' => self::int($body, 'pace_ms', 0, 0, 10_000),
        ];
        if (array_key_exists('idle_ms', $body)) {
            $rule['idle_ms'] = self::int($body, 'idle_ms', null, 0);
        }
        $notice = $body['notice'] ?? 'swept';
        if (!is_string($notice) || strlen($notice) > 123) {
            throw new ContractError('BAD_REQUEST', "'notice' must be a string of at most 123 bytes");
        }
        $rule['notice'] = $notice;
        if ($uids === [] && !array_key_exists('idle_ms', $rule)) {
            throw new ContractError('BAD_REQUEST', "a rule needs 'uids' or 'idle_ms'");
        }
        return $rule;
    }

    /**
     * A broadcast channel name (section 10.1): ``[A-Za-z0-9_.:-]{1,128}``, or ``@all`` where
     * ``$allOk`` (publish), never in subscribe/unsubscribe.
     *
     * @throws ContractError 5002 BAD_CHANNEL
     */
    public static function channel(array $msg, bool $allOk = false): string
    {
        $channel = $msg['channel'] ?? null;
        if ($allOk && $channel === '@all') {
            return $channel;
        }
        if (!is_string($channel) || !preg_match('/^[A-Za-z0-9_.:-]{1,128}$/D', $channel)) {
            throw new ContractError('BAD_CHANNEL', 'channel must match [A-Za-z0-9_.:-]{1,128}'
                . ($allOk ? " or be '@all'" : " (and '@all' cannot be joined or left)") . ', got ' . substr((string) json_encode($channel), 0, 80));
        }
        return $channel;
    }

    /** The contract's code for a Swoole session error code (Swoole numbers them the same way). */
    /**
     * A timer's status (section 3.1) from its record: ``timer`` (or ``id``), ``to``, ``seq``,
     * ``sent``, ``failed`` (code => count) and ``last_error``.
     */
    public static function timerStatus(array $t): array
    {
        $failed = $t['failed'];
        ksort($failed);
        return ['timer' => $t['timer'] ?? $t['id'], 'to' => $t['to'], 'seq' => $t['seq'], 'sent' => $t['sent'],
            'failed' => (object) $failed, 'last_error' => $t['last_error']];
    }

    /** Count one push of timer record ``$t``: null succeeded, else the code it failed with. */
    public static function timerOutcome(array &$t, ?int $code): void
    {
        if ($code === null) {
            $t['sent']++;
            return;
        }
        $t['failed'][(string) $code] = ($t['failed'][(string) $code] ?? 0) + 1;
        $t['last_error'] = Codes::name($code);
    }

    public static function sessionCode(int $engineCode): int
    {
        return match (true) {
            $engineCode >= 1001 && $engineCode <= 1004 => 1004, // closed by server/client, closing, closed
            $engineCode === 8503 => 8503,
            default => 1005,
        };
    }
}

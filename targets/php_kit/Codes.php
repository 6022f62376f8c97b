<?php
/**
 * The contract's codes (docs/contract-v1.md, sections 3.2 and 3.3), for PHP targets.
 *
 * The same table as scenarios/harness/codes.py; tests/test_contract_codes.py
 * reads this file and checks that they agree.
 */

declare(strict_types=1);

namespace ContractKit;

final class Codes
{
    /** Error codes, by name. */
    public const ERRORS = [
        'SESSION_CLOSED' => 1004,
        'SESSION_NOT_EXIST' => 1005,
        'NOT_ESTABLISHED' => 8503,
        'OWNER_UNREACHABLE' => 2001,
        'NO_TASK_WORKER' => 2002,
        'UNKNOWN_PROCESS' => 2003,
        'TASK_LOST' => 2004,
        'ALREADY_THERE' => 2010,
        'MIGRATION_IN_PROGRESS' => 2011,
        'MIGRATION_FAILED' => 2012,
        'NOT_MOVABLE' => 2013,
        'PORT_IN_USE' => 3001,
        'PORT_PRIVILEGED' => 3002,
        'BAD_ADDRESS' => 3003,
        'ALREADY_LISTENING' => 3004,
        'NOT_LISTENING' => 3005,
        'PORT_LIMIT' => 3006,
        'HANDLER_UNKNOWN' => 3007,
        'PORT_REMOVED' => 3008,
        'LISTEN_FAILED' => 3009,
        'BAD_REQUEST' => 4400,
        'UNAUTHORIZED' => 4401,
        'NOT_FOUND' => 4404,
        'METHOD_NOT_ALLOWED' => 4405,
        'LENGTH_REQUIRED' => 4411,
        'TOO_LARGE' => 4413,
        'LIMIT_REACHED' => 4429,
        'INTERNAL' => 4500,
        'UNSUPPORTED' => 4501,
        'BROADCAST_OFF' => 5001,
        'BAD_CHANNEL' => 5002,
        'HISTORY_UNAVAILABLE' => 5003,
        'HISTORY_TOO_LONG' => 5004,
        'BROKER_UNAVAILABLE' => 5005,
        'BROADCASTER_UNREACHABLE' => 5006,
    ];

    /** Close codes a target sends. */
    public const CLOSES = [
        'NORMAL' => 1000,
        'GOING_AWAY' => 1001,
        'SWEPT' => 4001,
        'IDLE_TIMEOUT' => 4408,
        'SLOW_CONSUMER' => 4429,
    ];

    /** The HTTP status of a route's refusal with a contract code (sections 4, 7 and 9.2); any other: 400. */
    public const STATUS_OF = [
        1005 => 404, 1004 => 409, 8503 => 409, 2003 => 404, 2001 => 503, 2002 => 503,
        2010 => 409, 2011 => 409, 2012 => 503, 2013 => 409,
        3001 => 409, 3002 => 403, 3004 => 409, 3005 => 404, 3009 => 503,
    ];

    public static function name(int $code): string
    {
        $name = array_search($code, self::ERRORS, true);
        return $name === false ? 'INTERNAL' : $name;
    }
}

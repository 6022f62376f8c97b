<?php
/**
 * Checks of the PHP targets' contract kit (targets/php_kit), run by tests/test_php_kit.py.
 * Prints one line per failed check and exits 1 if any failed.
 */

declare(strict_types=1);

require __DIR__ . '/../../targets/php_kit/autoload.php';

use ContractKit\ContractError;
use ContractKit\HttpError;
use ContractKit\HttpReader;
use ContractKit\Protocol;

$failures = 0;
$checks = 0;
function check(string $what, bool $ok): void
{
    global $failures, $checks;
    $checks++;
    if (!$ok) {
        $failures++;
        echo "FAILED: $what\n";
    }
}

/** The status of the HttpError raised by feeding $raw, or 0 if none; the request if one came whole. */
function feed(string $raw, int $chunk = 0): array
{
    $reader = new HttpReader();
    $requests = [];
    try {
        foreach ($chunk > 0 ? str_split($raw, $chunk) : [$raw] as $part) {
            $reader->feed($part);
            while (($r = $reader->next()) !== null) {
                $requests[] = $r;
            }
        }
    } catch (HttpError $e) {
        return [$e->status, $e->getCode(), $requests];
    }
    return [0, 0, $requests];
}

// Whole requests, in one piece or byte by byte, two on one connection.
$two = "PUT /v1/sweep?x=1 HTTP/1.1\r\nContent-Length: 13\r\nAuthorization: Bearer t\r\n\r\n{\"uids\": [7]}GET /v1/stats HTTP/1.1\r\n\r\n";
foreach ([0, 1, 7] as $chunk) {
    [$status, , $requests] = feed($two, $chunk);
    check("two requests in chunks of $chunk", $status === 0 && count($requests) === 2);
    check("path without query, chunks of $chunk", ($requests[0]->path ?? '') === '/v1/sweep' && $requests[0]->body === '{"uids": [7]}');
    check("headers by lower-case name, chunks of $chunk", ($requests[0]->header('AUTHORIZATION') ?? '') === 'Bearer t');
    check("GET without Content-Length has no body, chunks of $chunk", ($requests[1]->method ?? '') === 'GET' && $requests[1]->body === '');
}
// The admin API's own errors, as soon as the head shows them.
check('POST without Content-Length is 411 4411', array_slice(feed("POST /v1/sessions/1/push HTTP/1.1\r\n\r\n"), 0, 2) === [411, 4411]);
check('DELETE without Content-Length is 411', feed("DELETE /v1/sweep HTTP/1.1\r\n\r\n")[0] === 411);
check('a chunked body is 411', feed("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")[0] === 411);
check('Content-Length over 1 MiB is 413 4413, body unread', array_slice(feed("POST /x HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n"), 0, 2) === [413, 4413]);
check('Content-Length of exactly 1 MiB waits for the body', feed("POST /x HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n") === [0, 0, []]);
check('a Content-Length that is no number is 400', feed("POST /x HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n")[0] === 400);
check('a malformed request line is 400 4400', array_slice(feed("GARBAGE\r\n\r\n"), 0, 2) === [400, 4400]);
check('HTTP/2 request line is 400', feed("GET / HTTP/2\r\n\r\n")[0] === 400);
check('a header line without a colon is 400', feed("GET / HTTP/1.1\r\nnonsense\r\n\r\n")[0] === 400);
check('a head over 16 KiB is 400', feed('GET /' . str_repeat('a', 20000))[0] === 400);
check('an incomplete head waits', feed("GET / HTTP/1.1\r\nHost: x\r\n") === [0, 0, []]);

// Requests of the application protocol.
function refusal(callable $f): ?array
{
    try {
        $f();
    } catch (ContractError $e) {
        return [$e->getCode(), $e->reqId];
    }
    return null;
}
check('not JSON: 4400 with no id', refusal(fn () => Protocol::parse('not json')) === [4400, null]);
check('not an object: 4400', refusal(fn () => Protocol::parse('[1]'))[0] === 4400);
check('op not a string: 4400 keeps the id', refusal(fn () => Protocol::parse('{"id": 9, "op": 3}')) === [4400, 9]);
[$id, $op, $msg] = Protocol::parse('{"id": "a", "op": "echo", "data": {}}');
check('parse gives id, op and fields', $id === 'a' && $op === 'echo' && $msg['data'] instanceof stdClass);
check('an empty object stays an object', Protocol::ok(1, ['data' => $msg['data']]) === '{"re":1,"ok":true,"data":{}}');
check('int: bool is no integer', refusal(fn () => Protocol::int(['n' => true], 'n'))[0] === 4400);
check('int: below the bound', refusal(fn () => Protocol::int(['n' => 0], 'n', null, 1))[0] === 4400);
check('int: a float is no integer', refusal(fn () => Protocol::int(['n' => 1.5], 'n'))[0] === 4400);
check('int: default', Protocol::int([], 'n', 7) === 7);
check('close code 2000 refused', refusal(fn () => Protocol::closeArgs(['code' => 2000]))[0] === 4400);
check('close reason over 123 bytes refused', refusal(fn () => Protocol::closeArgs(['reason' => str_repeat('x', 124)]))[0] === 4400);
check('close defaults', Protocol::closeArgs([]) === [1000, '']);
check('fail names the code', Protocol::fail(2, 1005, 'm') === '{"re":2,"ok":false,"error":{"code":1005,"name":"SESSION_NOT_EXIST","message":"m"}}');
// The sweep rule (section 4.3).
check('rule: defaults filled in', Protocol::sweepRule(['uids' => [7]]) === ['uids' => [7], 'interval_ms' => 1000, 'pace_ms' => 0, 'notice' => 'swept']);
check('rule: idle_ms alone is a rule', (Protocol::sweepRule(['idle_ms' => 5])['idle_ms'] ?? null) === 5);
check('rule: neither uids nor idle_ms', refusal(fn () => Protocol::sweepRule(['interval_ms' => 100]))[0] === 4400);
check('rule: uids not integers', refusal(fn () => Protocol::sweepRule(['uids' => ['7']]))[0] === 4400);
check('rule: interval below 10', refusal(fn () => Protocol::sweepRule(['uids' => [1], 'interval_ms' => 9]))[0] === 4400);
check('rule: a list is no object', refusal(fn () => Protocol::sweepRule([1, 2]))[0] === 4400);
check('rule: notice over 123 bytes', refusal(fn () => Protocol::sweepRule(['uids' => [1], 'notice' => str_repeat('n', 124)]))[0] === 4400);
// Swoole's session error codes, as the contract's.
check('closing (1003) is 1004', Protocol::sessionCode(1003) === 1004);
check('not exist is 1005', Protocol::sessionCode(1005) === 1005);
check('unconnected is 8503', Protocol::sessionCode(8503) === 8503);
// Broadcast channel names (section 10.1).
check('channel: a valid name', Protocol::channel(['channel' => 'news.a:b-1_x']) === 'news.a:b-1_x');
check('channel: @all refused in subscribe', refusal(fn () => Protocol::channel(['channel' => '@all']))[0] === 5002);
check('channel: @all allowed in publish', Protocol::channel(['channel' => '@all'], true) === '@all');
check('channel: empty refused', refusal(fn () => Protocol::channel(['channel' => '']))[0] === 5002);
check('channel: 129 characters refused', refusal(fn () => Protocol::channel(['channel' => str_repeat('c', 129)]))[0] === 5002);
check('channel: a space refused', refusal(fn () => Protocol::channel(['channel' => 'a b'], true))[0] === 5002);
check('channel: a trailing newline refused', refusal(fn () => Protocol::channel(['channel' => "a\n"]))[0] === 5002);
check('channel: not a string', refusal(fn () => Protocol::channel(['channel' => 5]))[0] === 5002);

echo "$checks checks, $failures failed\n";
exit($failures > 0 ? 1 : 0);

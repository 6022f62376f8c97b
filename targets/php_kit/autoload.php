<?php
// The PHP targets' shared contract kit: require this file.
declare(strict_types=1);

require_once __DIR__ . '/Codes.php';
require_once __DIR__ . '/Protocol.php';
require_once __DIR__ . '/Http.php';
require_once __DIR__ . '/Log.php';

#!/usr/bin/env bash
# Make Workerman 5 available to the Workerman target, the way a user has it:
#   1. already here (targets/workerman/vendor/, from an earlier run or from
#      `composer require workerman/workerman` run in this folder): nothing to do;
#   2. otherwise unpack the source archives workerman-*.tar.gz and
#      workerman-coroutine-*.tar.gz from $VENDOR_DIR, ../shared/vendor next to the
#      repository or /work/shared/vendor into targets/workerman/vendor/ (gitignored).
# Composer (`composer require workerman/workerman`) is what a user with network access runs
# instead of step 2. Workerman is pure PHP: it needs php-cli with pcntl, posix and sockets
# (Debian's php-cli has them): apt-get install php-cli
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
vendor="$here/vendor"
repo=$(cd "$here/../.." && pwd)

if ! command -v php >/dev/null; then
  echo "workerman target: PHP is not installed (apt-get install php-cli)" >&2; exit 3
fi
for ext in pcntl posix sockets; do
  php -m | grep -qx "$ext" || { echo "workerman target: PHP lacks the $ext extension" >&2; exit 3; }
done
if [ -f "$vendor/autoload.php" ] && [ -f "$vendor/workerman/workerman/src/Worker.php" ]; then
  echo "workerman target: using $vendor"; exit 0
fi
core="" coroutine=""
for dir in ${VENDOR_DIR:-} "$repo/../shared/vendor" /work/shared/vendor; do
  [ -n "$core" ] && [ -n "$coroutine" ] && break
  [ -z "$core" ] && core=$(ls "$dir"/workerman-[0-9]*.tar.gz 2>/dev/null | sort | tail -1 || true)
  [ -z "$coroutine" ] && coroutine=$(ls "$dir"/workerman-coroutine-*.tar.gz 2>/dev/null | sort | tail -1 || true)
done
if [ -z "$core" ] || [ -z "$coroutine" ]; then
  echo "workerman target: no Workerman source archives (set VENDOR_DIR, or run composer require workerman/workerman in $here)" >&2
  exit 3
fi
rm -rf "$vendor" && mkdir -p "$vendor/workerman/workerman" "$vendor/workerman/coroutine"
tar -xzf "$core" -C "$vendor/workerman/workerman" --strip-components=1
tar -xzf "$coroutine" -C "$vendor/workerman/coroutine" --strip-components=1
# What Composer's autoloader does for these two packages (PSR-4).
cat >"$vendor/autoload.php" <<'PHP'
<?php
spl_autoload_register(static function (string $class): void {
    foreach (['Workerman\\Coroutine\\' => __DIR__ . '/workerman/coroutine/src/', 'Workerman\\' => __DIR__ . '/workerman/workerman/src/'] as $prefix => $dir) {
        if (str_starts_with($class, $prefix)) {
            $file = $dir . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }
            return;
        }
    }
});
PHP
php -r "require '$vendor/autoload.php'; echo 'workerman target: unpacked Workerman ', Workerman\\Worker::VERSION, PHP_EOL;"

#!/usr/bin/env bash
# Make the swoole extension available to the Swoole target, the way a user has it:
#   1. already loaded by PHP (pecl install swoole, or a distribution package): nothing to do;
#   2. already built here (targets/swoole/build/swoole.so): nothing to do;
#   3. otherwise build the source archive: $SWOOLE_ARCHIVE, or swoole-src-*.tar.gz in
#      $VENDOR_DIR, ../shared/vendor next to the repository or /work/shared/vendor,
#      into targets/swoole/build/.
# PECL (`pecl install swoole`) is what a user with network access runs instead of step 3.
# Needs php-cli and php-dev (phpize) and a C++ compiler: apt-get install php-cli php-dev g++ make
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build="$here/build"
repo=$(cd "$here/../.." && pwd)

if ! command -v php >/dev/null; then
  echo "swoole target: PHP is not installed (apt-get install php-cli php-dev)" >&2; exit 3
fi
if php -m | grep -qx swoole; then
  echo "swoole target: the swoole extension is already loaded by PHP ($(php -r 'echo SWOOLE_VERSION;'))"; exit 0
fi
if [ -f "$build/swoole.so" ] && php -d extension="$build/swoole.so" -m 2>/dev/null | grep -qx swoole; then
  echo "swoole target: using $build/swoole.so"; exit 0
fi
if ! command -v phpize >/dev/null; then
  echo "swoole target: phpize is missing (apt-get install php-dev)" >&2; exit 3
fi
archive=${SWOOLE_ARCHIVE:-}
for vendor in ${VENDOR_DIR:-} "$repo/../shared/vendor" /work/shared/vendor; do
  [ -n "$archive" ] && break
  archive=$(ls "$vendor"/swoole-src-*.tar.gz 2>/dev/null | sort | tail -1 || true)
done
if [ -z "$archive" ] || [ ! -f "$archive" ]; then
  echo "swoole target: no Swoole source archive (set SWOOLE_ARCHIVE, or run pecl install swoole)" >&2; exit 3
fi
echo "swoole target: building $(basename "$archive") (a few minutes on two cores)"
rm -rf "$build/src" && mkdir -p "$build/src"
# While it builds, build/BUILDING holds this script's pid (tests/test_php_targets.py waits on it).
echo $$ > "$build/BUILDING"
trap 'rm -f "$build/BUILDING"' EXIT
tar -xzf "$archive" -C "$build/src" --strip-components=1
(
  cd "$build/src"
  phpize >/dev/null 2>&1
  ./configure --quiet >/dev/null
  make -j"$(nproc)" >"$build/make.log" 2>&1 || { tail -40 "$build/make.log" >&2; exit 1; }
)
cp "$build/src/modules/swoole.so" "$build/swoole.so"
rm -rf "$build/src"
php -d extension="$build/swoole.so" -r 'echo "swoole target: built swoole ", SWOOLE_VERSION, "\n";'

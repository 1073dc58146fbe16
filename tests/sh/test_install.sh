#!/usr/bin/env bash
# `cmake --install` puts a self-contained loreley-host in a prefix: it runs from any
# directory with the Lua library embedded, and LORELEY_LUA_DIR loads lua/ from a tree.
set -euo pipefail
build_dir=$1
source_dir=$2
prefix=$(mktemp -d /tmp/loreley-install-XXXXXX)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build_dir" --prefix "$prefix" >/dev/null
bin="$prefix/bin/loreley-host"
test -x "$bin" || { echo "no binary at $bin"; exit 1; }
test -f "$prefix/share/loreley-host/examples/hello.lua" || { echo "examples not installed"; exit 1; }
cd /
out=$(NO_COLOR=1 "$bin" --once "$prefix/share/loreley-host/examples/hello.lua" 2>&1)
echo "$out" | grep -q "tick 1 greeted=1" || { echo "installed binary did not tick: $out"; exit 1; }

# LORELEY_LUA_DIR: a module there replaces the embedded one.
dev=$(mktemp -d /tmp/loreley-luadir-XXXXXX)
trap 'rm -rf "$prefix" "$dev"' EXIT
cp -r "$source_dir/lua/." "$dev/"
cat > "$dev/loreley/strict.lua" <<'LUA'
io.stderr:write("dev strict loaded\n")
return { guard = function() end, unguard = function() end }
LUA
out=$(LORELEY_LUA_DIR="$dev" "$bin" --once "$prefix/share/loreley-host/examples/hello.lua" 2>&1)
echo "$out" | grep -q "dev strict loaded" || { echo "LORELEY_LUA_DIR ignored: $out"; exit 1; }
out=$("$bin" --once "$prefix/share/loreley-host/examples/hello.lua" 2>&1)
if echo "$out" | grep -q "dev strict loaded"; then echo "embedded library not used"; exit 1; fi
echo "install: ok"

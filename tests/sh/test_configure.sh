#!/usr/bin/env bash
# A missing dependency stops CMake's configuration and names the Debian package to install.
# pkg-config is pointed at an empty directory, so every .pc file is "missing".
set -uo pipefail
build_dir=$1
source_dir=$2
tmp=$(mktemp -d /tmp/loreley-configure-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/empty"
out=$(PKG_CONFIG_LIBDIR="$tmp/empty" PKG_CONFIG_PATH="" cmake -S "$source_dir" -B "$tmp/build" 2>&1)
status=$?
if [ "$status" -eq 0 ]; then echo "configuration succeeded without dependencies"; exit 1; fi
echo "$out" | grep -q "luajit not found (pkg-config luajit): apt-get install libluajit-5.1-dev" \
  || { echo "no package named in: $out"; exit 1; }
echo "configure: ok"

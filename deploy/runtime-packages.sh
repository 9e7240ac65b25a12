#!/usr/bin/env bash
# Prints the Debian packages that hold the shared libraries the given
# binaries load, one per line: what a runtime-only image must install.
#   deploy/runtime-packages.sh build-release/server/h5depotd
set -euo pipefail

(($# > 0)) || { echo "usage: $0 BINARY..." >&2; exit 2; }

# Debian 12 merged /lib into /usr/lib, but dpkg knows each file under the one
# path its package shipped it at: try the real path, then both spellings.
owner() {
  local lib=$1 real
  real=$(realpath "$lib")
  for candidate in "$real" "$lib" "${real#/usr}"; do
    if dpkg-query -S "$candidate" 2>/dev/null | head -n1 | cut -d: -f1; then
      return 0
    fi
  done
  echo "runtime-packages: no package owns $lib" >&2
  return 1
}

ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u |
  while read -r lib; do owner "$lib"; done | sort -u

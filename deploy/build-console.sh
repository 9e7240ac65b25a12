#!/usr/bin/env bash
# Builds the web console (console/: Vite, React, h5web) into console/dist,
# which h5depotd serves with --http-console-dir. Installs its npm packages
# first, exactly as console/package-lock.json records them (npm ci), unless
# they are installed already for that lock file. Needs Node.js 18 or later
# and npm (deploy/setup.sh installs Debian's if the machine has none).
#
#   deploy/build-console.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../console"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "build-console: Node.js and npm are needed (deploy/setup.sh)" >&2
  exit 1
fi
# npm ci records the lock file it installed in node_modules: reinstall only
# when the lock file changed since.
if [[ ! -f node_modules/.package-lock.json ||
      package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
fi
npx vite build --logLevel error
echo "build-console: built $(pwd)/dist"

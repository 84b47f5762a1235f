#!/usr/bin/env bash
# The README's test command, from a fresh clone: the machine's prerequisites (installed with
# apt when run as root, else listed with the fix), the locked node modules, then `npm test`.
# .ci/run calls it too.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/test-prerequisites.sh

# The reconnect-storm test holds 5 000 sockets on each side: raise the open-file limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

node --version
npm ci --no-audit --no-fund
npm test

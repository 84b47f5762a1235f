#!/usr/bin/env bash
# Checks what the test suite needs from the machine by running it, and installs what is
# missing with apt when run as root; otherwise stops at once, listing what is missing and how
# to get it. `--check` only reports. test/fixtures/requires.ts makes the same checks per test.
set -euo pipefail

check_only=false
[ "${1:-}" = "--check" ] && check_only=true

missing_packages=()
missing_what=()
broken=()
need () { # need <package> <what> <command...>: the command must run
  local package=$1 what=$2
  shift 2
  if ! "$@" >/dev/null 2>&1; then
    if dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
      # Installed, yet it does not run: installing again would not help.
      broken+=("$what: the package $package is installed but \`$*\` fails; run it to see why")
      return
    fi
    missing_what+=("$what")
    case " ${missing_packages[*]-} " in *" $package "*) ;; *) missing_packages+=("$package") ;; esac
  fi
}

# Python's websockets, imported by the interpreter the Python-peer tests run (Debian's, not the first on PATH).
need python3-websockets "python3-websockets (/usr/bin/python3 -c 'import websockets')" /usr/bin/python3 -c 'import websockets'
# Headless Chromium for the browser tests (driven by playwright-core, which brings no browser).
need chromium "chromium (/usr/bin/chromium)" /usr/bin/chromium --headless --no-sandbox --version
# Tests that need Redis start their own redis-server on a free port (never the machine's).
need redis-server "redis-server (/usr/bin/redis-server)" /usr/bin/redis-server --version
# The metrics tests scrape the example with a real Prometheus and check the output with promtool.
need prometheus "prometheus" prometheus --version
need prometheus "promtool" promtool --version
# Network namespaces, packet drops and throttling for the fault tests.
need iproute2 "ip" ip -V
need iproute2 "tc" tc -V
need iptables "iptables" iptables --version
need procps "sysctl" sysctl --version

problems=()
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
[ "$node_major" -ge 20 ] || problems+=("Node.js 20 or later (found: $(node --version 2>/dev/null || echo none))")
[ "$(id -u)" -eq 0 ] || problems+=("root: the network-namespace fault tests (ip netns, iptables, tc) need it; run the tests as root")

if [ "${#missing_packages[@]}" -gt 0 ] && ! $check_only && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "test prerequisites: installing ${missing_packages[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing_packages[@]}" >&2
  TEST_PREREQUISITES_INSTALLED=1 exec "$0" --check # check again: what was installed must now run
fi

if [ "${#missing_packages[@]}" -gt 0 ] || [ "${#problems[@]}" -gt 0 ] || [ "${#broken[@]}" -gt 0 ]; then
  {
    echo "The test suite cannot run on this machine yet. Missing:"
    for what in "${missing_what[@]+"${missing_what[@]}"}" "${broken[@]+"${broken[@]}"}" "${problems[@]+"${problems[@]}"}"; do echo "  - $what"; done
    if [ "${#missing_packages[@]}" -gt 0 ] && [ -n "${TEST_PREREQUISITES_INSTALLED:-}" ]; then
      echo "apt-get installed ${missing_packages[*]}, yet the commands above are still not found: check PATH (ip, tc, iptables and sysctl live in /usr/sbin)."
    elif [ "${#missing_packages[@]}" -gt 0 ]; then
      echo "Install (Debian, as root): apt-get install --no-install-recommends ${missing_packages[*]}"
      echo "or run this script as root: scripts/test-prerequisites.sh"
    fi
  } >&2
  exit 1
fi
echo "test prerequisites: all present" >&2

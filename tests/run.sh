#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian 12 machine, then runs
# every test of the workspace. Root-only tests (containers, cgroups) need root: run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(busybox-static uidmap util-linux iproute2 strace python3 gcc libc6-dev debootstrap chromium chromium-driver ruby curl prometheus)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/run.sh: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: not root: the container tests will report themselves skipped" >&2
fi

# Examples are test tools too (the cgroup v2 test drives `isolate` in its own mount namespace).
cargo build --workspace --all-targets --quiet
cargo test --workspace --doc --quiet
cargo nextest run --workspace --all-targets --no-fail-fast

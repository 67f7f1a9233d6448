#!/usr/bin/env bash
# Container start latency: `isolate` (crates/isolation) against its peers, all running
# /bin/true from the same busybox root filesystem, side by side in one hyperfine invocation
# per variant:
#   nonet  new pid, mount, uts and ipc namespaces
#   net    the same plus a new network namespace
# Peers: unshare(1)+chroot(1) from util-linux/coreutils, bubblewrap, crun (no cgroups),
# runc (with cgroups). All from Debian's own packages, installed here if missing.
#
# Usage (as root): bash tests/bench/start-latency.sh
# Output: tests/bench/out/start-latency-{nonet,net}.json (hyperfine) and
#         tests/bench/out/start-latency.md (machine details, commands, tables), also printed.
# Environment: WARMUP (default 20), RUNS (default 300); QUIET_IDLE (default 95) and QUIET_WAIT
# (default 600): before each variant, wait up to QUIET_WAIT seconds for QUIET_IDLE % idle CPU.
#
# Not part of CI: it needs root, installs packages and takes a few minutes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
repo=$(cd "$here/../.." && pwd)
out="$here/out"
warmup=${WARMUP:-20}
runs=${RUNS:-300}

# ---------------------------------------------------------------------------------------------
# Phase 1 (host mount namespace): packages, build, root filesystem, OCI bundles.
# ---------------------------------------------------------------------------------------------
if [ -z "${START_LATENCY_INNER:-}" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "start-latency.sh: must run as root (namespaces, mounts, crun/runc)" >&2
        exit 1
    fi
    case "$repo" in
        *[[:space:]]*)
            # hyperfine -N splits each command on whitespace.
            echo "start-latency.sh: the repository path must not contain whitespace" >&2
            exit 1
            ;;
    esac

    packages=(hyperfine bubblewrap crun runc busybox-static util-linux jq)
    install_missing "${packages[@]}"

    echo ">> building isolate (release)" >&2
    (cd "$repo" && cargo build --release -q -p isolation --example isolate)

    mkdir -p "$out"
    echo ">> busybox root filesystem" >&2
    bash "$repo/tests/fixtures/busybox-rootfs.sh" "$out/rootfs"
    root="$out/rootfs"

    # OCI bundles: `crun spec` defaults, edited to run /bin/true without a terminal from a
    # read-only root with exactly the namespaces of the variant.
    make_bundle() { # DIR NAMESPACES(json array) ROOT_PATH
        local dir=$1 namespaces=$2 root_path=$3
        mkdir -p "$dir"
        rm -f "$dir/config.json"
        (cd "$dir" && crun spec)
        jq --argjson ns "$namespaces" --arg root "$root_path" '
            .process.args = ["/bin/true"]
            | .process.terminal = false
            | .root = {path: $root, readonly: true}
            | .linux.namespaces = $ns
        ' "$dir/config.json" > "$dir/config.json.new"
        mv "$dir/config.json.new" "$dir/config.json"
    }
    ns_base='[{"type":"pid"},{"type":"mount"},{"type":"uts"},{"type":"ipc"}]'
    ns_net='[{"type":"pid"},{"type":"mount"},{"type":"uts"},{"type":"ipc"},{"type":"network"}]'
    echo ">> OCI bundles" >&2
    # crun takes the shared root filesystem by absolute path ...
    make_bundle "$out/bundle-crun" "$ns_base" "$root"
    make_bundle "$out/bundle-crun-net" "$ns_net" "$root"
    # ... runc gets a real copy inside each bundle directory.
    for b in bundle-runc bundle-runc-net; do
        rm -rf "$out/$b/rootfs"
        mkdir -p "$out/$b"
        cp -a "$root" "$out/$b/rootfs"
    done
    make_bundle "$out/bundle-runc" "$ns_base" rootfs
    make_bundle "$out/bundle-runc-net" "$ns_net" rootfs

    # Phase 2 runs in a private mount namespace: this host has cgroup v1 plus an empty
    # cgroup2 at /sys/fs/cgroup/unified, a hybrid layout crun refuses ("cgroups in hybrid
    # mode not supported"). Unmounting it there leaves the host untouched.
    echo ">> re-executing in a private mount namespace" >&2
    exec unshare -m --propagation private \
        env START_LATENCY_INNER=1 bash "${BASH_SOURCE[0]}" "$@"
fi

# ---------------------------------------------------------------------------------------------
# Phase 2 (private mount namespace): the benchmark.
# ---------------------------------------------------------------------------------------------
if mountpoint -q /sys/fs/cgroup/unified 2>/dev/null; then
    umount /sys/fs/cgroup/unified
fi

root="$out/rootfs"
isolate="$repo/target/release/examples/isolate"
report="$out/start-latency.md"
errors="$out/start-latency-errors.txt"
: > "$errors"
: > "$out/start-latency-load.txt"

# name|command, per variant. Container ids are fixed: `crun run` and `runc run` delete the
# container (state, and runc's cgroups) when it exits, so the id is free for the next run.
nonet=(
    "isolate|$isolate --root $root -- /bin/true"
    "unshare|unshare -f -p -m -u -i chroot $root /bin/true"
    "bwrap|bwrap --unshare-pid --unshare-uts --unshare-ipc --ro-bind $root / --proc /proc --dev /dev /bin/true"
    "crun|crun --cgroup-manager=disabled run -b $out/bundle-crun bench-crun"
    "runc|runc run -b $out/bundle-runc bench-runc"
)
net=(
    "isolate --net|$isolate --root $root --net -- /bin/true"
    "unshare -n|unshare -f -p -m -u -i -n chroot $root /bin/true"
    "bwrap --unshare-net|bwrap --unshare-pid --unshare-uts --unshare-ipc --unshare-net --ro-bind $root / --proc /proc --dev /dev /bin/true"
    "crun +network|crun --cgroup-manager=disabled run -b $out/bundle-crun-net bench-crun-net"
    "runc +network|runc run -b $out/bundle-runc-net bench-runc-net"
)

# Percentage of CPU time idle over the next SECONDS, from /proc/stat.
idle_percent() { # SECONDS
    local cpu user nice system idle iowait irq softirq steal t1 i1 t2 i2
    read -r cpu user nice system idle iowait irq softirq steal _ < /proc/stat
    t1=$((user + nice + system + idle + iowait + irq + softirq + steal)) i1=$((idle + iowait))
    sleep "$1"
    read -r cpu user nice system idle iowait irq softirq steal _ < /proc/stat
    t2=$((user + nice + system + idle + iowait + irq + softirq + steal)) i2=$((idle + iowait))
    echo $((100 * (i2 - i1) / (t2 - t1)))
}

# Other work on the machine shows up directly in these numbers: wait (up to QUIET_WAIT
# seconds, default 600) for QUIET_IDLE percent (default 95) idle CPU over 5 s, and keep on
# record what was found.
wait_quiet() { # VARIANT
    local deadline idle
    deadline=$((SECONDS + ${QUIET_WAIT:-600}))
    while :; do
        idle=$(idle_percent 5)
        if [ "$idle" -ge "${QUIET_IDLE:-95}" ] || [ "$SECONDS" -ge "$deadline" ]; then
            break
        fi
        echo ">> machine busy (${idle}% idle), waiting" >&2
    done
    printf '%s\t%s%% idle over 5 s, load average %s\n' "$1" "$idle" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/start-latency-load.txt"
}

# Runs one hyperfine invocation for a variant. A command that fails once up front (hyperfine
# would abort the whole invocation) is left out and its error recorded instead of a number.
bench() { # VARIANT ENTRIES...
    local variant=$1
    shift
    local args=() entry name cmd log
    for entry in "$@"; do
        name=${entry%%|*}
        cmd=${entry#*|}
        log=$(mktemp)
        # shellcheck disable=SC2086 # the command is a plain argv, split on spaces like hyperfine -N
        if ! $cmd >"$log" 2>&1; then
            printf '%s\t%s\t%s\n' "$variant" "$name" "$(tr '\n' ' ' < "$log" | sed 's/ *$//')" >> "$errors"
            echo ">> $name fails, left out: $(cat "$log")" >&2
            rm -f "$log"
            continue
        fi
        rm -f "$log"
        args+=(--command-name "$name" "$cmd")
    done
    echo ">> hyperfine: $variant" >&2
    wait_quiet "$variant"
    hyperfine -N --warmup "$warmup" --runs "$runs" \
        --export-json "$out/start-latency-$variant.json" "${args[@]}" >&2
}

# A Markdown table from a hyperfine JSON export. p99 is the nearest-rank 99th percentile of
# the run times (with 300 runs: the 297th fastest).
table() { # JSON BASELINE_NAME
    jq -r --arg base "$2" '
        def fixed($d): (pow(10; $d)) as $m | (. * $m | round) as $x
            | ($x / $m | floor | tostring) + "." + ($x % $m + $m | tostring | .[1:]);
        def ms: . * 1000 | fixed(3);
        def p99: sort as $t | $t[((($t | length) * 0.99) | ceil) - 1];
        (.results | map(select(.command == $base)) | first | .median) as $b
        | "| command | median ms | p99 ms | mean ms | median / unshare |",
          "|---|---:|---:|---:|---:|",
          (.results[]
           | "| \(.command) | \(.median | ms) | \(.times | p99 | ms) | \(.mean | ms) | "
             + (if $b then .median / $b | fixed(2) else "n/a" end) + " |")
    ' "$1"
}

commands_list() { # ENTRIES...
    local entry
    for entry in "$@"; do
        printf -- '- `%s`: `%s`\n' "${entry%%|*}" "${entry#*|}"
    done
}

errors_list() { # VARIANT
    awk -F'\t' -v v="$1" '$1 == v { printf "- `%s` could not run: `%s`\n", $2, $3 }' "$errors"
}

bench nonet "${nonet[@]}"
bench net "${net[@]}"

{
    echo "## Start latency: /bin/true in a container"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- kernel: $(uname -r)"
    echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores"
    echo "- commit: $(cd "$repo" && git rev-parse --short HEAD)$(cd "$repo" && [ -z "$(git status --porcelain -- crates/isolation)" ] || echo ' (crates/isolation modified)')"
    echo "- rustc: $(rustc --version)"
    echo "- hyperfine: \`hyperfine -N --warmup $warmup --runs $runs --export-json FILE\`, one invocation per variant"
    echo "- machine before each variant: $(awk -F'\t' '{printf "%s%s: %s", (NR > 1 ? "; " : ""), $1, $2}' "$out/start-latency-load.txt")"
    echo "- cgroups: $(if [ -d /sys/fs/cgroup/memory ]; then echo 'v1'; else echo 'v2'; fi); run in a private mount namespace with /sys/fs/cgroup/unified unmounted"
    echo "- packages:"
    echo
    echo '```'
    dpkg-query -W hyperfine bubblewrap crun runc busybox-static util-linux coreutils
    echo '```'
    echo
    echo "### Without network namespace (pid, mount, uts, ipc)"
    echo
    table "$out/start-latency-nonet.json" unshare
    errors_list nonet
    echo
    commands_list "${nonet[@]}"
    echo
    echo "### With network namespace (pid, mount, uts, ipc, net)"
    echo
    table "$out/start-latency-net.json" "unshare -n"
    errors_list net
    echo
    commands_list "${net[@]}"
} > "$report"

cat "$report"

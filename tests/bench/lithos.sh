#!/usr/bin/env bash
# lithos benchmarks S1-S3 of spec/lithos.md §6, ours and Debian's peers side by side:
#   S1 start-true  `lithos_cmd demo t` (kind: Command, interactive, /bin/true) without and
#                  with cgroups (the static build; the default dynamic one too), against unshare(1)+chroot(1), bubblewrap, crun (no cgroups,
#                  cgroupfs) and runc, in one `hyperfine -N` invocation; then 100 sequential
#                  starts as a total (fewer runs: 100 starts per run)
#   S2 respawn     SIGKILL a Daemon (restart-timeout: 0) whose static stamp program writes
#                  CLOCK_MONOTONIC to a FIFO at start; time from the kill to the next stamp,
#                  against `while :; do crun run ...; done` with the same program
#   S3 fleet-200   200 instances of sleep: time until all run, then PSS (smaps_rollup) and
#                  idle CPU over 60 s of lithos_tree + every lithos_knot; against
#                  `crun run --detach` x200 (time only)
#
# Usage (as root): bash tests/bench/lithos.sh
# Output: tests/bench/out/lithos/ (hyperfine JSON, raw samples) and
#         tests/bench/out/lithos/report.md (machine, commands, tables), also printed.
# Environment: WARMUP (20), RUNS (300) for S1; RUNS100 (10) for the 100-start totals;
#   S2_ITERATIONS (200); S3_RUNS (3); IDLE_SECONDS (60); QUIET_IDLE (90) and QUIET_WAIT (120):
#   before each measurement wait up to QUIET_WAIT s for QUIET_IDLE % idle CPU (the machine
#   may be shared; what was found is recorded with the results).
#
# Not part of CI: it needs root, installs packages and takes several minutes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
repo=$(cd "$here/../.." && pwd)
host=$(rustc -vV | sed -n 's/^host: //p')
out="$here/out/lithos"
warmup=${WARMUP:-20}
runs=${RUNS:-300}
runs100=${RUNS100:-10}
s2_iterations=${S2_ITERATIONS:-200}
s3_runs=${S3_RUNS:-3}
idle_seconds=${IDLE_SECONDS:-60}
packages=(hyperfine crun runc bubblewrap busybox-static util-linux procps jq gcc libc6-dev)

# ---------------------------------------------------------------------------------------------
# Phase 1 (host mount namespace): packages, build, images, configs, OCI bundles.
# ---------------------------------------------------------------------------------------------
if [ -z "${LITHOS_BENCH_INNER:-}" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "lithos.sh: must run as root (containers, cgroups, crun/runc)" >&2
        exit 1
    fi
    case "$repo" in
        *[[:space:]]*)
            echo "lithos.sh: the repository path must not contain whitespace (hyperfine -N)" >&2
            exit 1
            ;;
    esac
    install_missing "${packages[@]}"

    echo ">> building lithos (release: static as docs/lithos.md recommends, and dynamic)" >&2
    (cd "$repo" && cargo build --release -q -p lithos --bins)
    (cd "$repo" && cargo build --release -q -p lithos --bins --target "$host" \
        --config "target.$host.rustflags = ['-C', 'target-feature=+crt-static']")

    rm -rf "$out"
    mkdir -p "$out"
    echo ">> busybox root filesystem, stamp program" >&2
    bash "$repo/tests/fixtures/busybox-rootfs.sh" "$here/out/rootfs"
    root="$out/rootfs"
    cp -a "$here/out/rootfs" "$root"

    # S2: the program whose start is timed, and the measuring side.
    cat > "$out/stamp.c" <<'EOF'
/* Writes CLOCK_MONOTONIC (ns) to the FIFO named by argv[1] first thing, then waits. */
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    int fd = open(argc > 1 ? argv[1] : "/data/stamp.fifo", O_WRONLY);
    if (fd < 0) return 1;
    char line[32];
    int n = snprintf(line, sizeof line, "%lld\n", (long long)t.tv_sec * 1000000000LL + t.tv_nsec);
    if (write(fd, line, n) != n) return 1;
    close(fd);
    for (;;) pause();
}
EOF
    cat > "$out/respawn.c" <<'EOF'
/* respawn FIFO WARMUP N: waits for a stamp, then N+WARMUP times: finds the process named
 * "stamp", SIGKILLs it and prints (after WARMUP) the ns from the kill to the next stamp. */
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static long long now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}
static long long stamp(int fd) {
    static char buf[256];
    static size_t len;
    for (;;) {
        char *nl = memchr(buf, '\n', len);
        if (nl) {
            long long v = atoll(buf);
            len -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, len);
            return v;
        }
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 30000) != 1) { fprintf(stderr, "respawn: no stamp in 30 s\n"); exit(1); }
        ssize_t n = read(fd, buf + len, sizeof buf - len);
        if (n <= 0) { perror("respawn: read"); exit(1); }
        len += (size_t)n;
    }
}
static pid_t find_stamp(void) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    pid_t found = -1;
    while (d && (e = readdir(d))) {
        char path[64], stat[256];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t n = fread(stat, 1, sizeof stat - 1, f);
        fclose(f);
        stat[n] = 0;
        char *close_paren = strrchr(stat, ')');
        if (strstr(stat, "(stamp)") && close_paren && close_paren[2] != 'Z') found = atoi(e->d_name);
    }
    if (d) closedir(d);
    return found;
}
int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: respawn FIFO WARMUP N\n"); return 2; }
    int fd = open(argv[1], O_RDWR); /* also a writer: reads block instead of ending */
    if (fd < 0) { perror(argv[1]); return 1; }
    int warmup = atoi(argv[2]), n = atoi(argv[3]);
    stamp(fd);
    for (int i = 0; i < warmup + n; i++) {
        usleep(50000); /* let the previous start settle */
        pid_t pid = find_stamp();
        if (pid < 0) { fprintf(stderr, "respawn: no stamp process\n"); return 1; }
        long long killed = now();
        kill(pid, SIGKILL);
        long long next = stamp(fd);
        if (i >= warmup) printf("%lld\n", next - killed);
    }
    return 0;
}
EOF
    gcc -static -O2 -o "$root/bin/stamp" "$out/stamp.c"
    gcc -O2 -o "$out/respawn" "$out/respawn.c"

    # lithos: one image (the busybox root with container configs), two master.yaml (with
    # and without cgroups), sandbox demo.
    echo ">> lithos configs" >&2
    l="$out/lithos"
    mkdir -p "$l/images" "$l/fifo" "$l/etc/sandboxes" "$l/etc/processes"
    cp -a "$root" "$l/images/bb"
    mkdir -p "$l/images/bb/config"
    printf 'kind: Command\nexecutable: /bin/true\ninteractive: true\n' > "$l/images/bb/config/t.yaml"
    printf 'executable: /bin/stamp\narguments: [/data/stamp.fifo]\nrestart-timeout: 0\nvolumes: {/data: !Persistent /data}\n' \
        > "$l/images/bb/config/stamp.yaml"
    printf 'executable: /bin/stamp\narguments: [/data/stamp.fifo]\nrestart-timeout: 0\nrestart-process-only: true\nvolumes: {/data: !Persistent /data}\n' \
        > "$l/images/bb/config/stamp-process-only.yaml"
    printf 'executable: /bin/sleep\narguments: ["100001"]\n' > "$l/images/bb/config/sleep.yaml"
    for variant in nocg cg; do
        mkdir -p "$l/$variant"
        cgroup_name=null
        [ "$variant" = cg ] && cgroup_name=lithos-bench.slice
        printf 'sandboxes-dir: %s\nprocesses-dir: %s\nruntime-dir: %s\ndefault-log-dir: %s\nconfig-log-dir: null\ncgroup-name: %s\n' \
            "$l/etc/sandboxes" "$l/etc/processes" "$l/$variant/run" "$l/$variant/log" "$cgroup_name" \
            > "$l/$variant/master.yaml"
    done
    printf 'image-dir: %s\nallow-users: [1000-1999]\nallow-groups: [1000-1999]\ndefault-user: 1000\ndefault-group: 1000\nwritable-paths: {/data: %s}\n' \
        "$l/images" "$l/fifo" > "$l/etc/sandboxes/demo.yaml"
    printf 't: {kind: Command, image: bb, config: /config/t.yaml}\n' > "$l/etc/processes/demo.yaml"
    "$repo/target/release/lithos_check" -C "$l/cg/master.yaml" >&2

    # OCI bundles from `crun spec`: read-only root, namespaces pid, mount, uts, ipc; no
    # terminal. crun takes the root by absolute path, runc a copy inside its bundle.
    echo ">> OCI bundles" >&2
    bundle() { # DIR ROOT_PATH ARGS_JSON [JQ_ARGS... for a further edit]
        local dir=$1 root_path=$2 args=$3
        shift 3
        [ $# -gt 0 ] || set -- .
        mkdir -p "$dir"
        rm -f "$dir/config.json"
        (cd "$dir" && crun spec)
        jq --arg root "$root_path" --argjson args "$args" '
            .process.args = $args
            | .process.terminal = false
            | .root = {path: $root, readonly: true}
            | .linux.namespaces = [{type: "pid"}, {type: "mount"}, {type: "uts"}, {type: "ipc"}]
        ' "$dir/config.json" | jq "$@" > "$dir/config.json.new"
        mv "$dir/config.json.new" "$dir/config.json"
    }
    bundle "$out/bundle-true" "$root" '["/bin/true"]'
    mkdir -p "$out/bundle-runc"
    cp -a "$root" "$out/bundle-runc/rootfs"
    bundle "$out/bundle-runc" rootfs '["/bin/true"]'
    mkdir -p "$out/crun-fifo"
    bundle "$out/bundle-stamp" "$root" '["/bin/stamp", "/data/stamp.fifo"]' \
        --arg fifo "$out/crun-fifo" '.mounts += [{destination: "/data", type: "bind", source: $fifo, options: ["rbind", "rw"]}]'
    bundle "$out/bundle-sleep" "$root" '["/bin/sleep", "100002"]'

    # Phase 2 runs in a private mount namespace: this host has cgroup v1 plus an empty
    # cgroup2 at /sys/fs/cgroup/unified, a hybrid layout crun refuses. Unmounting it there
    # leaves the host untouched (lithos detects v1 either way).
    echo ">> re-executing in a private mount namespace" >&2
    exec unshare -m --propagation private env LITHOS_BENCH_INNER=1 bash "${BASH_SOURCE[0]}" "$@"
fi

# ---------------------------------------------------------------------------------------------
# Phase 2 (private mount namespace): the measurements.
# ---------------------------------------------------------------------------------------------
if mountpoint -q /sys/fs/cgroup/unified 2>/dev/null; then
    umount /sys/fs/cgroup/unified
fi
root="$out/rootfs"
l="$out/lithos"
# The runtime dirs on tmpfs, as lithos' default /run/lithos is on a normal host and as crun's
# and runc's state dirs under /run are here (the mounts vanish with this namespace).
for variant in nocg cg; do
    mkdir -p "$l/$variant/run"
    mount -t tmpfs -o mode=0755 lithos-bench-run "$l/$variant/run"
done
# The static build measures S1-S3; the default dynamic build is one more row of S1.
bin="$repo/target/$host/release"
dynamic="$repo/target/release"
load="$out/load.txt"
: > "$load"

# Whatever an aborted run leaves: our tree (it stops its containers) and crun's containers.
tree_pid=
loop_pid=
cleanup() {
    [ -z "$loop_pid" ] || kill "$loop_pid" 2> /dev/null || true
    if [ -n "$tree_pid" ] && kill -TERM "$tree_pid" 2> /dev/null; then
        wait "$tree_pid" 2> /dev/null || true
    fi
    local id
    for id in $(crun list -q 2> /dev/null | grep '^bench-' || true); do
        crun delete -f "$id" > /dev/null 2>&1 || true
    done
    # The empty slice and knots.scope a stopped tree keeps for its next start.
    find /sys/fs/cgroup/*/lithos-bench.slice -depth -type d -exec rmdir {} + 2> /dev/null || true
}
trap cleanup EXIT

idle_percent() { # SECONDS: % of CPU time idle over the next SECONDS (/proc/stat)
    local a b
    read -r -a a < /proc/stat
    sleep "$1"
    read -r -a b < /proc/stat
    local busy=0 idle i
    for i in 1 2 3 6 7 8; do busy=$((busy + b[i] - a[i])); done
    idle=$((b[4] + b[5] - a[4] - a[5]))
    echo $((100 * idle / (busy + idle)))
}

wait_quiet() { # WHAT: wait for a quiet machine (bounded), record what was found
    local deadline=$((SECONDS + ${QUIET_WAIT:-120})) idle
    while :; do
        idle=$(idle_percent 5)
        if [ "$idle" -ge "${QUIET_IDLE:-90}" ] || [ "$SECONDS" -ge "$deadline" ]; then
            break
        fi
        echo ">> machine busy (${idle}% idle), waiting" >&2
    done
    printf '%s: %s%% idle over 5 s, load average %s\n' "$1" "$idle" \
        "$(cut -d' ' -f1-3 /proc/loadavg)" >> "$load"
}

now_ns() { date +%s%N; }

# Waits (at most 120 s) until COUNT processes match PATTERN; prints the time it happened.
wait_count() { # PATTERN COUNT
    local deadline=$((SECONDS + 120))
    until [ "$(pgrep -c -f "$1" || true)" -ge "$2" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "lithos.sh: only $(pgrep -c -f "$1" || true) of $2 '$1' after 120 s" >&2
            return 1
        fi
        sleep 0.01
    done
    now_ns
}

wait_gone() { # PATTERN
    local deadline=$((SECONDS + 120))
    while pgrep -f "$1" > /dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "lithos.sh: '$1' still running" >&2; return 1; }
        sleep 0.1
    done
}

# Median and nearest-rank p99 of a file of numbers (one per line), divided by DIVISOR.
stats() { # FILE DIVISOR
    sort -n "$1" | awk -v d="$2" '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        p = int(NR * 0.99); if (p < NR * 0.99) p++
        printf "%.3f %.3f %d\n", m / d, v[p] / d, NR }'
}

# A Markdown table from a hyperfine export: median, p99 (nearest rank), mean, and the median
# as a ratio to each baseline command.
table() { # JSON BASELINE...
    local json=$1
    shift
    jq -r '
        def fixed($d): (pow(10; $d)) as $m | (. * $m | round) as $x
            | ($x / $m | floor | tostring) + "." + ($x % $m + $m | tostring | .[1:]);
        def ms: . * 1000 | fixed(3);
        def p99: sort as $t | $t[((($t | length) * 0.99) | ceil) - 1];
        $ARGS.positional as $bases
        | (.results) as $r
        | ($bases | map(. as $b | $r | map(select(.command == $b)) | first | .median)) as $bm
        | "| command | median ms | p99 ms | mean ms | " + ($bases | map("median / \(.)") | join(" | ")) + " |",
          "|---|---:|---:|---:|" + ($bases | map("---:") | join("|")) + "|",
          ($r[] | . as $c
           | "| \(.command) | \(.median | ms) | \(.times | p99 | ms) | \(.mean | ms) | "
             + ($bm | map($c.median / . | fixed(2)) | join(" | ")) + " |")
    ' "$json" --args "$@"
}

# ---- S1 ---------------------------------------------------------------------------------------
s1=(
    "lithos_cmd|$bin/lithos_cmd --master $l/nocg/master.yaml demo t"
    "lithos_cmd +cgroups|$bin/lithos_cmd --master $l/cg/master.yaml demo t"
    "lithos_cmd dynamic|$dynamic/lithos_cmd --master $l/nocg/master.yaml demo t"
    "unshare|unshare -f -p -m -u -i chroot $root /bin/true"
    "bwrap|bwrap --unshare-pid --unshare-uts --unshare-ipc --ro-bind $root / --proc /proc --dev /dev /bin/true"
    "crun|crun --cgroup-manager=disabled run -b $out/bundle-true bench-s1"
    "crun cgroupfs|crun --cgroup-manager=cgroupfs run -b $out/bundle-true bench-s1-cg"
    "runc|runc run -b $out/bundle-runc bench-s1-runc"
)
hyperfine_args() { # ENTRIES...: --command-name NAME CMD pairs; each command must run once
    local entry
    for entry in "$@"; do
        # shellcheck disable=SC2086 # a plain argv, split on spaces like hyperfine -N does
        ${entry#*|} > /dev/null
        printf '%s\n%s\n' --command-name "${entry%%|*}"
        printf '%s\n' "${entry#*|}"
    done
}
mapfile -t args < <(hyperfine_args "${s1[@]}")
wait_quiet S1
echo ">> S1: hyperfine" >&2
hyperfine -N --warmup "$warmup" --runs "$runs" --export-json "$out/s1.json" "${args[@]}" >&2

# 100 sequential starts per run, as a total.
s1_100=()
for name in "lithos_cmd" "lithos_cmd +cgroups" "unshare" "crun" "crun cgroupfs"; do
    for entry in "${s1[@]}"; do
        if [ "${entry%%|*}" = "$name" ]; then
            s1_100+=("$name x100|for i in \$(seq 100); do ${entry#*|} >/dev/null || exit 1; done")
        fi
    done
done
args=()
for entry in "${s1_100[@]}"; do
    args+=(--command-name "${entry%%|*}" "${entry#*|}")
done
wait_quiet S1x100
echo ">> S1 x100: hyperfine" >&2
# Not -N: each command is a shell loop (hyperfine subtracts the shell's own start).
hyperfine --warmup 1 --runs "$runs100" --export-json "$out/s1-100.json" "${args[@]}" >&2

# ---- S2 ---------------------------------------------------------------------------------------
mkfifo -m 0666 "$l/fifo/stamp.fifo"
mkfifo -m 0666 "$out/crun-fifo/stamp.fifo"
start_tree() { # MASTER
    "$bin/lithos_tree" --master "$1" < /dev/null > "$out/tree.stderr" 2>&1 &
    tree_pid=$!
}
stop_tree() {
    kill -TERM "$tree_pid"
    wait "$tree_pid" || true
    tree_pid=
}

s2_lithos() { # NAME CONFIG
    printf 'r: {image: bb, config: /config/%s}\n' "$2" > "$l/etc/processes/demo.yaml"
    wait_quiet "S2 $1"
    echo ">> S2: $1" >&2
    start_tree "$l/cg/master.yaml"
    "$out/respawn" "$l/fifo/stamp.fifo" 5 "$s2_iterations" > "$out/s2-$1.txt"
    stop_tree
}
s2_lithos lithos stamp.yaml
s2_lithos lithos-process-only stamp-process-only.yaml

wait_quiet "S2 crun"
echo ">> S2: crun loop" >&2
# `|| true`: crun exits 137 after every kill, which would end the loop under set -e.
(while :; do crun --cgroup-manager=cgroupfs run -b "$out/bundle-stamp" bench-s2 < /dev/null > /dev/null 2>&1 || true; done) &
loop_pid=$!
"$out/respawn" "$out/crun-fifo/stamp.fifo" 5 "$s2_iterations" > "$out/s2-crun.txt"
kill "$loop_pid"
wait "$loop_pid" 2> /dev/null || true
loop_pid=
crun kill bench-s2 KILL 2> /dev/null || true
crun delete -f bench-s2 2> /dev/null || true

# ---- S3 ---------------------------------------------------------------------------------------
printf 's: {image: bb, config: /config/sleep.yaml, instances: 200}\n' > "$l/etc/processes/demo.yaml"
pss_kb() { # PID...: total Pss in kB
    local pid total=0 kb
    for pid in "$@"; do
        kb=$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2> /dev/null || echo 0)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}
cpu_ticks() { # PID...: utime + stime in clock ticks
    local pid total=0 t
    for pid in "$@"; do
        t=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2> /dev/null || echo 0)
        total=$((total + ${t:-0}))
    done
    echo "$total"
}
# Knots are lithos_knot processes in our pid namespace; the container inits (pid 1 of each
# container) are copies of their knot in the container's pid namespace.
knot_pids() { # IN_OUR_PIDNS(yes|no)
    local pid ours
    ours=$(readlink /proc/self/ns/pid)
    for pid in $(pgrep -x lithos_knot); do
        if [ "$(readlink "/proc/$pid/ns/pid")" = "$ours" ]; then
            [ "$1" = yes ] && echo "$pid"
        else
            [ "$1" = no ] && echo "$pid"
        fi
    done
}

: > "$out/s3-lithos.txt"
: > "$out/s3-crun.txt"
for run in $(seq "$s3_runs"); do
    wait_quiet "S3 lithos run $run"
    echo ">> S3: lithos run $run" >&2
    t0=$(now_ns)
    start_tree "$l/cg/master.yaml"
    t1=$(wait_count 'sleep 100001$' 200)
    echo $((t1 - t0)) >> "$out/s3-lithos.txt"
    if [ "$run" = 1 ]; then
        sleep 5
        mapfile -t knots < <(knot_pids yes)
        mapfile -t inits < <(knot_pids no)
        {
            echo "knots ${#knots[@]}"
            echo "inits ${#inits[@]}"
            echo "tree_pss_kb $(pss_kb "$tree_pid")"
            echo "knots_pss_kb $(pss_kb "${knots[@]}")"
            echo "inits_pss_kb $(pss_kb "${inits[@]}")"
            echo "tree_rss_kb $(awk '/^VmRSS:/ { print $2 }' "/proc/$tree_pid/status")"
            echo "knot_rss_kb $(awk '/^VmRSS:/ { print $2 }' "/proc/${knots[0]}/status")"
        } > "$out/s3-memory.txt"
        c0=$(cpu_ticks "$tree_pid" "${knots[@]}" "${inits[@]}")
        sleep "$idle_seconds"
        c1=$(cpu_ticks "$tree_pid" "${knots[@]}" "${inits[@]}")
        echo "idle_cpu_ticks $((c1 - c0)) over ${idle_seconds}s at $(getconf CLK_TCK) ticks/s" >> "$out/s3-memory.txt"
    fi
    stop_tree
    wait_gone 'sleep 100001$'

    wait_quiet "S3 crun run $run"
    echo ">> S3: crun run $run" >&2
    t0=$(now_ns)
    for i in $(seq 200); do
        crun --cgroup-manager=cgroupfs run --detach -b "$out/bundle-sleep" "bench-s3-$i" \
            < /dev/null > /dev/null 2>&1
    done
    t1=$(wait_count 'sleep 100002$' 200)
    echo $((t1 - t0)) >> "$out/s3-crun.txt"
    for i in $(seq 200); do
        crun kill "bench-s3-$i" KILL 2> /dev/null || true
    done
    wait_gone 'sleep 100002$'
    for i in $(seq 200); do
        crun delete -f "bench-s3-$i" 2> /dev/null || true
    done
done

# ---- report -----------------------------------------------------------------------------------
read -r s2_ours_med s2_ours_p99 s2_ours_n < <(stats "$out/s2-lithos.txt" 1000000)
read -r s2_po_med s2_po_p99 s2_po_n < <(stats "$out/s2-lithos-process-only.txt" 1000000)
read -r s2_crun_med s2_crun_p99 s2_crun_n < <(stats "$out/s2-crun.txt" 1000000)
read -r s3_ours_med s3_ours_max s3_ours_n < <(stats "$out/s3-lithos.txt" 1000000)
read -r s3_crun_med s3_crun_max s3_crun_n < <(stats "$out/s3-crun.txt" 1000000)
mem() { awk -v k="$1" '$1 == k { print $2 }' "$out/s3-memory.txt"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
tree_kb=$(mem tree_pss_kb)
knots_kb=$(mem knots_pss_kb)
inits_kb=$(mem inits_pss_kb)
ticks=$(awk '$1 == "idle_cpu_ticks" { print $2 }' "$out/s3-memory.txt")
{
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- kernel: $(uname -r); CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores; memory $(free -g | awk '/^Mem:/ { print $2 }') GiB"
    echo "- commit: $(cd "$repo" && git rev-parse --short HEAD)$(cd "$repo" && [ -z "$(git status --porcelain -- crates/lithos crates/isolation)" ] || echo ' (crates/lithos or crates/isolation modified)'); $(rustc --version); release build, static (\`--target $host\` with \`+crt-static\`) except the row \`lithos_cmd dynamic\` (plain \`cargo build --release\`)"
    echo "- cgroups: v1 (hybrid host), run inside \`unshare -m --propagation private\` with /sys/fs/cgroup/unified unmounted"
    echo "- machine before each measurement (shared with other builds):"
    echo
    sed 's/^/  - /' "$load"
    echo
    echo "- packages:"
    echo
    echo '```'
    dpkg-query -W hyperfine crun runc bubblewrap busybox-static util-linux
    echo '```'
    echo
    echo "### S1 start-true: \`hyperfine -N --warmup $warmup --runs $runs --export-json s1.json\`"
    echo
    table "$out/s1.json" unshare "crun cgroupfs"
    echo
    for entry in "${s1[@]}"; do printf -- '- `%s`: `%s`\n' "${entry%%|*}" "${entry#*|}"; done
    echo
    echo "100 sequential starts per run (\`hyperfine --warmup 1 --runs $runs100\`, each command a shell loop):"
    echo
    table "$out/s1-100.json" "unshare x100" "crun cgroupfs x100"
    echo
    echo "### S2 respawn: SIGKILL to the next stamp, $s2_iterations iterations after 5 warm-up"
    echo
    echo "| what | median ms | p99 ms | median / crun loop |"
    echo "|---|---:|---:|---:|"
    echo "| lithos Daemon, restart-timeout: 0 (the knot ends, the tree starts a new one) | $s2_ours_med | $s2_ours_p99 | $(ratio "$s2_ours_med" "$s2_crun_med") |"
    echo "| lithos, restart-process-only: true (the knot starts a new container) | $s2_po_med | $s2_po_p99 | $(ratio "$s2_po_med" "$s2_crun_med") |"
    echo "| \`while :; do crun --cgroup-manager=cgroupfs run -b bundle-stamp bench-s2; done\` | $s2_crun_med | $s2_crun_p99 | 1.00 |"
    echo
    echo "### S3 fleet-200: 200 × \`sleep\`, $s3_runs runs each"
    echo
    echo "| what | median s | max s | median / crun |"
    echo "|---|---:|---:|---:|"
    echo "| lithos_tree start → 200 programs running | $(ratio "$s3_ours_med" 1000) | $(ratio "$s3_ours_max" 1000) | $(ratio "$s3_ours_med" "$s3_crun_med") |"
    echo "| \`crun --cgroup-manager=cgroupfs run --detach\` × 200 → 200 running | $(ratio "$s3_crun_med" 1000) | $(ratio "$s3_crun_max" 1000) | 1.00 |"
    echo
    echo "| memory with 200 running | PSS |"
    echo "|---|---:|"
    echo "| lithos_tree | $tree_kb kB |"
    echo "| $(mem knots) lithos_knot (host) | $knots_kb kB ($((knots_kb / 200)) kB each) |"
    echo "| tree + knots (the S3 figure; target ≤ 5 MB + 250 KB × 200 = 55 MB) | $((tree_kb + knots_kb)) kB |"
    echo "| $(mem inits) container inits (pid 1 of each container, a copy of its knot) | $inits_kb kB |"
    echo "| everything of ours | $((tree_kb + knots_kb + inits_kb)) kB ($(((tree_kb + knots_kb + inits_kb) / 200)) kB per container) |"
    echo
    echo "RSS: tree $(mem tree_rss_kb) kB, one knot $(mem knot_rss_kb) kB. Idle CPU of the tree, knots and inits over ${idle_seconds} s: $ticks ticks at $(getconf CLK_TCK)/s."
} > "$out/report.md"
cat "$out/report.md"

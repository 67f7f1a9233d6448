#!/usr/bin/env bash
# cantal benchmarks M1-M3 and G1 of spec/cantal.md §6, ours and Debian's peers side by side:
#   M1 idle-1k   1000 `busybox sleep` processes; cantal-agent (defaults, 2 s interval),
#                netdata, collectd and node_exporter run at the same time, each in its own
#                cpuacct cgroup, all in one network namespace; CPU (cpuacct.usage) over
#                M1_SECONDS after M1_WARMUP, then PSS summed over each cgroup's processes
#   M2 sweep-1k  the agent's own sweep timer (`cantal_agent_process_sweep_duration_seconds`:
#                the /proc listing, each process's stat and io, and status and cgroup when
#                due (young or recently exec'd processes, then each every 30 s); best of
#                M2_SCANS scans at a 500 ms interval; the whole scan's timer is reported too)
#                with and without the 1000 sleepers, per process; against a C floor compiled here (best of 10 sweeps of /proc:
#                open/read/close of stat; of stat+status+io; stat+status+io on kept fds)
#   M3 scrape    `hyperfine -N` of curl /metrics in the agent's namespace, M3_RUNS runs each
#                for cantal and node_exporter; daemon CPU per scrape (cpuacct delta minus the
#                idle rate measured in M1) divided by the number of series
#   G1 gossip    G1_SIZES-node clusters in network namespaces on one bridge (10.79.0.0/24):
#                (a) join: from starting node N until all others list it alive, (b) from
#                SIGKILL of node N until all others mark it dead/failed, (c) bytes/s per node
#                over G1_TRAFFIC_SECONDS of a quiet cluster; cantal vs `serf agent` (both at
#                1 s probe, 500 ms timeout, 3 indirect probes, suspicion multiplier 4).
#                Times: cantal from each peer's `state_since`; serf from its
#                `EventMemberJoin`/`EventMemberFailed` log lines, stamped on arrival through
#                `serf monitor` (serf's event handlers are coalesced, its log has 1 s stamps)
#
# Usage (as root): bash tests/bench/cantal.sh
# Output: tests/bench/out/cantal/ (raw samples, hyperfine JSON, logs) and
#         tests/bench/out/cantal/report.md (machine, commands, tables), also printed.
# Environment: PROCS (1000), M1_WARMUP (20), M1_SECONDS (60), M2_SCANS (10), M3_RUNS (100),
#   G1_SIZES ("5 10"), G1_REPEATS (2), G1_TRAFFIC_SECONDS (10); M1_ONLY=1 stops after M1; G1_ONLY=1 runs only G1. The
#   load average is recorded with each measurement: the machine may be shared.
#
# Not part of CI: it needs root, installs packages and takes about 6 minutes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
repo=$(cd "$here/../.." && pwd)
out="$here/out/cantal"
procs=${PROCS:-1000}
m1_warmup=${M1_WARMUP:-20}
m1_seconds=${M1_SECONDS:-60}
m2_scans=${M2_SCANS:-10}
m3_runs=${M3_RUNS:-100}
g1_sizes=${G1_SIZES:-"5 10"}
g1_repeats=${G1_REPEATS:-2}
g1_traffic_seconds=${G1_TRAFFIC_SECONDS:-10}
packages=(netdata-core collectd-core prometheus-node-exporter serf hyperfine busybox-static
    gcc libc6-dev curl jq iproute2 procps)
agent="$repo/target/release/cantal-agent"
prefix="cbm$$"
subnet=10.79.0
cgroot=/sys/fs/cgroup/cpuacct

if [ "$(id -u)" -ne 0 ]; then
    echo "cantal.sh: must run as root (namespaces, cgroups, packages)" >&2
    exit 1
fi
install_missing "${packages[@]}"
if [ ! -d "$cgroot" ]; then
    echo "cantal.sh: needs the cgroup v1 cpuacct hierarchy at $cgroot" >&2
    exit 1
fi

echo ">> building cantal (release)" >&2
(cd "$repo" && cargo build --release -q -p cantal --bins)

rm -rf "$out"
mkdir -p "$out"
report="$out/report.md"

# Everything started here is recorded, so cleanup ends exactly that.
daemons=()
sleepers=()
cleanup() {
    set +e
    for pid in "${daemons[@]}" "${sleepers[@]}"; do kill -9 "$pid" 2>/dev/null; done
    wait 2>/dev/null
    delete_namespaces
    for cg in "$cgroot/$prefix"-*; do [ -d "$cg" ] && rmdir "$cg"; done
}
trap cleanup EXIT

# Ends what still runs in our namespaces (serf monitor behind a killed pipeline), then
# removes them.
delete_namespaces() {
    local ns pid
    for ns in $(ip netns list | awk '{print $1}' | grep "^$prefix" || true); do
        for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns delete "$ns"
    done
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# Starts a daemon in cgroup $1 and network namespace $2; the pid is the daemon itself
# (`ip netns exec` execs). Its output goes to $out/$1.log.
start_in_cgroup() {
    local name=$1 ns=$2
    shift 2
    mkdir -p "$cgroot/$prefix-$name"
    sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cgroot/$prefix-$name" \
        ip netns exec "$ns" "$@" > "$out/$name.log" 2>&1 &
    daemons+=($!)
}
cpu_ns() { cat "$cgroot/$prefix-$1/cpuacct.usage"; }
pss_kb() {
    local total=0 pid kb
    for pid in $(cat "$cgroot/$prefix-$1/cgroup.procs"); do
        kb=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || true)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}
# Polls (up to $1 s) until the command succeeds.
wait_for() {
    local seconds=$1 i
    shift
    for ((i = 0; i < seconds * 10; i++)); do
        "$@" > /dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "cantal.sh: timed out waiting for: $*" >&2
    return 1
}
metric() { # metric NS PORT NAME: the value of an unlabelled series
    ip netns exec "$1" curl -sf "http://127.0.0.1:$2/metrics" | awk -v n="$3" '$1 == n {print $2}'
}

{
    echo "# cantal benchmarks (spec §6: M1, M2, M3, G1)"
    echo
    echo "- date: $(date -u +%FT%TZ)"
    echo "- kernel: $(uname -r); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') × $(nproc)"
    echo "- cantal: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?') (release build, working tree)"
    for p in netdata-core collectd-core prometheus-node-exporter serf hyperfine; do
        echo "- $p: $(dpkg-query -W -f='${Version}' "$p")"
    done
    echo "- load average at start: $(loadavg)"
} > "$report"

# G1_ONLY=1 skips M1-M3 (a larger G1 sample without the ten minutes before it).
if [ "${G1_ONLY:-}" != 1 ]; then
# ---------------------------------------------------------------------------------------------
# M1 (and the M2/M3 daemons): one namespace with loopback, four daemons, 1000 sleepers.
# ---------------------------------------------------------------------------------------------
mns="${prefix}m"
ip netns add "$mns"
ip -n "$mns" link set lo up
mkdir -p "$out/collectd"
cat > "$out/collectd.conf" <<EOF
# Debian's collectd.conf plugin set; csv stands in for rrdtool as the writer.
BaseDir "$out/collectd"
PIDFile "$out/collectd/collectd.pid"
PluginDir "/usr/lib/collectd"
LoadPlugin syslog
LoadPlugin cpu
LoadPlugin df
LoadPlugin disk
LoadPlugin entropy
LoadPlugin interface
LoadPlugin irq
LoadPlugin load
LoadPlugin memory
LoadPlugin processes
LoadPlugin swap
LoadPlugin users
LoadPlugin csv
<Plugin csv>
  DataDir "$out/collectd/csv"
</Plugin>
EOF

echo ">> M1: $procs sleepers" >&2
for ((i = 0; i < procs; i++)); do
    busybox sleep 100000 &
    sleepers+=($!)
done
echo ">> M1: starting cantal-agent, netdata, collectd, node_exporter" >&2
start_in_cgroup cantal "$mns" "$agent" --host 127.0.0.1 --socket "$out/cantal.sock" \
    --override-machine-id 79000000000000000000000000000001 --log-format json
start_in_cgroup netdata "$mns" env DO_NOT_TRACK=1 netdata -D
start_in_cgroup collectd "$mns" collectd -f -C "$out/collectd.conf"
start_in_cgroup node_exporter "$mns" prometheus-node-exporter --web.listen-address=127.0.0.1:9100
wait_for 30 ip netns exec "$mns" curl -sf http://127.0.0.1:22682/status.json
wait_for 30 ip netns exec "$mns" curl -sf http://127.0.0.1:9100/metrics
sleep "$m1_warmup"
peers=(cantal netdata collectd node_exporter)
declare -A cpu0 cpu1 pss alive
load0=$(loadavg)
for p in "${peers[@]}"; do cpu0[$p]=$(cpu_ns "$p"); done
sleep "$m1_seconds"
for p in "${peers[@]}"; do cpu1[$p]=$(cpu_ns "$p"); done
load1=$(loadavg)
for p in "${peers[@]}"; do
    pss[$p]=$(pss_kb "$p")
    alive[$p]=$(wc -l < "$cgroot/$prefix-$p/cgroup.procs")
done
cpu_pct() { awk -v d=$((cpu1[$1] - cpu0[$1])) -v s="$m1_seconds" 'BEGIN {printf "%.3f", d / (s * 1e9) * 100}'; }
{
    echo
    echo "## M1 idle-$procs"
    echo
    echo "$procs \`busybox sleep\` processes; all four daemons running at once; CPU over ${m1_seconds} s after ${m1_warmup} s warm-up."
    echo "Load average at window start: $load0; at end: $load1."
    echo
    echo "| Daemon | Processes in cgroup | CPU (% of one core) | PSS (MB) |"
    echo "|---|---|---|---|"
    for p in "${peers[@]}"; do
        echo "| $p | ${alive[$p]} | $(cpu_pct "$p") | $(awk -v k="${pss[$p]}" 'BEGIN {printf "%.1f", k / 1024}') |"
    done
    echo
    awk -v c=$((cpu1[cantal] - cpu0[cantal])) -v n=$((cpu1[netdata] - cpu0[netdata])) -v k="${pss[cantal]}" \
        'BEGIN {printf "cantal ÷ netdata CPU: %.3f (target ≤ 0.2); cantal PSS %.1f MB (target ≤ 10 MB)\n", (n > 0 ? c / n : 0), k / 1024}'
} >> "$report"
if [ "${M1_ONLY:-}" = 1 ]; then
    cat "$report"
    exit 0
fi
idle_rate_cantal=$(awk -v d=$((cpu1[cantal] - cpu0[cantal])) -v s="$m1_seconds" 'BEGIN {print d / s}')
idle_rate_node_exporter=$(awk -v d=$((cpu1[node_exporter] - cpu0[node_exporter])) -v s="$m1_seconds" 'BEGIN {print d / s}')

# Only the two scrape targets stay for M2 and M3.
for p in netdata collectd; do
    for pid in $(cat "$cgroot/$prefix-$p/cgroup.procs"); do kill -9 "$pid" 2>/dev/null || true; done
done

# ---------------------------------------------------------------------------------------------
# M3: scrape CPU per series.
# ---------------------------------------------------------------------------------------------
echo ">> M3: scrapes" >&2
declare -A m3_port=([cantal]=22682 [node_exporter]=9100)
declare -A m3_idle=([cantal]=$idle_rate_cantal [node_exporter]=$idle_rate_node_exporter)
{
    echo
    echo "## M3 scrape"
    echo
    echo "\`ip netns exec NS hyperfine -N --warmup 5 --runs $m3_runs 'curl -s -o /dev/null http://127.0.0.1:PORT/metrics'\`, one invocation per daemon."
    echo "CPU per scrape = (cgroup CPU during the invocation − the idle rate from M1 × its wall time) ÷ scrapes."
    echo "Load average before: $(loadavg)."
    echo
    echo "| Daemon | Series | Scrape wall mean (ms) | CPU per scrape (ms) | CPU per series (µs) |"
    echo "|---|---|---|---|---|"
} >> "$out/m3.md"
declare -A per_series
for p in cantal node_exporter; do
    url="http://127.0.0.1:${m3_port[$p]}/metrics"
    series=$(ip netns exec "$mns" curl -sf "$url" | grep -vc '^#')
    c0=$(cpu_ns "$p")
    t0=$(date +%s%N)
    ip netns exec "$mns" hyperfine -N --style none --warmup 5 --runs "$m3_runs" \
        --export-json "$out/m3-$p.json" "curl -s -o /dev/null $url" > "$out/m3-$p.txt"
    t1=$(date +%s%N)
    c1=$(cpu_ns "$p")
    mean=$(jq '.results[0].mean * 1000' "$out/m3-$p.json")
    read -r per_scrape per_series[$p] < <(awk -v c=$((c1 - c0)) -v w=$((t1 - t0)) -v i="${m3_idle[$p]}" \
        -v n=$((m3_runs + 5)) -v s="$series" 'BEGIN {x = (c - i * w / 1e9) / n; printf "%.3f %.2f\n", x / 1e6, x / 1e3 / s}')
    printf '| %s | %s | %.2f | %s | %s |\n' "$p" "$series" "$mean" "$per_scrape" "${per_series[$p]}" >> "$out/m3.md"
done
awk -v a="${per_series[cantal]}" -v b="${per_series[node_exporter]}" \
    'BEGIN {printf "\ncantal ÷ node_exporter CPU per series: %.2f (target ≤ 0.5)\n", a / b}' >> "$out/m3.md"

# ---------------------------------------------------------------------------------------------
# M2: per-process sweep cost, the agent's timer against a C floor.
# ---------------------------------------------------------------------------------------------
echo ">> M2: sweep" >&2
cat > "$out/floor.c" <<'EOF'
/* floor MODE ROUNDS: sweeps /proc ROUNDS times and prints the best sweep's ns and the
 * number of processes. MODE stat: open/read/close /proc/PID/stat; three: the same for stat,
 * status and io; kept: stat, status and io opened in the first sweep, then pread each sweep
 * (plus readdir, as the agent does). */
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static const char *files[] = {"stat", "status", "io"};
static char buf[8192];
static int kept[65536][3];
static long long now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}
static void read_once(int pid, const char *name) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    if (read(fd, buf, sizeof buf) < 0) buf[0] = 0;
    close(fd);
}
int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: floor stat|three|kept ROUNDS\n"); return 2; }
    const char *mode = argv[1];
    int rounds = atoi(argv[2]), nkept = 0, count = 0;
    long long best = -1;
    if (!strcmp(mode, "kept")) {
        DIR *d = opendir("/proc");
        struct dirent *e;
        while ((e = readdir(d)) && nkept < 65536) {
            if (!isdigit((unsigned char)e->d_name[0])) continue;
            for (int f = 0; f < 3; f++) {
                char path[64];
                snprintf(path, sizeof path, "/proc/%s/%s", e->d_name, files[f]);
                kept[nkept][f] = open(path, O_RDONLY | O_CLOEXEC);
            }
            nkept++;
        }
        closedir(d);
    }
    for (int r = 0; r < rounds; r++) {
        long long start = now();
        DIR *d = opendir("/proc");
        struct dirent *e;
        int n = 0;
        while ((e = readdir(d))) {
            if (!isdigit((unsigned char)e->d_name[0])) continue;
            if (!strcmp(mode, "stat")) read_once(atoi(e->d_name), "stat");
            else if (!strcmp(mode, "three"))
                for (int f = 0; f < 3; f++) read_once(atoi(e->d_name), files[f]);
            n++;
        }
        closedir(d);
        if (!strcmp(mode, "kept"))
            for (int i = 0; i < nkept; i++)
                for (int f = 0; f < 3; f++)
                    if (kept[i][f] >= 0 && pread(kept[i][f], buf, sizeof buf, 0) < 0) buf[0] = 0;
        long long took = now() - start;
        if (best < 0 || took < best) { best = took; count = n; }
    }
    printf("%lld %d\n", best, count);
    return 0;
}
EOF
gcc -O2 -o "$out/floor" "$out/floor.c"
ulimit -n 16384

# The agent at a 500 ms interval in its own namespace; best scan of $m2_scans.
m2_scan() { # m2_scan LABEL: sets m2_best (best sweep, seconds), m2_scan_best and m2_procs
    local label=$1 ns="${prefix}s" best="" scan_best="" procs_seen="" i s w n
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    start_in_cgroup "m2-$label" "$ns" "$agent" --host 127.0.0.1 --interval 500 \
        --socket "$out/m2-$label.sock" --override-machine-id 79000000000000000000000000000002 \
        --log-format json
    wait_for 30 ip netns exec "$ns" curl -sf http://127.0.0.1:22682/status.json
    sleep 2
    for ((i = 0; i < m2_scans; i++)); do
        sleep 0.55
        s=$(metric "$ns" 22682 cantal_agent_scan_duration_seconds)
        w=$(metric "$ns" 22682 cantal_agent_process_sweep_duration_seconds)
        n=$(metric "$ns" 22682 cantal_agent_processes)
        echo "$label $s $w $n" >> "$out/m2-scans.txt"
        if [ -z "$best" ] || awk -v a="$w" -v b="$best" 'BEGIN {exit !(a < b)}'; then
            best=$w
            procs_seen=$n
        fi
        if [ -z "$scan_best" ] || awk -v a="$s" -v b="$scan_best" 'BEGIN {exit !(a < b)}'; then
            scan_best=$s
        fi
    done
    kill -9 "${daemons[-1]}"
    wait "${daemons[-1]}" 2>/dev/null || true
    ip netns delete "$ns"
    m2_best=$best
    m2_scan_best=$scan_best
    m2_procs=$procs_seen
}
m2_load=$(loadavg)
m2_scan with-sleepers
scan_with=$m2_best
whole_with=$m2_scan_best
procs_with=$m2_procs
declare -A floor_ns floor_count
for mode in stat three kept; do
    read -r floor_ns[$mode] floor_count[$mode] < <("$out/floor" "$mode" 10)
done
for pid in "${sleepers[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
wait "${sleepers[@]}" 2>/dev/null || true
sleepers=()
m2_scan without-sleepers
scan_without=$m2_best
whole_without=$m2_scan_best
procs_without=$m2_procs
{
    echo
    echo "## M2 sweep-$procs"
    echo
    echo "Agent: \`--interval 500\`, best of $m2_scans scans of \`cantal_agent_process_sweep_duration_seconds\` (the /proc listing, each process's stat and io, and its status and cgroup when due: every scan for its first 10 s and after an exec, then once per 30 s), and of \`cantal_agent_scan_duration_seconds\` (the whole scan: system files, TCP sockets, the sweep, groups, app files)."
    echo "Floor: \`floor MODE 10\` (best of 10 sweeps), run with the sleepers present. Load average at start: $m2_load."
    echo
    echo "| Measured | Processes | Best (ms) | µs per process |"
    echo "|---|---|---|---|"
    awk -v s="$scan_with" -v n="$procs_with" 'BEGIN {printf "| cantal sweep, with sleepers | %d | %.2f | %.2f |\n", n, s * 1e3, s * 1e6 / n}'
    awk -v s="$scan_without" -v n="$procs_without" 'BEGIN {printf "| cantal sweep, without sleepers | %d | %.2f | %.2f |\n", n, s * 1e3, s * 1e6 / n}'
    awk -v a="$scan_with" -v b="$scan_without" -v na="$procs_with" -v nb="$procs_without" \
        'BEGIN {printf "| cantal sweep, marginal (difference of the two) | %d | %.2f | %.2f |\n", na - nb, (a - b) * 1e3, (a - b) * 1e6 / (na - nb)}'
    awk -v s="$whole_with" -v n="$procs_with" 'BEGIN {printf "| cantal whole scan, with sleepers | %d | %.2f | %.2f |\n", n, s * 1e3, s * 1e6 / n}'
    awk -v s="$whole_without" -v n="$procs_without" 'BEGIN {printf "| cantal whole scan, without sleepers | %d | %.2f | %.2f |\n", n, s * 1e3, s * 1e6 / n}'
    for mode in stat three kept; do
        awk -v s="${floor_ns[$mode]}" -v n="${floor_count[$mode]}" -v m="$mode" \
            'BEGIN {printf "| C floor: %s | %d | %.2f | %.2f |\n", m, n, s / 1e6, s / 1e3 / n}'
    done
    echo
    awk -v a="$scan_with" -v na="$procs_with" -v f="${floor_ns[kept]}" -v nf="${floor_count[kept]}" \
        -v g="${floor_ns[three]}" -v ng="${floor_count[three]}" \
        -v b="$scan_without" -v nb="$procs_without" \
        'BEGIN {x = a * 1e6 / na; m = (a - b) * 1e6 / (na - nb); k = f / 1e3 / nf; t = g / 1e3 / ng
            printf "cantal ÷ C floor (target ≤ 1.2): sweep per process %.2f against kept fds, %.2f against open/read/close of the three files; marginal per process %.2f and %.2f\n", x / k, x / t, m / k, m / t}'
} >> "$report"
cat "$out/m3.md" >> "$report"
for pid in "${daemons[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
daemons=()
ip netns delete "$mns"
fi

# ---------------------------------------------------------------------------------------------
# G1: gossip join, failure detection and traffic, cantal vs serf.
# ---------------------------------------------------------------------------------------------
g1_network() { # g1_network N: switch with a bridge, hosts 1..N and a probe (.250)
    local n=$1 sw="${prefix}sw" i ns
    ip netns add "$sw"
    ip -n "$sw" link add br0 type bridge
    ip -n "$sw" link set br0 up
    for i in $(seq 1 "$n") 250; do
        ns="${prefix}h$i"
        ip netns add "$ns"
        ip -n "$sw" link add "p$i" type veth peer name eth0 netns "$ns"
        ip -n "$sw" link set "p$i" master br0 up
        ip -n "$ns" addr add "$subnet.$i/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
}
g1_teardown() {
    local pid
    for pid in "${daemons[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    daemons=()
    delete_namespaces
}
probe() { ip netns exec "${prefix}h250" "$@"; }
tx_bytes() { ip -n "${prefix}h$1" -j -s link show eth0 | jq '.[0].stats64.tx.bytes'; }

g1_start() { # g1_start SYSTEM I SEED DIR
    local system=$1 i=$2 seed=$3 dir=$4 ns="${prefix}h$2"
    if [ "$system" = cantal ]; then
        local join=()
        [ "$seed" -ne 0 ] && join=(--join "$subnet.$seed:22682")
        ip netns exec "$ns" "$agent" --host "$subnet.$i" --cluster-name bench --node-name "h$i" \
            --override-machine-id "$(printf '%032x' $((0x7900 + i)))" --socket "$dir/h$i.sock" \
            --log-format json "${join[@]}" > "$dir/h$i.log" 2>&1 &
    else
        local join=()
        [ "$seed" -ne 0 ] && join=(-join "$subnet.$seed:7946")
        ip netns exec "$ns" serf agent -node "h$i" -bind "$subnet.$i:7946" \
            -rpc-addr "$subnet.$i:7373" -log-level info "${join[@]}" > "$dir/h$i.log" 2>&1 &
    fi
    daemons+=($!)
}
# Prints the latest time (ms since the epoch) at which node J (1..N-1) saw node N in state
# STATE, or fails when some node has not yet.
cantal_seen() { # cantal_seen N STATE
    local n=$1 state=$2 j t latest=0
    for ((j = 1; j < n; j++)); do
        t=$(probe curl -sf -m 1 "http://$subnet.$j:22682/all_peers.json" |
            jq -e --arg a "$subnet.$n:22682" --arg s "$state" \
                '.peers[] | select(.primary_addr == $a and .state == $s) | .state_since') || return 1
        [ "$t" -gt "$latest" ] && latest=$t
    done
    echo "$latest"
}
serf_seen() { # serf_seen N EVENT DIR
    local n=$1 event=$2 dir=$3 j t latest=0
    for ((j = 1; j < n; j++)); do
        t=$(awk -v e="serf: $event: h$n " 'index($0, e) {printf "%.0f\n", $1 * 1000; exit}' "$dir/mon$j.log")
        [ -n "$t" ] || return 1
        [ "$t" -gt "$latest" ] && latest=$t
    done
    echo "$latest"
}
seen() { # seen SYSTEM N join|dead DIR
    if [ "$1" = cantal ]; then
        cantal_seen "$2" "$([ "$3" = join ] && echo alive || echo dead)"
    else
        serf_seen "$2" "$([ "$3" = join ] && echo EventMemberJoin || echo EventMemberFailed)" "$4"
    fi
}
wait_seen() { # wait_seen SECONDS SYSTEM N EVENT DIR: prints the time or "timeout"
    local deadline=$((SECONDS + $1)) t
    shift
    while [ $SECONDS -lt $deadline ]; do
        if t=$(seen "$@"); then echo "$t"; return 0; fi
        sleep 0.2
    done
    echo timeout
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }

echo "| System | N | Run | Join (s) | Detection (s) | Bytes/s per node (tx) | Load average |" > "$out/g1.md"
echo "|---|---|---|---|---|---|---|" >> "$out/g1.md"
for n in $g1_sizes; do
    for system in cantal serf; do
        for ((run = 1; run <= g1_repeats; run++)); do
            echo ">> G1: $system N=$n run $run" >&2
            dir="$out/g1-$system-$n-$run"
            mkdir -p "$dir"
            load=$(loadavg)
            g1_network "$n"
            g1_start "$system" 1 0 "$dir"
            sleep 0.5
            for ((i = 2; i < n; i++)); do g1_start "$system" "$i" 1 "$dir"; done
            if [ "$system" = serf ]; then
                for ((j = 1; j < n; j++)); do
                    wait_for 10 probe serf members -rpc-addr "$subnet.$j:7373"
                    # Arrival stamps: serf's own log lines carry whole seconds only.
                    probe bash -c 'serf monitor -log-level info -rpc-addr "$1" |
                        while IFS= read -r line; do echo "$EPOCHREALTIME $line"; done' \
                        sh "$subnet.$j:7373" > "$dir/mon$j.log" 2>&1 &
                    daemons+=($!)
                done
            fi
            # Settle: all of 1..N-1 up and gossiping before the measured join.
            sleep 5
            t0=$(now_ms)
            g1_start "$system" "$n" 1 "$dir"
            tj=$(wait_seen 30 "$system" "$n" join "$dir")
            join=$([ "$tj" = timeout ] && echo timeout || awk -v a="$tj" -v b="$t0" 'BEGIN {printf "%.2f", (a - b) / 1000}')
            sleep 3
            b0=0
            for ((i = 1; i <= n; i++)); do b0=$((b0 + $(tx_bytes "$i"))); done
            sleep "$g1_traffic_seconds"
            b1=0
            for ((i = 1; i <= n; i++)); do b1=$((b1 + $(tx_bytes "$i"))); done
            t0=$(now_ms)
            kill -9 "${daemons[$((${#daemons[@]} - 1))]}"
            td=$(wait_seen 60 "$system" "$n" dead "$dir")
            dead=$([ "$td" = timeout ] && echo timeout || awk -v a="$td" -v b="$t0" 'BEGIN {printf "%.2f", (a - b) / 1000}')
            rate=$(awk -v b=$((b1 - b0)) -v s="$g1_traffic_seconds" -v n="$n" 'BEGIN {printf "%.0f", b / s / n}')
            echo "| $system | $n | $run | $join | $dead | $rate | $load |" >> "$out/g1.md"
            g1_teardown
        done
    done
done
{
    echo
    echo "## G1 gossip-fd"
    echo
    echo "Nodes 1..N-1 start (joining node 1) and settle for 5 s; node N starts with node 1 as seed."
    echo "Join = until all of 1..N-1 list node N alive; detection = from \`kill -9\` of node N until all of 1..N-1 list it dead (cantal) or logged \`EventMemberFailed\` (serf)."
    echo "Bytes/s: eth0 tx over ${g1_traffic_seconds} s of the settled N-node cluster, mean per node (includes serf monitor streams and nothing else)."
    echo "cantal: \`cantal-agent --host 10.79.0.I --cluster-name bench --join 10.79.0.1:22682\` (defaults: 1 s probe, 500 ms timeout, 3 indirect, suspicion 4 s × max(1, log10 N))."
    echo "serf: \`serf agent -bind 10.79.0.I:7946 -join 10.79.0.1:7946\` (LAN profile: 1 s probe, 500 ms timeout, 3 indirect, suspicion multiplier 4, Lifeguard)."
    echo
    cat "$out/g1.md"
    echo
    echo "- load average at end: $(loadavg)"
} >> "$report"

cat "$report"

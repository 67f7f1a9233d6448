#!/usr/bin/env bash
# verwalter benchmarks O1-O3 of spec/verwalter.md §6, ours and etcd side by side:
#   O1 failover   3 hosts in network namespaces on one bridge (10.81.0.0/24), each running
#                 cantal-agent + verwalter and etcd (3.4, defaults: 100 ms heartbeat, 1 s
#                 election timeout); per trial, for each system in turn: SIGKILL the leader,
#                 time until a write is accepted on a survivor (`POST /v1/action` answering
#                 200 vs etcd's `/v3/kv/put` answering 200), then restart the killed node and
#                 wait for one agreed leader. O1_TRIALS trials; p50/p99.
#   O2 propagate  O2_CHANGES writes of a new value to the leader (an action the scheduler turns
#                 into a var vs an etcd put), time until every host's file shows it: verwalter
#                 renders it with `!Copy`; for etcd, `etcdctl watch` on every host feeds a sink
#                 that writes the file (temporary file + rename). Files are polled every 1 ms.
#   O3 schedule   `verwalter run-scheduler` with the benchmark scheduler
#                 (verwalter-bench/schedule-1k) placing 20 services x 50 instances on 100
#                 simulated hosts, `hyperfine -N`; placements/s.
# The client (verwalter-bench/driver.py) runs in a probe namespace at .250 and speaks HTTP to
# both systems, so both pay the same client cost.
#
# Usage (as root): bash tests/bench/verwalter.sh
# Output: tests/bench/out/verwalter/ (raw samples, hyperfine JSON, logs) and
#         tests/bench/out/verwalter/report.md (machine, commands, tables), also printed.
# Environment: O1_TRIALS (20), O2_CHANGES (100), O3_RUNS (50); 0 skips that benchmark.
#   O2_ROUNDS (1): O2 rounds; each runs every build of O2_BUILDS, then etcd, so builds are
#                  compared with etcd under the same load.
#   O2_BUILDS (target/release): space-separated dirs holding `verwalter` and
#                  `verwalter_render`, for an A/B (e.g. "/tmp/vw-old target/release"); before
#                  each build's O2 the three daemons are restarted with it. O1 runs the first.
#
# Not part of CI: it needs root, installs packages and takes about 5 minutes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
repo=$(cd "$here/../.." && pwd)
bench="$here/verwalter-bench"
out="$here/out/verwalter"
o1_trials=${O1_TRIALS:-20}
o2_changes=${O2_CHANGES:-100}
o3_runs=${O3_RUNS:-50}
packages=(etcd-server etcd-client hyperfine python3 iproute2 util-linux)
release="$repo/target/release"
read -r -a builds <<<"${O2_BUILDS:-$release}"
o2_rounds=${O2_ROUNDS:-1}
vw_bin=${builds[0]}
prefix="vbm$$"
subnet=10.81.0
hosts=(1 2 3)
token=bench-token
export BENCH_TOKEN=$token

if [ "$(id -u)" -ne 0 ]; then
    echo "verwalter.sh: must run as root (namespaces, packages)" >&2
    exit 1
fi
install_missing "${packages[@]}"

echo ">> building verwalter and cantal (release)" >&2
(cd "$repo" && cargo build --release -q -p verwalter -p cantal --bins)

rm -rf "$out"
mkdir -p "$out"
report="$out/report.md"

# pid of every daemon started here, by name (vw1, etcd2, ...), so cleanup ends exactly those.
declare -A pids
# What runs in our namespaces goes first: the `etcdctl watch` at the head of each sink
# pipeline is not in pids, and `wait` would wait for it forever.
cleanup() {
    set +e
    local ns pid namespaces
    namespaces=$(ip netns list | awk '{print $1}' | grep "^$prefix")
    for ns in $namespaces; do
        for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null; done
    done
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null; done
    wait 2>/dev/null
    for ns in $namespaces; do ip netns delete "$ns"; done
    ip link delete "${prefix}br" 2>/dev/null
}
trap cleanup EXIT
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
in_ns() { local ns=$1; shift; ip netns exec "$prefix$ns" "$@"; }
driver() { in_ns p python3 "$bench/driver.py" "$@"; }

echo ">> network: bridge ${prefix}br, hosts ${hosts[*]} and probe p" >&2
ip link add "${prefix}br" type bridge
ip link set "${prefix}br" up
for h in "${hosts[@]}" p; do
    addr=$([ "$h" = p ] && echo 250 || echo "$h")
    ip netns add "$prefix$h"
    ip link add "${prefix}v$h" type veth peer name "${prefix}i$h"
    ip link set "${prefix}i$h" netns "$prefix$h"
    ip link set "${prefix}v$h" master "${prefix}br" up
    in_ns "$h" ip addr add "$subnet.$addr/24" dev "${prefix}i$h"
    in_ns "$h" ip link set "${prefix}i$h" up
    in_ns "$h" ip link set lo up
done

# verwalter's config: role `bench` on every live host, its var `value` set by an action
# {"value": N}; the template writes `value=N` to the host's out/bench.conf.
write_config() {
    local dir=$1
    mkdir -p "$dir/config/scheduler/v1" "$dir/config/templates/bench/v1" "$dir/out"
    cat >"$dir/config/scheduler/v1/main.lua" <<'EOF'
local function scheduler(input)
  local value = 0
  for _, parent in ipairs(input.parents) do
    value = math.max(value, (parent.vars or {}).value or 0)
  end
  local ids = {}
  for id in pairs(input.actions) do ids[#ids + 1] = id end
  table.sort(ids)
  for _, id in ipairs(ids) do
    if math.type(input.actions[id].value) == "integer" then value = input.actions[id].value end
  end
  local nodes = {}
  for _, peer in pairs(input.peers) do
    if peer.state ~= "dead" then nodes[peer.hostname] = {roles = {bench = {}}} end
  end
  return {vars = {value = value}, roles = {bench = {template = "bench/v1"}}, nodes = nodes},
    "value " .. value
end
return {scheduler = scheduler}
EOF
    printf 'value={{value}}\n' >"$dir/config/templates/bench/v1/bench.conf.hbs"
    cat >"$dir/config/templates/bench/v1/bench.render.yaml" <<EOF
templates:
  conf: bench.conf.hbs
commands:
- !Copy {dest: "$dir/out/bench.conf"}
EOF
    printf '%s' "$token" >"$dir/token"
}

start_cantal() {
    local h=$1 dir="$out/n$1" join=""
    [ "$h" = 1 ] || join="--join $subnet.1:22682"
    # Not through in_ns: $! must be the daemon itself (ip, unshare and sh exec it).
    ip netns exec "$prefix$h" unshare --uts sh -c "hostname n$h && exec $release/cantal-agent \
        --host $subnet.$h --cluster-name vbench --override-machine-id $(printf '%032x' "$h") \
        --socket $dir/cantal.sock --storage-dir $dir/cantal-storage $join" \
        >/dev/null 2>>"$dir/cantal.log" &
    pids[cantal$h]=$!
}

start_verwalter() {
    local h=$1 dir="$out/n$1"
    ip netns exec "$prefix$h" "$vw_bin/verwalter" --config-dir "$dir/config" --storage-dir "$dir/storage" \
        --log-dir "$dir/log" --socket "$dir/run/control.sock" --api-token-file "$dir/token" \
        --host "$subnet.$h" --port 8379 --hostname "n$h" \
        --override-machine-id "$(printf '%032x' "$h")" --cantal-socket "$dir/cantal.sock" \
        --log-format text >/dev/null 2>>"$dir/verwalter.log" &
    pids[vw$h]=$!
}

etcd_cluster=$(for h in "${hosts[@]}"; do printf 'e%s=http://%s.%s:2380,' "$h" "$subnet" "$h"; done)
start_etcd() {
    local h=$1 dir="$out/n$1"
    ip netns exec "$prefix$h" etcd --name "e$h" --data-dir "$dir/etcd" \
        --listen-peer-urls "http://$subnet.$h:2380" \
        --initial-advertise-peer-urls "http://$subnet.$h:2380" \
        --listen-client-urls "http://$subnet.$h:2379" \
        --advertise-client-urls "http://$subnet.$h:2379" \
        --initial-cluster "${etcd_cluster%,}" --initial-cluster-state new \
        --initial-cluster-token vbench --log-level warn >/dev/null 2>>"$dir/etcd.log" &
    pids[etcd$h]=$!
}

urls() { # system, host numbers
    local system=$1 h port
    shift
    port=$([ "$system" = verwalter ] && echo 8379 || echo 2379)
    for h in "$@"; do printf 'http://%s.%s:%s ' "$subnet" "$h" "$port"; done
}

echo ">> starting cantal, verwalter and etcd on ${#hosts[@]} hosts" >&2
for h in "${hosts[@]}"; do
    write_config "$out/n$h"
    start_cantal "$h"
done
sleep 1
for h in "${hosts[@]}"; do
    start_verwalter "$h"
    start_etcd "$h"
done
# shellcheck disable=SC2046
driver leader verwalter $(urls verwalter "${hosts[@]}") >/dev/null
# shellcheck disable=SC2046
driver leader etcd $(urls etcd "${hosts[@]}") >/dev/null
sleep 2

# ---- O1 -------------------------------------------------------------------------------
: >"$out/o1.txt"
for trial in $(seq 1 "$o1_trials"); do
    for system in verwalter etcd; do
        daemon=$([ "$system" = verwalter ] && echo vw || echo etcd)
        # shellcheck disable=SC2046
        leader=$(driver leader "$system" $(urls "$system" "${hosts[@]}"))
        killed=${hosts[$leader]}
        survivors=()
        for h in "${hosts[@]}"; do [ "$h" = "$killed" ] || survivors+=("$h"); done
        load=$(loadavg)
        # shellcheck disable=SC2046
        result=$(driver failover "$system" "${pids[$daemon$killed]}" \
            $(urls "$system" "${survivors[@]}"))
        wait "${pids[$daemon$killed]}" 2>/dev/null || true
        echo "$system $trial ${result%% *} n$killed ${load%% *}" | tee -a "$out/o1.txt" >&2
        if [ "$system" = verwalter ]; then start_verwalter "$killed"; else start_etcd "$killed"; fi
        # shellcheck disable=SC2046
        driver leader "$system" $(urls "$system" "${hosts[@]}") >/dev/null
        sleep 1
    done
done

# ---- O2 -------------------------------------------------------------------------------
for h in "${hosts[@]}"; do
    in_ns "$h" sh -c "ETCDCTL_API=3 exec etcdctl --endpoints=http://$subnet.$h:2379 \
        watch bench/value" | python3 "$bench/driver.py" sink "$out/n$h/out/etcd.conf" &
    pids[sink$h]=$!
done
sleep 1
o2() { # system, file name in out/, samples file
    local system=$1 file=$2 samples=$3 leader files=()
    # shellcheck disable=SC2046
    leader=$(driver leader "$system" $(urls "$system" "${hosts[@]}"))
    for h in "${hosts[@]}"; do files+=("$out/n$h/out/$file"); done
    echo "load ${samples##*/}: $(loadavg)" >>"$out/o2-load.txt"
    driver propagate "$system" "$o2_changes" "$(urls "$system" "${hosts[$leader]}" | tr -d ' ')" \
        "${files[@]}" >"$samples"
}
# The samples of one build: o2-verwalter.rN.jsonl, or o2-verwalter-<dir name>.rN.jsonl in an A/B.
o2_key() { [ "${#builds[@]}" = 1 ] && echo verwalter || echo "verwalter-$(basename "$1")"; }
if [ "$o2_changes" -gt 0 ]; then
    echo ">> O2: $o2_changes changes each, $o2_rounds rounds, builds ${builds[*]}" >&2
    for round in $(seq 1 "$o2_rounds"); do
        for build in "${builds[@]}"; do
            if [ "$build" != "$vw_bin" ]; then
                vw_bin=$build
                for h in "${hosts[@]}"; do
                    kill "${pids[vw$h]}"
                    wait "${pids[vw$h]}" 2>/dev/null || true
                done
                for h in "${hosts[@]}"; do start_verwalter "$h"; done
                # shellcheck disable=SC2046
                driver leader verwalter $(urls verwalter "${hosts[@]}") >/dev/null
                sleep 2
            fi
            o2 verwalter bench.conf "$out/o2-$(o2_key "$build").r$round.jsonl"
        done
        o2 etcd etcd.conf "$out/o2-etcd.r$round.jsonl"
    done
fi

# ---- O3 -------------------------------------------------------------------------------
o3_load=
if [ "$o3_runs" -gt 0 ]; then
    echo ">> O3: run-scheduler, 1000 instances on 100 hosts" >&2
    python3 "$bench/gen-input.py" 100 20 50 >"$out/o3-input.json"
    o3_cmd="$release/verwalter run-scheduler --config-dir $bench/schedule-1k --input $out/o3-input.json --output $out/o3-schedule.json"
    $o3_cmd 2>"$out/o3-stderr.txt"
    o3_load=$(loadavg)
    hyperfine -N --warmup 5 --runs "$o3_runs" --export-json "$out/o3.json" "$o3_cmd" >&2
fi

# ---- report ---------------------------------------------------------------------------
python3 - "$out" "$o3_load" >"$report" <<'EOF'
import glob, json, os, re, sys
out, o3_load = sys.argv[1], sys.argv[2]

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]

o1 = {}
for line in open(f"{out}/o1.txt") if os.path.exists(f"{out}/o1.txt") else []:
    system, trial, ms, killed, load = line.split()
    o1.setdefault(system, []).append(float(ms))
if o1:
    print("### O1 failover (ms from SIGKILL of the leader to the first accepted write)\n")
    print("| System | Trials | p50 | p99 | min | max |")
    print("|---|---|---|---|---|---|")
    for system, values in o1.items():
        print(f"| {system} | {len(values)} | {pct(values, 50):.0f} | {pct(values, 99):.0f} "
              f"| {min(values):.0f} | {max(values):.0f} |")
    if "verwalter" in o1 and "etcd" in o1:
        print(f"\nRatio verwalter / etcd: p50 {pct(o1['verwalter'], 50) / pct(o1['etcd'], 50):.2f}, "
              f"p99 {pct(o1['verwalter'], 99) / pct(o1['etcd'], 99):.2f}")

# o2-<key>.r<round>.jsonl: per key (verwalter, verwalter-<build>, etcd), per round, samples.
runs = {}
for path in sorted(glob.glob(f"{out}/o2-*.r*.jsonl")):
    key, rnd = re.fullmatch(r"o2-(.+)\.r(\d+)\.jsonl", os.path.basename(path)).groups()
    runs.setdefault(key, {})[int(rnd)] = [json.loads(line) for line in open(path)]
last = {}  # key -> round -> ms until the last host's file showed each write
if runs:
    print("\n### O2 propagate (ms from the write to every host's file showing it)\n")
    print("| System | Changes | p50 (all hosts) | p99 (all hosts) | max | p50 first host | p50 write answered |")
    print("|---|---|---|---|---|---|---|")
for key in sorted(runs, key=lambda k: (k == "etcd", k)):
    rows = [row for rnd in sorted(runs[key]) for row in runs[key][rnd]]
    last[key] = {rnd: [max(r["nodes_ms"]) for r in rnd_rows] for rnd, rnd_rows in runs[key].items()}
    every = [max(r["nodes_ms"]) for r in rows]
    first = [min(r["nodes_ms"]) for r in rows]
    answered = [r["write"].get("ms", 0) for r in rows]
    print(f"| {key} | {len(rows)} | {pct(every, 50):.1f} | {pct(every, 99):.1f} | {max(every):.1f} "
          f"| {pct(first, 50):.1f} | {pct(answered, 50):.1f} |")
etcd = last.get("etcd", {})
for key in (k for k in last if k != "etcd" and etcd):
    every = [v for values in last[key].values() for v in values]
    every_etcd = [v for values in etcd.values() for v in values]
    per_round = ", ".join(
        f"r{rnd} {pct(last[key][rnd], 50):.1f}/{pct(etcd[rnd], 50):.1f} = "
        f"{pct(last[key][rnd], 50) / pct(etcd[rnd], 50):.2f}"
        for rnd in sorted(last[key]) if rnd in etcd)
    print(f"\nRatio {key} / etcd: p50 {pct(every, 50) / pct(every_etcd, 50):.2f}, "
          f"p99 {pct(every, 99) / pct(every_etcd, 99):.2f}; p50 per round: {per_round}")

if o3_load:
    print(f"\n### O3 schedule-1k (load {o3_load})\n")
    result = json.load(open(f"{out}/o3.json"))["results"][0]
    schedule = json.load(open(f"{out}/o3-schedule.json"))
    placed = schedule["vars"]["placed"]
    print("| Command | Runs | Mean (ms) | Median (ms) | Min (ms) | Max (ms) | Placements/s (median) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| run-scheduler | {len(result['times'])} | {result['mean'] * 1000:.1f} | "
          f"{result['median'] * 1000:.1f} | {result['min'] * 1000:.1f} | {result['max'] * 1000:.1f} "
          f"| {placed / result['median']:.0f} |")
    print(f"\n{placed} placed; the scheduler's own report: {open(f'{out}/o3-stderr.txt').read().splitlines()[-1]}")
EOF
{
    echo
    echo "Machine: $(uname -r), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "Packages: $(dpkg-query -W -f='${Package} ${Version}, ' etcd-server etcd-client hyperfine)"
    echo "verwalter at $(cd "$repo" && git rev-parse --short HEAD) plus the working tree, $(date -u '+%Y-%m-%d %H:%M UTC')"
    [ ! -e "$out/o2-load.txt" ] || echo "Load average during O2: $(tr '\n' ';' <"$out/o2-load.txt")"
} >>"$report"
cat "$report"

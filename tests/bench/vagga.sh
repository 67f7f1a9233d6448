#!/usr/bin/env bash
# vagga D1 and D2 (spec/vagga.md §6), ours and the peers side by side in one hyperfine
# invocation per variant:
#   D1 enter-true  `vagga t` (t runs /bin/true in a built busybox image) vs bwrap with a user
#                  namespace, and systemd-nspawn for reference; as root, then as an
#                  unprivileged user (`vaggabench`, created with subordinate ids if missing)
#   D2 noop-check  `vagga _build c` with nothing changed (200-line vagga.yaml, !Copy of a
#                  10,000-file tree in 100 dirs) vs `find TREE -newer vagga.yaml`; then the
#                  same with the stat cache removed before every run
#
# Usage (as root): bash tests/bench/vagga.sh
# Output: tests/bench/out/vagga/*.json (hyperfine) and tests/bench/out/vagga.md (machine,
#         load, commands, tables), also printed.
# Environment: WARMUP (default 20), RUNS (default 300), SKIP_USER=1 skips D1 as a user.
#
# Not part of CI: it needs root, installs packages and takes a few minutes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
repo=$(cd "$here/../.." && pwd)
out="$here/out/vagga"
report="$here/out/vagga.md"
warmup=${WARMUP:-20}
runs=${RUNS:-300}
bench_user=vaggabench

if [ "$(id -u)" -ne 0 ]; then
    echo "vagga.sh: must run as root (installs packages, creates the benchmark user)" >&2
    exit 1
fi
case "$repo" in
    *[[:space:]]*)
        # hyperfine -N splits each command on whitespace.
        echo "vagga.sh: the repository path must not contain whitespace" >&2
        exit 1
        ;;
esac

packages=(hyperfine bubblewrap systemd-container busybox-static strace findutils uidmap python3)
install_missing --no-install-recommends "${packages[@]}"

echo ">> building vagga (release)" >&2
(cd "$repo" && cargo build --release -q -p vagga)
vagga="$repo/target/release/vagga"

mkdir -p "$out"
rm -f "$out"/*.json "$out/load.txt"
bash "$repo/tests/fixtures/busybox-rootfs.sh" "$here/out/rootfs"
tarball="$out/busybox.tar.gz"
[ -f "$tarball" ] || tar -czf "$tarball" -C "$here/out/rootfs" .

load() { # LABEL: record the load average before a measurement
    echo "- $1: load average $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/load.txt"
}

# --- D1 project ------------------------------------------------------------------------------
d1="$out/d1"
mkdir -p "$d1"
cp "$tarball" "$d1/busybox.tar.gz"
cat > "$d1/vagga.yaml" <<'EOF'
containers:
  bb:
    setup:
    - !Tar {url: ./busybox.tar.gz}
commands:
  t: !Command {container: bb, run: [/bin/true]}
EOF
(cd "$d1" && "$vagga" _build bb >&2)
d1_root=$(cd "$d1" && readlink -f .vagga/bb)

d1_commands() { # VAGGA PROJECT ROOT: hyperfine's -n/command arguments
    local v=$1 project=$2 root=$3
    printf '%s\n' -n vagga "$v t" \
        -n bwrap "bwrap --unshare-user --unshare-pid --unshare-ipc --ro-bind $root / --proc /proc --dev /dev --bind $project /work /bin/true"
}

echo ">> D1 as root" >&2
load "D1 root"
mapfile -t args < <(d1_commands "$vagga" "$d1" "$d1_root")
# The reference peer only when it works on this machine (it needs systemd's /run layout).
nspawn="systemd-nspawn -q --register=no -D $d1_root /bin/true"
if nspawn_error=$($nspawn 2>&1); then
    args+=(-n systemd-nspawn "$nspawn")
    nspawn_note="measured"
else
    nspawn_note="not measured: \`$nspawn\` fails here: $(echo "$nspawn_error" | tr '\n' ' ')"
fi
(cd "$d1" && hyperfine -N --warmup "$warmup" --runs "$runs" --export-json "$out/d1-root.json" \
    "${args[@]}" >&2)

# --- D1 as an unprivileged user --------------------------------------------------------------
user_note=""
if [ "${SKIP_USER:-}" = 1 ]; then
    user_note="skipped (SKIP_USER=1)"
else
    if ! id "$bench_user" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/sh "$bench_user"
    fi
    grep -q "^$bench_user:" /etc/subuid || echo "$bench_user:300000:65536" >> /etc/subuid
    grep -q "^$bench_user:" /etc/subgid || echo "$bench_user:300000:65536" >> /etc/subgid
    home=$(getent passwd "$bench_user" | cut -d: -f6)
    d1u="$home/vagga-d1"
    rm -rf "$d1u"
    mkdir -p "$d1u"
    cp "$d1/vagga.yaml" "$d1/busybox.tar.gz" "$d1u/"
    # The binary must be reachable by the user: /work/main may not be.
    install -m 0755 "$vagga" "$home/vagga"
    chown -R "$bench_user:" "$d1u" "$home/vagga"
    as_user() { runuser -u "$bench_user" -- env -C "$d1u" HOME="$home" "$@"; }
    if as_user "$home/vagga" _build bb >&2; then
        d1u_root=$(readlink -f "$d1u/.vagga/bb")
        echo ">> D1 as $bench_user" >&2
        load "D1 user"
        mapfile -t args < <(d1_commands "$home/vagga" "$d1u" "$d1u_root")
        as_user hyperfine -N --warmup "$warmup" --runs "$runs" --export-json "$home/d1-user.json" \
            "${args[@]}" >&2
        cp "$home/d1-user.json" "$out/d1-user.json"
    else
        user_note="not measured: \`vagga _build bb\` failed as $bench_user (see the output above)"
    fi
fi

# --- D2 project: 200-line vagga.yaml, 10,000 files in 100 dirs -------------------------------
d2="$out/d2"
if [ ! -f "$d2/tree/d99/f99" ]; then
    rm -rf "$d2"
    mkdir -p "$d2/tree"
    for d in $(seq 0 99); do
        mkdir "$d2/tree/d$d"
        for f in $(seq 0 99); do
            echo "$d/$f" > "$d2/tree/d$d/f$f"
        done
    done
fi
cp "$tarball" "$d2/busybox.tar.gz"
{
    printf 'containers:\n  c:\n    setup:\n    - !Tar {url: ./busybox.tar.gz}\n'
    printf '    - !Copy {source: /work/tree, path: /tree}\n'
    printf 'commands:\n'
    # 64 commands of 3 lines each: 6 + 192 = 198 lines, plus the final two below.
    for i in $(seq 1 64); do
        printf '  cmd%02d: !Command\n    container: c\n    run: [echo, "%d"]\n' "$i" "$i"
    done
    printf '  last: !Command\n    {container: c, run: [/bin/true]}\n'
} > "$d2/vagga.yaml"
(cd "$d2" && "$vagga" _build c >&2 && "$vagga" _build c >&2)
lines=$(wc -l < "$d2/vagga.yaml")
files=$(find "$d2/tree" -type f | wc -l)

echo ">> D2 no-op check" >&2
load "D2"
(cd "$d2" && hyperfine -N --warmup "$warmup" --runs "$runs" --export-json "$out/d2.json" \
    -n "vagga _build c" "$vagga _build c" \
    -n "find -newer" "find tree -newer vagga.yaml" >&2)
echo ">> D2 without the stat cache" >&2
load "D2 no stat cache"
(cd "$d2" && hyperfine -N --warmup "$warmup" --runs "$runs" --export-json "$out/d2-nocache.json" \
    --prepare 'rm -rf .vagga/.statcache' \
    -n "vagga _build c (no stat cache)" "$vagga _build c" \
    -n "find -newer" "find tree -newer vagga.yaml" >&2)

# --- Report ----------------------------------------------------------------------------------
{
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- kernel: $(uname -r); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
    echo "- commit: $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet -- crates/vagga crates/isolation || echo ' (crates/vagga or crates/isolation modified)'); $(rustc --version); release build"
    echo "- D2 input: $lines-line vagga.yaml, $files files in $(find "$d2/tree" -mindepth 1 -type d | wc -l) dirs"
    echo "- D1 as $bench_user: ${user_note:-measured}"
    echo "- D1 systemd-nspawn: $nspawn_note"
    echo "- load before each measurement (the machine is shared with other builds):"
    echo
    sed 's/^/  /' "$out/load.txt"
    echo
    echo "- packages:"
    echo
    echo '```'
    dpkg-query -W hyperfine bubblewrap systemd-container busybox-static findutils
    echo '```'
    echo
    python3 - "$out" "$warmup" "$runs" <<'EOF'
import json, os, statistics, sys

out, warmup, runs = sys.argv[1:4]
tables = [
    ("d1-root.json", "D1 enter-true as root", "bwrap"),
    ("d1-user.json", "D1 enter-true as an unprivileged user", "bwrap"),
    ("d2.json", "D2 noop-check", "find -newer"),
    ("d2-nocache.json", "D2 noop-check, stat cache removed before each run", "find -newer"),
]
for name, title, peer in tables:
    path = os.path.join(out, name)
    if not os.path.exists(path):
        continue
    results = json.load(open(path))["results"]
    rows = {}
    for r in results:
        times = sorted(r["times"])
        p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
        rows[r["command"]] = (statistics.median(times), p99, r["mean"], r)
    base = rows[peer][0]
    print(f"#### {title}: `hyperfine -N --warmup {warmup} --runs {runs} --export-json {name}`\n")
    print(f"| command | median ms | p99 ms | mean ms | median / {peer} |")
    print("|---|---:|---:|---:|---:|")
    for cmd, (median, p99, mean, _) in rows.items():
        print(f"| {cmd} | {median*1e3:.3f} | {p99*1e3:.3f} | {mean*1e3:.3f} | {median/base:.2f} |")
    print()
EOF
} > "$report"
{
    echo "Commands (hyperfine -N, from the project directory; \$OUT is tests/bench/out/vagga):"
    echo
    mapfile -t args < <(d1_commands "$vagga" "$d1" "$d1_root")
    echo "- D1 root: \`${args[2]}\`; \`${args[5]}\`; \`$nspawn\`"
    echo "- D1 user: the same with the user's copy of the binary and project under ~$bench_user"
    echo "- D2: \`$vagga _build c\`; \`find tree -newer vagga.yaml\`; the no-cache run adds \`--prepare 'rm -rf .vagga/.statcache'\`"
} | sed "s|$out|\$OUT|g" >> "$report"
cat "$report"

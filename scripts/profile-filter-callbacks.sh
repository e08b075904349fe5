#!/usr/bin/env bash
# Where a warm invoke's time inside the Wasm VM goes: builds the filter with `callback-profile`
# (it counts the nanoseconds spent in each kind of call from Envoy, and in the parts of them marked
# `span!` in the filter, as Envoy stats), runs the bench's warm-latency scenario, prints the split
# per request from the scenario's JSON (the spans after the calls, indented, and not added to the
# total), and builds the normal filter again, also on failure. Each timed entry or span adds four
# calls out of the VM (two clock reads, two counter bumps), of which about 0.3 µs falls inside its
# own figure; compare the entries with one another, not the profile build's latency with a normal
# run's.
#
#   scripts/profile-filter-callbacks.sh [requests per measurement, default 2000]
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-2000}
cargo=${CARGO:-cargo}
trap '$cargo build --quiet -p whisk-filter --target wasm32-wasip1 --release' EXIT
$cargo build --quiet --release -p management-api -p xds-server -p action-runtime -p e2e
$cargo build --quiet -p whisk-filter --target wasm32-wasip1 --release --features callback-profile
target/release/whisk-bench --scenario warm-latency --requests "$requests" | tail -n 3
tail -n 1 target/bench/results.jsonl | python3 -c "$(cat <<'PY'
import json, sys
figure = json.load(sys.stdin)
profile = figure.get("filter_profile_per_request")
if not profile:
    sys.exit("no profile in the result: was the filter built with callback-profile?")
total = profile.pop("total_us")
print("%-30s %11s %14s" % ("call from Envoy", "us/request", "calls/request"))
for entry, spent in sorted(profile.items(), key=lambda item: (item[0].startswith("span_"), -item[1]["us"])):
    name = "  " + entry[len("span_"):] if entry.startswith("span_") else entry
    print("%-30s %11.1f %14.2f" % (name, spent["us"], spent["calls"]))
print("%-30s %11.1f" % ("total (calls from Envoy)", total))
PY
)"

#!/usr/bin/env bash
# Where a warm invoke's time inside the Wasm VM goes: builds the filter with `callback-profile`
# (it counts the nanoseconds spent in each kind of call from Envoy as Envoy stats), runs the bench's
# warm-latency scenario, prints the split per request from the scenario's JSON, and builds the
# normal filter again, also on failure. The profile build itself adds four calls out of the VM per
# callback (two clock reads and two counter bumps, one read inside the timed span), about 4 µs each
# on the bench machine, so compare its entries with one another, not its latency with a normal run.
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
print("%-20s %11s %14s" % ("call from Envoy", "us/request", "calls/request"))
for entry, spent in sorted(profile.items(), key=lambda item: -item[1]["us"]):
    print("%-20s %11.1f %14.2f" % (entry, spent["us"], spent["calls"]))
print("%-20s %11.1f" % ("total", total))
PY
)"

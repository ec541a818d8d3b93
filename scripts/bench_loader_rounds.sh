#!/usr/bin/env bash
# Interleaved rounds of the loader benchmark, ours then torchvision's, on the
# same files (the machine is shared: compare within a round). Usage:
#   python3 scripts/gen_bench_jpegs.py && cargo build --release --example imagenet_throughput
#   bash scripts/bench_loader_rounds.sh [ROUNDS] [ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
root=${2:-/tmp/qat-bench-imagefolder}
for r in $(seq 1 "$rounds"); do
    echo "== round $r, $(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "-- qat"
    ./target/release/examples/imagenet_throughput "$root" 3
    echo "-- torchvision"
    python3 -W ignore scripts/bench_torchvision_loader.py "$root" 3
done

#!/usr/bin/env bash
# Runs every emulated CUDA kernel under ThreadSanitizer (docs/EMULATOR.md):
# the emulator runs each CUDA thread on a host thread, so a missing
# __syncthreads() or __syncwarp() is a data race between host threads that
# TSan reports.
#
#   scripts/tsan_kernels.sh            build (target/tsan) and run the checks
#
# The kernels and the emulator (kernels/*.cu, kernels/emu/) are instrumented;
# the Rust code around them is not (sanitizers need nightly Rust), so TSan
# also reports races it cannot see the synchronization of inside Rust code
# (rayon, the test harness). Those reports have a Rust-only access and are
# counted, not failed on; a report whose two accesses both run kernel or
# emulator code (kernels/) fails the check.
# Needs g++ with libtsan (Debian: libtsan2, which g++ already depends on).
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-target}/tsan
tests=(cuda_parity cuda_tf32)
echo "tsan_kernels: building ${tests[*]} with QAT_EMU_SANITIZE=thread in $target"
build_args=()
for t in "${tests[@]}"; do build_args+=(--test "$t"); done
QAT_EMU_SANITIZE=thread CARGO_TARGET_DIR=$target cargo build --release "${build_args[@]}" \
    --message-format=json-render-diagnostics >"$target.build.json"
mapfile -t bins < <(python3 - "$target.build.json" "${tests[@]}" <<'PY'
import json, sys
want = set(sys.argv[2:])
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in want:
        print(m["executable"])
PY
)
rm -f "$target.build.json"
[ ${#bins[@]} = ${#tests[@]} ] || { echo "tsan_kernels: expected ${#tests[@]} test binaries, got ${#bins[@]}" >&2; exit 1; }

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
for b in "${bins[@]}"; do
    echo "tsan_kernels: $(basename "$b")"
    # One test at a time: the emulator serializes launches anyway, and TSan's
    # shadow memory grows with every thread.
    TSAN_OPTIONS="halt_on_error=0 exitcode=0 history_size=4" QAT_PARITY_DEVICES="" \
        "$b" --test-threads=1 >"$log" 2>&1 || { cat "$log"; echo "tsan_kernels: tests failed" >&2; exit 1; }
    grep -E "^test result" "$log" || true
    python3 - "$log" <<'PY' || status=1
import re, sys
text = open(sys.argv[1], errors="replace").read()
reports = [r for r in text.split("==================") if "WARNING: ThreadSanitizer" in r]

def access_stacks(report):
    """The two racing accesses' stacks (not where threads or memory came from)."""
    stacks, cur = [], None
    for line in report.splitlines():
        if re.match(r"  (Previous )?(atomic )?(Read|Write|read|write)", line):
            cur = []
            stacks.append(cur)
        elif not line.strip() or re.match(r"  \S", line):
            cur = None
        elif cur is not None:
            cur.append(line)
    return ["\n".join(s) for s in stacks]

# Both accesses in kernel or emulator code: host threads running CUDA
# threads. An uninstrumented Rust access on either side (stack memory a
# launch used, later reused by Rust code) is outside what this checks.
in_kernels = lambda s: re.search(r"/kernels/[\w/]+\.(cu|cuh|h):\d+", s)
kernel = [r for r in reports if (lambda st: len(st) == 2 and all(map(in_kernels, st)))(access_stacks(r))]
print(f"  ThreadSanitizer reports: {len(kernel)} in kernel code, {len(reports) - len(kernel)} "
      "in uninstrumented Rust code only (not checked)")
for r in kernel[:5]:
    print(r)
sys.exit(1 if kernel else 0)
PY
done
if [ $status = 0 ]; then
    echo "tsan_kernels: PASS (no data race in kernel code)"
else
    echo "tsan_kernels: FAIL (data races in kernel code, above)" >&2
fi
exit $status

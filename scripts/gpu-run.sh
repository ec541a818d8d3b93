#!/usr/bin/env bash
# Runs the staged GPU check (see scripts/gpu-check.sh); copied to gpu-stage/run.sh.
# Needs the NVIDIA driver and CUDA 13 libraries (libnvrtc, libcublas for the
# reference column); no cargo. Every step runs under `timeout -k` and the
# step limits add up to 6 minutes. Writes each step's log and report.md
# (summary table, per-test GPU results, benchmark table) to $OUT when set,
# else to this folder; prints the report too. Exit status 0 only when every
# step passed.
set -uo pipefail
cd "$(dirname "$0")"
out=${OUT:-$PWD}
mkdir -p "$out"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13.0/lib64; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
for d in /usr/local/cuda/bin /usr/local/cuda-13.0/bin; do
    [ -d "$d" ] && export PATH="$d:$PATH"
done
export QAT_REQUIRE_GPU=1
export QAT_KERNEL_CACHE="$PWD/kernel-cache"
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "(nvidia-smi not available)")
echo "$gpu"
echo "commit: $(cat COMMIT 2>/dev/null || echo unknown)"

declare -a names results times
step() { # step NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2; shift 2
    echo; echo "=== $name"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$out/log-$name.txt"
    local rc=${PIPESTATUS[0]}
    names+=("$name"); times+=("$((SECONDS - t0))")
    if [ "$rc" = 0 ]; then results+=("PASS"); else results+=("FAIL (exit $rc)"); fi
}

# The emulator ran every test in CI already: here the GPU only.
step nvrtc_compile 60 bin/nvrtc_compile --nocapture
step parity_gpu 75 env QAT_PARITY_DEVICES=gpu bin/cuda_parity --nocapture --test-threads=4
step training_gpu 45 env QAT_PARITY_DEVICES=gpu bin/cuda_training --nocapture
step tf32_gpu 45 env QAT_PARITY_DEVICES=gpu bin/cuda_tf32 --nocapture
if command -v compute-sanitizer >/dev/null; then
    # Out-of-bounds and misaligned accesses, on the kernels the parity tests
    # launch (the GEMM and convolution parity on GPU-sized shapes).
    step memcheck_gpu 60 env QAT_PARITY_DEVICES=gpu compute-sanitizer --tool memcheck --error-exitcode 1 \
        bin/cuda_parity --test-threads=1 conv2d gemm batchnorm
else
    echo "(compute-sanitizer not found: no memcheck step)"
fi
step bench 75 env QAT_BENCH_QUICK=${QAT_BENCH_QUICK:-1} bin/cuda_kernels

{
    echo "# GPU check"
    echo
    echo "- GPU: $gpu"
    echo "- commit: $(cat COMMIT 2>/dev/null || echo unknown)"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "| step | result | seconds |"
    echo "|---|---|--:|"
    for i in "${!names[@]}"; do
        echo "| ${names[$i]} | ${results[$i]} | ${times[$i]} |"
    done
    echo
    echo "## Tests on the GPU"
    echo
    grep -h "^test .* \(ok\|FAILED\)$" "$out"/log-parity_gpu.txt "$out"/log-tf32_gpu.txt \
        "$out"/log-training_gpu.txt 2>/dev/null | sed 's/^/- /'
    echo
    echo "## Benchmarks"
    echo
    grep -h "^|" "$out/log-bench.txt" 2>/dev/null
} >"$out/report.md"
echo
echo "================ GPU check report ($out/report.md) ================"
cat "$out/report.md"
fail=0
for r in "${results[@]}"; do [ "$r" = PASS ] || fail=1; done
exit $fail

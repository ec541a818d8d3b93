#!/usr/bin/env bash
# Runs the staged GPU check (see scripts/gpu-check.sh); copied to gpu-stage/run.sh.
# Needs the NVIDIA driver and CUDA 13 libraries (libnvrtc, libcublas for the
# reference column); no cargo. Prints one summary table; exit status 0 only
# when every step passed.
set -uo pipefail
cd "$(dirname "$0")"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13.0/lib64; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export QAT_REQUIRE_GPU=1
export QAT_KERNEL_CACHE="$PWD/kernel-cache"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "(nvidia-smi not available)"
echo "commit: $(cat COMMIT 2>/dev/null || echo unknown)"

declare -a names results times
step() { # step NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2; shift 2
    echo; echo "=== $name"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "log-$name.txt"
    local rc=${PIPESTATUS[0]}
    names+=("$name"); times+=("$((SECONDS - t0))")
    if [ "$rc" = 0 ]; then results+=("PASS"); else results+=("FAIL (exit $rc)"); fi
}

# Parity on the GPU first (the emulator ran in CI already), then everything.
step nvrtc_compile 90 bin/nvrtc_compile --nocapture
step parity_gpu 100 env QAT_PARITY_DEVICES=gpu bin/cuda_parity --nocapture --test-threads=4
step training_gpu 60 env QAT_PARITY_DEVICES=gpu bin/cuda_training --nocapture
step tf32_gpu 60 env QAT_PARITY_DEVICES=gpu bin/cuda_tf32 --nocapture
step parity_all 100 bin/cuda_parity --test-threads=4
step bench 130 env QAT_BENCH_QUICK=${QAT_BENCH_QUICK:-0} bin/cuda_kernels

echo
echo "================ GPU check summary ================"
printf "%-16s %-16s %8s\n" step result seconds
fail=0
for i in "${!names[@]}"; do
    printf "%-16s %-16s %8s\n" "${names[$i]}" "${results[$i]}" "${times[$i]}"
    [ "${results[$i]}" = PASS ] || fail=1
done
grep -h "^test .* \(ok\|FAILED\)$" log-parity_gpu.txt log-tf32_gpu.txt 2>/dev/null | sed 's/^/  gpu: /'
echo
grep -h "^|" log-bench.txt 2>/dev/null
exit $fail

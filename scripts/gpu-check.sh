#!/usr/bin/env bash
# The GPU check, in two steps (docs/GPU_CHECK.md):
#
#   scripts/gpu-check.sh          on a machine with cargo: builds the CUDA parity
#                                 and training tests, the TF32 tensor-core
#                                 tests, the NVRTC check and the
#                                 kernel benchmarks
#                                 in release and stages them, with the kernels,
#                                 in gpu-stage/ (ignored by git, ~20 MB);
#   bash gpu-stage/run.sh         on the GPU machine (CUDA 13 driver + toolkit,
#                                 no cargo): runs them on the GPU and prints one
#                                 summary table. Exit status 0 only if all passed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "run" ]; then exec bash gpu-stage/run.sh; fi

stage=gpu-stage
rm -rf "$stage"
mkdir -p "$stage/bin"
echo "building release test and bench binaries (static libstdc++)..."
QAT_STATIC_CXX=1 cargo build --release --test cuda_parity --test cuda_training --test cuda_tf32 --test nvrtc_compile --bench cuda_kernels \
    --message-format=json-render-diagnostics >"$stage/build.json"
python3 - "$stage" <<'PY'
import json, os, shutil, subprocess, sys
stage = sys.argv[1]
for line in open(os.path.join(stage, "build.json")):
    msg = json.loads(line)
    exe = msg.get("executable") if msg.get("reason") == "compiler-artifact" else None
    name = msg.get("target", {}).get("name") if exe else None
    if name in ("cuda_parity", "cuda_training", "cuda_tf32", "nvrtc_compile", "cuda_kernels"):
        dst = os.path.join(stage, "bin", name)
        shutil.copy(exe, dst)
        subprocess.run(["strip", "--strip-debug", dst], check=True)
        print(f"staged {name} ({os.path.getsize(dst) // 1024} KiB)")
PY
rm "$stage/build.json"
for b in cuda_parity cuda_training cuda_tf32 nvrtc_compile cuda_kernels; do
    [ -x "$stage/bin/$b" ] || { echo "missing $b" >&2; exit 1; }
done
cp -r kernels "$stage/kernels"
cp scripts/gpu-run.sh "$stage/run.sh"
git rev-parse --short HEAD >"$stage/COMMIT" 2>/dev/null || true
du -sh "$stage"
echo "staged in $stage/. On the GPU machine: bash $stage/run.sh"

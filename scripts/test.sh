#!/usr/bin/env bash
# The test command (README.md, "Run the tests"; .ci/run runs it too): installs
# what the tests need, runs every test target, and ends with the list of
# checks that were skipped.
#
#   scripts/test.sh [cargo test arguments...]
#
# Installs, each only when missing (a rerun installs nothing):
#   - with apt-get (sudo when not root): dataset-fashion-mnist (the training
#     smoke tests) and fonts-dejavu-core (text in the plots); python3,
#     python3-venv and python3-pip when python3 cannot make a virtual
#     environment; libtsan2 when g++ has no ThreadSanitizer runtime;
#   - a virtual environment in target/test-venv with numpy, onnx, onnxruntime
#     (the ONNX Runtime referee, scripts/ort_check.py) and
#     nvidia-cuda-nvrtc 13.0 (NVRTC compiles every CUDA kernel without a GPU);
#     QAT_PYTHON points the tests at it.
# QAT_TEST_NO_INSTALL=1 installs nothing (checks whose tools are missing are
# then skipped, or fail under CI=true).
#
# Then `cargo test --release --no-fail-fast` with the arguments given and,
# without arguments, scripts/tsan_kernels.sh (the emulated kernels under
# ThreadSanitizer, built in target/tsan). A check
# that cannot run records itself in target/test-report/skipped.txt
# (tests/common/skip.rs); the last lines printed are `N checks skipped:` and
# each of them. Under CI=true only the checks on a real GPU may skip; any
# other fails its test. The exit status is cargo's, or 1 when the
# ThreadSanitizer check found a race.
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p "${CARGO_TARGET_DIR:-target}"
target=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)
venv=$target/test-venv
report=$target/test-report
# The PyPI packages; NVRTC pinned to the CUDA 13.0 of the GPU machines' driver.
requirements=("nvidia-cuda-nvrtc==13.0.*" numpy onnx onnxruntime)

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "scripts/test.sh: needs root (or sudo) for: $*" >&2
        return 1
    fi
}

# apt_install PACKAGE...: installs those not installed yet.
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} = 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        echo "scripts/test.sh: no apt-get on this machine; install ${missing[*]} by hand" >&2
        return 0
    fi
    echo "scripts/test.sh: apt-get install ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

# Whether the virtual environment has every package, at the pinned versions.
venv_ready() {
    [ -x "$venv/bin/python" ] &&
        [ "$(cat "$venv/qat-requirements" 2>/dev/null)" = "${requirements[*]}" ] &&
        "$venv/bin/python" - >/dev/null 2>&1 <<'PY'
import os, sys
import numpy, onnx, onnxruntime, nvidia
sys.exit(not any(os.path.exists(os.path.join(p, "cu13", "lib", "libnvrtc.so.13"))
                 for p in nvidia.__path__))
PY
}

if [ "${QAT_TEST_NO_INSTALL:-0}" != 1 ]; then
    # fonts-dejavu-core: text in the metrics plots (drawn without text when no
    # font is found, so only the plots' labels depend on it).
    apt_install dataset-fashion-mnist fonts-dejavu-core
    # ThreadSanitizer's runtime for scripts/tsan_kernels.sh (a dependency of
    # g++ on Debian already; installed here where it is missing).
    case "$(g++ -print-file-name=libtsan.so 2>/dev/null)" in
        /*) ;;
        *) apt_install libtsan2 ;;
    esac
    if ! venv_ready; then
        if ! command -v python3 >/dev/null || ! python3 -c "import venv, ensurepip" 2>/dev/null; then
            apt_install python3 python3-venv python3-pip
        fi
        # A broken environment (its base Python moved or was removed) is made anew.
        if ! "$venv/bin/python" -c "" 2>/dev/null; then
            rm -rf "$venv"
            echo "scripts/test.sh: creating the virtual environment $venv"
            python3 -m venv "$venv"
        fi
        echo "scripts/test.sh: pip install ${requirements[*]} (into $venv)"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "${requirements[@]}"
        echo "${requirements[*]}" >"$venv/qat-requirements"
        venv_ready || {
            echo "scripts/test.sh: $venv still lacks numpy, onnx, onnxruntime or libnvrtc.so.13" >&2
            exit 1
        }
    fi
fi
if [ -x "$venv/bin/python" ]; then
    export QAT_PYTHON=$venv/bin/python
fi

mkdir -p "$report"
# Buffers the CPU backend hands out for outputs (recycled, old contents) are
# NaN-filled in the tests, so an op that leaves part of its output unwritten
# fails them instead of reading a previous tensor's values.
export QAT_POISON_EMPTY=1
export QAT_SKIP_LOG=$report/skipped.txt QAT_ORT_REPORT=$report/onnx_ort.txt
rm -f "$QAT_SKIP_LOG" "$QAT_ORT_REPORT"

rc=0
cargo test --release --no-fail-fast "$@" || rc=$?
# A full run also runs the emulated kernels under ThreadSanitizer: a missing
# barrier is a data race there even when the results come out right.
if [ $# = 0 ]; then
    echo
    scripts/tsan_kernels.sh || rc=1
fi

if [ -s "$QAT_ORT_REPORT" ]; then
    echo
    echo "ONNX Runtime referee (tests/onnx_ort.rs, scripts/ort_check.py):"
    cat "$QAT_ORT_REPORT"
fi
echo
if [ -s "$QAT_SKIP_LOG" ]; then
    # One line per check (the GPU ones are recorded once per test binary).
    skipped=$(awk '!seen[$0]++' "$QAT_SKIP_LOG")
    echo "$(printf '%s\n' "$skipped" | wc -l) checks skipped:"
    printf '%s\n' "$skipped" | sed 's/^/  /'
else
    echo "0 checks skipped"
fi
exit "$rc"

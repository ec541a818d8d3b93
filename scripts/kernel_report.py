#!/usr/bin/env python3
"""Writes docs/KERNELS.md: registers, shared memory and spills of every kernel,
and the instruction mix of the matrix-product kernels' main loops (SASS).

The PTX comes from NVRTC exactly as the runtime compiles it (the nvrtc_compile
test dumps it with QAT_DUMP_PTX); `ptxas -v` assembles it for sm_80 and sm_90.
Needs libnvrtc and ptxas from the CUDA 13 pip wheels:
  pip install "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-nvcc==13.0.*"
and, for the SASS section, cuobjdump (the 13.0 wheel is not published; 13.2
reads sm_90 cubins from ptxas 13.0):
  pip install "nvidia-cuda-cuobjdump==13.2.*" "nvidia-cuda-nvdisasm==13.2.*"
Usage: python3 scripts/kernel_report.py [--ptxas PATH]
"""
import argparse, glob, os, re, shutil, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ["sm_80", "sm_90"]
# Kernels whose main loop is a matrix product (kernels/tile_gemm.cuh).
MAIN_LOOP = re.compile(r"^(gemm_fwd|conv2d_fwd|conv2d_bwd_data|conv2d_bwd_weight)_(f32|tf32)$")


def sass_functions(cuobjdump, cubin):
    """{kernel: [(address, opcode, text)]} from `cuobjdump -sass`."""
    env = dict(os.environ)
    # cuobjdump runs nvdisasm, which its wheel puts beside it.
    env["PATH"] = os.path.dirname(cuobjdump) + ":" + env.get("PATH", "")
    r = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True, env=env)
    out, cur = {}, None
    for line in r.stdout.splitlines():
        m = re.match(r"\s*Function : (\w+)", line)
        if m:
            cur = out.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*);", line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return out


def main_loop_mix(ins):
    """The backward branch whose body holds the most FFMA + HMMA: its length
    and the share of FFMA, HMMA, shared loads and integer multiply-adds."""
    best = None
    for addr, op, rest in ins:
        m = re.search(r"`?\(?\.?L?_?x?_?(0x[0-9a-f]+)\)?", rest) if op.startswith("BRA") else None
        if not m:
            continue
        target = int(m.group(1), 16)
        if target >= addr:
            continue
        body = [o for a, o, _ in ins if target <= a <= addr]
        math = sum(o.startswith(("FFMA", "HMMA")) for o in body)
        if best is None or math > best[0]:
            best = (math, body)
    if best is None:
        return None
    body = best[1]
    n = len(body)
    share = lambda *p: 100.0 * sum(o.startswith(p) for o in body) / n
    return n, share("FFMA"), share("HMMA"), share("LDS"), share("IMAD", "IADD", "LEA", "SHF", "LOP")


def wheel_dir():
    try:
        import nvidia  # namespace package of the CUDA wheels
        for p in nvidia.__path__:
            if os.path.isdir(os.path.join(p, "cu13")):
                return os.path.join(p, "cu13")
    except ImportError:
        pass
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ptxas", default=None)
    ap.add_argument("--cuobjdump", default=None)
    args = ap.parse_args()
    cu13 = wheel_dir()
    ptxas = args.ptxas or shutil.which("ptxas") or (cu13 and os.path.join(cu13, "bin", "ptxas"))
    if not ptxas or not os.path.exists(ptxas):
        sys.exit("ptxas not found: pip install 'nvidia-cuda-nvcc==13.0.*' or pass --ptxas")
    env = dict(os.environ)
    if cu13:
        env["LD_LIBRARY_PATH"] = os.path.join(cu13, "lib") + ":" + env.get("LD_LIBRARY_PATH", "")
    out = tempfile.mkdtemp(prefix="qat-ptx-")
    env["QAT_DUMP_PTX"] = out
    subprocess.run(["cargo", "test", "--test", "nvrtc_compile", "--", "--nocapture"], cwd=ROOT, env=env, check=True)
    ver = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]

    cuobjdump = args.cuobjdump or shutil.which("cuobjdump") or (cu13 and os.path.join(cu13, "bin", "cuobjdump"))
    if cuobjdump and not os.path.exists(cuobjdump):
        cuobjdump = None
    mixes = {}  # kernel -> main_loop_mix on sm_90
    notes = set()
    stats = {}  # (kernel, arch) -> (regs, smem, spill_st, spill_ld, stack)
    files = {}
    for ptx in sorted(glob.glob(os.path.join(out, "*.ptx"))):
        stem, arch = os.path.basename(ptx)[:-4].rsplit("-", 1)
        r = subprocess.run([ptxas, "-v", f"-arch={arch}", ptx, "-o", os.devnull], capture_output=True, text=True)
        m = re.search(r"Unsupported \.version (\S+); current version is '(\S+)'", r.stderr)
        if m:
            # NVRTC may be newer than ptxas (e.g. NVRTC 13.2 writes PTX ISA 9.2,
            # ptxas 13.0 reads up to 9.0). Lower the version line; ptxas still
            # rejects any instruction its ISA version lacks.
            text = open(ptx).read().replace(f".version {m.group(1)}", f".version {m.group(2)}", 1)
            open(ptx, "w").write(text)
            notes.add(f"PTX ISA {m.group(1)} from NVRTC was relabelled {m.group(2)} for this ptxas.")
            r = subprocess.run([ptxas, "-v", f"-arch={arch}", ptx, "-o", os.devnull], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"ptxas failed on {ptx}:\n{r.stderr}")
        if cuobjdump and arch == "sm_90":
            cubin = ptx[:-4] + ".cubin"
            subprocess.run([ptxas, f"-arch={arch}", ptx, "-o", cubin], check=True)
            for k, ins in sass_functions(cuobjdump, cubin).items():
                if MAIN_LOOP.match(k):
                    mixes[k] = main_loop_mix(ins)
        cur = None
        for line in r.stderr.splitlines():
            m = re.search(r"Compiling entry function '(\w+)'", line)
            if m:
                cur = m.group(1)
                files[cur] = stem + ".cu"
                stats[(cur, arch)] = [0, 0, 0, 0, 0]
                continue
            if cur is None:
                continue
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m:
                s = stats[(cur, arch)]
                s[4], s[2], s[3] = int(m.group(1)), int(m.group(2)), int(m.group(3))
            m = re.search(r"Used (\d+) registers", line)
            if m:
                stats[(cur, arch)][0] = int(m.group(1))
                sm = re.search(r"(\d+) bytes smem", line)
                stats[(cur, arch)][1] = int(sm.group(1)) if sm else 0

    lines = [
        "# Kernels",
        "",
        "Generated by `scripts/kernel_report.py` (do not edit): each kernel of `kernels/*.cu`,",
        "compiled by NVRTC as at run time, then `ptxas -v` for each architecture.",
        f"ptxas: {ver}.",
        *sorted(notes),
        "",
        "Columns per architecture: registers per thread, static shared memory (bytes),",
        "spill stores/loads (bytes). Spills should be 0.",
        "",
        "| kernel | file | " + " | ".join(f"{a} regs | {a} smem | {a} spills" for a in ARCHS) + " |",
        "|---|---|" + "---:|---:|---:|" * len(ARCHS),
    ]
    for k in sorted(files, key=lambda k: (files[k], k)):
        cells = []
        for a in ARCHS:
            r, sm, st, ld, _ = stats.get((k, a), [None] * 5)
            cells += [str(r), str(sm), f"{st}/{ld}"]
        lines.append(f"| `{k}` | {files[k]} | " + " | ".join(cells) + " |")
    spills = [k for (k, a), s in stats.items() if s[2] or s[3]]
    lines += ["", f"Kernels with spills: {', '.join(sorted(set(spills))) or 'none'}.", ""]
    lines += ["## Main loops of the matrix-product kernels (sm_90 SASS)", ""]
    if not cuobjdump:
        lines += ["Not generated: cuobjdump was not found (see the script's docstring).", ""]
    else:
        lines += [
            "The loop (backward branch) with the most FFMA + HMMA instructions of each",
            "kernel, from `cuobjdump -sass` of the ptxas output: its length in",
            "instructions and the share of FP32 fused multiply-adds (CUDA cores),",
            "tensor-core MMAs (`HMMA.1688.F32.TF32`: one per 16x8x8 tile), shared-memory",
            "loads and integer address arithmetic (IMAD, IADD, LEA, SHF, LOP). A",
            "tensor-core MMA does 1024 multiply-adds per warp against 32 for a warp's",
            "FFMA, so the two shares are not comparable as work.",
            "",
            "| kernel | loop instructions | FFMA % | HMMA % | LDS % | integer % |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for k in sorted(mixes):
            m = mixes[k]
            if m is None:
                lines.append(f"| `{k}` | no loop found | | | | |")
            else:
                n, ffma, hmma, lds, ints = m
                lines.append(f"| `{k}` | {n} | {ffma:.0f} | {hmma:.0f} | {lds:.0f} | {ints:.0f} |")
        lines.append("")
    with open(os.path.join(ROOT, "docs", "KERNELS.md"), "w") as f:
        f.write("\n".join(lines))
    print(f"wrote docs/KERNELS.md ({len(files)} kernels)")
    shutil.rmtree(out)


if __name__ == "__main__":
    main()

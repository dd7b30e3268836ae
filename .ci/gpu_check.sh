#!/usr/bin/env bash
# One prepared GPU check (run on a lent GPU machine from the repository root; never part of CI).
# Everything lands in $OUT (or ./gpu_out); docs/benchmarks.md, "GPU check: prepared, not yet run",
# says how to call it through the device tool, what each step measures and what counts as success.
# Needs: .official (a checkout of ZhengPeng7/BiRefNet, code only) for the baseline rows; .whl with the
# wheels the machine lacks (kornia, kornia_rs). STEPS picks parts, in this order of priority (default
# all): bench tests graphs-tests profile kernels memory refine compile. Each step has its own timeout;
# worst case 9.5 minutes in all (call it with timeout_s=590), most steps end sooner. Eight files come
# back (the device tool returns 8 at most): gpu.txt (card, versions, step times), bench.md, tests.log,
# profile.md, kernels.md, memory.md, refine.md, compile.md.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 BIREFNET_DEVICE=cuda
STEPS=${STEPS:-bench tests graphs-tests profile kernels memory refine compile}
official=(); [ -d .official ] && official=(--official .official)
bench=(python3 -m birefnet.bench --variant swin_v1_l --threads 8)
tests=(python3 -m pytest -v -ra -p no:cacheprovider -n 12 --dist load)
want() { [[ " $STEPS " == *" $1 "* ]]; }
log() { echo "== $(date -u +%T) $*" | tee -a "$OUT/gpu.txt"; }

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
  echo "this repository: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "official: $(cat .official/COMMIT 2>/dev/null || echo 'no .official/COMMIT')"
} 2>&1 | tee "$OUT/gpu.txt"

if want bench; then
  # Swin-L 1024², one series: the official fp32/fp16 baseline, then every path at batch 1, then batches.
  log "bench"
  # Rows print as they finish, the likely winners and the batch rows first (a step cut by its timeout keeps
  # them). triton: the fused deformable convolution (tile sizes tuned inside the first call).
  timeout 180 "${bench[@]}" --resolution 1024 "${official[@]}" --official-dtype fp32 fp16 --runs 10 --warmup 3 \
    --row-timeout 40 --row fp16/eager/1 fp16/graphs/1 fp16/triton+graphs/1 bf16/triton+graphs/1 \
    fp16/cudnn-benchmark+triton+graphs/1 fp16/eager/8 fp16/graphs/8 fp16/triton+graphs/8 fp32/eager/1 \
    bf16/eager/1 bf16/graphs/1 fp16/triton/1 bf16/triton/1 fp16/cudnn-benchmark+graphs/1 \
    fp16/channels-last+graphs/1 bf16/banded+graphs/1 fp16/triton+graphs/4 2>&1 | tee "$OUT/bench.md"
fi
if want tests; then
  # The model paths on CUDA (the whole suite ran on CUDA before: docs/benchmarks.md); names land as they finish.
  log "tests (BIREFNET_DEVICE=cuda)"
  echo "== BIREFNET_DEVICE=cuda" >> "$OUT/tests.log"
  timeout 80 "${tests[@]}" tests/test_gpu_paths.py tests/test_deform_conv_triton.py tests/test_parity.py tests/test_peak_memory.py \
    tests/test_inference.py tests/test_layouts_and_ops.py tests/test_nodes.py tests/test_video.py \
    tests/test_highres.py tests/test_guidance.py >> "$OUT/tests.log" 2>&1; echo "pytest rc $?" >> "$OUT/tests.log"
  grep -E "FAILED|ERROR|passed|failed|pytest rc" "$OUT/tests.log" | tail -20
fi
if want graphs-tests; then
  log "tests (BIREFNET_DEVICE=cuda, BIREFNET_CUDA_GRAPHS=1)"
  echo "== BIREFNET_DEVICE=cuda BIREFNET_CUDA_GRAPHS=1" >> "$OUT/tests.log"
  BIREFNET_CUDA_GRAPHS=1 timeout 40 "${tests[@]}" tests/test_gpu_paths.py \
    tests/test_inference.py tests/test_nodes.py tests/test_highres.py tests/test_guidance.py \
    >> "$OUT/tests.log" 2>&1; echo "pytest rc $?" >> "$OUT/tests.log"
  grep -E "FAILED|ERROR|passed|failed|pytest rc" "$OUT/tests.log" | tail -20
fi
if want profile; then
  # The fastest batch-1 row of the series, without graphs (a replayed graph hides its kernels from the profiler).
  best=$(python3 - "$OUT/bench.md" <<'EOF'
import sys
rows = []
for line in open(sys.argv[1]) if len(sys.argv) > 1 else []:
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) > 7 and cells[2] == "torch" and cells[5] == "1":
        try:
            rows.append((float(cells[6]), cells[4], cells[3]))
        except ValueError:
            pass
if rows:
    _, dtype, path = min(rows)
    path = "+".join(p for p in path.split("+") if p != "graphs") or "eager"
    print(f"{dtype}/{path}/1")
else:
    print("fp16/eager/1")
EOF
  )
  log "profile $best"
  timeout 30 "${bench[@]}" --resolution 1024 --runs 3 --warmup 2 --row "$best" --profile --profile-rows 25 \
    2>&1 | tee "$OUT/profile.md"
fi
if want kernels; then
  # The deformable convolution alone at a forward's 20 shapes: torchvision, banded, Triton (tuned), fp16 and bf16.
  log "kernels"
  timeout 25 python3 -m birefnet.bench_deform --resolution 1024 --dtype fp16 bf16 --runs 20 2>&1 | tee "$OUT/kernels.md"
fi
if want memory; then
  # 2048² and 4096²: peak allocated memory, the official fp16 against this library in fp16 and in bf16 (the
  # CUDA default), after the CPU's fake-tensor estimate of the same (the 12 GB target; the estimate's accuracy).
  log "memory"
  timeout 20 python3 -m birefnet.peak_memory --resolution 2048 4096 "${official[@]}" 2>&1 | tee "$OUT/memory.md"
  BIREFNET_DEFORM_CONV=triton timeout 10 python3 -m birefnet.peak_memory --resolution 2048 4096 2>&1 \
    | tail -2 | sed 's/this library/this library, triton/' | tee -a "$OUT/memory.md"
  timeout 80 "${bench[@]}" --resolution 2048 4096 "${official[@]}" --official-dtype fp16 --runs 3 --warmup 1 \
    --row-timeout 30 --row fp16/eager/1 bf16/eager/1 fp16/triton/1 2>&1 | tee -a "$OUT/memory.md"
fi
if want refine; then
  # The cut-out's refinement at 2048² and 4096² (guided filter, foreground colours): CUDA against the CPU.
  log "refine"
  timeout 35 python3 - <<'EOF' 2>&1 | tee "$OUT/refine.md"
import time, torch
from birefnet.refine import Refinement, refine_mask
options = Refinement(guided_radius=8, foreground=True)
print("| size | device | refine_mask s (guided filter r=8 + foreground colours) |\n|---|---|---|")
for size in (2048, 4096):
    for device in ("cuda", "cpu"):
        rgb, mask = torch.rand(1, 3, size, size, device=device), torch.rand(1, size, size, device=device)
        runs = []
        for _ in range(4 if device == "cuda" else 2):
            torch.cuda.synchronize(); start = time.perf_counter()
            refine_mask(rgb, mask, options)
            torch.cuda.synchronize(); runs.append(time.perf_counter() - start)
        print(f"| {size}² | {device} | {min(runs[1:]):.4f} |", flush=True)
EOF
fi
if want compile; then
  # Last: compile time is the unknown. The same row twice, each a fresh process: the first compiles into an
  # empty cache (first call = compile time; the target is 60 s), the second starts from what the first cached.
  log "compile"
  export BIREFNET_CACHE=$(mktemp -d)
  timeout 70 "${bench[@]}" --resolution 1024 --runs 10 --warmup 3 --row-timeout 50 \
    --row fp16/compile:reduce-overhead/1 fp16/compile:reduce-overhead/1 2>&1 | tee "$OUT/compile.md"
fi
log "done"

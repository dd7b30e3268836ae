#!/usr/bin/env bash
# One prepared GPU check (run on a lent GPU machine from the repository root; never part of CI):
# the benchmark against the official code (a checkout in .official), then the test suite on CUDA.
# Wheels for packages the machine lacks may wait in .whl. Logs go to $OUT (or ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 BIREFNET_DEVICE=cuda
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$OUT/gpu.txt"
official=(); [ -d .official ] && official=(--official .official)
timeout 150 python3 -m birefnet.bench --variant swin_v1_l swin_v1_t --resolution 1024 --dtype fp32 fp16 bf16 \
  --runs 10 --warmup 3 --threads 8 "${official[@]}" 2>&1 | tee "$OUT/bench.md"
timeout 50 python3 -m birefnet.bench --variant swin_v1_l --resolution 2048 --dtype fp16 bf16 --runs 5 --warmup 2 \
  --threads 8 "${official[@]}" 2>&1 | tee -a "$OUT/bench.md"
# The test suite (on the GPU) beside the torch.compile rows: the suite's models are tiny, its work mostly CPU.
(timeout 250 python3 -m pytest -q -ra -p no:cacheprovider > "$OUT/tests.log" 2>&1; echo "pytest rc $?" >> "$OUT/tests.log") &
timeout 240 python3 -m birefnet.bench --variant swin_v1_l --resolution 1024 --dtype fp16 bf16 --runs 10 --warmup 2 \
  --threads 8 --compile 2>&1 | tee "$OUT/bench_compile.md"
wait
tail -40 "$OUT/tests.log"

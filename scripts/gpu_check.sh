#!/usr/bin/env bash
# The CUDA checks of a lent GPU machine in about 5 minutes, everything written under $OUT (or ./gpu_results).
#   Prepare here:  bash scripts/fetch_gpu_wheels.sh ; bash scripts/gpu_check.sh --cpu   (a short dry run on CPU)
#   Run there:     device tool, carry=[".whl"]:  bash scripts/gpu_check.sh
# Steps: 1. tests: CUDA tests (fp32, fp16, bf16); 2. profile: `drrl profile` of $METHODS at 512-16384 keys for
# MiniLM's and SmolLM2's attention shapes, prefill and decode (measured ratio / FLOP ratio); 3. forward:
# fixed-rank plans in a real forward pass with SmolLM2-135M's shapes at 4096 tokens; 4. fixed_basis: kernels
# (prefill, decode); 5. tradeoff: `drrl tradeoff` under the measured device cost; 6. linalg: benchmarks/linalg.py;
# 7. kv_decode: a decode step over DRRL-KV-v0's compressed cache (both paths) against transformers' exact caches,
# SmolLM2-135M's shapes at 7936 tokens, batch 1, 8 and 32 (benchmarks/kv_decode.py).
# STEPS (default: all seven, comma-separated) and METHODS (default: every registered one) choose what runs, e.g.
#   STEPS=tests,profile,tradeoff METHODS=calibrated,loki bash scripts/gpu_check.sh
# One text file per step in $OUT (written as it goes, so a run cut short keeps what it measured); the profile
# plots in $OUT/plots.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
RES=$OUT PLOTS=/tmp/gpu_plots
rm -rf "$PLOTS" && mkdir -p "$PLOTS" "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DRRL_CACHE_DIR=/tmp/drrl-cache
if [[ ${1:-} == --cpu ]]; then  # dry run: this machine's venv, short lengths, few layers
  DEV=cpu PY=.venv/bin/python LENGTHS=512,1024 FWD_TOKENS=1024 FWD_LAYERS=2 DOCS=2 PREFILL=1024 DECODE=4096 BATCH=2
  KV_CONTEXT=1024 KV_BATCHES=1,2
else
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PWD:/tmp/site:$PWD/.whl/site"
  DEV=cuda PY=python3 LENGTHS=512,1024,2048,4096,8192,16384 FWD_TOKENS=4096 FWD_LAYERS=30 DOCS=8
  PREFILL=4096,8192,16384 DECODE=4096,16384,65536 BATCH=32 KV_CONTEXT=7936 KV_BATCHES=1,8,32
fi
STEPS=,${STEPS:-tests,profile,forward,fixed_basis,tradeoff,linalg,kv_decode},
METHODS=${METHODS:-svd,shared_key,calibrated,loki}
wanted() { [[ $STEPS == *,$1,* ]]; }
has_method() { [[ ,$METHODS, == *,$1,* ]]; }
step() { local name=$1 limit=$2; shift 2; wanted "$name" || return 0; echo "== $name: $*" | tee -a "$RES/$name.txt"
         timeout "$limit" "$@" 2>&1 | tee -a "$RES/$name.txt"; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'transformers', transformers.__version__)"; } 2>&1 | tee "$RES/device.txt"

# 1. CUDA tests (skipped on CPU)
step tests 120 $PY -m pytest -q tests/test_cuda.py -p no:cacheprovider

# 2. Profiles: measured latency ratio / FLOP ratio, $METHODS, both attention shapes; SmolLM2's in prefill and
#    decode (one token over the cache), loki at two key fractions
MINILM="source=synthetic synthetic_heads=12 synthetic_kv_heads=12 synthetic_head_dim=32 synthetic_causal=False"
SMOL="source=synthetic synthetic_heads=9 synthetic_kv_heads=3 synthetic_head_dim=64 synthetic_causal=True"
step profile 120 $PY -m experiments.cli profile --refresh --lengths $LENGTHS --out "$PLOTS/minilm" --methods $METHODS \
    --env-kwargs $MINILM synthetic_seq_len=256 synthetic_documents=6 device=$DEV
for workload in prefill decode; do
  for dtype in float32 bfloat16; do
    step profile 120 $PY -m experiments.cli profile --refresh --lengths $LENGTHS --out "$PLOTS/smollm2_${workload}_$dtype" \
        --methods $METHODS --env-kwargs $SMOL synthetic_seq_len=256 synthetic_documents=6 device=$DEV dtype=$dtype \
        workload=$workload
  done
done
has_method loki && step profile 60 $PY -m experiments.cli profile --refresh --lengths $LENGTHS --out "$PLOTS/smollm2_loki8" \
    --methods loki --env-kwargs $SMOL synthetic_seq_len=256 synthetic_documents=6 device=$DEV workload=decode loki_keys=0.125

# 3. Fixed-rank plans in a real forward pass (SmolLM2-135M's shapes, random weights, one long pydoc document)
step forward 60 $PY scripts/smollm2_shaped_model.py /tmp/smollm2-shaped --layers $FWD_LAYERS
for method in ${METHODS//,/ }; do
  [[ $method == loki ]] && continue  # a decode method: a prefill forward runs it as masked exact attention
  step forward 90 $PY benchmarks/forward_latency.py --rounds 3 --pydoc-document \
      --env-kwargs model=/tmp/smollm2-shaped max_seq_len=$FWD_TOKENS segment_len=512 device=$DEV method=$method
done

# 4. Fixed bases (the kernel side of a calibrated method): prefill and decode, fp32 and bf16, batch 1 and
#    $BATCH (fp32 prefill at 16384 is left out batched: narrow fp32 SDPA falls back to the math kernel's T x N scores)
for dtype in float32 bfloat16; do
  step fixed_basis 60 $PY benchmarks/fixed_basis.py --device $DEV --dtype $dtype --prefill $PREFILL --decode $DECODE
done
step fixed_basis 60 $PY benchmarks/fixed_basis.py --device $DEV --dtype float32 --batch $BATCH --prefill ${PREFILL%%,*} \
    --decode $DECODE
step fixed_basis 60 $PY benchmarks/fixed_basis.py --device $DEV --dtype bfloat16 --batch $BATCH --prefill $PREFILL \
    --decode $DECODE

# 5. Trade-off under the measured device cost: DRRL-v0 (MiniLM on pydoc text) at its own length and at
#    4096 keys, and SmolLM2's shapes on the synthetic source (the LLM regime's stand-in)
for target in none 4096; do
  has_method svd && step tradeoff 120 $PY -m experiments.cli tradeoff --documents $DOCS --betas 0.25,0.5,1,2,3 \
      --env-kwargs device=$DEV cost_model=profile target_seq_len=$target
done
for method in ${METHODS//,/ }; do
  [[ $method == svd ]] && continue  # per-segment decompositions: measured above exact everywhere on the H200
  for workload in prefill decode; do
    [[ $method == loki && $workload == prefill ]] && continue
    extra=$([[ $method == loki ]] && echo "compress_values=false safety=false")
    step tradeoff 120 $PY -m experiments.cli tradeoff --documents $DOCS --split all --betas 0.25,0.5,1,2,3 \
        --env-kwargs $SMOL synthetic_seq_len=$FWD_TOKENS synthetic_documents=8 segment_len=512 device=$DEV \
        cost_model=profile method=$method workload=$workload $extra
  done
done

# 6. Factor upkeep and kernels
step linalg 60 $PY benchmarks/linalg.py --device $DEV

# 7. Decode over the compressed KV cache (a SmolLM2-shaped causal LM with random weights: the GGUF cannot travel;
#    bases fitted on its own keys, which sets no cost), each batch against DynamicCache and StaticCache beside it
if wanted kv_decode; then
  step kv_decode 60 $PY scripts/smollm2_shaped_model.py /tmp/smollm2-shaped-lm --layers 30 --causal-lm  # the plan's 30
  for batch in ${KV_BATCHES//,/ }; do
    step kv_decode 150 $PY benchmarks/kv_decode.py --batch $batch --context $KV_CONTEXT --out "$RES/kv_decode_$batch.txt" \
        --plans static:experiments/results/kv/static_train.json,r8,int4 --env-kwargs model=/tmp/smollm2-shaped-lm \
        device=$DEV calibration_documents=2 budget=1.0  # kv_decode stores every block itself: no budget applies
  done
fi

tar -czf "$OUT/plots.tar.gz" -C "$PLOTS" . && echo "done: $(ls "$OUT")"

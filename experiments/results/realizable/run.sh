#!/usr/bin/env bash
# The realizable-speed measurements (issue 12), one after the other on an otherwise idle machine.
# Each output file starts with the command that printed it.  Run from the repository root with the
# venv's bin on PATH:  PATH=.venv/bin:$PATH bash experiments/results/realizable/run.sh
set -uo pipefail
out=experiments/results/realizable
run() {  # run NAME COMMAND...: COMMAND's output, with the command first, into $out/NAME.txt
  local name=$1; shift
  { echo "\$ $*"; "$@" 2>&1 | tr '\r' '\n' | grep -v "Converting and de-quantizing\|Loading weights\|^$"; echo "rc ${PIPESTATUS[0]}"; } > "$out/$name.txt"
}
run profile_lm_prefill drrl profile --refresh --env-id DRRL-LM-v0 --lengths 512,1024,2048,4096,8192 --out $out/prefill
run profile_lm_decode drrl profile --refresh --env-id DRRL-LM-v0 --lengths 512,1024,2048,4096,8192,16384 --out $out/decode --env-kwargs workload=decode
run profile_minilm drrl profile --refresh --lengths 512,2048,4096,8192 --out $out/minilm
run frontier_prefill python benchmarks/frontier.py --methods calibrated,shared_key --documents 1 --levels 0.9,0.95,0.98
run frontier_decode python benchmarks/frontier.py --methods calibrated --documents 1 --levels 0.9,0.95,0.98 --env-kwargs workload=decode max_seq_len=8192 min_doc_tokens=8192
run tradeoff_lm_prefill drrl tradeoff --env-id DRRL-LM-v0 --documents 3 --betas 0.25,0.5,1,2 --env-kwargs method=calibrated cost_model=profile
run frontier_loki_decode python benchmarks/frontier.py --methods loki --documents 1 --ranks 8,16,32 --levels 0.95,0.98 --env-kwargs workload=decode max_seq_len=8192 min_doc_tokens=8192 compress_values=false safety=false
run profile_lm_fixed_basis_prefill drrl profile --refresh --env-id DRRL-LM-v0 --methods calibrated,loki --lengths 512,1024,2048,4096,8192 --out $out/fixed_basis_prefill
run profile_lm_fixed_basis_decode drrl profile --refresh --env-id DRRL-LM-v0 --methods calibrated,loki --lengths 512,1024,2048,4096,8192,16384 --out $out/fixed_basis_decode --env-kwargs workload=decode
run profile_lm_loki8_decode drrl profile --refresh --env-id DRRL-LM-v0 --methods loki --lengths 512,1024,2048,4096,8192,16384 --out $out/loki8_decode --env-kwargs workload=decode loki_keys=0.125
run tradeoff_lm_closed_loop drrl tradeoff --env-id DRRL-LM-v0 --documents 3 --betas 0.25,0.5,1,2

#!/usr/bin/env bash
# Every GPU stage in one command on the lent H200 (see BENCHMARKS.md). Run from the repo root there, with
# .whl (../shared/tools/gpu-wheelhouse) and .bench-data (tokenizer + Shanghai tickets) carried along:
#   bash bench/gpu_run.sh [scoring] [training] [multi_adapter] [eviction] [cold]     results land in $OUT (default ./out)
# training: warm-up, our round with the defaults, the original recipe (same run); it reads MICRO_BATCH,
# GRAD_ACCUMULATION, PAD (ours; 0 = auto), SECOND_ROUND (default 0) and ORIGINAL_ALSO_AT="M G".
# cold: one round of ours on an empty compile cache (what the warm-up saves). multi_adapter: 1, 4 and 16 projects'
# adapters beside one base, mixed-project traffic, and 16 with room for 4. eviction: only the last (EVICTION_TICKETS).
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export TORCH_LOGS=${TORCH_LOGS:-recompiles}  # the training logs then show every re-compilation and its reason
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
common="--random-7b /tmp/r1-7b-random --tokenizer .bench-data/tokenizer --tickets .bench-data/shanghai_tickets.jsonl"
stages=${*:-scoring training}
for stage in $stages; do
  case $stage in
    scoring)
      python3 -m bench.llm_scoring $common --seed-tickets 12 --b32-tickets 256 \
        --out "$OUT/scoring.jsonl" --profile "$OUT/profile_b1.txt" 2>&1 | tee "$OUT/scoring.log" ;;
    training)
      python3 -m bench.training_round $common --second-round "${SECOND_ROUND:-0}" --pad-to-multiple-of "${PAD:-64}" \
        --micro-batch "${MICRO_BATCH:-0}" --grad-accumulation "${GRAD_ACCUMULATION:-0}" ${ORIGINAL_ALSO_AT:+--original-also-at $ORIGINAL_ALSO_AT} \
        --out "$OUT/training.jsonl" 2>&1 | tee "$OUT/training.log" ;;
    cold)
      python3 -m bench.training_round $common --second-round 0 --no-warm-up --skip-original \
        --out "$OUT/training_cold.jsonl" 2>&1 | tee "$OUT/training_cold.log" ;;
    multi_adapter)
      python3 -m bench.multi_adapter $common --counts 1 4 16 --total 512 --callers 16 \
        --out "$OUT/multi_adapter.jsonl" 2>&1 | tee "$OUT/multi_adapter.log" ;;
    eviction)
      python3 -m bench.multi_adapter $common --counts 16 --total "${EVICTION_TICKETS:-128}" --callers 16 --eviction-only \
        --out "$OUT/eviction.jsonl" 2>&1 | tee "$OUT/eviction.log" ;;
  esac
done

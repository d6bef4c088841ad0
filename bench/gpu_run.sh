#!/usr/bin/env bash
# Every GPU stage in one command on the lent H200 (see BENCHMARKS.md). Run from the repo root there, with
# .whl (../shared/tools/gpu-wheelhouse) and .bench-data (tokenizer + Shanghai tickets) carried along:
#   bash bench/gpu_run.sh [scoring] [training]      results land in $OUT (default ./out)
# training reads MICRO_BATCH, GRAD_ACCUMULATION, PAD (ours), SECOND_ROUND (default 200) and ORIGINAL_ALSO_AT="M G".
set -uo pipefail
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export TORCH_LOGS=${TORCH_LOGS:-recompiles}  # the training logs then show every re-compilation and its reason
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
stages=${*:-scoring training}
for stage in $stages; do
  case $stage in
    scoring)
      python3 -m bench.llm_scoring --random-7b /tmp/r1-7b-random --tokenizer .bench-data/tokenizer \
        --tickets .bench-data/shanghai_tickets.jsonl --seed-tickets 12 --b32-tickets 256 \
        --out "$OUT/scoring.jsonl" --profile "$OUT/profile_b1.txt" 2>&1 | tee "$OUT/scoring.log" ;;
    training)
      python3 -m bench.training_round --random-7b /tmp/r1-7b-random --tokenizer .bench-data/tokenizer \
        --tickets .bench-data/shanghai_tickets.jsonl --second-round "${SECOND_ROUND:-200}" --pad-to-multiple-of "${PAD:-64}" \
        --micro-batch "${MICRO_BATCH:-2}" --grad-accumulation "${GRAD_ACCUMULATION:-8}" ${ORIGINAL_ALSO_AT:+--original-also-at $ORIGINAL_ALSO_AT} \
        --out "$OUT/training.jsonl" 2>&1 | tee "$OUT/training.log" ;;
  esac
done

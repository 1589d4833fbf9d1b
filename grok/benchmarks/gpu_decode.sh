#!/usr/bin/env bash
# Grok-1-width decode on one GPU: as many layers as fit, batch 1 and batch 64, each in its own
# process (--layers fit plans for that batch's KV cache), with the optimised HLO of each
# sample_step dumped and checked: at most 2 collectives per layer, no conditional in the layer
# loop, and (--require-fused-int8) no float copy of an int8 weight outside a matmul kernel.
#
#   bash grok/benchmarks/gpu_decode.sh [OUT_DIR]            # on the GPU host
#   bash grok/benchmarks/gpu_decode.sh --dry-run [OUT_DIR]  # tiny width on CPU: the plumbing
#
# Results: OUT_DIR/batch{1,64}.json (runs[0].decode_step_ms, useful_gb_per_s, of_bandwidth =
# useful weight+KV bytes per step / step time / HBM peak), OUT_DIR/hlo_batch*/ (the HLO),
# OUT_DIR/check_batch*.txt (the checker's verdict). Exit status 1 if a check fails.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
OUT="${1:-gpu_decode_out}"
mkdir -p "$OUT"

if (( DRY_RUN )); then
    export JAX_PLATFORMS=cpu
    WIDTH=(--vocab 256 --emb 64 --q-heads 16 --kv-heads 8 --key-size 8 --widening 2)
    RUN=(--sequence-len 64 --prompt-len 8 --new-tokens 2 --device-memory-gb 0.02)
    BATCHES=(1 4)
    CHECK=()                     # XLA:CPU matmuls take same-typed buffers: converts expected
else
    WIDTH=(--emb 6144 --q-heads 48 --kv-heads 8 --key-size 128 --widening 8 --vocab 131072)
    RUN=(--sequence-len 8192 --prompt-len 256 --new-tokens 32)
    BATCHES=(1 64)
    CHECK=(--require-fused-int8)
fi

status=0
for batch in "${BATCHES[@]}"; do
    rm -rf "$OUT/hlo_batch$batch"
    python -m grok.bench decode "${WIDTH[@]}" "${RUN[@]}" --layers fit --mesh 1,1 \
        --dtype bfloat16 --batch-size "$batch" --kv-len auto \
        --dump-hlo "$OUT/hlo_batch$batch" --json "$OUT/batch$batch.json" | tee "$OUT/table_batch$batch.txt"
    python -m grok.benchmarks.hlo_check "${CHECK[@]}" "$OUT/hlo_batch$batch"/*.sample_step.txt \
        | tee "$OUT/check_batch$batch.txt" || status=1
done
exit $status

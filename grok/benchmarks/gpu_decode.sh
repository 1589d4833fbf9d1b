#!/usr/bin/env bash
# Grok-1-width decode on one GPU, sized for one short loan (<= 8 minutes with its compiles):
# every phase runs under `timeout` and independently (one failing loses only its own output).
#   1. environment: jax.print_environment_info() and nvidia-smi          -> env.txt
#   2. calibration, 20 s: HBM copy GB/s and an int8 x bf16 GEMV [1,6144] x [6144,32768] as a
#      plain argument, through w[e] of an [8,6144,32768] stack, as the step's one-row reduction
#      and through the MoE kernel (grok.benchmarks.gpu_calibrate)       -> calibration.json
#   3. decode: ONE process for batch 1 and 64 at --sequence-len 1024, as many layers as fit
#      (grok.bench decode): step times, useful bytes/s beside the HBM peak, XLA's
#      cost_analysis() bytes beside the useful bytes, a 3-step jax.profiler trace, the
#      optimised HLO of sample_step (and an XLA dump of sample_step only) -> decode.json,
#      decode.txt, profile/, hlo/, xla_dump/
#   4. check: the GPU-aware HLO check (grok.benchmarks.hlo_check --gpu) on each dumped
#      sample_step                                                         -> check.txt
# JAX's compile cache and XLA's autotune cache live under OUT_DIR/cache, so a second run (or a
# later loan with the same folder) skips compiling and autotuning.
#
#   bash grok/benchmarks/gpu_decode.sh [OUT_DIR]            # on the GPU host
#   bash grok/benchmarks/gpu_decode.sh --dry-run [OUT_DIR]  # tiny width, 2 layers, on CPU
#
# Exit status: 0 if every phase succeeded, else 1 (status.txt lists each phase's).
set -uo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
OUT="${1:-gpu_decode_out}"
mkdir -p "$OUT/cache/jax" "$OUT/cache/autotune"
: > "$OUT/status.txt"

export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
export JAX_COMPILATION_CACHE_DIR="$OUT/cache/jax"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
XLA_DUMP=(--xla_dump_to="$OUT/xla_dump" --xla_dump_hlo_module_re='.*sample_step.*'
          --xla_dump_hlo_as_text)

if (( DRY_RUN )); then
    export JAX_PLATFORMS=cpu
    WIDTH=(--vocab 256 --emb 64 --q-heads 16 --kv-heads 8 --key-size 8 --widening 2)
    RUN=(--sequence-len 64 --prompt-len 8 --new-tokens 2 --batch-size 1,4 --layers 2)
    CALIBRATE=(--seconds 1 --small)
    CHECK=()                       # an XLA:CPU module: the GPU copy check does not apply
    LIMIT=(env 120 calibrate 120 decode 300 check 60)
else
    WIDTH=(--emb 6144 --q-heads 48 --kv-heads 8 --key-size 128 --widening 8 --vocab 131072)
    RUN=(--sequence-len 1024 --prompt-len 256 --new-tokens 32 --batch-size 1,64 --layers fit)
    CALIBRATE=(--seconds 20)
    CHECK=(--gpu)
    LIMIT=(env 30 calibrate 60 decode 330 check 30)   # <= 7.5 minutes in all
    export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_per_fusion_autotune_cache_dir=$OUT/cache/autotune"
fi
limit() {   # the seconds a phase may take
    local i
    for ((i = 0; i < ${#LIMIT[@]}; i += 2)); do
        if [[ "${LIMIT[i]}" == "$1" ]]; then echo "${LIMIT[i + 1]}"; return; fi
    done
    echo 60
}
status=0
phase() {   # phase NAME COMMAND...: runs under timeout, records its exit status
    local name=$1; shift
    local start=$SECONDS
    timeout "$(limit "$name")" "$@"
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/status.txt"
    (( rc == 0 )) || status=1
}

phase env bash -c 'python -c "import jax; jax.print_environment_info()"; nvidia-smi || true' \
    > "$OUT/env.txt" 2>&1
phase calibrate python -m grok.benchmarks.gpu_calibrate "${CALIBRATE[@]}" \
    --json "$OUT/calibration.json"
rm -rf "$OUT/hlo" "$OUT/xla_dump" "$OUT/profile"
phase decode env XLA_FLAGS="${XLA_FLAGS:-} ${XLA_DUMP[*]}" \
    python -m grok.bench decode "${WIDTH[@]}" "${RUN[@]}" --mesh 1,1 \
    --dtype bfloat16 --kv-len auto --dump-hlo "$OUT/hlo" --profile "$OUT/profile" \
    --json "$OUT/decode.json" > "$OUT/decode.txt"
cat "$OUT/decode.txt"
if compgen -G "$OUT/hlo/*.sample_step.txt" > /dev/null; then
    phase check python -m grok.benchmarks.hlo_check "${CHECK[@]}" "$OUT/hlo"/*.sample_step.txt \
        > "$OUT/check.txt"
    cat "$OUT/check.txt"
else
    echo "check rc=skipped (no sample_step HLO)" | tee -a "$OUT/status.txt"; status=1
fi
exit $status

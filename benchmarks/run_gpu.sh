#!/usr/bin/env bash
# THE prepared GPU run (issue 15), for one session with a GPU and ~10 minutes of it.
#
# 1. Parallel, untimed (each process compiles on the GPU; XLA's autotuning too): every timed
#    program below is compiled once with `bench --compile_only` into one persistent compilation
#    cache, the CATs++ train steps at 512 px (batch 8, 16, 32; bf16 and fp32) too (XLA's planned
#    memory), the parity numbers (benchmarks/gpu_parity.py) and the parity tests at "highest"
#    float32 precision run, and the SPair-like JPEGs for the input rows are made and prepared.
# 2. Sequential, timed, one process per row (so that each row's allocator peak is its own), the
#    programs loaded from the cache, most important first (CATs: ResNet-101, depth 1, 256 x 256,
#    batch 32, random data): train bf16 fine-tuned, annotate bf16, the official PyTorch CATs
#    (benchmarks/torch_cats_bench.py: train fine-tuned/frozen and forward, bf16 autocast and
#    fp32), train bf16 frozen, annotate fp32, train fp32 fine-tuned and frozen, train bf16 with
#    XLA's attention instead of cuDNN's. The two target rows (train bf16 fine-tuned, annotate
#    bf16) also trace 3 more calls after their timing; the top ops of each trace go to the log
#    (matchme_jax/bench/profile.py), the traces to $OUT/profile.tar.gz.
# 3. The host input pipeline on SPair-like JPEGs with 0, 4, 8 and 14 grain workers.
# 4. The CATs++ train steps at 512 px, one process each (their allocator peaks), 2 timed steps.
# Every part has what is left of BUDGET_S seconds (default 530); finished rows are kept when a
# later one is killed. The rows are merged into benchmarks/results/<card>.json (compile-only rows
# into <card>.compile.json) and copied, with the logs, to $OUT, where the device tool collects
# files.
#
# Before (on a machine with network, once): bash benchmarks/fetch_wheels.sh (fills .whl/) and
# bash benchmarks/fetch_official_cats.sh (fills .official_cats/).
# Device tool: run(command="bash benchmarks/run_gpu.sh", carry=[".whl", ".official_cats"])
# A CPU smoke test: JAX_PLATFORMS=cpu BATCH=2 STEPS=1 WARMUP=0 SPAIR_CONFIG=configs/spair.py:tiny
#   CATSPP_CONFIG=configs/spair_catspp.py:tiny CATSPP_BATCHES="2" TORCH_DEVICE=cpu TORCH_BATCH=2
#   PYTHON=.venv/bin/python TORCH_PYTHON=/tmp/torchvenv/bin/python PARITY=0 INPUT_WORKERS="0 1"
#   DATA_PAIRS=64 DATA_IMAGES=60 BUDGET_S=900 WHEELS=none bash benchmarks/run_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PY=${TORCH_PYTHON:-$PY}
BUDGET_S=${BUDGET_S:-530}
COMPILE_S=${COMPILE_S:-200}  # the most the parallel part may take
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
BATCH=${BATCH:-32}
SPAIR_CONFIG=${SPAIR_CONFIG:-configs/spair.py}
CATSPP_CONFIG=${CATSPP_CONFIG:-configs/spair_catspp.py}
CATSPP_BATCHES=${CATSPP_BATCHES:-"32 16 8"}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
TORCH_BATCH=${TORCH_BATCH:-$BATCH}
PARITY=${PARITY:-1}
INPUT_WORKERS=${INPUT_WORKERS:-"0 4 8 14"}
DATA_PAIRS=${DATA_PAIRS:-1500}
DATA_IMAGES=${DATA_IMAGES:-300}
deadline=$((SECONDS + BUDGET_S))
work=$(mktemp -d)
out=${OUT:-$work/out}
mkdir -p "$out" "$work/compile" "$work/rows"
log=$out/bench.log

WHEELS=${WHEELS:-.whl}  # the GPU machine's missing packages (Python 3.12 wheels)
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/matchme_site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/matchme_site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=$work/jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$log" 2>&1
# Fail in seconds, not minutes, when the machine's packages cannot run the code at all.
$PY -c "import jax, flax, optax, matchme_jax.bench, matchme_jax.data.pipeline
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())
" 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" = 0 ] || exit 3

# Row name -> its bench flags. The timed rows, in the order they are timed.
declare -A args
cats=(--config="$SPAIR_CONFIG" --batch_sizes="$BATCH")
args[train_bf16_fine_tuned]="${cats[*]} --modes=train --precisions=bf16 --backbones=fine_tuned"
args[annotate_bf16]="${cats[*]} --modes=annotate --precisions=bf16"
args[train_bf16_frozen]="${cats[*]} --modes=train --precisions=bf16 --backbones=frozen"
args[annotate_fp32]="${cats[*]} --modes=annotate --precisions=fp32"
args[train_fp32_fine_tuned]="${cats[*]} --modes=train --precisions=fp32 --backbones=fine_tuned"
args[train_fp32_frozen]="${cats[*]} --modes=train --precisions=fp32 --backbones=frozen"
args[train_bf16_fine_tuned_xla_attention]="${args[train_bf16_fine_tuned]} --config.model.attention=xla"
cats_rows=(train_bf16_fine_tuned annotate_bf16 train_bf16_frozen annotate_fp32
    train_fp32_fine_tuned train_fp32_frozen train_bf16_fine_tuned_xla_attention)
catspp_rows=()
for batch in $CATSPP_BATCHES; do
    for precision in fp32 bf16; do
        name=catspp_train_${precision}_$batch
        catspp_rows+=("$name")
        args[$name]="--config=$CATSPP_CONFIG --batch_sizes=$batch --modes=train --precisions=$precision --backbones=fine_tuned"
    done
done

left() { echo $((deadline - SECONDS)); }

# ---- 1. parallel and untimed ----
echo "== parallel compilation, parity and data ($(left)s left)" | tee -a "$log"
jobs_pids=()
for name in "${cats_rows[@]}" "${catspp_rows[@]}"; do
    # shellcheck disable=SC2086  # the flags are words
    XLA_PYTHON_CLIENT_PREALLOCATE=false $PY -m matchme_jax.bench --compile_only \
        --json="$work/compile/$name.json" ${args[$name]} >"$work/compile/$name.log" 2>&1 &
    jobs_pids+=($!)
done
if [ "$PARITY" = 1 ]; then
    XLA_PYTHON_CLIENT_PREALLOCATE=false $PY benchmarks/gpu_parity.py --json="$out/parity.json" \
        >"$work/parity.log" 2>&1 &
    jobs_pids+=($!)
    # The parity tests themselves, with true float32 matmuls (XLA's GPU default is TF32).
    XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} \
        JAX_DEFAULT_MATMUL_PRECISION=highest $PY -m pytest -q -n 0 -rf \
        tests/test_cats_parity.py tests/test_catspp_parity.py >"$out/parity_tests.log" 2>&1 &
    jobs_pids+=($!)
fi
(
    $PY benchmarks/spair_like_data.py --out="$work/manual" --pairs="$DATA_PAIRS" \
        --images="$DATA_IMAGES" &&
        JAX_PLATFORMS=cpu $PY -m data_builders.prepare --dataset=spair71k \
            --data_dir="$work/tfds" --manual_dir="$work/manual"
) >"$work/data.log" 2>&1 &
data_pid=$!
compile_deadline=$((SECONDS + COMPILE_S))
while ((SECONDS < compile_deadline)); do
    running=0
    for pid in "${jobs_pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=$((running + 1)); done
    ((running == 0)) && break
    sleep 2
done
for pid in "${jobs_pids[@]}"; do
    kill -0 "$pid" 2>/dev/null && echo "pid $pid still running: stopped" | tee -a "$log"
    kill "$pid" 2>/dev/null
done
wait "${jobs_pids[@]}" 2>/dev/null
echo "parallel part done ($(left)s left)" | tee -a "$log"

# ---- 2. timed, one process per row ----
files=()
# row NAME MIN_S ARGS...: one bench process with the time left (none started under MIN_S).
row() {
    local name=$1 min_s=$2 time_left
    shift 2
    time_left=$(left)
    if ((time_left < min_s)); then
        echo "$name: skipped, ${time_left}s left" | tee -a "$log"
        return
    fi
    echo "== $name (${time_left}s left)" | tee -a "$log"
    files+=("$work/rows/$name.json")
    timeout "$time_left" "$PY" -m matchme_jax.bench --json="$work/rows/$name.json" "$@" \
        >>"$log" 2>&1 || echo "$name: exit $?" | tee -a "$log"
}
torch_rows() {
    local time_left
    time_left=$(left)
    if ((time_left < 60)); then
        echo "pytorch: skipped, ${time_left}s left" | tee -a "$log"
        return
    fi
    echo "== pytorch (${time_left}s left)" | tee -a "$log"
    files+=("$out/pytorch.json")
    timeout "$time_left" "$TORCH_PY" benchmarks/torch_cats_bench.py --json="$out/pytorch.json" \
        --official_dir=.official_cats --device="$TORCH_DEVICE" --batch_size="$TORCH_BATCH" \
        --steps="$STEPS" --warmup="$WARMUP" --time_budget_s=$((time_left - 20)) \
        >>"$log" 2>&1 || echo "pytorch: exit $?" | tee -a "$log"
}

for name in "${cats_rows[@]}"; do
    profile=()  # a trace of 3 more calls of the two target rows, after their timing
    [[ $name = train_bf16_fine_tuned || $name = annotate_bf16 ]] &&
        profile=(--profile_dir="$work/profile/$name")
    # shellcheck disable=SC2086
    row "$name" 40 --steps="$STEPS" --warmup="$WARMUP" "${profile[@]}" ${args[$name]}
    [ "$name" = annotate_bf16 ] && torch_rows
done

# ---- 3. the host input pipeline ----
if wait "$data_pid"; then
    for workers in $INPUT_WORKERS; do
        row "input_${workers}_workers" 20 --config=configs/spair.py --batch_sizes="$BATCH" \
            --modes=input --input_batches=40 --config.dataset.data_dir="$work/tfds" \
            --config.dataset.num_workers=$workers
    done
else
    echo "input rows: the SPair-like data could not be prepared:" | tee -a "$log"
    tail -20 "$work/data.log" | tee -a "$log"
fi

# ---- 4. the CATs++ train steps: their allocator peaks (XLA's plans are in part 1) ----
for name in "${catspp_rows[@]}"; do
    # shellcheck disable=SC2086
    row "$name" 40 --steps=2 --warmup=1 ${args[$name]}
done

# ---- results ----
$PY -m matchme_jax.bench.collect --out_dir=benchmarks/results "${files[@]}" | tee -a "$log"
$PY -m matchme_jax.bench.collect --out_dir=benchmarks/results --suffix=.compile \
    "$work"/compile/*.json >>"$log" 2>&1
cp benchmarks/results/*.json "$out"/ 2>/dev/null
for trace in "$work"/profile/*/0; do
    [ -d "$trace" ] && $PY -m matchme_jax.bench.profile "$trace" --top=30 >>"$log" 2>&1
done
tar -czf "$out/raw.tar.gz" -C "$work" compile rows parity.log data.log 2>/dev/null
tar -czf "$out/profile.tar.gz" -C "$work" --exclude='*.xplane.pb' --exclude='vm.trace.json.gz' \
    profile 2>/dev/null
echo "done ($(left)s left)" | tee -a "$log"

#!/usr/bin/env bash
# THE prepared GPU run: parts run one after the other, most important first, each
# skipped when the time left (BUDGET_S, default 520 s) is too short. PARTS picks some:
#   cats    CATs (ResNet-101, depth 1, 256 x 256, batch 32, random data), one process per row so
#           that each row's allocator peak is its own: train bf16 fine-tuned, annotate bf16, then
#           the official PyTorch CATs (benchmarks/torch_cats_bench.py: train fine-tuned/frozen and
#           the forward, bf16 autocast and fp32), then train bf16 frozen, annotate fp32, train fp32
#           fine-tuned and frozen, train bf16 with XLA's attention instead of cuDNN's. The two
#           target rows also trace 3 more calls after their timing (top ops in the log,
#           matchme_jax/bench/profile.py; traces in $OUT/profile.tar.gz).
#   input   the host pipeline on SPair-like JPEGs (made and prepared in the background from the
#           start, on the CPU) with 0, 4, 8 and 14 grain workers.
#   parity  benchmarks/gpu_parity.py (flows at TF32, "highest", bf16, float64 against the
#           official ones), then the parity tests with "highest" float32 matmuls.
#   catspp  the CATs++ train step at 512 px, batch 32/16/8, fp32 and bf16: XLA's planned memory
#           (bench --compile_only; on the H200 the plan equalled the allocator peak for every
#           CATs row).
#   dinov2  CATs on DINOv2 ViT-B/14 (configs/spair_dinov2.py, random weights, 224 px, batch 32):
#           train bf16 frozen and with the last 2 blocks fine-tuned, annotate bf16; then the
#           planned memory (compile only) of ViT-L/14 frozen and with the last 2 blocks.
# What the first H200 run (2026-12-04) taught: one train row compiles in 28-62 s there (XLA's
# autotuning included), and 13 compilations in parallel processes on the one GPU had not
# finished after 200 s, so the parts compile in turn. All of them need more than one 10-minute
# call: `PARTS="cats torch input"` (about 7 minutes there) fits one, `PARTS="parity catspp"`
# (not yet timed there) needs another.
# Every finished row is kept when a later one is killed. The rows go to
# benchmarks/results/<card>.json (catspp: <card>.catspp.json), copied with the logs to $OUT.
#
# Before (on a machine with network, once): bash benchmarks/fetch_wheels.sh (fills .whl/) and
# bash benchmarks/fetch_official_cats.sh (fills .official_cats/).
# Device tool: run(command="bash benchmarks/run_gpu.sh", carry=[".whl", ".official_cats"])
# A CPU smoke test: JAX_PLATFORMS=cpu BATCH=2 STEPS=1 WARMUP=0 SPAIR_CONFIG=configs/spair.py:tiny
#   CATSPP_CONFIG=configs/spair_catspp.py:tiny CATSPP_BATCHES="2" TORCH_DEVICE=cpu TORCH_BATCH=2
#   PYTHON=.venv/bin/python TORCH_PYTHON=/tmp/torchvenv/bin/python INPUT_WORKERS="0 1"
#   DATA_PAIRS=64 DATA_IMAGES=60 BUDGET_S=1500 WHEELS=none PARITY_MODELS=cats bash benchmarks/run_gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PY=${TORCH_PYTHON:-$PY}
PARTS=${PARTS:-"cats torch input parity catspp dinov2"}
BUDGET_S=${BUDGET_S:-520}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
BATCH=${BATCH:-32}
SPAIR_CONFIG=${SPAIR_CONFIG:-configs/spair.py}
CATSPP_CONFIG=${CATSPP_CONFIG:-configs/spair_catspp.py}
CATSPP_BATCHES=${CATSPP_BATCHES:-"32 16 8"}
DINOV2_CONFIG=${DINOV2_CONFIG:-configs/spair_dinov2.py}
TORCH_DEVICE=${TORCH_DEVICE:-cuda}
TORCH_BATCH=${TORCH_BATCH:-$BATCH}
PARITY_MODELS=${PARITY_MODELS:-cats,catspp}
INPUT_WORKERS=${INPUT_WORKERS:-"0 4 8 14"}
DATA_PAIRS=${DATA_PAIRS:-1500}
DATA_IMAGES=${DATA_IMAGES:-300}
deadline=$((SECONDS + BUDGET_S))
work=$(mktemp -d)
out=${OUT:-$work/out}
mkdir -p "$out" "$work/rows" "$work/catspp"
log=$out/bench.log

WHEELS=${WHEELS:-.whl}  # the GPU machine's missing packages (Python 3.12 wheels)
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/matchme_site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/matchme_site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$log" 2>&1
# Fail in seconds, not minutes, when the machine's packages cannot run the code at all.
$PY -c "import jax, flax, optax, matchme_jax.bench, matchme_jax.data.pipeline
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())
" 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" = 0 ] || exit 3

wants() { [[ " $PARTS " == *" $1 "* ]]; }
left() { echo $((deadline - SECONDS)); }
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
    if ((time_left < 45)); then
        echo "pytorch: skipped, ${time_left}s left" | tee -a "$log"
        return
    fi
    echo "== pytorch (${time_left}s left)" | tee -a "$log"
    files+=("$out/pytorch.json")
    timeout "$time_left" "$TORCH_PY" benchmarks/torch_cats_bench.py --json="$out/pytorch.json" \
        --official_dir=.official_cats --device="$TORCH_DEVICE" --batch_size="$TORCH_BATCH" \
        --steps="$STEPS" --warmup="$WARMUP" --time_budget_s=$((time_left - 15)) \
        >>"$log" 2>&1 || echo "pytorch: exit $?" | tee -a "$log"
}

# The SPair-like JPEGs, on the CPU, while the GPU parts run (about 45 s on the H200's host).
if wants input; then
    (
        $PY benchmarks/spair_like_data.py --out="$work/manual" --pairs="$DATA_PAIRS" \
            --images="$DATA_IMAGES" &&
            JAX_PLATFORMS=cpu $PY -m data_builders.prepare --dataset=spair71k \
                --data_dir="$work/tfds" --manual_dir="$work/manual"
    ) >"$work/data.log" 2>&1 &
    data_pid=$!
fi

# ---- cats (and torch) ----
cats=(--config="$SPAIR_CONFIG" --batch_sizes="$BATCH" --steps="$STEPS" --warmup="$WARMUP")
bf16_fine_tuned=(--modes=train --precisions=bf16 --backbones=fine_tuned)
if wants cats; then
    row train_bf16_fine_tuned 60 "${cats[@]}" "${bf16_fine_tuned[@]}" \
        --profile_dir="$work/profile/train_bf16_fine_tuned"
    row annotate_bf16 40 "${cats[@]}" --modes=annotate --precisions=bf16 \
        --profile_dir="$work/profile/annotate_bf16"
fi
wants torch && torch_rows
if wants cats; then
    row train_bf16_frozen 45 "${cats[@]}" --modes=train --precisions=bf16 --backbones=frozen
    row annotate_fp32 40 "${cats[@]}" --modes=annotate --precisions=fp32
    row train_fp32_fine_tuned 60 "${cats[@]}" --modes=train --precisions=fp32 --backbones=fine_tuned
    row train_fp32_frozen 45 "${cats[@]}" --modes=train --precisions=fp32 --backbones=frozen
    row train_bf16_fine_tuned_xla_attention 60 "${cats[@]}" "${bf16_fine_tuned[@]}" \
        --config.model.attention=xla
fi

# ---- input ----
if wants input; then
    if wait "$data_pid"; then
        for workers in $INPUT_WORKERS; do
            row "input_${workers}_workers" 20 --config=configs/spair.py --batch_sizes="$BATCH" \
                --modes=input --input_batches=40 --config.dataset.data_dir="$work/tfds" \
                --config.dataset.num_workers="$workers"
        done
    else
        echo "input rows: the SPair-like data could not be prepared:" | tee -a "$log"
        tail -20 "$work/data.log" | tee -a "$log"
    fi
fi

# ---- parity ----
if wants parity; then
    echo "== parity ($(left)s left)" | tee -a "$log"
    timeout "$(left)" $PY benchmarks/gpu_parity.py --json="$out/parity.json" \
        --models="$PARITY_MODELS" >"$work/parity.log" 2>&1 || echo "parity: exit $?" | tee -a "$log"
    # The parity tests themselves, with true float32 matmuls (XLA's GPU default is TF32).
    JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} JAX_DEFAULT_MATMUL_PRECISION=highest \
        timeout "$(left)" $PY -m pytest -q -n 0 -rf tests/test_cats_parity.py \
        tests/test_catspp_parity.py >"$out/parity_tests.log" 2>&1
    echo "parity tests: exit $?, $(tail -1 "$out/parity_tests.log")" | tee -a "$log"
fi

# ---- catspp ----
catspp_files=()
if wants catspp; then
    for batch in $CATSPP_BATCHES; do
        for precision in fp32 bf16; do
            name=catspp_train_${precision}_$batch
            if (($(left) < 60)); then
                echo "$name: skipped, $(left)s left" | tee -a "$log"
                continue
            fi
            echo "== $name ($(left)s left)" | tee -a "$log"
            catspp_files+=("$work/catspp/$name.json")
            timeout "$(left)" $PY -m matchme_jax.bench --compile_only \
                --json="$work/catspp/$name.json" --config="$CATSPP_CONFIG" --batch_sizes="$batch" \
                --modes=train --precisions=$precision --backbones=fine_tuned >>"$log" 2>&1 ||
                echo "$name: exit $?" | tee -a "$log"
        done
    done
fi

# ---- dinov2 ----
if wants dinov2; then
    dinov2=(--config="$DINOV2_CONFIG" --batch_sizes="$BATCH" --steps="$STEPS" --warmup="$WARMUP")
    row dinov2_b14_train_bf16_frozen 60 "${dinov2[@]}" --modes=train --precisions=bf16 \
        --backbones=frozen
    row dinov2_b14_train_bf16_last_blocks 60 "${dinov2[@]}" --modes=train --precisions=bf16 \
        --backbones=last_blocks
    row dinov2_b14_annotate_bf16 40 "${dinov2[@]}" --modes=annotate --precisions=bf16
    row dinov2_l14_train_memory 60 "${dinov2[@]}" --compile_only --modes=train \
        --precisions=bf16,fp32 --backbones=frozen,last_blocks --config.model.backbone=dinov2_vitl14 \
        --config.model.hyperpixel_ids="(16,17,18,19,20,21,22,23)"
fi

# ---- results ----
((${#files[@]})) &&
    $PY -m matchme_jax.bench.collect --out_dir="$work/results" "${files[@]}" | tee -a "$log"
((${#catspp_files[@]})) &&
    $PY -m matchme_jax.bench.collect --out_dir="$work/results" --suffix=.catspp \
        "${catspp_files[@]}" | tee -a "$log"
if compgen -G "$work/results/*.json" >/dev/null; then
    mkdir -p benchmarks/results
    cp "$work"/results/*.json benchmarks/results/
    cp "$work"/results/*.json "$out"/
fi
for trace in "$work"/profile/*/0; do
    [ -d "$trace" ] && $PY -m matchme_jax.bench.profile "$trace" --top=30 >>"$log" 2>&1
done
tar -czf "$out/raw.tar.gz" -C "$work" rows catspp parity.log data.log 2>/dev/null
[ -d "$work/profile" ] && tar -czf "$out/profile.tar.gz" -C "$work" --exclude='*.xplane.pb' \
    --exclude='vm.trace.json.gz' profile
echo "done ($(left)s left)" | tee -a "$log"

#!/usr/bin/env bash
# THE prepared GPU benchmark of issue 8, for one session with a GPU and ~10 minutes of it.
#
# Rows, most important first (CATs: ResNet-101, depth 1, 256 x 256, batch 32 pairs, random data):
#   1. train step, backbone fine-tuned and frozen, bfloat16 (attention "auto": cuDNN)
#   2. annotation (the teacher's forward pass), bfloat16 and float32
#   3. train step, fine-tuned and frozen, float32 (XLA's default TF32 matmuls on the GPU)
#   4. train step, fine-tuned, bfloat16 with XLA attention (is cuDNN's kernel faster here?);
#      if the cuDNN rows of 1 failed, 2 and 4 use XLA attention and 4 covers both backbones
#   5. host input pipeline on SPair-like JPEGs (benchmarks/spair_like_data.py), 0, 4, 8 and 14
#      grain workers
# Each row group runs in its own process with what is left of BUDGET_S seconds (default 540),
# and every finished row is kept even if a later one is killed. Then everything is merged into
# benchmarks/results/<card>.json (and copied to $OUT, where the device tool collects files).
#
# Before (on a machine with network, once):  bash benchmarks/fetch_wheels.sh   (fills .whl/)
# Device tool:  run(command="bash benchmarks/run_gpu.sh", carry=[".whl"], timeout_s=600)
# Then commit benchmarks/results/<card>.json and put its table in the README's Throughput section.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-540}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
# A CPU smoke test of this script: SPAIR_CONFIG=configs/spair.py:tiny BATCH=4 STEPS=1 WARMUP=0
# PYTHON=.venv/bin/python
SPAIR_CONFIG=${SPAIR_CONFIG:-configs/spair.py}
BATCH=${BATCH:-32}
deadline=$((SECONDS + BUDGET_S))
work=$(mktemp -d)
files=()  # every row group's JSON, in run order
log=${OUT:-$work}/bench.log

if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/matchme_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/matchme_site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$log" 2>&1

# rows NAME ARGS...: one bench process with the time left (none started under 60 s).
rows() {
    local name=$1 left=$((deadline - SECONDS))
    shift
    if ((left < 60)); then
        echo "$name: skipped, ${left}s left" | tee -a "$log"
        return
    fi
    echo "== $name (${left}s left)" | tee -a "$log"
    files+=("$work/$name.json")
    timeout "$left" "$PY" -m matchme_jax.bench --json="$work/$name.json" --steps="$STEPS" \
        --warmup="$WARMUP" "$@" >>"$log" 2>&1 || echo "$name: exit $?" | tee -a "$log"
}

spair=(--config="$SPAIR_CONFIG" --batch_sizes="$BATCH")
rows train_bf16 "${spair[@]}" --modes=train --precisions=bf16 --backbones=fine_tuned,frozen
# cuDNN can refuse the attention only when XLA compiles it, past "auto"'s fallback: then the
# remaining bfloat16 rows use XLA's attention, and the bf16 train rows are run again with it.
attention=auto
if [ ! -s "$work/train_bf16.json" ] || grep -q '"error"' "$work/train_bf16.json"; then
    attention=xla
    echo "bf16 train rows failed with attention=auto: using attention=xla" | tee -a "$log"
fi
rows annotate "${spair[@]}" --modes=annotate --precisions=bf16,fp32 \
    --config.model.attention=$attention
rows train_fp32 "${spair[@]}" --modes=train --precisions=fp32 --backbones=fine_tuned,frozen
if [ $attention = auto ]; then
    rows train_bf16_xla_attention "${spair[@]}" --modes=train --precisions=bf16 \
        --backbones=fine_tuned --config.model.attention=xla
else
    rows train_bf16_xla_attention "${spair[@]}" --modes=train --precisions=bf16 \
        --backbones=fine_tuned,frozen --config.model.attention=xla
fi
# The host pipeline on SPair-like JPEGs (VOC-sized images in SPair-71k's layout, made here).
if $PY benchmarks/spair_like_data.py --out="$work/manual" --pairs=1500 --images=300 >>"$log" 2>&1 &&
    $PY -m data_builders.prepare --dataset=spair71k --data_dir="$work/tfds" \
        --manual_dir="$work/manual" >>"$log" 2>&1; then
    input=(--config="$SPAIR_CONFIG" --config.dataset.data_dir="$work/tfds" --batch_sizes="$BATCH"
        --modes=input --input_batches=40)
    for workers in 0 4 8 14; do
        rows "input_${workers}_workers" "${input[@]}" --config.dataset.num_workers=$workers
    done
else
    echo "input rows: the SPair-like data could not be prepared (see above)" | tee -a "$log"
fi

$PY -m matchme_jax.bench.collect --out_dir=benchmarks/results "${files[@]}" | tee -a "$log"
if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/*.json "$OUT"/
fi

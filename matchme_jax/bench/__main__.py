"""`python -m matchme_jax.bench`: flags -> `matchme_jax.bench.run` -> the JSON file."""

import json
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from matchme_jax import atomic
from matchme_jax.bench import BACKBONES, MODES, PRECISIONS, run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_JSON = flags.DEFINE_string("json", None, "Where to write the results (JSON).")
_MODES = flags.DEFINE_list("modes", ["train", "annotate"], f"Any of {MODES}.")
_BATCH_SIZES = flags.DEFINE_list(
    "batch_sizes", [], "Batch sizes (pairs) to time; default: config.train.batch_size."
)
_PRECISIONS = flags.DEFINE_list("precisions", ["bf16", "fp32"], f"Any of {tuple(PRECISIONS)}.")
_BACKBONES = flags.DEFINE_list("backbones", ["fine_tuned"], f"Train mode: any of {BACKBONES}.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed calls per row (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls before timing (after compiling).")
_INPUT_BATCHES = flags.DEFINE_integer("input_batches", 30, "Input mode: batches to time.")
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Compile the train/annotate rows (FLOPs, planned memory), run nothing."
)
_PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", None, "Trace 3 more calls of each train/annotate row there (jax.profiler)."
)
flags.mark_flags_as_required(["config", "json"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    batch_sizes = [int(b) for b in _BATCH_SIZES.value] or [config.train.batch_size]
    path = Path(_JSON.value)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(result: dict) -> None:
        path.write_text(atomic.to_json(result, indent=1) + "\n")

    result = run(
        config,
        modes=_MODES.value,
        batch_sizes=batch_sizes,
        precisions=_PRECISIONS.value,
        backbones=_BACKBONES.value,
        steps=_STEPS.value,
        warmup=_WARMUP.value,
        input_batches=_INPUT_BATCHES.value,
        compile_only=_COMPILE_ONLY.value,
        profile_dir=_PROFILE_DIR.value,
        after_each_row=write,
    )
    write(result)
    for row in result["rows"]:
        print(json.dumps({k: v for k, v in row.items() if k != "step_times_s"}))


if __name__ == "__main__":
    app.run(main)

r"""Evaluates a PF-PASCAL model on PF-WILLOW's test pairs, as the CATs papers do.

    python -m data_builders.prepare --dataset=pf_willow --manual_dir=DIR_WITH_PF-WILLOW
    python run.py --config=configs/pfwillow.py --workdir=W --config.init_from=W_PASCAL/gen_2

Writes W/eval/pf_willow_test.{json,md} and match pictures. The threshold is the official CATs
`bbox` for PF-WILLOW (`willow_cats`: max(max_x, max_y) + 1 of the source keypoints, a quirk of
its code); `--config.eval.threshold=bbox_kp` gives the correct keypoint extent (CATs++).

`:tiny` evaluates a seconds-sized model on the builder's dummy data (CI; pass init_from).
"""

import ml_collections

from matchme_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = defaults.base_config()
    config.mode = "evaluate"
    config.dataset.name = "pf_willow"
    config.dataset.num_workers = defaults.REAL_DATA_WORKERS
    config.eval.threshold = "willow_cats"
    del config.evals["validation"]  # PF-WILLOW has a test split only

    if arg == "tiny":
        defaults.shrink_to_tiny_on_dummy_data(config, "pf_willow")
    elif arg:
        raise ValueError(f"configs/pfwillow.py takes no argument or ':tiny', got {arg!r}")
    return config

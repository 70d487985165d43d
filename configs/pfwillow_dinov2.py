r"""Evaluates a DINOv2 PF-PASCAL model (configs/pfpascal_dinov2.py) on PF-WILLOW's test pairs.

    python -m data_builders.prepare --dataset=pf_willow --manual_dir=DIR_WITH_PF-WILLOW
    python run.py --config=configs/pfwillow_dinov2.py --workdir=W \
        --config.init_from=W_PASCAL_DINOV2/gen_2

Everything as configs/pfwillow.py (the official CATs `willow_cats` threshold;
`--config.eval.threshold=bbox_kp` for the keypoints' extent) except the model, CATs on DINOv2
ViT-B/14 at 224 px. Results: not measured yet.

`:tiny` evaluates a seconds-sized model on the builder's dummy data (CI; pass init_from).
"""

from pathlib import Path

import ml_collections

from matchme_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "tiny"):
        raise ValueError(f"configs/pfwillow_dinov2.py takes no argument or ':tiny', got {arg!r}")
    config = defaults.load_config_file(Path(__file__).with_name("pfwillow.py"))
    defaults.use_dinov2(config)
    if arg == "tiny":
        defaults.shrink_to_tiny_on_dummy_data(config, "pf_willow")
    return config

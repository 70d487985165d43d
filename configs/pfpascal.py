r"""CATs teacher and students on PF-PASCAL, the official CATs recipe (ResNet-101, 256 px).

    python -m data_builders.prepare --dataset=pf_pascal --manual_dir=DIR_WITH_PF-PASCAL
    python run.py --config=configs/pfpascal.py --workdir=W \
        --config.model.backbone_weights=resnet101-5d3b4d8f.pth

PCK uses the image threshold (max(256, 256) = 256), as the official PF-PASCAL evaluation; the
training pairs' listed flips are applied on device. The published CATs reaches 75.4 / 92.6 / 96.4
PCK@0.05/0.1/0.15 with a fine-tuned backbone. Runtime and results here: not measured yet.
`configs/pfwillow.py` evaluates the resulting model on PF-WILLOW.

`:tiny` trains a seconds-sized model on the builder's dummy data (CI).
"""

import ml_collections

from matchme_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = defaults.base_config()
    config.dataset.name = "pf_pascal"
    config.dataset.num_workers = defaults.REAL_DATA_WORKERS
    config.eval.threshold = "img"
    config.selftrain.unlabeled_pairs = "train_images"
    # About 100 epochs of PF-PASCAL's training pairs (roughly 2,900) at batch 32.
    config.train.steps = 9_200
    config.train.log_every = 50
    config.train.checkpoint_every = 500

    if arg == "tiny":
        defaults.shrink_to_tiny_on_dummy_data(config, "pf_pascal")
    elif arg:
        raise ValueError(f"configs/pfpascal.py takes no argument or ':tiny', got {arg!r}")
    return config

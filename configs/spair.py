r"""CATs teacher and students on SPair-71k, the official CATs recipe (ResNet-101, 256 px).

    python -m data_builders.prepare --dataset=spair71k --manual_dir=DIR_WITH_SPair-71k.tar.gz
    python run.py --config=configs/spair.py --workdir=W \
        --config.model.backbone_weights=resnet101-5d3b4d8f.pth

The backbone starts from torchvision's ImageNet ResNet-101 (`model.backbone_weights`, any
.pth/.npz/.safetensors of torchvision-named weights) and is fine-tuned, as for the published
49.9 PCK@0.1 of CATs; the self-training draws its unlabeled pairs among the training images.
Runtime and results: a multi-GPU job, not measured yet.

`:tiny` trains a seconds-sized model on the builder's dummy data (CI).
"""

import ml_collections

from matchme_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = defaults.base_config()
    config.dataset.name = "spair71k"
    config.dataset.num_workers = defaults.REAL_DATA_WORKERS
    config.selftrain.unlabeled_pairs = "train_images"
    config.selftrain.num_unlabeled_pairs = 20_000
    # 100 epochs of the 53,340 training pairs at batch 32, as the official train.py.
    config.train.steps = 166_700
    config.train.log_every = 100
    config.train.checkpoint_every = 2_000

    if arg == "tiny":
        defaults.shrink_to_tiny_on_dummy_data(config, "spair71k")
    elif arg:
        raise ValueError(f"configs/spair.py takes no argument or ':tiny', got {arg!r}")
    return config

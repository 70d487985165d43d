r"""Pretrains the backbone of configs/synthetic.py on generator-rendered objects (ImageNet's role).

    python -m matchme_jax.pretrain --config=configs/pretrain/synthetic.py --out=W/backbone.npz
    python run.py --config=configs/synthetic.py --workdir=W/run \
        --config.model.backbone_weights=W/backbone.npz

Classification of single-object images into the benchmark's 5 categories plus 6 other part-built
ones (matchme_jax/pretrain.py), from seeds no benchmark image uses. The backbone is the one
configs/synthetic.py builds (read from that file, so the two cannot drift apart). Images are
rendered at the benchmark's 112-160 px and resized to its 64-px canvas.

`:tiny` is the test-sized variant (seconds): the same backbone, a few images and steps.
(This file lives in configs/pretrain/ because configs/*.py are correspondence experiments.)
"""

from pathlib import Path

import ml_collections

from matchme_jax import defaults

_SYNTHETIC = Path(__file__).resolve().parents[1] / "synthetic.py"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # The correspondence model whose backbone is pretrained (its other fields are unused here).
    config.model = defaults.load_config_file(_SYNTHETIC).model
    config.model.backbone_weights = None  # what this pretraining makes
    # Pretrained strided; configs/synthetic.py dilates its last stage when it uses the weights.
    # (Pretrained dilated, the untrained model matched worse: 17.3 PCK@0.1 on validation, 21.2.)
    config.model.dilated_stages = ()

    config.data = ml_collections.ConfigDict()
    config.data.seed = 0  # pretraining seed: image i of a split is image_seed(seed, split, i)
    config.data.num_classes = 11  # 5 benchmark categories + 6 extra part-built ones
    config.data.render_size = (112, 160)  # the default benchmark's min/max image side
    config.data.image_size = 64  # configs/synthetic.py's dataset.image_size
    config.data.num_train_images = 24_000
    config.data.num_heldout_images = 2_200

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64
    config.train.steps = 4_000
    config.train.shift_pixels = 4
    # Colour changes: every category has its typical colours, and a classifier that may use them
    # learns features that match by colour. In a random channel order, sometimes grey, it must
    # tell the classes apart by shape. (The untrained correspondence model, validation PCK@0.1:
    # 27.8 with these weights, 24.8 with weights pretrained without them.)
    config.train.permute_channels = True
    config.train.grayscale_p = 0.2
    config.train.log_every = 250

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 300
    config.optim.weight_decay = 0.05

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 256

    if arg == "tiny":
        config.data.num_train_images = 44
        config.data.num_heldout_images = 22
        config.train.batch_size = 22
        config.train.steps = 3
        config.train.log_every = 1
        config.eval.batch_size = 22
    elif arg:
        raise ValueError(f"configs/pretrain/synthetic.py takes no argument or ':tiny', got {arg!r}")
    return config

r"""CATs++ teacher and students on SPair-71k, the official CATs++ recipe (ResNet-101, 512 px).

    python -m data_builders.prepare --dataset=spair71k --manual_dir=DIR_WITH_SPair-71k.tar.gz
    python run.py --config=configs/spair_catspp.py --workdir=W \
        --config.model.backbone_weights=resnet101-5d3b4d8f.pth

Everything as configs/spair.py except the model and the CATs++ training recipe:
512-px images, a 32 x 32 flow grid of 16-px cells, head lr 3e-4, backbone lr 3e-6, the backbone
fine-tuned from torchvision's ImageNet ResNet-101. A 64^4 correlation at batch 32 is
large: docs/scaling.md gives the memory per batch; `--config.model.dtype=bfloat16`
halves the 4-D tensors. Runtime and results: not measured yet.

`:tiny` trains a seconds-sized CATs++ on the builder's dummy data (CI).
"""

from pathlib import Path

import ml_collections

from matchme_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "tiny"):
        raise ValueError(f"configs/spair_catspp.py takes no argument or ':tiny', got {arg!r}")
    config = defaults.load_config_file(Path(__file__).with_name("spair.py"))
    defaults.use_catspp(config)
    if arg == "tiny":
        defaults.shrink_to_tiny_on_dummy_data(config, "spair71k")
    return config

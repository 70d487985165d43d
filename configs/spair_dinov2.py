r"""CATs on a frozen DINOv2 ViT-B/14 on SPair-71k: teacher and students at 224 px.

    python -m data_builders.prepare --dataset=spair71k --manual_dir=DIR_WITH_SPair-71k.tar.gz
    python run.py --config=configs/spair_dinov2.py --workdir=W \
        --config.model.backbone_weights=dinov2_vitb14_pretrain.pth

Everything as configs/spair.py except the backbone (`defaults.use_dinov2`): the official DINOv2
ViT-B/14 weights (torch hub's `dinov2_vitb14_pretrain.pth`, or Hugging Face's
`facebook/dinov2-base` `model.safetensors`, which needs no torch), frozen; CATs taps blocks 4-11,
whose 16 x 16 patch grid at 224 px is CATs' own grid. Variants, as overrides:

* fine-tune the last 2 blocks: `--config.model.freeze_backbone=False
  --config.model.trainable_blocks=2` (backbone lr `config.optim.backbone_lr`, 3e-6);
* registers: `--config.model.backbone=dinov2_vitb14_reg` with `dinov2_vitb14_reg4_pretrain.pth`;
* higher resolution, a 32 x 32 grid of 14-px cells: `--config.dataset.image_size=448
  --config.model.feature_size=32` (4x the aggregator's tokens).

Runtime and results: not measured yet.

`:tiny` trains a seconds-sized CATs on a tiny random ViT on the builder's dummy data (CI).
"""

from pathlib import Path

import ml_collections

from matchme_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "tiny"):
        raise ValueError(f"configs/spair_dinov2.py takes no argument or ':tiny', got {arg!r}")
    config = defaults.load_config_file(Path(__file__).with_name("spair.py"))
    defaults.use_dinov2(config)
    if arg == "tiny":
        defaults.shrink_to_tiny_on_dummy_data(config, "spair71k")
    return config

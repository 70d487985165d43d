r"""CATs on a frozen DINOv2 ViT-B/14 on PF-PASCAL: teacher and students at 224 px.

    python -m data_builders.prepare --dataset=pf_pascal --manual_dir=DIR_WITH_PF-PASCAL
    python run.py --config=configs/pfpascal_dinov2.py --workdir=W \
        --config.model.backbone_weights=dinov2_vitb14_pretrain.pth

Everything as configs/pfpascal.py except the backbone (`defaults.use_dinov2`, see
configs/spair_dinov2.py for the weights and the variants). PCK uses the image threshold,
224 at 224 px. `configs/pfwillow_dinov2.py` evaluates the resulting model on PF-WILLOW.
Runtime and results: not measured yet.

`:tiny` trains a seconds-sized CATs on a tiny random ViT on the builder's dummy data (CI).
"""

from pathlib import Path

import ml_collections

from matchme_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "tiny"):
        raise ValueError(f"configs/pfpascal_dinov2.py takes no argument or ':tiny', got {arg!r}")
    config = defaults.load_config_file(Path(__file__).with_name("pfpascal.py"))
    defaults.use_dinov2(config)
    if arg == "tiny":
        defaults.shrink_to_tiny_on_dummy_data(config, "pf_pascal")
    return config

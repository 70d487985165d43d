r"""Evaluates a CATs++ PF-PASCAL model on PF-WILLOW's test pairs, as the CATs++ paper does.

    python -m data_builders.prepare --dataset=pf_willow --manual_dir=DIR_WITH_PF-WILLOW
    python run.py --config=configs/pfwillow_catspp.py --workdir=W \
        --config.init_from=W_PASCAL_CATSPP/gen_2

Everything as configs/pfwillow.py except the model (configs/pfpascal_catspp.py's CATs++ at
512 px) and the threshold: CATs++ reports PF-WILLOW with the keypoints' extent (`bbox_kp`, its
`bbox-kp`), not the CATs code's `willow_cats` quirk.

`:tiny` evaluates a seconds-sized CATs++ on the builder's dummy data (CI; pass init_from).
"""

from pathlib import Path

import ml_collections

from matchme_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    if arg not in (None, "tiny"):
        raise ValueError(f"configs/pfwillow_catspp.py takes no argument or ':tiny', got {arg!r}")
    config = defaults.load_config_file(Path(__file__).with_name("pfwillow.py"))
    defaults.use_catspp(config)
    config.eval.threshold = "bbox_kp"
    if arg == "tiny":
        defaults.shrink_to_tiny_on_dummy_data(config, "pf_willow")
    return config

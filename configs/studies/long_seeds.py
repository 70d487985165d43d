"""Robustness at four times the budget: `configs/synthetic.py:long` for 3 training seeds on 3
benchmarks (generator seeds), where every student beats its teacher on test (README).

python -m matchme_jax.study --study=configs/studies/long_seeds.py --workdir=W

Nine runs of about 24 minutes each on a 2-core CPU (each trains its own teacher).
"""


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py:long",
        overrides={},
        cells={"long": {}},
        seeds={"dataset.generator_seed": (0, 1, 2), "seed": (0, 1, 2)},
    )

"""Robustness: the default config for 3 training seeds on 3 benchmarks (generator seeds).

python -m matchme_jax.study --study=configs/studies/seeds.py --workdir=W
"""


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides={},
        cells={"default": {}},
        seeds={"dataset.generator_seed": (0, 1, 2), "seed": (0, 1, 2)},
    )

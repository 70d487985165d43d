"""Generations 0..4: does the student keep improving, or does error accumulate?

python -m matchme_jax.study --study=configs/studies/generations.py --workdir=W
"""


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides={},
        cells={"4 generations": {"selftrain.generations": 4}},
        seeds={"seed": (0, 1)},
    )

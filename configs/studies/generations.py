"""Generations 0..4: does the student keep improving, or does error accumulate?

python -m matchme_jax.study --study=configs/studies/generations.py --workdir=W

docs/studies/generations.* is this study on the default of 1b6ad91 (weak student augmentation);
docs/studies/generations_strong.* the same on b7f3373, whose students augmented strongly. Both
were run at tau 0.7, the default then (c2c08ce chose 0.3 on validation), which the study keeps.
"""


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.tau": 0.7},
        cells={"4 generations": {"selftrain.generations": 4}},
        seeds={"seed": (0, 1)},
    )

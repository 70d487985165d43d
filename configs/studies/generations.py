"""Generations 0..4: does the student keep improving, or does error accumulate? At the default
tau (0.7) and at 0.3, which keeps more, less precise pseudo labels.

python -m matchme_jax.study --study=configs/studies/generations.py --workdir=W

docs/studies/generations.* is this study on the default of 1b6ad91 (weak student augmentation;
the tau=0.7 cell run on 3c53369, the tau=0.3 cell on 263eb9f); docs/studies/generations_strong.*
its first cell on b7f3373, whose students augmented strongly.
"""


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 4},
        cells={"tau=0.7 (the default)": {}, "tau=0.3": {"selftrain.tau": 0.3}},
        seeds={"seed": (0, 1)},
    )

"""Generations 0..4: does the student keep improving, or does error accumulate?

    python -m matchme_jax.study --study=configs/studies/generations.py --workdir=W --teachers=T

docs/studies/generations.* is this study on the fine-tuned default (tau 0.7, labeled fraction
0.95; generation 1 is the labeled-fraction study's 0.95 cell, generations 2-4 ran on 6568c28);
docs/studies/generations_frozen.* on the frozen default of 1b6ad91 (weak student augmentation),
which also had a cell at tau 0.3 (`"tau=0.3": {"selftrain.tau": 0.3}`); its tau 0.7 cell ran on
3c53369, its tau 0.3 cell on 263eb9f. docs/studies/generations_strong.* is its first cell on
b7f3373, whose students augmented strongly.
"""


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 4},
        cells={"the default": {}},
        seeds={"seed": (0, 1)},
    )

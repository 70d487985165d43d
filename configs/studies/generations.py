"""Generations 0..4: does the student keep improving, or does error accumulate?

python -m matchme_jax.study --study=configs/studies/generations.py --workdir=W

The students augment strongly (MatchMe's augmentation), as the embedded default did when
docs/studies/generations.* was run (before 1b6ad91, which made the weak augmentation the default).
"""

from matchme_jax import defaults


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides=defaults.augment_overrides("student", "strong"),
        cells={"4 generations": {"selftrain.generations": 4}},
        seeds={"seed": (0, 1)},
    )

"""The confidence threshold tau: the student's PCK@0.1, its pseudo points and their precision.

    python -m matchme_jax.study --study=configs/studies/tau.py --workdir=W

One student generation per run; the cells share each seed's teacher (study.py), so they compare
students of the very same teacher.

The students augment strongly (MatchMe's augmentation), as the embedded default did when
docs/studies/tau.* was run (before 1b6ad91, which made the weak augmentation the default).
"""

from matchme_jax import defaults


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 1, **defaults.augment_overrides("student", "strong")},
        cells={f"tau={tau}": {"selftrain.tau": tau} for tau in (0.1, 0.3, 0.5, 0.7, 0.9)},
        seeds={"seed": (0, 1)},
    )

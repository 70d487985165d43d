"""The ceiling: students trained on the unlabeled pairs' true keypoints (the oracle annotator)
against students trained on the teacher's pseudo labels, same budget and mix.

    python -m matchme_jax.study --study=configs/studies/oracle.py --workdir=W

The students augment strongly (MatchMe's augmentation), as the embedded default did when
docs/studies/oracle.* was run (before 1b6ad91, which made the weak augmentation the default).
"""

from matchme_jax import defaults


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 1, **defaults.augment_overrides("student", "strong")},
        cells={
            "teacher's pseudo labels": {},
            "oracle (true keypoints)": {"selftrain.annotator": "oracle"},
        },
        seeds={"seed": (0, 1)},
    )

"""The ceiling: students trained on the unlabeled pairs' true keypoints (the oracle annotator)
against students trained on the teacher's pseudo labels, same budget and mix.

    python -m matchme_jax.study --study=configs/studies/oracle.py --workdir=W
"""


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 1},
        cells={
            "teacher's pseudo labels": {},
            "oracle (true keypoints)": {"selftrain.annotator": "oracle"},
        },
        seeds={"seed": (0, 1)},
    )

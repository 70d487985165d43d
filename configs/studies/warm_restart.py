"""The student from the teacher's weights at an equal budget: a 200-step teacher, then 200 student
steps from its weights (400 in all, the default teacher's budget), with the default mix (95 %
labeled pairs, 5 % pseudo-labelled) and, as the control, on the labeled pairs alone.

    python -m matchme_jax.study --study=configs/studies/warm_restart.py --workdir=W --teachers=T

Compare with the default's 400-step teachers (the generations study's generation 0).
docs/studies/warm_restart.* is this study on 7277738 (its first cell) and 05dadcc (the control,
which needs f76ea3e).
"""


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides={
            "selftrain.generations": 1,
            "train.steps": 200,
            "train.checkpoint_every": 100,
            "selftrain.student_init": "teacher",
        },
        cells={
            "from the teacher": {},
            "from the teacher, labeled pairs only": {"selftrain.labeled_fraction": 1.0},
        },
        seeds={"seed": (0, 1)},
    )

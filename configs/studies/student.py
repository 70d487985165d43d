"""The student on the current default: MatchMe's strong augmentation instead of the teacher's
weak one, the teacher's weights instead of the teacher's initialisation, and the forward-backward
consistency check (0.5 cells), each against the default student (weak augmentation, tau 0.7).

    python -m matchme_jax.study --study=configs/studies/student.py --workdir=W --teachers=T

One student generation per run; with one --teachers folder every cell learns from the same teacher
per seed. docs/studies/student.* is this study on the fine-tuned default (tau 0.7, 8743cba);
docs/studies/student_frozen.* on the frozen default before 9ec3f30 (also tau 0.7);
docs/studies/student_strong.* asked the same on b7f3373, whose students augmented strongly
(configs/studies/student_strong.py).
"""

from matchme_jax import defaults


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 1},
        cells={
            "the default student": {},
            "strong augmentation": defaults.augment_overrides("student", "strong"),
            "student from the teacher": {"selftrain.student_init": "teacher"},
            "consistency check (0.5 cells)": {"selftrain.consistency_radius": 0.5},
        },
        seeds={"seed": (0, 1)},
    )

"""The student's augmentation (weak vs strong) and initialisation (same as the teacher's, or
the teacher's weights), and the forward-backward consistency check on vs off.

    python -m matchme_jax.study --study=configs/studies/student.py --workdir=W
"""

from matchme_jax import defaults


def get_study() -> dict:
    weak = {f"augment.student.{k}": v for k, v in defaults.augment_preset("weak").items()}
    return dict(
        config="configs/synthetic.py",
        overrides={},
        cells={
            "strong augmentation (default)": {},
            "weak augmentation": weak,
            "student from the teacher": {"selftrain.student_init": "teacher"},
            "consistency check (1 cell)": {"selftrain.consistency_radius": 1.0},
        },
        seeds={"seed": (0, 1)},
    )

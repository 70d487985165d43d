"""On the strong-student default of b7f3373: the student's augmentation (weak instead of strong,
also with tau 0.9), its initialisation (the teacher's weights instead of the teacher's
initialisation), and the forward-backward consistency check (0.5 cells).

    python -m matchme_jax.study --study=configs/studies/student_strong.py --workdir=W \\
        --teachers=T

One student generation per run. The students augment strongly unless a cell says otherwise, as the
embedded default did when docs/studies/student_strong.* was run (on b7f3373, where this file was
configs/studies/student.py; 1b6ad91 made the weak augmentation the default, which student.py now
studies). The reference student (strong augmentation, the teacher's initialisation, no check) is
the tau=0.7 cell of docs/studies/tau_strong.*; with one --teachers folder for both studies, every
cell learned from the same teacher per seed.
"""

from matchme_jax import defaults


def get_study() -> dict:
    weak = defaults.augment_overrides("student", "weak")
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 1, **defaults.augment_overrides("student", "strong")},
        cells={
            "weak augmentation": weak,
            "weak augmentation, tau=0.9": {**weak, "selftrain.tau": 0.9},
            "student from the teacher": {"selftrain.student_init": "teacher"},
            "consistency check (0.5 cells)": {"selftrain.consistency_radius": 0.5},
        },
        seeds={"seed": (0, 1)},
    )

"""How many labeled pairs: teachers trained on 16, 50 and all 200 labeled pairs, each with a
student on its pseudo labels and an oracle student on the unlabeled pairs' true keypoints.

    python -m matchme_jax.study --study=configs/studies/labels.py --workdir=W --teachers=T

Self-training should help most where labels are scarce. `dataset.train_pairs=N` keeps one fixed
random draw of N labeled pairs, the same for every seed; each N trains its own teacher, shared by
its two students. The 200-pair cells are the default runs of configs/studies/oracle.py.

The students augment strongly (MatchMe's augmentation), as the embedded default did when
docs/studies/labels.* was run (before 1b6ad91, which made the weak augmentation the default).
"""

from matchme_jax import defaults

LABELED_PAIRS = (16, 50)  # and all of them: the default
ALL_PAIRS = 200  # the embedded benchmark's train split, for the cell's name


def get_study() -> dict:
    cells = {}
    for n in (*LABELED_PAIRS, None):
        labels = {} if n is None else {"dataset.train_pairs": n}
        name = f"{n or ALL_PAIRS} labeled pairs"
        cells[f"{name}, pseudo labels"] = labels
        cells[f"{name}, oracle"] = {**labels, "selftrain.annotator": "oracle"}
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 1, **defaults.augment_overrides("student", "strong")},
        cells=cells,
        seeds={"seed": (0, 1)},
    )

"""How many labeled pairs: teachers trained on 50 and all 200 labeled pairs, each with a student
on its pseudo labels and an oracle student on the unlabeled pairs' true keypoints.

    python -m matchme_jax.study --study=configs/studies/labels.py --workdir=W --teachers=T

Self-training should help most where labels are scarce. `dataset.train_pairs=N` keeps one fixed
random draw of N labeled pairs, the same for every seed; each N trains its own teacher, shared by
its two students. The oracle sees its pairs in half of each batch (the oracle study's cell with
the most room). The 200-pair cells are runs of configs/studies/oracle.py.
docs/studies/labels.* is this study on the fine-tuned default (the 50-pair cells ran on 14a18ca);
docs/studies/labels_strong.* with 16, 50 and 200 pairs on the frozen default of b7f3373, whose
students augmented strongly and whose oracle saw half of each batch, the default mix then (the
study file of ac58fe0).
"""

LABELED_PAIRS = (50,)  # and all of them: the default
ALL_PAIRS = 200  # the embedded benchmark's train split, for the cell's name


def get_study() -> dict:
    cells = {}
    for n in (*LABELED_PAIRS, None):
        labels = {} if n is None else {"dataset.train_pairs": n}
        name = f"{n or ALL_PAIRS} labeled pairs"
        cells[f"{name}, pseudo labels"] = labels
        cells[f"{name}, oracle"] = {
            **labels,
            "selftrain.annotator": "oracle",
            "selftrain.labeled_fraction": 0.5,
        }
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 1},
        cells=cells,
        seeds={"seed": (0, 1)},
    )

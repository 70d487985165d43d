"""Self-training's gain against the number of labeled pairs: 100, 120 and 150 of the 200.

    python -m matchme_jax.study --study=configs/studies/label_count.py --workdir=W --teachers=T

Between the labels study's two regimes: with 200 labeled pairs the teacher clears 30 PCK@0.1 but
even the unlabeled pairs' true keypoints lift its student by only 2; with 50 the oracle gains 11
and the few-labels study's annotator (half of each student batch pseudo-labelled, tau 0.5, the
forward-backward check) 2.9, from a teacher at 21. Each count N keeps one fixed random draw of N
labeled pairs (`dataset.train_pairs`), trains its own teacher, and compares that annotator's
student with the default student (tau 0.7, labeled pairs 95 % of a batch) and with the oracle at
the annotator's mix. The 50-pair cells are the few-labels study's "tau 0.5, check" and the labels
study's oracle. docs/studies/label_count.* is this study on 284c0ae.
"""

LABELED_PAIRS = (150, 120, 100)
# The few-labels study's choice on validation (configs/studies/few_labels.py, "tau 0.5, check").
FEW_LABELS_ANNOTATOR = {"selftrain.tau": 0.5, "selftrain.consistency_radius": 0.5}


def get_study() -> dict:
    cells = {}
    for n in LABELED_PAIRS:
        labels = {"dataset.train_pairs": n}
        half = {**labels, "selftrain.labeled_fraction": 0.5}
        cells[f"{n} labeled pairs, the default student"] = labels
        cells[f"{n} labeled pairs, half, tau 0.5, check"] = {**half, **FEW_LABELS_ANNOTATOR}
        cells[f"{n} labeled pairs, oracle"] = {**half, "selftrain.annotator": "oracle"}
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 1},
        cells=cells,
        seeds={"seed": (0, 1)},
    )

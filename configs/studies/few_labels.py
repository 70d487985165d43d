"""Self-training with 50 labeled pairs, where the oracle gains 11 points: which annotator helps?

    python -m matchme_jax.study --study=configs/studies/few_labels.py --workdir=W --teachers=T

With 50 of the 200 labeled pairs the fine-tuned teacher loses 11 points, and a student on the
unlabeled pairs' true keypoints gains them back (configs/studies/labels.py), but the teacher's
pseudo labels at the default settings give nothing: at tau 0.7 fewer than half are right. Here
half of each student batch is pseudo-labelled (the oracle's mix) and the forward-backward check
(`selftrain.consistency_radius`, in feature cells) filters the teacher's matches. The teachers
are the labels study's 50-pair teachers (same key). docs/studies/few_labels.* is this study on
6c2abf1.
"""

FEW_LABELS = {"dataset.train_pairs": 50, "selftrain.labeled_fraction": 0.5}


def get_study() -> dict:
    check = {"selftrain.consistency_radius": 0.5}
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 1, **FEW_LABELS},
        cells={
            "tau 0.7": {},
            "tau 0.5, check": {"selftrain.tau": 0.5, **check},
            "tau 0.3, check": {"selftrain.tau": 0.3, **check},
        },
        seeds={"seed": (0, 1)},
    )

"""Where the teacher is asked: its confident feature cells against the pairs' own keypoints.

    python -m matchme_jax.study --study=configs/studies/query.py --workdir=W --teachers=T

The dense-oracle study finds that true correspondences help a student only where the benchmark's
keypoints lie: at points drawn uniformly over the object they give nothing. The teacher's pseudo
labels lie at feature-cell centres. `selftrain.query="true_keypoints"` (a diagnostic: it reads
where the unlabeled pairs' target keypoints are, never their source points) asks the teacher at
those keypoints instead, with the same tau and forward-backward check: is the place where the
pseudo labels lie what keeps them from helping? Both at the few-labels study's annotator (half
of each student batch pseudo-labelled, tau 0.5, the check at 0.5 cells).
"""

# The few-labels study's choice on validation (configs/studies/few_labels.py, "tau 0.5, check").
FEW_LABELS_ANNOTATOR = {
    "selftrain.labeled_fraction": 0.5,
    "selftrain.tau": 0.5,
    "selftrain.consistency_radius": 0.5,
}


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 1},
        cells={
            "cells in the target box": FEW_LABELS_ANNOTATOR,
            "the true target keypoints": {
                **FEW_LABELS_ANNOTATOR,
                "selftrain.query": "true_keypoints",
            },
        },
        seeds={"seed": (0, 1)},
    )

"""Where the points lie: the keypoint oracle against oracles drawn from the dense truth.

    python -m matchme_jax.study --study=configs/studies/dense_oracle.py --workdir=W --teachers=T

The oracle study's ceiling (the unlabeled pairs' ~8.6 annotated keypoints each) is the most any
pseudo labels of those pairs can give, at the budget's 400 steps. Is it the number of points per
pair that a student lacks? The teacher's pseudo labels lie at feature-cell centres anywhere on the
object, not at the annotated parts. `selftrain.annotator="oracle_dense"` gives each unlabeled pair
true points drawn at random from the generator's dense truth (visible in both images): up to 40
per pair (`selftrain.max_pseudo_points`, the default), and 9, about as many as the keypoints.
All at half of each student batch, the mix that gives the oracle the most room.
"""


def get_study() -> dict:
    half = {"selftrain.labeled_fraction": 0.5}
    dense = {**half, "selftrain.annotator": "oracle_dense"}
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 1},
        cells={
            "keypoint oracle": {**half, "selftrain.annotator": "oracle"},
            "dense oracle, 40 points a pair": dense,
            "dense oracle, 9 points a pair": {**dense, "selftrain.max_pseudo_points": 9},
        },
        seeds={"seed": (0, 1)},
    )

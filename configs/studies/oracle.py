"""The ceiling: students trained on the unlabeled pairs' true keypoints (the oracle annotator)
against the student of the teacher's pseudo labels, same teacher, budget and initialisation.

    python -m matchme_jax.study --study=configs/studies/oracle.py --workdir=W --teachers=T

The oracle learns from all 2000 unlabeled pairs, ~8.6 true keypoints each. At the default mix
(labeled pairs 95 % of a student batch) it sees them in 5 % of its batches; with half of each
batch it sees them ten times as often, the mix that gives it the most room.
docs/studies/oracle.* is this study on the fine-tuned default (its pseudo-label cell = the tau
study's tau=0.7 cell; the seed-0 oracle at half ran on 9ec3f30, which trains as this default does
apart from the mix, which it sets; the other oracles ran on 14a18ca). docs/studies/oracle_strong.*
is this study's first two cells on the frozen default of b7f3373, whose students augmented
strongly (MatchMe's augmentation; the study file of ac58fe0 pins it).
"""


def get_study() -> dict:
    oracle = {"selftrain.annotator": "oracle"}
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 1},
        cells={
            "teacher's pseudo labels": {},
            "oracle, the default mix": oracle,
            "oracle, half of each batch": {**oracle, "selftrain.labeled_fraction": 0.5},
        },
        seeds={"seed": (0, 1)},
    )

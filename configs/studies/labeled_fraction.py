"""The share of labeled pairs in a student batch (`selftrain.labeled_fraction`) at the default tau.

    python -m matchme_jax.study --study=configs/studies/labeled_fraction.py --workdir=W --teachers=T

At tau 0.7 the teacher's pseudo labels cover about 50 of the 2000 unlabeled pairs with about one
point each, against some 8 keypoints on each of the 200 labeled pairs: at a half of each batch
(0.5) the student sees each labeled pair half as often as its teacher did. One student generation
per run; with one --teachers folder every cell learns from the same teacher per seed.
docs/studies/labeled_fraction.* is this study on d2980e6 (its 0.5 cell = the tau=0.7 cell of
docs/studies/tau_half.*).
"""


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 1},
        cells={
            f"labeled_fraction={f}": {"selftrain.labeled_fraction": f} for f in (0.5, 0.8, 0.95)
        },
        seeds={"seed": (0, 1)},
    )

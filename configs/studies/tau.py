"""The confidence threshold tau: final-student PCK@0.1, pseudo points and their precision.

python -m matchme_jax.study --study=configs/studies/tau.py --workdir=W
"""


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides={},
        cells={f"tau={tau}": {"selftrain.tau": tau} for tau in (0.1, 0.3, 0.5, 0.7, 0.9)},
        seeds={"seed": (0, 1)},
    )

"""The confidence threshold tau: the student's PCK@0.1, its pseudo points and their precision.

    python -m matchme_jax.study --study=configs/studies/tau.py --workdir=W

One student generation per run; the cells share each seed's teacher (study.py), so they compare
students of the very same teacher. docs/studies/tau.* is this study on the default of 6568c28
(labeled pairs 95 % of a student batch; the tau=0.7 cell is the labeled-fraction study's 0.95
cell, the others ran on 14a18ca); docs/studies/tau_half.* on the fine-tuned default of 9ec3f30,
whose students' batches were half pseudo-labelled (its default tau then 0.5; 0.7 since 503a0bc);
docs/studies/tau_frozen.* on the frozen default before it (weak student augmentation, confidence
at the readout's temperature); docs/studies/tau_strong.* the same on b7f3373, whose students
augmented strongly.
"""


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py",
        overrides={"selftrain.generations": 1},
        cells={f"tau={tau}": {"selftrain.tau": tau} for tau in (0.1, 0.3, 0.5, 0.7, 0.9)},
        seeds={"seed": (0, 1)},
    )

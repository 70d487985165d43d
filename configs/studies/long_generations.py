"""Generations at four times the budget: `configs/synthetic.py:long` trained on for two and for
three student generations, over the 3 x 3 grid of training seeds and benchmarks of long_seeds.py.

python -m matchme_jax.study --study=configs/studies/long_generations.py --workdir=W

About 12 minutes a student generation on a 2-core CPU (the two cells share their teachers). A
run whose workdir already holds fewer generations (a copy of a long_seeds.py run, say) continues
from its last one. docs/studies/long_generations.* is this study's --report_only table over
copies of long_seeds.py's runs continued so (README).
"""


def get_study() -> dict:
    return dict(
        config="configs/synthetic.py:long",
        overrides={},
        cells={
            "two generations": {"selftrain.generations": 2},
            "three generations": {"selftrain.generations": 3},
        },
        seeds={"dataset.generator_seed": (0, 1, 2), "seed": (0, 1, 2)},
    )

r"""Runs MatchMe self-training (or a single generation) from a config file.

python run.py --config=configs/synthetic.py --workdir=/tmp/matchme
python run.py --config=configs/synthetic.py:tiny --workdir=/tmp/tiny --config.train.steps=10
"""

import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from matchme_jax import experiment

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
flags.mark_flags_as_required(["config", "workdir"])


class _OwnInfoOnly(std_logging.Filter):
    """Keeps our INFO lines and everyone's warnings; Orbax and TFDS chat at INFO every save."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "matchme_jax" in record.pathname


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
    experiment.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)

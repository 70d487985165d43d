"""The machine annotator: a teacher turns unlabeled pairs into pseudo keypoint pairs.

  step        the jitted teacher step (`make_annotate_step`), free of the input pipeline;
  cells       cell geometry and selection (`cell_correspondences`, `candidate_cells`, ...);
  statistics  counts and precision of what was kept, and the tau sweep (`sweep_tau`);
  annotator   the annotation pass over a split (`annotate_pairs`);
  oracle      the pairs' own keypoints, or dense truth, as pseudo labels (`true_labels`,
              `dense_true_labels`);
  store       the files: `save`, `load`, `save_tau_sweep`.

The names below load their module on first use, so that importing `matchme_jax.annotate.step`
(the benchmark does, on machines without grain or TFDS) imports nothing else of the package.
"""

import importlib

# Who labels the unlabeled pairs (`config.selftrain.annotator`): the previous generation, or
# (diagnostics, never defaults) the pairs' own annotation, the ceiling of any pseudo labels, or
# true points anywhere on the object from the generator's dense truth.
ANNOTATORS = ("teacher", "oracle", "oracle_dense")

# Public name -> the module of this package that defines it.
_MODULES = {
    "make_annotate_step": "step",
    "QUERIES": "cells",
    "cell_correspondences": "cells",
    "round_trip_error": "cells",
    "candidate_cells": "cells",
    "keep_most_confident": "cells",
    "to_original": "cells",
    "truth_distance": "cells",
    "SWEEP_TAUS": "statistics",
    "precision": "statistics",
    "summarize": "statistics",
    "sweep_tau": "statistics",
    "annotate_pairs": "annotator",
    "true_labels": "oracle",
    "dense_true_labels": "oracle",
    "PSEUDO_FILE": "store",
    "PSEUDO_KEYS": "store",
    "STATS_FILE": "store",
    "TAU_SWEEP_FILE": "store",
    "TAU_SWEEP_PLOT": "store",
    "save": "store",
    "load": "store",
    "save_tau_sweep": "store",
}

__all__ = sorted([*_MODULES, "ANNOTATORS"])


def __getattr__(name: str):
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    # Cached as a plain attribute: later reads (and a test's monkeypatch) bypass this function.
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES})

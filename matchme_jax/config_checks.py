"""Checks a config before anything runs, and that a workdir belongs to it."""

import json
import os
from pathlib import Path

import ml_collections

from matchme_jax.corruption_benchmark import TABLE_ALPHA
from matchme_jax.data.augment import AugmentStrength
from matchme_jax.data.corruptions import CORRUPTIONS, SEVERITIES
from matchme_jax.data.sources import NOT_SEEDED, SEEDED_DATASET
from matchme_jax.data.unlabeled import UNLABELED_PAIRS
from matchme_jax.evaluate import THRESHOLDS

MODES = ("selftrain", "train", "evaluate", "evaluate_corruptions")
EVALUATION_MODES = ("evaluate", "evaluate_corruptions")
CONFIG_FILE = "config.json"
# Fields that change how a run is carried out, not what it computes.
HARMLESS_FIELDS = (
    "dataset.data_dir",
    "dataset.manual_dir",
    "dataset.num_workers",
    "train.log_every",
    "train.checkpoint_every",
    "compilation_cache_dir",
    "distributed",
    "model.attention",  # the kernel, not the math (also absent from older workdirs' config)
)
# Fields that older workdirs' config.json lacks, with the value those runs had.
ADDED_FIELDS = {"dataset.generator_seed": 0}


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises one ValueError listing every bad value (field, value, what is allowed)."""
    problems = []

    def need(ok: bool, field: str, allowed: str) -> None:
        if not ok:
            value = config
            for part in field.split("."):
                value = value[part]
            problems.append(f"config.{field}={value!r}: {allowed}")

    st, tr, ds = config.selftrain, config.train, config.dataset
    need(config.mode in MODES, "mode", f"use one of {MODES}")
    need(
        config.mode not in EVALUATION_MODES or bool(config.init_from),
        "mode",
        f"{config.mode!r} needs config.init_from (a W/gen_<g> folder or an official checkpoint)",
    )
    need(0.0 <= st.tau <= 1.0, "selftrain.tau", "a confidence in [0, 1]")
    need(st.generations >= 0, "selftrain.generations", "0 or more")
    need(st.query in ("bbox", "all"), "selftrain.query", "'bbox' or 'all'")
    need(
        st.unlabeled_pairs in UNLABELED_PAIRS,
        "selftrain.unlabeled_pairs",
        f"one of {UNLABELED_PAIRS}",
    )
    need(
        st.unlabeled_pairs != "folder" or _is_folder(st.unlabeled_folder),
        "selftrain.unlabeled_folder",
        "an existing folder of <category>/<image> files (selftrain.unlabeled_pairs='folder')",
    )
    need(
        st.consistency_radius is None or st.consistency_radius > 0,
        "selftrain.consistency_radius",
        "None (no check) or a positive number of feature cells",
    )
    need(st.student_init in ("same", "teacher"), "selftrain.student_init", "'same' or 'teacher'")
    need(0.0 < st.labeled_fraction <= 1.0, "selftrain.labeled_fraction", "in (0, 1]")
    need(st.pseudo_weight >= 0.0, "selftrain.pseudo_weight", "0 or more")
    need(st.num_unlabeled_pairs >= 1, "selftrain.num_unlabeled_pairs", "1 or more")
    need(
        1 <= st.max_pseudo_points <= ds.max_keypoints,
        "selftrain.max_pseudo_points",
        f"between 1 and dataset.max_keypoints ({ds.max_keypoints})",
    )
    need(ds.image_size >= 16, "dataset.image_size", "16 pixels or more")
    need(
        config.model.name != "catspp" or ds.image_size == 16 * config.model.feature_size,
        "dataset.image_size",
        f"CATs++ needs 16 x model.feature_size = {16 * config.model.feature_size} px "
        "(16-px cells); change one of the two",
    )
    need(ds.max_keypoints >= 1, "dataset.max_keypoints", "1 or more")
    need(ds.num_workers >= 0, "dataset.num_workers", "0 or more")
    need(ds.generator_seed >= 0, "dataset.generator_seed", "0 or more")
    need(ds.generator_seed == 0 or ds.name == SEEDED_DATASET, "dataset.generator_seed", NOT_SEEDED)
    for field in ("steps", "batch_size", "log_every", "checkpoint_every"):
        need(tr[field] >= 1, f"train.{field}", "1 or more")
    need(config.eval.batch_size >= 1, "eval.batch_size", "1 or more")
    need(config.eval.threshold in THRESHOLDS, "eval.threshold", f"one of {THRESHOLDS}")
    need(all(a > 0 for a in config.eval.alphas), "eval.alphas", "positive fractions")
    _check_corruptions(config, need)
    for role in ("teacher", "student"):
        try:
            AugmentStrength.from_config(config.augment[role])
        except ValueError as e:
            problems.append(f"config.augment.{role}: {e}")
    if problems:
        raise ValueError("Bad config:\n  " + "\n  ".join(problems))


def _check_corruptions(config: ml_collections.ConfigDict, need) -> None:
    """The SPair-C fields: distinct known names and severities, a positive pair cap."""
    cc = config.corruptions
    names, severities = tuple(cc.names), tuple(cc.severities)
    need(
        0 < len(names) == len(set(names)) and set(names) <= set(CORRUPTIONS),
        "corruptions.names",
        f"distinct names among {CORRUPTIONS}",
    )
    need(
        0 < len(severities) == len(set(severities)) and set(severities) <= set(SEVERITIES),
        "corruptions.severities",
        f"distinct severities among {SEVERITIES}",
    )
    need(
        cc.max_pairs is None or cc.max_pairs >= 1,
        "corruptions.max_pairs",
        "unset (every test pair) or 1 or more",
    )
    need(
        config.mode != "evaluate_corruptions" or TABLE_ALPHA in tuple(config.eval.alphas),
        "eval.alphas",
        f"must hold {TABLE_ALPHA} for the corruption table of mode 'evaluate_corruptions'",
    )


def _flatten(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def check_workdir(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Saves the config in `workdir`, or checks that the one saved there matches it.

    A workdir holds the checkpoints of one config; continuing it with another would mix
    generations trained under different settings.
    """
    path = workdir / CONFIG_FILE
    current = json.loads(config.to_json())
    if path.exists():
        saved = {**ADDED_FIELDS, **_flatten(json.loads(path.read_text()))}
        now = _flatten(current)
        differ = sorted(
            k
            for k in set(saved) | set(now)
            if k not in HARMLESS_FIELDS and saved.get(k) != now.get(k)
        )
        if differ:
            listed = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in differ[:8])
            raise ValueError(
                f"The workdir {workdir} holds a run of a different config ({listed}). "
                "Use a fresh --workdir, or the config that made it."
            )
    else:
        # Whole or not at all: a run killed meanwhile must not leave an unreadable config.json.
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(current, indent=1))
        os.replace(tmp, path)


def _is_folder(path: str | None) -> bool:
    return bool(path) and Path(path).expanduser().is_dir()

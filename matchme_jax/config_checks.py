"""Checks a config before anything runs, and that a workdir belongs to it."""

import difflib
import json
from pathlib import Path

import ml_collections
from absl import logging

from data_builders import NOT_SEEDED, SEEDED_DATASET
from data_builders.corruption_recipe import CORRUPTIONS, SEVERITIES, TABLE_ALPHA
from matchme_jax import atomic, errors
from matchme_jax.annotate import ANNOTATORS, QUERIES
from matchme_jax.data.augment import AugmentStrength
from matchme_jax.data.unlabeled import UNLABELED_PAIRS
from matchme_jax.evaluators import TYPES as EVALUATOR_TYPES
from matchme_jax.init_from import STUDENT_INITS
from matchme_jax.metrics import THRESHOLDS
from matchme_jax.models import build_model
from matchme_jax.models.backbones import is_vit
from matchme_jax.models.dinov2 import PATCH_SIZE
from matchme_jax.results import RESULTS_FILE, SUMMARY_FIELDS, SUMMARY_FILE
from matchme_jax.train.step import LOSSES

MODES = ("selftrain", "train", "evaluate", "evaluate_corruptions")
EVALUATION_MODES = ("evaluate", "evaluate_corruptions")
CONFIG_FILE = "config.json"
# What to do with a damaged one: it is the record of which config made the workdir's checkpoints.
CONFIG_FILE_FIX = (
    "delete it if this config made the workdir's checkpoints (the run saves it again), "
    "else use a fresh --workdir"
)
# Fields that change how a run is carried out, not what it computes.
HARMLESS_FIELDS = (
    "dataset.data_dir",
    "dataset.manual_dir",
    "dataset.num_workers",
    "train.log_every",
    "train.checkpoint_every",
    "compilation_cache_dir",
    "distributed",
    "model.attention",  # the kernel, not the math
)
# Evaluation settings: each generation's summary records its evaluators' settings and evaluates
# again where they differ, so a workdir may be continued with other evaluators. And reporting.
HARMLESS_PREFIXES = ("evals.", "logging.")
# Fields only the student generations read: while a workdir holds no student generation, they
# may change (e.g. a lower tau after a run stopped because its teacher kept no pseudo label).
STUDENT_PREFIXES = ("selftrain.", "augment.student.")
# A finished run may continue for more generations: the ones it has were trained alike.
GENERATIONS_FIELD = "selftrain.generations"
# Fields a saved config.json may lack, with the value that means; and fields it may hold that no
# run reads (the evaluation splits and SPair-C settings, now in `evals`).
DEFAULT_FIELDS = {
    "dataset.generator_seed": 0,
    "dataset.train_pairs": None,
    "selftrain.annotator": "teacher",
    "train.loss": "epe",
    "train.loss_temperature": None,
    "model.aggregator_init": "official",
    "model.backbone_heads": 0,
    "model.trainable_blocks": 0,
    "model.dilated_stages": [],
    "model.mirror_invariant_taps": False,
    "model.clamp_correlation": False,
    "model.confidence_temperature": 0.0,
    "model.readout_window": 0,
}
UNREAD_FIELDS = ("dataset.test_split", "dataset.validation_split", "corruptions.")


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
    need(tr.loss in LOSSES, "train.loss", f"one of {LOSSES}")
    need(
        tr.loss_temperature is None or (tr.loss == "cross_entropy" and tr.loss_temperature > 0),
        "train.loss_temperature",
        "None, or a positive temperature with train.loss='cross_entropy'",
    )
    need(st.query in QUERIES, "selftrain.query", f"one of {QUERIES}")
    need(st.annotator in ANNOTATORS, "selftrain.annotator", f"one of {ANNOTATORS}")
    need(
        st.query != "true_keypoints" or st.unlabeled_pairs == "split",
        "selftrain.query",
        "'true_keypoints' reads the unlabeled split's keypoints: needs "
        "selftrain.unlabeled_pairs='split'",
    )
    need(
        st.annotator == "teacher" or st.unlabeled_pairs == "split",
        "selftrain.annotator",
        f"{st.annotator!r} reads the unlabeled split's truth: needs "
        "selftrain.unlabeled_pairs='split'",
    )
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
    need(st.student_init in STUDENT_INITS, "selftrain.student_init", f"one of {STUDENT_INITS}")
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
    vit = config.model.name == "cats" and is_vit(config.model.backbone)
    need(
        not vit or ds.image_size % PATCH_SIZE == 0,
        "dataset.image_size",
        f"a DINOv2 backbone needs a multiple of its {PATCH_SIZE}-px patches (224: a 16 x 16 grid)",
    )
    need(ds.max_keypoints >= 1, "dataset.max_keypoints", "1 or more")
    need(ds.num_workers >= 0, "dataset.num_workers", "0 or more")
    need(ds.generator_seed >= 0, "dataset.generator_seed", "0 or more")
    need(ds.train_pairs is None or ds.train_pairs >= 1, "dataset.train_pairs", "1 or more, or None")
    need(ds.generator_seed == 0 or ds.name == SEEDED_DATASET, "dataset.generator_seed", NOT_SEEDED)
    for field in ("steps", "batch_size", "log_every", "checkpoint_every"):
        need(tr[field] >= 1, f"train.{field}", "1 or more")
    need(config.eval.batch_size >= 1, "eval.batch_size", "1 or more")
    need(config.eval.threshold in THRESHOLDS, "eval.threshold", f"one of {THRESHOLDS}")
    need(all(a > 0 for a in config.eval.alphas), "eval.alphas", "positive fractions")
    _check_evals(config, problems)
    for role in ("teacher", "student"):
        try:
            AugmentStrength.from_config(config.augment[role])
        except ValueError as e:
            problems.append(f"config.augment.{role}: {e}")
    try:
        build_model(config.model)  # the model's own checks of its fields
    except (ValueError, TypeError) as e:
        problems.append(f"config.model: {e}")
    if problems:
        sep = " " if len(problems) == 1 else "\n  "  # one problem on one line, several listed
        raise errors.UserError("Bad config:" + sep + sep.join(problems))


def _check_evals(config: ml_collections.ConfigDict, problems: list) -> None:
    """Every evaluator: a known type, a split, known modes; SPair-C's own fields."""
    for name, ev in config.evals.items():
        field = f"config.evals.{name}"
        if name in SUMMARY_FIELDS or name.endswith("_details"):
            problems.append(f"{field}: the name is taken by summary.json; rename the evaluator")
        if ev.get("type") not in EVALUATOR_TYPES:
            problems.append(f"{field}.type={ev.get('type')!r}: use one of {tuple(EVALUATOR_TYPES)}")
            continue
        if not isinstance(ev.get("split"), str) or not ev.split:
            problems.append(f"{field}.split={ev.get('split')!r}: a split name of the dataset")
        modes = tuple(ev.get("modes", ()))
        if not set(modes) <= set(MODES):
            problems.append(f"{field}.modes={modes!r}: modes among {MODES}")
        if ev.type == "corruptions":
            _check_corruptions(field, ev, config, problems)
    if config.mode in EVALUATION_MODES and not any(
        config.mode in ev.get("modes", ()) for ev in config.evals.values()
    ):
        problems.append(f"config.mode={config.mode!r}: no evaluator of config.evals runs in it")


def _check_corruptions(field: str, ev, config: ml_collections.ConfigDict, problems: list) -> None:
    """The SPair-C fields: distinct known names and severities, a positive pair cap."""
    names, severities = tuple(ev.names), tuple(ev.severities)
    if not 0 < len(names) == len(set(names)) or not set(names) <= set(CORRUPTIONS):
        problems.append(f"{field}.names={names!r}: distinct names among {CORRUPTIONS}")
    if not 0 < len(severities) == len(set(severities)) or not set(severities) <= set(SEVERITIES):
        problems.append(
            f"{field}.severities={severities!r}: distinct severities among {SEVERITIES}"
        )
    if ev.max_pairs is not None and ev.max_pairs < 1:
        problems.append(f"{field}.max_pairs={ev.max_pairs!r}: unset (every pair) or 1 or more")
    if config.mode in ev.modes and TABLE_ALPHA not in tuple(config.eval.alphas):
        problems.append(
            f"config.eval.alphas={tuple(config.eval.alphas)!r}: must hold {TABLE_ALPHA} for "
            f"the corruption table of {field}"
        )


def flatten(tree, prefix: str = "") -> dict:
    """A nested config dict as {"section.field": value}."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def check_workdir(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Saves the config in `workdir`, or checks that the one saved there matches it.

    A workdir holds the checkpoints of one config; continuing it with another would mix
    generations trained under different settings. One that holds nothing computed yet (no
    checkpoint, pseudo labels, summary or results: a run that failed before its first checkpoint,
    e.g. on a wrong weights path) is fresh: its config.json is replaced by this one. A run
    that holds students continues with another config only when that differs in a larger
    `selftrain.generations` alone.
    """
    path = workdir / CONFIG_FILE
    current = json.loads(config.to_json())
    if path.exists():
        now = flatten(current)
        # A field added since takes its default; only where this config has it (a CATs field
        # is no CATs++ field).
        added = {k: v for k, v in DEFAULT_FIELDS.items() if k in now}
        saved = {**added, **flatten(atomic.read_json(path, fix=CONFIG_FILE_FIX))}
        saved = {k: v for k, v in saved.items() if not k.startswith(UNREAD_FIELDS)}
        differ = sorted(
            k
            for k in set(saved) | set(now)
            if k not in HARMLESS_FIELDS
            and not k.startswith(HARMLESS_PREFIXES)
            and saved.get(k) != now.get(k)
        )
        computed = computed_files(workdir)
        students_only = all(k.startswith(STUDENT_PREFIXES) for k in differ)
        if differ and not computed:
            logging.info(
                "%s holds nothing computed yet; its %s of an earlier try is replaced by this "
                "run's (%s differ).",
                workdir,
                CONFIG_FILE,
                ", ".join(differ[:8]),
            )
            atomic.write_json(path, current)
        elif differ and students_only and not any(_is_student_file(f, workdir) for f in computed):
            logging.info(
                "%s holds no student generation yet: the teacher stays, and the students follow "
                "this run's settings (%s).",
                workdir,
                ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in differ[:8]),
            )
            atomic.write_json(path, current)
        elif differ == [GENERATIONS_FIELD] and now[GENERATIONS_FIELD] > saved[GENERATIONS_FIELD]:
            logging.info(
                "%s continues for more generations (%d -> %d); the ones it holds stay.",
                workdir,
                saved[GENERATIONS_FIELD],
                now[GENERATIONS_FIELD],
            )
            atomic.write_json(path, current)
        elif differ:
            listed = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in differ[:8])
            raise errors.UserError(
                f"The workdir {workdir} holds a run of a different config ({listed}). "
                "Use a fresh --workdir, or the config that made it."
            )
    else:
        atomic.write_json(path, current)


def _is_student_file(path: Path, workdir: Path) -> bool:
    """Whether `path` (one of `computed_files`) belongs to a student generation (g >= 1)."""
    parts = Path(path).relative_to(workdir).parts
    return parts[0].startswith("gen_") and parts[0] != "gen_0"


def computed_files(workdir: Path) -> list[Path]:
    """What a run of the workdir's config computed: its results, each generation's summary,
    pseudo labels and checkpoint steps (not the temporary folder of a save cut short)."""
    workdir = Path(workdir)
    found = [workdir / RESULTS_FILE] if (workdir / RESULTS_FILE).exists() else []
    for gen_dir in sorted(workdir.glob("gen_*")):
        found += [gen_dir / SUMMARY_FILE] if (gen_dir / SUMMARY_FILE).exists() else []
        found += list(gen_dir.glob("pseudo/*.npz"))
        found += [p for p in gen_dir.glob("checkpoints/*") if p.name.isdigit()]
    return found


def _is_folder(path: str | None) -> bool:
    return bool(path) and Path(path).expanduser().is_dir()


def check_workdir_path(workdir: str | Path) -> None:
    """Raises a UserError when `workdir` cannot be a folder: it, or a folder above it, is a file."""
    path = Path(workdir)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                raise errors.UserError(
                    f"--workdir={workdir}: {folder} is a file, not a folder; give a new folder, "
                    "or the workdir of an earlier run of this config."
                )
            return


def unknown_field(config: ml_collections.ConfigDict, field: str) -> str | None:
    """Why `--config.<field>=...` cannot set a field of `config`, naming the closest ones; None
    when `config` has it (or the path holds an index, which config_flags alone checks)."""
    node, walked = config, "config"
    for part in field.split("."):
        if "[" in part:
            return None
        if not isinstance(node, ml_collections.ConfigDict):
            return f"--config.{field}: {walked} is a value ({node!r}), it has no field {part!r}"
        if part not in node:
            closest = _closest_fields(config, field)
            if closest:
                hint = "did you mean " + " or ".join(f"--config.{c}" for c in closest) + "?"
            else:
                names = sorted(node.keys())
                hint = f"{walked} has {', '.join(names[:20])}{', ...' if len(names) > 20 else ''}"
            return f"--config.{field}: the config has no field {field!r}; {hint}"
        node, walked = node[part], f"{walked}.{part}"
    return None


def _closest_fields(config: ml_collections.ConfigDict, field: str) -> list[str]:
    """At most 3 field paths of `config` the user may have meant, the first kind found: those of
    the same last name (`tau` for `selftrain.tau`); a similar name beside it (`train.stepz`:
    `train.steps`); a similar path; a similar last name anywhere (`tua`: `selftrain.tau`)."""
    # Not the folders above the field (`train` for `train.stepz`): they exist.
    names = [n for n in _field_names(config) if not field.startswith(n + ".")]
    by_leaf = {}
    for name in names:
        by_leaf.setdefault(name.rpartition(".")[2], []).append(name)
    parent, _, leaf = field.rpartition(".")
    siblings = [n for n in names if n.rpartition(".")[0] == parent]
    close = (
        by_leaf.get(leaf)
        or [f"{parent}.{c}" if parent else c for c in _similar(leaf, siblings)]
        or difflib.get_close_matches(field, names, n=3)
        or [name for other in difflib.get_close_matches(leaf, by_leaf) for name in by_leaf[other]]
    )
    return close[:3]


def _similar(leaf: str, siblings: list[str]) -> list[str]:
    """The last names among `siblings` (paths) that `difflib` finds close to `leaf`."""
    return difflib.get_close_matches(leaf, [s.rpartition(".")[2] for s in siblings], n=3)


def _field_names(node: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every field path under `node`, the nested configs' own included."""
    names = []
    for key, value in node.items():
        names.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            names += _field_names(value, f"{prefix}{key}.")
    return names

"""Configs: `:tiny` variants, command-line overrides, and clear errors for bad values."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from matchme_jax import config_checks, defaults, errors, experiment

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.py"))


def load(spec: str):
    """A config as `--config=configs/<spec>` would load it."""
    path, _, arg = spec.partition(":")
    return defaults.load_config_file(ROOT / "configs" / path, arg or None)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", ["", "tiny"])
def test_every_config_and_its_tiny_variant_validate(name, arg):
    config = load(f"{name}:{arg}" if arg else name)
    if config.mode == "evaluate":  # an evaluation needs a checkpoint
        with pytest.raises(ValueError, match="needs config.init_from"):
            config_checks.validate(config)
        config.init_from = "/some/checkpoint"
    config_checks.validate(config)


def test_the_long_synthetic_variant_changes_only_steps_and_the_student_settings():
    """`:long` is the default with four times the steps for every generation and the
    annotator and batch mix chosen at that budget; nothing else, so its teacher is the default's
    trained longer."""
    default, long = load("synthetic.py"), load("synthetic.py:long")
    config_checks.validate(long)
    flat_default, flat_long = (config_checks.flatten(c.to_dict()) for c in (default, long))
    changed = {
        k for k in flat_long.keys() | flat_default.keys() if flat_long.get(k) != flat_default.get(k)
    }
    assert changed == {
        "train.steps",
        "selftrain.labeled_fraction",
        "selftrain.tau",
        "selftrain.consistency_radius",
    }
    assert long.train.steps == 4 * default.train.steps
    with pytest.raises(ValueError, match="':tiny' or ':long'"):
        load("synthetic.py:longer")


@pytest.mark.parametrize("name", [c for c in CONFIGS if c != "synthetic.py"])
def test_real_benchmarks_read_with_worker_processes_tiny_variants_in_process(name):
    assert load(name).dataset.num_workers == defaults.REAL_DATA_WORKERS > 0
    assert load(f"{name}:tiny").dataset.num_workers == 0


def test_validating_a_config_imports_neither_grain_nor_tfds():
    code = (
        "import sys; from matchme_jax import config_checks, defaults; "
        "config_checks.validate(defaults.load_config_file('configs/spair.py', 'tiny')); "
        "print(sorted(m for m in ('grain', 'tensorflow_datasets') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_light_facts_about_builders_are_those_of_the_builders():
    import data_builders
    from data_builders.synthetic_correspondence import SyntheticCorrespondence

    assert SyntheticCorrespondence.name == data_builders.SEEDED_DATASET
    packages = {p.parent.name for p in (ROOT / "data_builders").glob("*/__init__.py")}
    assert {m.removeprefix("data_builders.") for m in data_builders.BUILDER_MODULES} == packages


def test_bad_values_are_listed_in_one_error():
    config = load("synthetic.py:tiny")
    config.selftrain.tau = 1.5
    config.selftrain.query = "everywhere"
    config.train.steps = 0
    config.train.loss = "l2"
    config.dataset.train_pairs = 0
    config.selftrain.consistency_radius = -1.0
    config.selftrain.unlabeled_pairs = "folder"
    config.selftrain.unlabeled_folder = "/no/such/folder"
    config.selftrain.annotator = "oracle"  # reads keypoints the user's folder does not have
    config.evals.test.type = "pcks"
    config.evals.validation.modes = ("evaluate", "sometimes")
    config.evals.role = dict(type="pck", split="test", modes=("selftrain",))
    with pytest.raises(ValueError) as error:
        config_checks.validate(config)
    message = str(error.value)
    for field in (
        "selftrain.annotator='oracle': 'oracle' reads the unlabeled split's truth",
        "evals.test.type='pcks': use one of ('pck', 'corruptions', 'pseudo_labels')",
        "evals.validation.modes=('evaluate', 'sometimes'): modes among",
        "evals.role: the name is taken by summary.json",
        "selftrain.tau=1.5",
        "selftrain.query='everywhere'",
        "train.steps=0",
        "train.loss='l2': one of ('epe', 'cross_entropy')",
        "dataset.train_pairs=0: 1 or more, or None",
        "selftrain.consistency_radius=-1.0",
        "selftrain.unlabeled_folder='/no/such/folder'",
    ):
        assert field in message


def test_generator_seed_is_0_or_more_and_only_for_the_synthetic_benchmark():
    config = load("synthetic.py:tiny")
    config.dataset.generator_seed = 5
    config_checks.validate(config)
    config.dataset.generator_seed = -1
    with pytest.raises(ValueError, match=r"dataset.generator_seed=-1: 0 or more"):
        config_checks.validate(config)
    config = load("spair.py")
    config.dataset.generator_seed = 2
    with pytest.raises(ValueError) as error:
        config_checks.validate(config)
    assert (
        "config.dataset.generator_seed=2: only dataset.name='synthetic_correspondence' is "
        "rendered from a seed; use 0 (the default)" in str(error.value)
    )


def test_a_dinov2_image_size_is_a_multiple_of_its_patches():
    config = load("spair_dinov2.py")
    config.dataset.image_size = 256
    with pytest.raises(ValueError, match=r"dataset.image_size=256: a DINOv2 backbone needs"):
        config_checks.validate(config)


def test_catspp_image_size_must_match_its_grid():
    config = load("spair_catspp.py")
    assert (config.dataset.image_size, config.model.feature_size) == (512, 32)
    config.dataset.image_size = 256
    with pytest.raises(ValueError, match=r"dataset.image_size=256: CATs\+\+ needs .* = 512 px"):
        config_checks.validate(config)


def _computed(workdir: Path) -> None:
    """Gives `workdir` a saved checkpoint step: it then holds a run, not just a config."""
    (workdir / "gen_0" / "checkpoints" / "3").mkdir(parents=True)


def test_workdir_of_another_config_is_refused(tmp_path):
    config = load("synthetic.py:tiny")
    config_checks.check_workdir(config, tmp_path)
    _computed(tmp_path)
    config_checks.check_workdir(config, tmp_path)  # the same config continues
    config.train.log_every = 7  # harmless: how the run reports, not what it computes
    config_checks.check_workdir(config, tmp_path)
    config.train.steps = 8
    with pytest.raises(ValueError, match=r"train.steps: 6 -> 8"):
        config_checks.check_workdir(config, tmp_path)


@pytest.mark.parametrize("spec", ["synthetic.py:tiny", "spair_catspp.py:tiny"])
def test_a_workdir_saved_before_fields_were_added_continues(tmp_path, spec):
    config = load(spec)
    config_checks.check_workdir(config, tmp_path)
    _computed(tmp_path)
    path = tmp_path / config_checks.CONFIG_FILE
    saved = json.loads(path.read_text())
    for field, default in config_checks.DEFAULT_FIELDS.items():
        section, name = field.split(".")
        if saved[section].get(name) == default:  # as written before the field existed
            del saved[section][name]
    path.write_text(json.dumps(saved))
    config_checks.check_workdir(config, tmp_path)


def test_student_settings_may_change_until_a_student_generation_exists(tmp_path):
    """A run stopped by its teacher keeping no pseudo label at tau continues with a lower tau,
    without training the teacher again; once a student is computed, tau is the run's."""
    config = load("synthetic.py:tiny")
    config.selftrain.tau = 0.7
    config_checks.check_workdir(config, tmp_path)
    _computed(tmp_path)
    (tmp_path / "gen_0" / "summary.json").write_text("{}")
    (tmp_path / "results.json").write_text("{}")
    config.selftrain.tau = 0.3
    config.augment.student.tps_p = 0.5  # the default students' is 0.0
    config_checks.check_workdir(config, tmp_path)
    saved = json.loads((tmp_path / config_checks.CONFIG_FILE).read_text())
    assert saved["selftrain"]["tau"] == 0.3 and saved["augment"]["student"]["tps_p"] == 0.5
    config.augment.teacher.tps_p = 0.5  # the teacher's: refused, whatever the students
    with pytest.raises(ValueError, match=r"augment.teacher.tps_p: 0.0 -> 0.5"):
        config_checks.check_workdir(config, tmp_path)
    config.augment.teacher.tps_p = 0.0
    (tmp_path / "gen_1" / "checkpoints" / "3").mkdir(parents=True)
    config.selftrain.tau = 0.1
    with pytest.raises(ValueError, match=r"selftrain.tau: 0.3 -> 0.1"):
        config_checks.check_workdir(config, tmp_path)


def test_a_finished_run_continues_for_more_generations_not_fewer(tmp_path):
    config = load("synthetic.py:tiny")
    config_checks.check_workdir(config, tmp_path)
    _computed(tmp_path)
    (tmp_path / "gen_2" / "checkpoints" / "3").mkdir(parents=True)  # students computed
    config.selftrain.generations = 3
    config_checks.check_workdir(config, tmp_path)
    saved = json.loads((tmp_path / config_checks.CONFIG_FILE).read_text())
    assert saved["selftrain"]["generations"] == 3
    config.selftrain.generations = 2
    with pytest.raises(ValueError, match=r"selftrain.generations: 3 -> 2"):
        config_checks.check_workdir(config, tmp_path)
    config.selftrain.generations = 4
    config.selftrain.tau = 0.5  # with another student setting: refused
    with pytest.raises(ValueError, match=r"selftrain.generations: 3 -> 4, selftrain.tau"):
        config_checks.check_workdir(config, tmp_path)


def test_workdir_of_another_generator_seed_is_refused_older_ones_are_seed_0(tmp_path):
    config = load("synthetic.py:tiny")
    config_checks.check_workdir(config, tmp_path)
    saved = json.loads((tmp_path / config_checks.CONFIG_FILE).read_text())
    del saved["dataset"]["generator_seed"]  # as written before the field existed
    del saved["dataset"]["train_pairs"]
    (tmp_path / config_checks.CONFIG_FILE).write_text(json.dumps(saved))
    _computed(tmp_path)
    config_checks.check_workdir(config, tmp_path)
    config.dataset.generator_seed = 3
    with pytest.raises(ValueError, match=r"dataset.generator_seed: 0 -> 3"):
        config_checks.check_workdir(config, tmp_path)
    config.dataset.generator_seed = 0
    config.dataset.train_pairs = 4  # older workdirs read every labeled pair
    with pytest.raises(ValueError, match=r"dataset.train_pairs: None -> 4"):
        config_checks.check_workdir(config, tmp_path)


def test_workdir_may_continue_with_other_evaluators(tmp_path):
    """Each summary records its evaluators' settings and evaluates again where they differ."""
    config = load("synthetic.py:tiny")
    config_checks.check_workdir(config, tmp_path)
    _computed(tmp_path)
    config.evals.validation.split = "test"
    config_checks.check_workdir(config, tmp_path)
    config.train.batch_size = 2
    with pytest.raises(ValueError, match=r"train.batch_size: 4 -> 2"):
        config_checks.check_workdir(config, tmp_path)


@pytest.mark.parametrize(
    "computed",
    [
        "gen_0/checkpoints/3/",
        "gen_1/summary.json",
        "gen_1/pseudo/pseudo_labels.npz",
        "results.json",
    ],
)
def test_a_workdir_holding_nothing_computed_takes_a_new_config(tmp_path, computed):
    """A run that failed before its first checkpoint (a wrong weights path, a diverged first
    steps) leaves config.json alone: the corrected run is not refused as another config."""
    config = load("synthetic.py:tiny")
    config.model.backbone_weights = "/no/such/resnet.pth"
    config_checks.check_workdir(config, tmp_path)
    # What a failed start (or a save cut short) leaves: no checkpoint step, no results.
    (tmp_path / "gen_0" / "checkpoints" / "3.orbax-checkpoint-tmp-1").mkdir(parents=True)
    (tmp_path / "gen_0" / "train_log.jsonl").write_text("")
    config.model.backbone_weights = ""
    config_checks.check_workdir(config, tmp_path)
    saved = json.loads((tmp_path / config_checks.CONFIG_FILE).read_text())
    assert saved["model"]["backbone_weights"] == ""
    target = tmp_path / computed
    if computed.endswith("/"):
        target.mkdir(parents=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("{}")
    config.train.steps = 7
    with pytest.raises(errors.UserError, match=r"train.steps: 6 -> 7"):
        config_checks.check_workdir(config, tmp_path)


def test_a_run_that_failed_to_start_can_be_rerun_corrected(tmp_path, tfds_dir):
    config = load("synthetic.py:tiny")
    config.dataset.data_dir = tfds_dir
    config.model.backbone_weights = str(tmp_path / "no_such_resnet.pth")
    with pytest.raises(errors.MissingFileError, match="backbone_weights="):
        experiment.run(config, tmp_path / "W")
    assert (tmp_path / "W" / config_checks.CONFIG_FILE).exists()
    assert config_checks.computed_files(tmp_path / "W") == []
    config.model.backbone_weights = ""
    config_checks.check_workdir(config, tmp_path / "W")  # what experiment.run checks first


def _run_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--config=configs/missing.py", "--workdir=/tmp/x"],
            "--config=configs/missing.py: there is no config file 'configs/missing.py'",
        ),
        (
            [
                "--config=configs/synthetic.py:tiny",
                "--config.train.no_such_field=1",
                "--workdir=/tmp/x",
            ],
            "--config.train.no_such_field: the config has no field 'train.no_such_field'",
        ),
        (
            ["--config=configs/synthetic.py:tiny", "--config.train.steps=many", "--workdir=/tmp/x"],
            "flag --config.train.steps=many: invalid literal for int()",
        ),
        (
            [
                "--config=configs/synthetic.py:tiny",
                "--config.selftrain.tau=2.0",
                "--workdir=/tmp/x",
            ],
            "selftrain.tau=2.0",
        ),
        (
            [
                "--config=configs/synthetic.py:tiny",
                "--config.dataset.generator_seed=-2",
                "--workdir=/tmp/x",
            ],
            "dataset.generator_seed=-2: 0 or more",
        ),
        (
            ["--config=configs/synthetic.py:tiny", "--workdir=run.py"],
            "--workdir=run.py: run.py is a file, not a folder",
        ),
        (
            [
                "--config=configs/synthetic.py:tiny",
                "--config.model.num_heads=3",
                "--workdir=/tmp/x",
            ],
            "Bad config: config.model: invalid CATs config: num_heads=3 must divide "
            "feature_size**2 + feature_proj_dim = 32",
        ),
    ],
)
def test_command_line_errors_name_the_problem(args, expected):
    """One line, `run.py: <the field or file, and the fix>`, exit status 2, no traceback."""
    result = _run_py(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("run.py: ") and expected in last

"""Defaults every experiment config (configs/*.py) starts from.

The values follow the official CATs `train.py` where it has one; the self-training fields are our
reading of the MatchMe paper, which does not publish its code.
"""

import dataclasses
import importlib.util
from pathlib import Path

import ml_collections
from ml_collections import config_dict

import data_builders
from data_builders.corruption_recipe import CORRUPTIONS, SEVERITIES
from matchme_jax.data.augment import AugmentStrength
from matchme_jax.models import MODEL_CLASSES, backbones, model_defaults


def load_config_file(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file, as `--config=<path>:<arg>` loads it.

    Config files are loaded by path, not imported as a package; the CATs++ configs build on the
    CATs ones this way, and so do the tests.
    """
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def model_config(name: str) -> ml_collections.ConfigDict:
    """`config.model` of the model class `name` picks (see `models.MODEL_CLASSES`).

    The class's fields with their defaults (its docstring says what each means), plus the
    fields only the config has: `name`, and `backbone_weights`, a torchvision ResNet weights
    file for the backbone (`init_from.with_backbone_weights`).
    """
    return ml_collections.ConfigDict(
        dict(
            name=name,
            backbone_weights=config_dict.placeholder(str),
            **model_defaults(MODEL_CLASSES[name]),
        )
    )


def cats_model() -> ml_collections.ConfigDict:
    """The official CATs model (train.py defaults: ResNet-101, depth 1); fields: `models.CATs`."""
    return model_config("cats")


def catspp_model() -> ml_collections.ConfigDict:
    """The official CATs++ model (`CATsImproved(backbone="resnet101")`, 512-px images); fields:
    `models.CATsPP`."""
    return model_config("catspp")


def use_catspp(config: ml_collections.ConfigDict) -> None:
    """Switches `config` to the CATs++ recipe: the CATs++ model on 512-px images, whose 16-px
    cells make a 32 x 32 flow grid (the official KeypointToFlow `jsz` 16), with the backbone
    fine-tuned at lr 3e-6 and the head at 3e-4."""
    config.model = catspp_model()
    config.dataset.image_size = 512
    config.optim.head_lr = 3e-4
    config.optim.backbone_lr = 3e-6


def use_dinov2(config: ml_collections.ConfigDict, backbone: str = "dinov2_vitb14") -> None:
    """Switches `config` to CATs on a frozen DINOv2 ViT (a torch-hub entry name) at 224 px.

    The ViT's 16 x 16 patch grid is CATs' own grid (14-px cells), and CATs taps blocks 4-11 (of
    ViT-S/B's 12; any blocks for L and g). The KeypointToFlow box scales with the cell:
    35 px for 16-px cells is 2 cells + 3 px, 31 px for 14-px ones. The weights:
    `config.model.backbone_weights` (see configs/spair_dinov2.py).
    """
    config.model.backbone = backbone
    config.model.hyperpixel_ids = tuple(range(4, 12))
    config.model.feature_size = 16
    config.model.freeze_backbone = True
    config.dataset.image_size = 224
    config.train.receptive_field = 31


def augment_preset(name: str) -> ml_collections.ConfigDict:
    """Every field of an augmentation preset ("none", "weak", "strong"), to override one by one."""
    strength = AugmentStrength.create(name)
    return ml_collections.ConfigDict(
        {f.name: float(getattr(strength, f.name)) for f in dataclasses.fields(strength)}
    )


def augment_overrides(role: str, name: str) -> dict[str, float]:
    """A preset as flat overrides of `config.augment.<role>` ("teacher", "student"): for studies."""
    return {f"augment.{role}.{k}": v for k, v in augment_preset(name).items()}


def pck_evaluator(split: str) -> dict:
    """PCK on `split` after every generation and in mode `evaluate`."""
    return dict(type="pck", split=split, modes=("selftrain", "train", "evaluate"))


def base_config() -> ml_collections.ConfigDict:
    """Every field a run reads; experiment configs override what differs."""
    config = ml_collections.ConfigDict()
    config.seed = 2021
    # selftrain: teacher then students | train: generation 0 only | evaluate: test init_from |
    # evaluate_corruptions: test init_from clean and corrupted (SPair-C, see config.evals).
    config.mode = "selftrain"
    # A checkpoint to start generation 0 from (ours, or an official .pth/.npz/.safetensors).
    config.init_from = config_dict.placeholder(str)
    # Multi-host: call jax.distributed.initialize() (also done when JAX_COORDINATOR_ADDRESS is
    # set). Each process then reads its shard of the training pairs; process 0 writes the files.
    config.distributed = False
    # JAX's persistent compilation cache: a directory shared by runs skips repeated compiles.
    config.compilation_cache_dir = config_dict.placeholder(str)

    config.dataset = ml_collections.ConfigDict(
        dict(
            name="spair71k",
            builder_config=config_dict.placeholder(str),
            # synthetic_correspondence only: render the benchmark from this seed. N != 0 is a
            # dataset of its own (TFDS config `<builder_config>_seed<N>`, prepared on first use);
            # 0 is the named config itself. Other datasets: 0.
            generator_seed=0,
            data_dir=config_dict.placeholder(
                str
            ),  # default: $TFDS_DATA_DIR or ~/tensorflow_datasets
            manual_dir=config_dict.placeholder(str),
            image_size=256,  # square canvas the images are resized to (the official 256-px frame)
            max_keypoints=40,  # keypoints are padded to this many, with a mask
            train_split="train",
            # Labeled pairs read from train_split: N of them, one fixed random draw (None: all).
            # Fewer labels, the regime semi-supervision is for; the rest of the split is unused.
            train_pairs=config_dict.placeholder(int),
            unlabeled_split="unlabeled",
            num_workers=0,  # grain worker processes; 0 reads in the main process
        )
    )

    config.model = cats_model()

    config.train = ml_collections.ConfigDict(
        dict(
            batch_size=32,
            steps=20_000,
            log_every=50,
            checkpoint_every=1_000,
            # Side (pixels) of the box around each target cell whose keypoints define its flow
            # target (official KeypointToFlow: 35 px for 16-px cells).
            receptive_field=35,
            # "epe": the official end-point error of the soft-argmax flow; "cross_entropy": of
            # the soft-argmax distribution against the true source cell (losses.py).
            loss="epe",
            # The cross-entropy's softmax temperature; None: the model's soft-argmax `beta`.
            loss_temperature=config_dict.placeholder(float),
        )
    )

    config.optim = ml_collections.ConfigDict(
        dict(
            head_lr=3e-5,
            backbone_lr=3e-6,
            weight_decay=0.05,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            schedule="multistep",  # constant | multistep | cosine
            # multistep: where the rate halves, as fractions of the run (official: 70, 80, 90 %).
            milestones=(0.7, 0.8, 0.9),
            gamma=0.5,
            min_lr=1e-6,  # cosine floor (official --scheduler cosine)
        )
    )

    # Augmentation strengths: the teacher gets the official CATs set, the student a stronger one.
    # Same code, different values (matchme_jax/data/strength.py documents every field).
    config.augment = ml_collections.ConfigDict(
        dict(teacher=augment_preset("weak"), student=augment_preset("strong"))
    )

    config.selftrain = ml_collections.ConfigDict(
        dict(
            generations=2,  # student generations after the generation-0 teacher
            # teacher: the previous generation annotates | oracle: a diagnostic, never a
            # default; the unlabeled pairs' own keypoints (the ceiling of any pseudo labels) |
            # oracle_dense: a diagnostic; true points drawn from the generator's dense truth
            annotator="teacher",
            tau=0.7,  # keep a pseudo correspondence when its confidence >= tau
            # bbox: target cells inside the target box | all: every cell | true_keypoints: a
            # diagnostic, never a default: the unlabeled pairs' own target keypoints (hidden truth)
            query="bbox",
            # Unlabeled pairs: "split" draws from dataset.unlabeled_split; "train_images" pairs the
            # training images anew (same category), never reading those pairs' annotation;
            # "folder" pairs the user's own images in unlabeled_folder/<category>/<image>.
            unlabeled_pairs="split",
            unlabeled_folder=config_dict.placeholder(str),
            num_unlabeled_pairs=2000,  # unlabeled pairs the teacher annotates per generation
            max_pseudo_points=40,  # most confident points kept per pair (<= dataset.max_keypoints)
            min_pseudo_points=1,  # pairs with fewer kept points are dropped
            # Forward-backward consistency: also annotate the swapped pair and keep a cell only
            # when its round trip target -> source -> target ends within this many feature
            # cells of its start. None: no check (annotation then costs one forward, not two).
            consistency_radius=config_dict.placeholder(float),
            pseudo_weight=1.0,  # loss weight of a pseudo point relative to a labeled one
            labeled_fraction=0.5,  # share of labeled pairs in a student batch
            # same: the teacher's initialisation | teacher: start from the teacher's weights
            student_init="same",
        )
    )

    config.eval = ml_collections.ConfigDict(
        dict(
            batch_size=16,
            alphas=(0.05, 0.1, 0.15),
            threshold="bbox",  # bbox | img | bbox_kp | willow_cats (see matchme_jax/evaluate.py)
            flow_to_keypoints="official",  # official | bilinear
        )
    )

    # How a run reports, not what it computes. tensorboard: curves of the training steps and of
    # every generation's results in W/tensorboard/ (matchme_jax/curves.py).
    config.logging = ml_collections.ConfigDict(dict(tensorboard=True))

    # Evaluators (matchme_jax/evaluators): each runs in the modes it lists. In self-training
    # every generation is evaluated on the test and validation splits; `evaluate` tests
    # init_from on both; `evaluate_corruptions` runs SPair-C (the split under ImageNet-C
    # corruptions, made as data_builders/corruption_recipe.py says; it needs 0.1 in eval.alphas).
    config.evals = ml_collections.ConfigDict(
        dict(
            test=pck_evaluator("test"),
            validation=pck_evaluator("validation"),
            corruptions=dict(
                type="corruptions",
                split="test",
                modes=("evaluate_corruptions",),
                # A subset of the 15, e.g. --config.evals.corruptions.names="('fog',)".
                names=CORRUPTIONS,
                severities=SEVERITIES,  # a subset of 1..5
                max_pairs=config_dict.placeholder(int),  # only the first N pairs (unset: all)
            ),
        )
    )
    return config


# Grain worker processes for the real benchmarks' JPEGs. One core prepares ~130-150 SPair-sized
# pairs/s (README, "Throughput"); 1.5x a 610 pairs/s train step needs ~7 cores' worth, and each
# worker reads with 2 threads.
REAL_DATA_WORKERS = 8


def shrink_to_tiny(config: ml_collections.ConfigDict) -> None:
    """Makes `config` CPU-test sized (seconds): tiny images and backbone, a few steps.

    CATs: 32-px images, a 3-block ResNet (a ViT backbone: `_shrink_vit`); CATs++: see
    `_shrink_catspp`.
    """
    if config.model.name == "catspp":
        _shrink_catspp(config)
    elif backbones.is_vit(config.model.backbone):
        _shrink_vit(config)
    else:
        config.dataset.image_size = 32
        config.model.backbone = "custom"
        config.model.backbone_blocks = (1, 1, 1)
        config.model.backbone_width = 8
        config.model.hyperpixel_ids = (0, 2, 3)
        config.model.feature_size = 4
        config.model.feature_proj_dim = 16
        config.model.num_heads = 2
    config.train.batch_size = 4
    config.train.steps = 6
    config.train.log_every = 2
    config.train.checkpoint_every = 3
    config.selftrain.num_unlabeled_pairs = 8
    config.eval.batch_size = 4
    config.dataset.num_workers = 0  # a few tiny images: worker processes cost more than they save


def _shrink_vit(config: ml_collections.ConfigDict) -> None:
    """CATs on a tiny random DINOv2-architecture ViT: 56-px images, a 4 x 4 patch grid."""
    config.dataset.image_size = 56
    config.model.backbone = backbones.CUSTOM_VIT
    config.model.backbone_blocks = (2,)
    config.model.backbone_width = 32
    config.model.backbone_heads = 2
    config.model.hyperpixel_ids = (0, 1)
    config.model.feature_size = 4
    config.model.feature_proj_dim = 16
    config.model.num_heads = 2


def _shrink_catspp(config: ml_collections.ConfigDict) -> None:
    """A tiny CATs++: 64-px images, a four-stage one-block ResNet, a 4 x 4 flow grid."""
    config.dataset.image_size = 64
    config.model.backbone = "custom"
    config.model.backbone_blocks = (1, 1, 1, 1)
    config.model.backbone_width = 8
    config.model.feature_size = 4
    config.model.qk_dim = 16
    config.model.affinity_dim = 8
    config.model.mlp_ratio = 2.0


def shrink_to_tiny_on_dummy_data(config: ml_collections.ConfigDict, builder: str) -> None:
    """`shrink_to_tiny`, reading a real benchmark builder's `dummy_data/` as its manual dir."""
    builders = Path(data_builders.__file__).parent  # a light import: no builder, no TFDS
    config.dataset.manual_dir = str(builders / builder / "dummy_data")
    shrink_to_tiny(config)
    cell = config.dataset.image_size // config.model.feature_size
    config.train.receptive_field = cell + 1  # 9 px for CATs' 8-px cells, 17 for CATs++
    config.model.bn_mode = "frozen"  # batch statistics of 4 tiny images are meaningless

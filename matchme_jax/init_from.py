"""Starting weights: `config.init_from` (our checkpoint or an official CATs / CATs++ one) and
`config.model.backbone_weights` (torchvision ImageNet ResNet weights for the backbone alone)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from matchme_jax import checkpoint, errors, parallel
from matchme_jax.models import backbones

# How much of a converter's mismatch list (hundreds of keys for a file of another model) an error
# quotes.
MISMATCH_CHARS = 600
# Where a student starts (`config.selftrain.student_init`): the teacher's initialisation, or the
# teacher's weights.
STUDENT_INITS = ("same", "teacher")


def _from_our_checkpoint(path: Path) -> dict:
    """params and batch_stats of the latest step under a generation or checkpoints folder."""
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    manager = ocp.CheckpointManager(directory)
    step = manager.latest_step()
    if step is None:
        raise errors.MissingFileError(
            f"config.init_from={str(path)!r} holds no checkpoint; point it at a W/gen_<g> folder "
            "of an earlier run, or at an official CATs .pth/.npz/.safetensors file."
        )
    step_dir = directory / str(step)
    errors.drop_aborted_read_errors()  # before: the first arrive while the restore fails
    try:
        # The checksums saved with the step: Orbax would restore a flipped byte as other weights.
        checkpoint.verify_step(step_dir)
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    except Exception as e:  # Orbax and TensorStore raise many types, each with a page of detail
        raise errors.UserError(
            f"config.init_from={str(path)!r}: its checkpoint {step_dir} cannot be read, it is "
            f"damaged or cut short ({errors.gist(e)}); delete that step folder to start from the "
            "step before, or point config.init_from at another W/gen_<g> folder."
        ) from e
    state = restored["state"]
    return {"params": state["params"], "batch_stats": state.get("batch_stats", {})}


def _read_weights(field: str, path: Path) -> dict:
    """`convert.load_state_dict_file(path)`, its errors naming the config field that gave it."""
    from matchme_jax import convert

    try:
        return convert.load_state_dict_file(path)
    except errors.UserError as e:
        raise type(e)(f"config.{field}: {e}") from e


def _mismatch(field: str, path: Path, error: ValueError) -> errors.UserError:
    """A converter's refusal of a readable file of other weights, as one line."""
    return errors.UserError(
        f"config.{field}={str(path)!r} does not fit config.model "
        f"({errors.gist(error, MISMATCH_CHARS)}); give weights of this model, or the config that "
        "matches them."
    )


def _from_official(path: Path, config) -> dict:
    from matchme_jax import convert

    state_dict = _read_weights("init_from", path)
    from_torch = (
        convert.catspp_from_torch if config.model.name == "catspp" else convert.cats_from_torch
    )
    try:
        _, variables = from_torch(state_dict, **config.model.to_dict())
    except ValueError as e:  # missing, unexpected or mis-shaped keys, all listed
        raise _mismatch("init_from", path, e) from e
    return variables


def load_variables(config, like: dict) -> dict:
    """The variables at `config.init_from`, checked against the model's own (`like`)."""
    path = Path(config.init_from)
    if not path.exists():
        raise errors.MissingFileError(f"config.init_from={str(path)!r} does not exist.")
    loaded = _from_our_checkpoint(path) if path.is_dir() else _from_official(path, config)
    # The model's collections: a model without BatchNorm (a ViT backbone) has no batch_stats.
    loaded = {collection: loaded.get(collection, {}) for collection in like}
    want = jax.tree_util.tree_flatten_with_path(like)[0]
    have = dict(jax.tree_util.tree_flatten_with_path(loaded)[0])
    problems = []
    for key, leaf in want:
        if key not in have:
            problems.append(f"missing {jax.tree_util.keystr(key)}")
        elif np.shape(have[key]) != np.shape(leaf):
            problems.append(
                f"{jax.tree_util.keystr(key)} has shape {np.shape(have[key])}, the model "
                f"wants {np.shape(leaf)}"
            )
    if problems:
        raise errors.UserError(
            f"config.init_from={str(path)!r} does not fit config.model: "
            + "; ".join(problems[:10])
            + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
        )
    return jax.tree.map(lambda x, ref: np.asarray(x, ref.dtype), loaded, like)


def with_backbone_weights(config, variables: dict) -> dict:
    """`variables` with the backbone replaced by `config.model.backbone_weights`: torchvision
    ResNet weights, or the official DINOv2 weights for a ViT backbone."""
    from matchme_jax import convert

    vit = backbones.is_vit(config.model.backbone)
    path = Path(config.model.backbone_weights)
    if not path.is_file():
        expected = (
            "the official DINOv2 weights (e.g. dinov2_vitb14_pretrain.pth, or Hugging Face's "
            "model.safetensors)"
            if vit
            else "torchvision's ResNet weights (e.g. resnet101-5d3b4d8f.pth, or the same as "
            ".npz/.safetensors)"
        )
        raise errors.MissingFileError(
            f"config.model.backbone_weights={str(path)!r} is not a file; give {expected}."
        )
    state_dict = _read_weights("model.backbone_weights", path)
    from_weights = convert.backbone_from_dinov2 if vit else convert.backbone_from_torchvision
    try:
        backbone = from_weights(state_dict, config.model)
    except ValueError as e:  # another size, or missing or mis-shaped keys, all listed
        raise _mismatch("model.backbone_weights", path, e) from e
    return {
        collection: {**tree, "backbone": backbone[collection]} if collection in backbone else tree
        for collection, tree in variables.items()
    }


def initial_variables(config, model) -> dict:
    """Generation 0's starting variables, replicated: the seeded initialisation, then
    `config.model.backbone_weights` and `config.init_from` where given."""
    size = config.dataset.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    rng = jax.random.key(config.seed)
    variables = jax.jit(lambda r: model.init(r, source=images, target=images))(rng)
    if config.model.backbone_weights:
        variables = with_backbone_weights(config, variables)
    if config.init_from:
        variables = load_variables(config, variables)
    return parallel.replicate(variables)


def generation_start(config, generation: int, init: dict, teacher: dict | None) -> dict:
    """The variables generation `generation` trains from: the teacher (generation 0) and "same"
    students start from `init`, "teacher" students from the previous generation's weights."""
    if generation == 0 or config.selftrain.student_init == "same":
        return init
    return teacher

r"""Match two photos: where do points of one image land in the other, and how sure is the model.

    python -m matchme_jax.match --init_from=W/gen_2 --source=a.jpg --target=b.jpg --out=DIR
    python -m matchme_jax.match --init_from=W/gen_2 --source=a.jpg --target=b.jpg --out=DIR \
        --points="120,80;64.5,200"          # or --points=points.json, a JSON list of [x, y]
    python -m matchme_jax.match --init_from=cats_spair.pth --config=configs/spair.py \
        --source=a.jpg --target=b.jpg --out=DIR --grid=12

`--init_from` is anything `config.init_from` accepts (matchme_jax/init_from.py): a W/gen_<g> or
checkpoints folder of a run, whose config is read from the run's W/config.json, or an official
CATs / CATs++ .pth/.npz/.safetensors file, which needs `--config` (with `--config.x=y`
overrides, as run.py). Without `--points` the query points are a `--grid` x `--grid` grid over
the whole source image.

Writes DIR/matches.json, {"matches": [{"source": [x, y], "target": [x, y], "confidence": c,
"clipped": bool}, ...], ...} in each image's original pixels (x right, y down, pixel i covering
[i, i + 1); EXIF orientation applied, as image viewers show the photo), and DIR/matches.png, the
two images side by side with a line per match coloured by confidence (a colour bar, tau marked),
solid with dots at or above tau, dashed and ending in an x below it.

The prediction is the evaluation's: both images resized to the square canvas
(`data.resize.resize_example`), the query points transferred with `metrics.flow_to_keypoints`
(`config.eval.flow_to_keypoints`), and the confidence is the annotator's (`annotate.step`): the
peak probability of the soft-argmax over the target image's cells, the number pseudo labelling
compares to `config.selftrain.tau`.

In a notebook, one call:

    from matchme_jax import match
    m = match.match_images("W/gen_2", None, "a.jpg", "b.jpg")  # config None: W/config.json
    m.source, m.target, m.confidence                            # [N, 2], [N, 2], [N]
"""

import dataclasses
import functools
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, logging
from PIL import Image, ImageOps

from matchme_jax import atomic, init_from, metrics, visualize
from matchme_jax.annotate.step import make_annotate_step
from matchme_jax.data.resize import resize_example
from matchme_jax.models import build_model

JSON_FILE = "matches.json"
# A run's saved config, `config_checks.CONFIG_FILE`; not imported from there, which loads the whole
# training stack (a second of the CLI's start).
RUN_CONFIG_FILE = "config.json"
PNG_FILE = "matches.png"
DEFAULT_GRID = 8
CONFIDENCE = (
    "peak probability of the model's soft-argmax over the target image's cells, read at the "
    "source point (the machine annotator's confidence, compared to tau in pseudo labelling)"
)


@dataclasses.dataclass(frozen=True, eq=False)  # array fields: no elementwise ==
class Matches:
    """Correspondences of one image pair, in each image's original pixels.

    source: [N, 2] float32 (x, y) query points in the source image.
    target: [N, 2] float32 (x, y) predicted points in the target image.
    confidence: [N] float32 in [0, 1] (see `CONFIDENCE`).
    clipped: [N] bool, the model's point left the target canvas and was moved back onto its
      border (the annotator drops such cells).
    tau: the confidence threshold of pseudo labelling (`config.selftrain.tau`).
    source_size, target_size: (height, width) of the original images.
    """

    source: np.ndarray
    target: np.ndarray
    confidence: np.ndarray
    clipped: np.ndarray
    tau: float
    source_size: tuple[int, int]
    target_size: tuple[int, int]

    @property
    def above_tau(self) -> np.ndarray:
        """[N] bool: the matches pseudo labelling would keep (confidence >= tau)."""
        return self.confidence >= self.tau

    def to_json(self) -> dict:
        """matches.json's content (without the run's provenance)."""
        return {
            "matches": [
                {
                    "source": [float(x) for x in s],
                    "target": [float(x) for x in t],
                    "confidence": float(c),
                    "clipped": bool(k),
                }
                for s, t, c, k in zip(
                    self.source, self.target, self.confidence, self.clipped, strict=True
                )
            ],
            "tau": self.tau,
            "num_above_tau": int(self.above_tau.sum()),
            "confidence_is": CONFIDENCE,
            "source_size": {"height": self.source_size[0], "width": self.source_size[1]},
            "target_size": {"height": self.target_size[0], "width": self.target_size[1]},
            "coordinates": "original pixels, x right, y down, pixel i covers [i, i + 1)",
        }


# --- inputs --------------------------------------------------------------------------------


def load_image(image, name: str = "image") -> np.ndarray:
    """A path, PIL image or uint8 array -> [H, W, 3] uint8 RGB.

    Files are read with PIL, EXIF orientation applied (the photo as viewers show it), and
    converted to RGB. Raises FileNotFoundError / ValueError naming the file and the fix.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(
                f"The {name} array is {image.dtype} {image.shape}; pass an RGB uint8 [H, W, 3] "
                "array, a PIL image or an image file path."
            )
        return image
    path = Path(image).expanduser()
    if not path.is_file():
        what = "is a folder, not an image file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"The {name} image {str(path)!r} {what}; give a JPEG or PNG file.")
    if path.stat().st_size == 0:
        raise ValueError(f"The {name} image {str(path)!r} is an empty file; give a JPEG or PNG.")
    try:
        with Image.open(path) as opened:
            rgb = ImageOps.exif_transpose(opened).convert("RGB")  # convert() decodes it all
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(
            f"Cannot read the {name} image {str(path)!r} ({e}); it is damaged or not an image: "
            "give a JPEG or PNG file."
        ) from e
    return np.asarray(rgb)


def parse_points(text: str) -> np.ndarray:
    """`--points`: "x1,y1;x2,y2" or a JSON file holding a list of [x, y] -> [N, 2] float32."""
    what = f"--points={text!r}"
    if text.strip().endswith(".json") or Path(text).expanduser().is_file():
        try:
            points = json.loads(Path(text).expanduser().read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{what}: cannot read it as a JSON list of [x, y] ({e}).") from e
    else:
        try:
            points = [[float(v) for v in pair.split(",")] for pair in text.split(";") if pair]
        except ValueError as e:
            raise ValueError(
                f"{what}: write points as 'x1,y1;x2,y2' (source image pixels) or give a JSON "
                "file of [[x, y], ...]."
            ) from e
    return _as_points(points, what)


def _as_points(points, what: str) -> np.ndarray:
    try:
        array = np.asarray(points, np.float32)
    except (TypeError, ValueError):
        array = np.zeros((0, 3))  # ragged: reported below
    if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0:
        raise ValueError(f"{what}: give one or more (x, y) points, e.g. [[10, 20], [30, 40]].")
    if not np.isfinite(array).all():
        raise ValueError(f"{what}: the points must be finite numbers.")
    return array


def grid_points(height: int, width: int, grid: int = DEFAULT_GRID) -> np.ndarray:
    """[grid * grid, 2] (x, y): the centres of a grid x grid tiling of the image, row by row."""
    if grid < 1:
        raise ValueError(f"--grid={grid}: give 1 or more points per side.")
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    centres = np.stack([xs, ys], -1).reshape(-1, 2) + 0.5
    return (centres * np.array([width / grid, height / grid])).astype(np.float32)


def _check_inside(points: np.ndarray, height: int, width: int) -> None:
    outside = ~((points >= 0) & (points < [width, height])).all(axis=1)
    if outside.any():
        listed = ", ".join(f"({x:g}, {y:g})" for x, y in points[outside][:5])
        raise ValueError(
            f"{int(outside.sum())} query point(s) lie outside the {width} x {height} source "
            f"image: {listed}; give (x, y) with 0 <= x < {width} and 0 <= y < {height}."
        )


# --- config and weights ----------------------------------------------------------------------


def saved_config(checkpoint: str | Path) -> ml_collections.ConfigDict | None:
    """The config a run saved beside its checkpoint (W/config.json), or None.

    Looks in the folder itself and the two above it: W/gen_<g> and W/gen_<g>/checkpoints both
    lead to W. A checkpoint file (an official one) has no run: None.
    """
    path = Path(checkpoint).expanduser()
    if not path.is_dir():
        return None
    for folder in (path, path.parent, path.parent.parent):
        file = folder / RUN_CONFIG_FILE
        if file.is_file():
            content = atomic.read_json(file, fix="restore it, or give the run's config as --config")
            return ml_collections.ConfigDict(content)
    return None


def resolve_config(checkpoint, config=None) -> ml_collections.ConfigDict:
    """`config` when given, else the checkpoint's run config; one clear error when neither."""
    if config is not None:
        return config
    if isinstance(checkpoint, str | os.PathLike):
        found = saved_config(checkpoint)
        if found is not None:
            return found
        if not Path(checkpoint).expanduser().exists():
            raise FileNotFoundError(
                f"--init_from={str(checkpoint)!r} does not exist; give a W/gen_<g> folder of a "
                "run or an official CATs .pth/.npz/.safetensors file."
            )
        raise ValueError(
            f"--init_from={str(checkpoint)!r} has no run config (config.json in its run folder); "
            "give the config its weights were made for with --config (`config` in Python), e.g. "
            "--config=configs/spair.py for an official CATs SPair-71k file."
        )
    raise ValueError(
        "match_images: pass the config with model variables (config=None needs a path)."
    )


def _canvas_shapes(config) -> dict:
    """Abstract model variables ([1, S, S, 3] inputs), without computing an initialisation."""
    model = build_model(config.model)
    size = config.dataset.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda r: model.init(r, source=images, target=images), jax.random.key(0))


def load_checkpoint(checkpoint: str | Path, config=None) -> tuple[dict, ml_collections.ConfigDict]:
    """(variables, config) of a checkpoint `config.init_from` accepts; `config` as `resolve_config`.

    Load once and pass the variables to `match_images` to match many pairs.
    """
    config = resolve_config(checkpoint, config)
    config = ml_collections.ConfigDict(config.to_dict())  # a copy: the caller's stays as it was
    config.init_from = str(Path(checkpoint).expanduser())
    return init_from.load_variables(config, _canvas_shapes(config)), config


# --- prediction ----------------------------------------------------------------------------


@functools.cache
def _correspondence_step(model_json: str):
    """The annotator's jitted step for a model config; cached so notebooks compile once."""
    return make_annotate_step(build_model(json.loads(model_json)))


def _lookup_points(points: jax.Array, image_size: int, mode: str) -> jax.Array:
    """Where `metrics.flow_to_keypoints` reads the flow for `points` ([B, K, 2] canvas px)."""
    if mode == "official":
        return jnp.clip(jnp.trunc(points), 0.0, image_size - 1.0)
    return points


def predict_canvas(
    variables, config, source_canvas: np.ndarray, target_canvas: np.ndarray, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(target points [K, 2], confidence [K]) for source `points` [K, 2], all in canvas pixels.

    Images are [S, S, 3] uint8 canvases (S = config.dataset.image_size).
    """
    size = config.dataset.image_size
    mode = config.eval.get("flow_to_keypoints", "official")
    step = _correspondence_step(config.model.to_json())
    # The model's flow lives on its *target* grid and points into its *source*, and evaluation
    # transfers target keypoints: so our source (the image with the query points) goes in as the
    # model's target, and the confidence is the annotator's for that cell.
    out = step(
        variables, {"source_image": target_canvas[None], "target_image": source_canvas[None]}
    )
    queries = jnp.asarray(points, jnp.float32)[None]
    target = metrics.flow_to_keypoints(out["flow"], queries, size, mode=mode)
    # The confidence read where the flow is read, with the flow's bilinear weights: at a cell
    # centre exactly the annotator's number for that cell, in [0, 1] everywhere.
    field = jnp.repeat(out["confidence"][..., None], 2, axis=-1)  # [1, h, w, 2], as a flow
    lookup = _lookup_points(queries, size, mode)
    confidence = metrics.sample_flow(field, lookup, size)[..., 0]
    return np.asarray(target[0]), np.clip(np.asarray(confidence[0]), 0.0, 1.0)


def match_images(
    variables_or_checkpoint,
    config,
    source_image,
    target_image,
    points=None,
    *,
    grid: int = DEFAULT_GRID,
    tau: float | None = None,
) -> Matches:
    """Predicts where `points` of the source image lie in the target image.

    Args:
      variables_or_checkpoint: model variables ({"params", "batch_stats"}) or a checkpoint path
        `config.init_from` accepts (see `load_checkpoint`).
      config: the experiment config of the model; None reads the run's W/config.json (a
        checkpoint path of our own only).
      source_image, target_image: paths, PIL images or uint8 [H, W, 3] arrays, any size.
      points: [N, 2] (x, y) in the source image's pixels; None: a `grid` x `grid` grid.
      grid: points per side of the default grid.
      tau: the confidence threshold recorded and drawn; None: config.selftrain.tau.

    Returns:
      `Matches`, in each image's original pixels.
    """
    source = load_image(source_image, "source")
    target = load_image(target_image, "target")
    if isinstance(variables_or_checkpoint, str | os.PathLike):
        variables, config = load_checkpoint(variables_or_checkpoint, config)
    else:
        variables, config = variables_or_checkpoint, resolve_config(None, config)
    (sh, sw), (th, tw) = source.shape[:2], target.shape[:2]
    if points is None:
        points = grid_points(sh, sw, grid)
    points = _as_points(points, "points")
    _check_inside(points, sh, sw)
    size = config.dataset.image_size
    no_box = np.zeros(4, np.float32)
    # The evaluation's resize: the square canvas, points scaled per axis (aspect not kept).
    source_canvas, canvas_points, _ = resize_example(source, points, no_box, size)
    target_canvas, _, _ = resize_example(target, np.zeros((0, 2)), no_box, size)
    predicted, confidence = predict_canvas(
        variables, config, source_canvas, target_canvas, canvas_points
    )
    # The annotator's canvas rule: a point must lie in [0, S - 1]; we keep such a match, moved
    # onto the canvas border, and say so.
    inside = np.clip(predicted, 0.0, size - 1.0)
    clipped = (inside != predicted).any(axis=1)
    to_target = np.array([tw / size, th / size], np.float32)  # as `annotate.to_original`
    return Matches(
        source=points,
        target=(inside * to_target).astype(np.float32),
        confidence=confidence.astype(np.float32),
        clipped=clipped,
        tau=float(config.selftrain.tau if tau is None else tau),
        source_size=(int(sh), int(sw)),
        target_size=(int(th), int(tw)),
    )


def write_matches(
    matches: Matches, source_image, target_image, out: str | Path, extra: dict | None = None
) -> tuple[Path, Path]:
    """Writes out/matches.json (with `extra`, e.g. provenance) and out/matches.png."""
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    content = {**(extra or {}), **matches.to_json()}
    atomic.write_json(out / JSON_FILE, content)
    picture = visualize.plot_correspondences(
        load_image(source_image, "source"),
        load_image(target_image, "target"),
        matches.source,
        matches.target,
        matches.confidence,
        matches.tau,
        out / PNG_FILE,
    )
    return out / JSON_FILE, picture


def run(
    init_from_path: str,
    source: str,
    target: str,
    out: str,
    *,
    config=None,
    points: str | None = None,
    grid: int = DEFAULT_GRID,
    tau: float | None = None,
) -> Matches:
    """The CLI without flags: match, write both files, return the matches."""
    # The images first: a wrong path fails in a second, before any model is built.
    source_rgb, target_rgb = load_image(source, "source"), load_image(target, "target")
    query = None if points is None else parse_points(points)
    variables, config = load_checkpoint(init_from_path, config)
    matches = match_images(variables, config, source_rgb, target_rgb, query, grid=grid, tau=tau)
    provenance = {
        "checkpoint": str(init_from_path),
        "source_image": str(source),
        "target_image": str(target),
        "model": config.model.name,
        "image_size": config.dataset.image_size,
        "flow_to_keypoints": config.eval.get("flow_to_keypoints", "official"),
    }
    write_matches(matches, source_rgb, target_rgb, out, provenance)
    return matches


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax reports every restore at INFO
    try:
        matches = run(
            _INIT_FROM.value,
            _SOURCE.value,
            _TARGET.value,
            _OUT.value,
            config=_CONFIG.value,
            points=_POINTS.value,
            grid=_GRID.value,
            tau=_TAU.value,
        )
    except (OSError, ValueError) as e:
        # A user's mistake (a path, a point, a config): one line, no traceback; status 2, as
        # run.py's.
        print(f"match: {e}", file=sys.stderr)
        sys.exit(2)
    kept = int(matches.above_tau.sum())
    mean = float(matches.confidence.mean()) if len(matches.confidence) else math.nan
    print(
        f"{len(matches.confidence)} matches, {kept} with confidence >= tau {matches.tau:g} "
        f"(mean {mean:.3f}); wrote {Path(_OUT.value) / JSON_FILE} and {Path(_OUT.value) / PNG_FILE}"
    )


if __name__ == "__main__":
    # Flags only when run as a program: absl flags are global, and other modules imported beside
    # this one (run.py's, the benchmark's) define a `--config` of their own.
    from absl import flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        None,
        "Experiment config (configs/*.py[:arg]); default: the run's W/config.json. Needed for an "
        "official checkpoint file.",
        lock_config=True,
    )
    _INIT_FROM = flags.DEFINE_string(
        "init_from", None, "A W/gen_<g> (or checkpoints) folder, or an official CATs file."
    )
    _SOURCE = flags.DEFINE_string("source", None, "Source image file (the query points' image).")
    _TARGET = flags.DEFINE_string("target", None, "Target image file.")
    _OUT = flags.DEFINE_string("out", None, "Folder for matches.json and matches.png.")
    _POINTS = flags.DEFINE_string(
        "points", None, "'x1,y1;x2,y2' or a JSON file of [[x, y], ...] in source pixels."
    )
    _GRID = flags.DEFINE_integer(
        "grid", DEFAULT_GRID, "Without --points: this many points per side, over the source."
    )
    _TAU = flags.DEFINE_float("tau", None, "Confidence threshold drawn; default selftrain.tau.")
    flags.mark_flags_as_required(["init_from", "source", "target", "out"])
    app.run(main)

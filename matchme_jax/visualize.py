"""Figures: a model's keypoint matches, PCK per self-training generation, the annotator's tau sweep.

`draw_matches` puts the source (left) and the target (right) side by side and joins each target
keypoint to the source point the model transfers it to, in `CORRECT_COLOUR` when the official PCK
counts it correct and in `WRONG_COLOUR` otherwise. Filled dots are the target keypoint and the
predicted source point; a hollow ring of the same colour is the true source point, joined to the
prediction by a thin line (the error). `save_match_pictures` runs a model's flow function on the
first pairs of a split and writes one PNG per pair; `plot_generations` plots a results.json;
`plot_tau_sweep` plots the annotator's tau sweep; `plot_correspondences` draws the matches of
`python -m matchme_jax.match`, coloured by confidence.
"""

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from matchme_jax import evaluate, metrics
from matchme_jax.data import pipeline
from matchme_jax.models.inputs import normalize_uint8

# Okabe-Ito bluish green and vermillion: told apart with the common colour-vision deficiencies.
CORRECT_COLOUR = (0, 158, 115)
WRONG_COLOUR = (213, 94, 0)


def _check_image(name: str, image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"draw_matches: {name} must be uint8 [H, W, 3], got {image.dtype} {image.shape}; "
            "pass the prepared canvas images, not normalised float ones."
        )


def _check_points(points: Mapping[str, np.ndarray], flags: Mapping[str, np.ndarray]) -> None:
    num = len(flags["mask"])
    for name, value in flags.items():
        if value.shape != (num,) or value.dtype != np.bool_:
            raise ValueError(
                f"draw_matches: {name} must be a bool [K] array, got {value.dtype} {value.shape}."
            )
    for name, value in points.items():
        if value.shape != (num, 2):
            raise ValueError(
                f"draw_matches: {name} must be [K, 2] (x, y) with K={num} like mask, "
                f"got shape {value.shape}."
            )
        if not np.isfinite(value[flags["mask"]]).all():
            raise ValueError(f"draw_matches: {name} has non-finite masked-in points.")


def _side_by_side(source_image: np.ndarray, target_image: np.ndarray, scale: int) -> Image.Image:
    """Source left, target right, on black where the heights differ, upscaled by `scale`."""
    height = max(source_image.shape[0], target_image.shape[0])
    canvas = np.zeros((height, source_image.shape[1] + target_image.shape[1], 3), np.uint8)
    canvas[: source_image.shape[0], : source_image.shape[1]] = source_image
    canvas[: target_image.shape[0], source_image.shape[1] :] = target_image
    picture = Image.fromarray(canvas)
    # Nearest neighbour keeps the pixels the model saw visible in a small canvas.
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def _dot(draw: ImageDraw.ImageDraw, centre: np.ndarray, radius: int, colour, filled: bool) -> None:
    x, y = centre
    box = (x - radius, y - radius, x + radius, y + radius)
    if filled:
        # A white rim keeps the dot visible on image regions of its own hue.
        draw.ellipse(box, fill=colour, outline=(255, 255, 255))
    else:
        draw.ellipse(box, outline=colour, width=max(1, radius // 2))


def draw_matches(
    source_image: np.ndarray,
    target_image: np.ndarray,
    predicted_source_kps: np.ndarray,
    true_source_kps: np.ndarray,
    target_kps: np.ndarray,
    mask: np.ndarray,
    correct: np.ndarray,
    *,
    scale: int = 1,
    line_width: int = 2,
    radius: int = 3,
) -> np.ndarray:
    """Source and target side by side, each target keypoint joined to its predicted source point.

    Only masked-in keypoints are drawn. Lines and dots are in `CORRECT_COLOUR` where `correct`
    and `WRONG_COLOUR` elsewhere; see the module docstring for the markers.

    Args:
      source_image: [Hs, Ws, 3] uint8.
      target_image: [Ht, Wt, 3] uint8.
      predicted_source_kps: [K, 2] (x, y) source pixels the model transfers the target points to.
      true_source_kps: [K, 2] (x, y) ground-truth source pixels.
      target_kps: [K, 2] (x, y) target pixels.
      mask: [K] bool, True for real keypoints.
      correct: [K] bool, e.g. from `metrics.correct_keypoints`.
      scale: integer upscaling of the images (nearest neighbour), so that small canvases are
        readable; keypoints are scaled with them, line width and radius are not.
      line_width: width in output pixels of the target -> prediction lines.
      radius: radius in output pixels of the dots.

    Returns:
      [max(Hs, Ht) * scale, (Ws + Wt) * scale, 3] uint8.
    """
    source_image, target_image = np.asarray(source_image), np.asarray(target_image)
    _check_image("source_image", source_image)
    _check_image("target_image", target_image)
    points = {
        "predicted_source_kps": np.asarray(predicted_source_kps, np.float64),
        "true_source_kps": np.asarray(true_source_kps, np.float64),
        "target_kps": np.asarray(target_kps, np.float64),
    }
    flags = {"mask": np.asarray(mask), "correct": np.asarray(correct)}
    _check_points(points, flags)
    if not isinstance(scale, int | np.integer) or scale < 1:
        raise ValueError(f"draw_matches: scale must be a positive int, got {scale!r}.")

    picture = _side_by_side(source_image, target_image, scale)
    draw = ImageDraw.Draw(picture)
    predicted = points["predicted_source_kps"] * scale
    true = points["true_source_kps"] * scale
    # The target panel starts where the source image ends.
    target = (points["target_kps"] + [source_image.shape[1], 0]) * scale
    chosen = np.flatnonzero(flags["mask"])
    colours = {k: CORRECT_COLOUR if flags["correct"][k] else WRONG_COLOUR for k in chosen}
    # All lines first, so that no line hides a dot.
    for k in chosen:
        draw.line([tuple(target[k]), tuple(predicted[k])], fill=colours[k], width=line_width)
        draw.line([tuple(predicted[k]), tuple(true[k])], fill=colours[k], width=1)
    for k in chosen:
        _dot(draw, true[k], radius + 1, colours[k], filled=False)
        _dot(draw, predicted[k], radius, colours[k], filled=True)
        _dot(draw, target[k], radius, colours[k], filled=True)
    return np.asarray(picture)


def make_flow_fn(model) -> Callable:
    """`flow_fn(variables, batch) -> flow [B, h, w, 2]`, jitted, for `save_match_pictures`.

    `batch` is a `pipeline.device_batch` (uint8 canvas images); the images are normalised here
    as in `evaluate.make_eval_step`, and the model runs in inference mode.
    """

    def flow_fn(variables, batch):
        return model.apply(
            variables,
            source=normalize_uint8(batch["source_image"]),
            target=normalize_uint8(batch["target_image"]),
            train=False,
        )

    return jax.jit(flow_fn)


def _correct_keypoints(
    predicted: jax.Array, batch: Mapping[str, np.ndarray], image_size: int, eval_cfg, alpha: float
) -> np.ndarray:
    """[B, K] bool: the official PCK's verdict per keypoint, with `eval_cfg.threshold`."""
    threshold = evaluate.pck_threshold(
        {k: jnp.asarray(v) for k, v in batch.items()}, eval_cfg.threshold, image_size
    )
    return np.asarray(
        metrics.correct_keypoints(
            predicted,
            jnp.asarray(batch["source_keypoints"]),
            jnp.asarray(batch["keypoint_mask"]),
            threshold,
            alpha,
        )
    )


def _pair_file_name(index: int, category: int, category_names: Sequence[str] | None) -> str:
    name = category_names[category] if category_names is not None else f"category{category}"
    return f"{index:05d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', str(name))}.png"


def save_match_pictures(
    flow_fn: Callable,
    variables,
    source,
    dataset_cfg,
    eval_cfg,
    directory: str | Path,
    *,
    num_pairs: int = 8,
    alpha: float = 0.1,
    category_names: Sequence[str] | None = None,
    min_side: int = 256,
) -> list[Path]:
    """Writes `<directory>/<index>_<category>.png` for the first `num_pairs` pairs of `source`.

    The pairs go through the evaluation pipeline (`pipeline.padded_batches` with
    `eval_cfg.batch_size`), the target keypoints are transferred with
    `eval_cfg.flow_to_keypoints`, and a match is correct by the official PCK at `alpha` with
    `eval_cfg.threshold`, exactly as `evaluate.evaluate` counts it.

    Args:
      flow_fn: `flow_fn(variables, batch) -> flow [B, h, w, 2]` on the target grid pointing into
        the source, `batch` a `pipeline.device_batch` with uint8 images (see `make_flow_fn`).
      variables: the model variables passed to `flow_fn`.
      source: a random-access split, e.g. `sources.open_split(dataset_cfg, split)`.
      dataset_cfg: `config.dataset` (image_size, max_keypoints, num_workers).
      eval_cfg: `config.eval` (batch_size, threshold, flow_to_keypoints).
      directory: output folder, created if needed, e.g. W/eval/<dataset>_test_matches.
      num_pairs: how many pairs to draw (fewer if the split is smaller).
      alpha: the PCK fraction that decides the colour of a match.
      category_names: names indexed by category id, for the file names.
      min_side: the canvas is upscaled by an integer factor to at least this many pixels.

    Returns:
      The paths written, in split order.
    """
    evaluate.check_threshold(eval_cfg)
    if num_pairs < 1:
        raise ValueError(f"save_match_pictures: num_pairs must be >= 1, got {num_pairs}.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    image_size = dataset_cfg.image_size
    scale = max(1, math.ceil(min_side / image_size))
    written = []
    for batch in pipeline.padded_batches(source, dataset_cfg, batch_size=eval_cfg.batch_size):
        flow = flow_fn(variables, pipeline.device_batch(batch))
        predicted = metrics.flow_to_keypoints(
            flow, jnp.asarray(batch["target_keypoints"]), image_size, eval_cfg.flow_to_keypoints
        )
        correct = _correct_keypoints(predicted, batch, image_size, eval_cfg, alpha)
        predicted = np.asarray(predicted)
        for i in np.flatnonzero(batch["valid"]):
            picture = draw_matches(
                batch["source_image"][i],
                batch["target_image"][i],
                predicted[i],
                batch["source_keypoints"][i],
                batch["target_keypoints"][i],
                batch["keypoint_mask"][i],
                correct[i],
                scale=scale,
            )
            name = _pair_file_name(
                int(batch["index"][i]), int(batch["category"][i]), category_names
            )
            Image.fromarray(picture).save(directory / name)
            written.append(directory / name)
            if len(written) == num_pairs:
                return written
    return written


def _series(generations: Sequence[Mapping], section: str, key: str) -> list[float]:
    """One value per generation, NaN where the generation has none (a gap in the line)."""
    values = []
    for record in generations:
        value = (record.get(section) or {}).get(key)
        values.append(math.nan if value is None else float(value))
    return values


def plot_generations(
    results: Mapping, path: str | Path, alphas: Sequence[float] = (0.05, 0.1, 0.15)
) -> Path:
    """Plots test PCK, validation PCK@0.1 (where evaluated) and pseudo-label precision@0.1
    (percent) against generation, as a PNG.

    Args:
      results: the content of W/results.json: {"generations": [{"generation": int,
        "test": {"pck@0.1": float, ...}, "validation": {"pck@0.1": float, ...} (optional),
        "pseudo_labels": {"precision@0.1": float} or None}]}.
      path: the PNG to write, e.g. W/pck_per_generation.png.
      alphas: the PCK fractions to plot, each a "pck@<alpha>" key of every "test".

    Returns:
      `path`.
    """
    generations = results.get("generations") if isinstance(results, Mapping) else None
    if not generations:
        raise ValueError(
            "plot_generations: results has no 'generations'; pass the dict of a "
            "self-training run's W/results.json after at least one generation."
        )
    x = [int(record["generation"]) for record in generations]
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for alpha in alphas:
        key = f"pck@{alpha:g}"
        missing = [g for g, record in zip(x, generations, strict=True) if key not in record["test"]]
        if missing:
            raise ValueError(f"plot_generations: no test {key!r} for generations {missing}.")
        axes.plot(x, _series(generations, "test", key), marker="o", label=f"test PCK@{alpha:g}")
    validation = _series(generations, "validation", "pck@0.1")
    if not all(math.isnan(v) for v in validation):
        axes.plot(x, validation, marker="^", linestyle=":", label="validation PCK@0.1")
    precision = _series(generations, "pseudo_labels", "precision@0.1")
    if not all(math.isnan(p) for p in precision):
        axes.plot(x, precision, marker="s", linestyle="--", label="pseudo-label precision@0.1")
    axes.set_xlabel("generation (0 = teacher)")
    axes.set_ylabel("percent")
    axes.set_xticks(x)
    axes.set_ylim(0.0, 100.0)
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def plot_tau_sweep(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Plots pseudo points kept and their precision@0.1 (percent) against tau, as a PNG.

    Args:
      rows: the annotator's tau sweep (`annotate.sweep_tau`): one {"tau": float, "points": int,
        "precision@0.1": float or None, ...} per tau.
      path: the PNG to write, e.g. W/gen_<g>/tau_sweep.png.

    Returns:
      `path`.
    """
    taus = [row["tau"] for row in rows]
    figure = Figure(figsize=(5.0, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    count_axes = figure.add_subplot()
    count_axes.plot(taus, [row["points"] for row in rows], "o-", color="tab:blue")
    count_axes.set_xlabel("tau (confidence threshold)")
    count_axes.set_ylabel("pseudo points kept", color="tab:blue")
    precision_axes = count_axes.twinx()
    # No truth at a tau: a gap in the line.
    precision = [math.nan if row["precision@0.1"] is None else row["precision@0.1"] for row in rows]
    precision_axes.plot(taus, precision, "s--", color="tab:orange")
    precision_axes.set_ylabel("precision@0.1 (%)", color="tab:orange")
    precision_axes.set_ylim(0.0, 100.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def plot_correspondences(
    source_image: np.ndarray,
    target_image: np.ndarray,
    source_points: np.ndarray,
    target_points: np.ndarray,
    confidence: np.ndarray,
    tau: float,
    path: str | Path,
    *,
    height: int = 384,
    colormap: str = "viridis",
) -> Path:
    """Source (left) and target (right) side by side, a line per match, as a PNG.

    Every line and its end points take the match's confidence in `colormap` (0 to 1, a colour
    bar with tau marked in red). A match at confidence >= tau (one pseudo labelling would keep)
    is a solid line ending in dots; one below tau a thin dashed line ending in an x. Both images
    are fitted into `height` x `height` panels whatever their sizes, the points scaled with them.
    Written to a temporary file beside `path`, then renamed over it.

    Args:
      source_image: [Hs, Ws, 3] uint8; target_image: [Ht, Wt, 3] uint8.
      source_points, target_points: [N, 2] (x, y) in each image's own pixels.
      confidence: [N] in [0, 1].
      tau: the confidence threshold.
      path: the PNG to write, e.g. DIR/matches.png.
      height: side of each image's square panel, in plot units (the PNG is 1000 x 560 px).
      colormap: a matplotlib colormap name.

    Returns:
      `path`.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    source_image, target_image = np.asarray(source_image), np.asarray(target_image)
    _check_image("source_image", source_image)
    _check_image("target_image", target_image)
    source_points = np.asarray(source_points, np.float64).reshape(-1, 2)
    target_points = np.asarray(target_points, np.float64).reshape(-1, 2)
    confidence = np.asarray(confidence, np.float64).reshape(-1)
    if not len(source_points) == len(target_points) == len(confidence):
        raise ValueError(
            "plot_correspondences: source_points, target_points and confidence must have the "
            f"same N, got {len(source_points)}, {len(target_points)} and {len(confidence)}."
        )

    # Each image fitted into a `height` x `height` panel (its longer side `height`), centred
    # vertically, so that a very wide or tall image stays as readable as the other one.
    def placement(image: np.ndarray, left: float) -> tuple[float, np.ndarray]:
        scale = height / max(image.shape[:2])
        offset = np.array([left, (height - image.shape[0] * scale) / 2])
        return scale, offset

    source_scale, source_offset = placement(source_image, 0.0)
    target_scale, target_offset = placement(target_image, float(height))
    # `extent` puts pixel i at [i, i + 1) * scale: the points' convention, scaled alike.
    start = source_points * source_scale + source_offset
    end = target_points * target_scale + target_offset
    width = 2.0 * height

    figure = Figure(figsize=(10.0, 5.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for image, scale, (left, top) in (
        (source_image, source_scale, source_offset),
        (target_image, target_scale, target_offset),
    ):
        right, bottom = left + image.shape[1] * scale, top + image.shape[0] * scale
        # Nearest neighbour: the pixels of a small image stay visible instead of a blur.
        axes.imshow(image, extent=(left, right, bottom, top), interpolation="nearest")
    axes.axvline(height, color="0.5", linewidth=1.0)
    norm, cmap = Normalize(0.0, 1.0), colormaps[colormap]
    kept = confidence >= tau
    lines = np.stack([start, end], axis=1)  # [N, 2 ends, 2]
    for chosen, style, line_width in ((~kept, "--", 1.0), (kept, "-", 1.8)):
        collection = LineCollection(
            lines[chosen], cmap=cmap, norm=norm, linestyles=style, linewidths=line_width
        )
        collection.set_array(confidence[chosen])
        axes.add_collection(collection)
    for points in (start, end):
        colours = confidence[~kept]
        axes.scatter(*points[~kept].T, c=colours, cmap=cmap, norm=norm, marker="x", s=22, zorder=3)
        axes.scatter(
            *points[kept].T,
            c=confidence[kept],
            cmap=cmap,
            norm=norm,
            s=18,
            edgecolors="white",
            linewidths=0.6,
            zorder=3,
        )
    axes.set_xlim(0.0, width)
    axes.set_ylim(height, 0.0)
    axes.set_axis_off()
    axes.set_title(
        f"{len(confidence)} matches, {int(kept.sum())} with confidence >= tau = {tau:g} "
        "(solid; dashed with an x: below tau)",
        fontsize="medium",
    )
    bar = figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, fraction=0.03, pad=0.01)
    bar.set_label("confidence (red: tau)")
    bar.ax.axhline(tau, color="red", linewidth=2.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)  # whole or not at all, as matchme_jax/atomic.py writes files
    return path

"""grain input pipelines: labeled pairs, pseudo-labeled pairs, and evaluation batches.

The host decodes, resizes every image to the square canvas (`dataset.image_size`) and pads the
keypoints to a fixed `dataset.max_keypoints` with a mask, so that every batch has the same shapes
whatever its origin: a pseudo-labeled pair is just keypoints with another weight, and nothing
recompiles when a student takes over. Random augmentation happens on device, in the train step.

A prepared element (`prepare_pair`) holds:
  source_image, target_image: [S, S, 3] uint8 (S = dataset.image_size)
  source_keypoints, target_keypoints: [K, 2] float32, (x, y) canvas pixels
  keypoint_mask: [K] bool; keypoint_weight: [K] float32 (1 for ground truth)
  source_bbox, target_bbox: [4] float32, x1 y1 x2 y2 canvas pixels
  source_size, target_size: [2] int32, original (height, width)
  source_bbox_original: [4] float32, the source box in original pixels
  category: int32; flip: bool; index: int32 (position in its split); valid: bool
and, when asked for (`extra_keys`), raw features passed through unchanged, such as the
synthetic benchmark's dense ground truth (`TRUTH_KEYS`).
"""

from collections.abc import Iterator, Mapping, Sequence

import grain
import numpy as np

from matchme_jax.data.resize import resize_example

# Keys the device needs; everything else stays on the host.
DEVICE_KEYS = (
    "source_image",
    "target_image",
    "source_keypoints",
    "target_keypoints",
    "keypoint_mask",
    "keypoint_weight",
    "source_bbox",
    "target_bbox",
    "flip",
    "valid",
)

# The synthetic benchmark's dense target->source truth, used to score pseudo labels.
TRUTH_KEYS = ("dense_correspondence", "dense_correspondence_mask")


def _pad(points: np.ndarray, max_keypoints: int) -> np.ndarray:
    out = np.zeros((max_keypoints, 2), np.float32)
    n = min(len(points), max_keypoints)
    out[:n] = points[:n]
    return out


def prepare_pair(
    example: Mapping[str, np.ndarray], index: int, *, image_size: int, max_keypoints: int
) -> dict[str, np.ndarray]:
    """One raw pair (TFDS features) -> fixed-shape arrays in the canvas frame."""
    src_kps = np.asarray(example["source_keypoints"], np.float32).reshape(-1, 2)
    trg_kps = np.asarray(example["target_keypoints"], np.float32).reshape(-1, 2)
    src_image, src_kps, src_bbox = resize_example(
        example["source_image"], src_kps, example["source_bbox"], image_size
    )
    trg_image, trg_kps, trg_bbox = resize_example(
        example["target_image"], trg_kps, example["target_bbox"], image_size
    )
    n = min(len(src_kps), max_keypoints)
    weight = np.zeros(max_keypoints, np.float32)
    weight[:n] = np.asarray(example.get("keypoint_weight", np.ones(len(src_kps))))[:n]
    return {
        "source_image": src_image,
        "target_image": trg_image,
        "source_keypoints": _pad(src_kps, max_keypoints),
        "target_keypoints": _pad(trg_kps, max_keypoints),
        "keypoint_mask": np.arange(max_keypoints) < n,
        "keypoint_weight": weight,
        "source_bbox": np.asarray(src_bbox, np.float32),
        "source_bbox_original": np.asarray(example["source_bbox"], np.float32),
        "target_bbox": np.asarray(trg_bbox, np.float32),
        "source_size": np.asarray(example["source_image"].shape[:2], np.int32),
        "target_size": np.asarray(example["target_image"].shape[:2], np.int32),
        "category": np.int32(example["category"]),
        "flip": np.bool_(example.get("flip", False)),
        "index": np.int32(index),
        "valid": np.bool_(True),
    }


def _prepared(source, dataset_cfg, extra_keys: Sequence[str] = ()) -> grain.MapDataset:
    size = len(source)

    def prepare(index, example):
        prepared = prepare_pair(
            example,
            index % size,  # grain passes the index of a repeated dataset: epoch * size + position
            image_size=dataset_cfg.image_size,
            max_keypoints=dataset_cfg.max_keypoints,
        )
        prepared.update({k: np.asarray(example[k]) for k in extra_keys if k in example})
        return prepared

    return grain.MapDataset.source(source).map_with_index(prepare)


def _to_iterator(ds: grain.MapDataset, num_workers: int) -> grain.DatasetIterator:
    # A short read-ahead: grain's default (500 batches on 16 threads) keeps decoding batches
    # that a finished generation never takes, and starves the checkpoint writer on small hosts.
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    if num_workers > 0:
        it_ds = it_ds.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers))
    return iter(it_ds)


def training_iterator(
    sources: Sequence,
    weights: Sequence[float],
    dataset_cfg,
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.DatasetIterator:
    """Endless shuffled batches drawn from `sources` in proportion to `weights` (>= 0).

    Each source is shuffled anew every epoch from `seed`; the iterator's state (`get_state`)
    goes into the checkpoint so that a resumed run sees the same batches.

    In a multi-process run each process (`shard_index` of `shard_count`) reads every
    `shard_count`-th pair of the one shuffled stream, `batch_size // shard_count` per batch: the
    processes' k-th batches together hold exactly the pairs of a single process's k-th batch.
    """
    if not 0 <= shard_index < shard_count or batch_size % shard_count:
        raise ValueError(
            f"Cannot read shard {shard_index} of {shard_count} with batches of {batch_size}: "
            f"set config.train.batch_size to a multiple of the process count ({shard_count})."
        )
    # A source of weight 0 is left out (grain mixes only positive weights); the others keep the
    # seeds of their positions, so that their streams do not depend on it.
    parts, kept = [], []
    for i, (src, weight) in enumerate(zip(sources, weights, strict=True)):
        if weight > 0:
            parts.append(_prepared(src, dataset_cfg).seed(seed + i).shuffle().repeat())
            kept.append(weight)
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights=kept)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    ds = ds.batch(batch_size // shard_count, drop_remainder=True)
    return _to_iterator(ds, dataset_cfg.num_workers)


def padded_batches(
    source, dataset_cfg, *, batch_size: int, extra_keys: Sequence[str] = ()
) -> Iterator[dict[str, np.ndarray]]:
    """Every example once, in order, as full batches; the last one is padded with valid=False."""
    ds = _prepared(source, dataset_cfg, extra_keys).batch(batch_size, drop_remainder=False)
    for batch in _to_iterator(ds, dataset_cfg.num_workers):
        n = len(batch["valid"])
        if n < batch_size:
            batch = {
                k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)])
                for k, v in batch.items()
            }
        yield batch


def device_batch(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The part of a host batch the jitted steps take."""
    return {k: batch[k] for k in DEVICE_KEYS}


class PseudoLabeledPairs:
    """Unlabeled pairs with the teacher's pseudo keypoints, as a random-access source.

    Reads the images (and boxes) from the unlabeled split and the keypoints from the pseudo-label
    store, so a pseudo pair comes out exactly like a labeled TFDS example and goes through the
    same host preparation and on-device augmentation.
    """

    def __init__(self, unlabeled_source, pseudo: Mapping[str, np.ndarray], weight: float):
        self._source = unlabeled_source
        self._pseudo = pseudo
        self._weight = weight

    def __len__(self) -> int:
        return len(self._pseudo["index"])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        example = self._source[int(self._pseudo["index"][i])]
        mask = self._pseudo["mask"][i]
        return {
            "source_image": example["source_image"],
            "target_image": example["target_image"],
            "source_bbox": example["source_bbox"],
            "target_bbox": example["target_bbox"],
            "category": example["category"],
            "source_keypoints": self._pseudo["source_keypoints"][i][mask],
            "target_keypoints": self._pseudo["target_keypoints"][i][mask],
            "keypoint_weight": np.full(int(mask.sum()), self._weight, np.float32),
        }

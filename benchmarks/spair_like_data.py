"""Writes a manual dir in the SPair-71k layout with PASCAL-VOC-sized JPEGs, for timing the host.

The input pipeline's cost is decoding and resizing the images, which depends on their size and
JPEG coding, not on what they show. Where the real archive is not at hand (our CPU machines, the
GPU machines), this folder stands in for it: images of VOC's sizes (500 px on the long side,
375 or 333 on the other) coded at JPEG quality 90 from multi-scale noise (~100 kB, like VOC's),
and pair annotations with 3-20 keypoints, in exactly the layout the spair71k builder reads.

    python benchmarks/spair_like_data.py --out=MANUAL_DIR --pairs=2000
    python -m data_builders.prepare --dataset=spair71k --data_dir=D --manual_dir=MANUAL_DIR
    python -m matchme_jax.bench --config=configs/spair.py --config.dataset.data_dir=D \\
        --modes=input --batch_sizes=32 --json=input.json --config.dataset.num_workers=8
"""

import json
from pathlib import Path

import cv2
import numpy as np
from absl import app, flags

from data_builders.spair71k.spair71k_dataset_builder import CATEGORIES, SPLITS, TOP_FOLDER

_OUT = flags.DEFINE_string("out", None, "Manual dir to write (SPair-71k/ goes inside).")
_PAIRS = flags.DEFINE_integer("pairs", 2000, "Training pairs; validation and test get 1/10 each.")
_IMAGES = flags.DEFINE_integer("images", 400, "Distinct images the pairs are drawn from.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")

# (height, width) of PASCAL VOC photos, the source of SPair-71k's images.
VOC_SIZES = ((375, 500), (333, 500), (500, 375), (500, 333))


def natural_like_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """[H, W, 3] uint8: noise at four scales and per pixel, which JPEG (quality 90) codes in
    ~100 kB at 500 x 375: the order of size of a VOC photo (not checked against the archive)."""
    image = rng.normal(128.0, 18.0, (height, width, 3)).astype(np.float32)
    for cells, amplitude in ((4, 90.0), (16, 45.0), (64, 20.0), (256, 8.0)):
        coarse = rng.normal(0.0, amplitude, (cells, cells, 3)).astype(np.float32)
        image += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(image, 0, 255).astype(np.uint8)


def pair_annotation(rng, pair_id, source, target, category) -> dict:
    """One PairAnnotation JSON: boxes inside each image, 3-20 keypoints inside the boxes."""
    count = int(rng.integers(3, 21))

    def box_and_points(size_hw):
        h, w = size_hw
        x1, y1 = int(rng.integers(0, w // 3)), int(rng.integers(0, h // 3))
        x2, y2 = int(rng.integers(2 * w // 3, w)), int(rng.integers(2 * h // 3, h))
        points = np.stack([rng.integers(x1, x2, count), rng.integers(y1, y2, count)], axis=1)
        return [x1, y1, x2, y2], points.tolist()

    src_box, src_kps = box_and_points(source[1])
    trg_box, trg_kps = box_and_points(target[1])
    return {
        "pair_id": pair_id,
        "src_imname": source[0],
        "trg_imname": target[0],
        "src_imsize": [source[1][1], source[1][0], 3],
        "trg_imsize": [target[1][1], target[1][0], 3],
        "src_bndbox": src_box,
        "trg_bndbox": trg_box,
        "category": category,
        "src_pose": "Frontal",
        "trg_pose": "Left",
        "src_kps": src_kps,
        "trg_kps": trg_kps,
        "kps_ids": [str(i) for i in range(count)],
        "mirror": 0,
        "viewpoint_variation": int(rng.integers(0, 3)),
        "scale_variation": int(rng.integers(0, 3)),
        "truncation": int(rng.integers(0, 5)),
        "occlusion": int(rng.integers(0, 5)),
    }


def main(argv):
    del argv
    rng = np.random.default_rng(_SEED.value)
    root = Path(_OUT.value) / TOP_FOLDER
    images = {}  # category -> [(file name, (h, w))]
    for i in range(_IMAGES.value):
        category = CATEGORIES[i % len(CATEGORIES)]
        size = VOC_SIZES[int(rng.integers(len(VOC_SIZES)))]
        name = f"2008_{i:06d}.jpg"
        folder = root / "JPEGImages" / category
        folder.mkdir(parents=True, exist_ok=True)
        image = natural_like_image(rng, *size)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok, name
        (folder / name).write_bytes(data.tobytes())
        images.setdefault(category, []).append((name, size))
    layout = root / "Layout" / "large"
    layout.mkdir(parents=True, exist_ok=True)
    pair_id = 0
    for split, folder_name in SPLITS.items():
        count = _PAIRS.value if split == "train" else max(_PAIRS.value // 10, 1)
        lines = []
        annotations = root / "PairAnnotation" / folder_name
        annotations.mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            pair_id += 1
            category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            first, second = rng.choice(len(images[category]), 2, replace=False)
            source, target = images[category][first], images[category][second]
            line = f"{pair_id:06d}-{source[0][:-4]}-{target[0][:-4]}:{category}"
            annotation = pair_annotation(rng, pair_id, source, target, category)
            (annotations / f"{line}.json").write_text(json.dumps(annotation))
            lines.append(line)
        (layout / f"{folder_name}.txt").write_text("\n".join(lines) + "\n")
    print(f"Wrote {pair_id} pairs over {_IMAGES.value} images to {root}")


if __name__ == "__main__":
    flags.mark_flag_as_required("out")
    app.run(main)

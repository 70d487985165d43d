r"""Single-object images with class labels, rendered by the benchmark's generator for pretraining.

The images `matchme_jax/pretrain.py` pretrains the backbone on (ImageNet's role in the paper):
each one instance of a part-built category, drawn exactly as `generator.render_instance` draws
(backgrounds, clutter, occluders, noise), with its category as the only label.

Classes: the benchmark's five categories plus `EXTRA_CATEGORIES`, six more part-built families
made from the generator's own part primitives (superellipse blobs and limbs), so the features
learn parts and shapes rather than five colour palettes.

Disjointness: a benchmark image is drawn from the generator seeded by a child of
`generator.pair_seed(seed, split, index, attempt)`, i.e. `SeedSequence(entropy=[seed, split,
index, attempt], spawn_key=(k,))` with k in {0, 1} (source, target). A pretraining image is drawn
from `SeedSequence(entropy=[seed, split, index], spawn_key=(NAMESPACE,))` with
`NAMESPACE = 0x50524554` ("PRET"). NumPy hashes `entropy + spawn_key` (the entropy zero-padded
to 4 words when a spawn key is present), whose last word is the spawn key: k in {0, 1} for every
benchmark image of every seed and split, NAMESPACE for every pretraining image. The two hash
inputs therefore always differ, so no pretraining image shares its random stream with a
benchmark image of any seed (equal 128-bit pool states would need a hash collision).

Images are rendered as the benchmark renders them (`generator.draw_instance`: same sizes,
clutter, occluders, noise) and resized to the training canvas with PIL bilinear, as
`matchme_jax/data/resize.py` resizes benchmark images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from data_builders.synthetic_correspondence import generator as gen

# Last word of every pretraining image's seed (see the module docstring); benchmark images end
# in 0 or 1.
NAMESPACE = 0x50524554
SPLITS = ("train", "heldout")


# --------------------------------------------------------------------------------------------
# Extra part-built categories (image labels only: no keypoints)
# --------------------------------------------------------------------------------------------


def _build_biped(rng: np.random.Generator) -> list[gen.PartShape]:
    """Upright torso, head, two arms, two legs (the quadruped's parts, stood up)."""
    torso_x, torso_y = rng.uniform(0.35, 0.5), rng.uniform(0.65, 0.85)
    torso = gen._blob_affine((0.0, 0.0), torso_x, torso_y, rng.uniform(-8.0, 8.0))
    leg_len, leg_w = rng.uniform(0.9, 1.3), rng.uniform(0.16, 0.24)
    legs = [
        gen._limb_affine(gen._tip(torso, s, 0.8), 90.0 + rng.uniform(-20, 20), leg_len, leg_w)
        for s in (-0.5, 0.5)
    ]
    arm_len = rng.uniform(0.7, 1.05)
    arms = [
        gen._limb_affine(gen._tip(torso, s, -0.7), angle + rng.uniform(-35, 35), arm_len, 0.14)
        for s, angle in ((-0.85, 120.0), (0.85, 60.0))
    ]
    head_r = rng.uniform(0.26, 0.36)
    head = gen._blob_affine(gen._tip(torso, 0.0, -1.0) + [0.0, -0.9 * head_r], head_r, head_r)
    return [
        gen.PartShape("left_leg", legs[0], 4.0, -0.2, "dark"),
        gen.PartShape("right_leg", legs[1], 4.0, -0.2, "dark"),
        gen.PartShape("left_arm", arms[0], 3.0, -0.3, "secondary"),
        gen.PartShape("torso", torso, 3.0, -0.25, "primary", stripe_axis=1),
        gen.PartShape("right_arm", arms[1], 3.0, -0.3, "secondary"),
        gen.PartShape(
            "head",
            head,
            2.0,
            0.0,
            "light",
            details=(gen._eye(-0.35, -0.1, 0.14, 0.14), gen._eye(0.35, -0.1, 0.14, 0.14)),
        ),
    ]


def _build_insect(rng: np.random.Generator) -> list[gen.PartShape]:
    """Head, thorax and abdomen in a row, six thin legs, two antennae."""
    thorax = gen._blob_affine((0.0, 0.0), rng.uniform(0.3, 0.4), rng.uniform(0.22, 0.3))
    abdomen_x = rng.uniform(0.6, 0.9)
    abdomen = gen._blob_affine(
        gen._tip(thorax, -1.0, 0.0) - [0.85 * abdomen_x, 0.0],
        abdomen_x,
        rng.uniform(0.3, 0.42),
        rng.uniform(-10.0, 10.0),
    )
    head_r = rng.uniform(0.2, 0.27)
    head = gen._blob_affine(gen._tip(thorax, 1.0, 0.0) + [0.8 * head_r, 0.0], head_r, head_r)
    leg_len = rng.uniform(0.6, 0.9)
    legs = [
        gen._limb_affine(gen._tip(thorax, s, 0.5), angle + rng.uniform(-15, 15), leg_len, 0.07)
        for s, angle in ((-0.7, 120.0), (0.0, 95.0), (0.7, 65.0))
    ]
    antennae = [
        gen._limb_affine(gen._tip(head, 0.5, -0.7), angle + rng.uniform(-15, 15), 0.6, 0.05)
        for angle in (-60.0, -30.0)
    ]
    return [
        *(gen.PartShape(f"leg{i}", leg, 4.0, -0.4, "dark") for i, leg in enumerate(legs)),
        *(gen.PartShape(f"antenna{i}", a, 4.0, -0.5, "dark") for i, a in enumerate(antennae)),
        gen.PartShape("abdomen", abdomen, 2.0, 0.0, "primary", stripe_axis=0),
        gen.PartShape("thorax", thorax, 2.0, 0.0, "secondary"),
        gen.PartShape("head", head, 2.0, 0.0, "primary", details=(gen._eye(0.4, -0.2, 0.3, 0.3),)),
    ]


def _build_boat(rng: np.random.Generator) -> list[gen.PartShape]:
    """A tapered hull, a mast and one or two sails."""
    hull_x, hull_y = rng.uniform(1.1, 1.5), rng.uniform(0.22, 0.32)
    hull = gen._blob_affine((0.0, 0.0), hull_x, hull_y, 180.0)  # v up: the taper narrows the keel
    mast_len = rng.uniform(1.4, 2.0)
    mast_x = rng.uniform(-0.25, 0.15) * hull_x
    mast = gen._limb_affine((mast_x, -0.8 * hull_y), -90.0, mast_len, 0.07)
    main = gen._blob_affine(
        (mast_x - rng.uniform(0.3, 0.45), -0.8 * hull_y - 0.5 * mast_len),
        rng.uniform(0.3, 0.45),
        0.45 * mast_len,
    )
    jib = gen._blob_affine(
        (mast_x + rng.uniform(0.25, 0.35), -0.8 * hull_y - 0.35 * mast_len),
        rng.uniform(0.2, 0.3),
        0.3 * mast_len,
    )
    return [
        gen.PartShape("mast", mast, 8.0, 0.0, "dark"),
        gen.PartShape("main_sail", main, 1.0, 0.6, "light", stripe_axis=1),
        gen.PartShape("jib", jib, 1.0, 0.6, "secondary"),
        gen.PartShape(
            "hull",
            hull,
            4.0,
            rng.uniform(0.3, 0.5),
            "primary",
            details=(((0.0, -0.5), (1.0, 0.1), 8.0, "light"),),
        ),
    ]


def _build_flower(rng: np.random.Generator) -> list[gen.PartShape]:
    """A stem with a leaf, a ring of petals and a centre disk."""
    centre = np.array([0.0, 0.0])
    stem_len = rng.uniform(1.2, 1.7)
    stem = gen._limb_affine(centre, 90.0 + rng.uniform(-10, 10), stem_len, 0.1)
    leaf = gen._limb_affine(
        gen._tip(stem, 0.0, 0.1), rng.uniform(-30.0, 20.0), rng.uniform(0.45, 0.65), 0.22
    )
    petals = int(rng.integers(5, 8))
    petal_len, petal_w = rng.uniform(0.45, 0.65), rng.uniform(0.22, 0.32)
    start = rng.uniform(0.0, 360.0)
    petal_affines = [
        gen._limb_affine(centre, start + 360.0 * i / petals, petal_len, petal_w)
        for i in range(petals)
    ]
    disk_r = rng.uniform(0.18, 0.26)
    return [
        gen.PartShape("stem", stem, 4.0, 0.0, (60, 140, 50)),
        gen.PartShape("leaf", leaf, 2.0, -0.3, (70, 160, 60)),
        *(gen.PartShape(f"petal{i}", a, 2.0, 0.3, "primary") for i, a in enumerate(petal_affines)),
        gen.PartShape("disk", gen._blob_affine(centre, disk_r, disk_r), 2.0, 0.0, "secondary"),
    ]


def _build_truck(rng: np.random.Generator) -> list[gen.PartShape]:
    """A box cargo, a cab in front and three wheels (the car's parts, rearranged)."""
    cargo_x, cargo_y = rng.uniform(0.9, 1.2), rng.uniform(0.4, 0.55)
    cargo = gen._blob_affine((0.0, 0.0), cargo_x, cargo_y)
    cab_x, cab_y = rng.uniform(0.3, 0.42), rng.uniform(0.32, 0.45)
    cab = gen._blob_affine((cargo_x + cab_x + 0.05, cargo_y - cab_y), cab_x, cab_y)
    wheel_r = rng.uniform(0.2, 0.28)
    wheel_y = cargo_y + 0.6 * wheel_r
    wheels = [
        gen._blob_affine((x, wheel_y), wheel_r, wheel_r)
        for x in (-0.7 * cargo_x, -0.7 * cargo_x + 2.1 * wheel_r, cargo_x + cab_x)
    ]
    hub = ((0.0, 0.0), (0.45, 0.45), 2.0, "light")
    return [
        gen.PartShape("cargo", cargo, 8.0, 0.0, "secondary", stripe_axis=0),
        gen.PartShape(
            "cab",
            cab,
            6.0,
            rng.uniform(0.0, 0.2),
            "primary",
            details=(((0.4, -0.3), (0.45, 0.4), 4.0, "glass"),),
        ),
        *(
            gen.PartShape(f"wheel{i}", w, 2.0, 0.0, "tyre", details=(hub,))
            for i, w in enumerate(wheels)
        ),
    ]


def _build_helicopter(rng: np.random.Generator) -> list[gen.PartShape]:
    """A round cabin, a tail boom with a small rotor, a main rotor on a mast, and skids."""
    cabin_x, cabin_y = rng.uniform(0.55, 0.75), rng.uniform(0.38, 0.5)
    cabin = gen._blob_affine((0.0, 0.0), cabin_x, cabin_y)
    boom = gen._limb_affine(
        gen._tip(cabin, -0.8, -0.2), rng.uniform(170.0, 190.0), rng.uniform(1.0, 1.4), 0.18
    )
    tail_rotor = gen._blob_affine(gen._tip(boom, 0.0, 0.95), 0.08, rng.uniform(0.22, 0.3))
    mast = gen._limb_affine(gen._tip(cabin, 0.0, -0.95), -90.0, 0.25, 0.08)
    rotor = gen._blob_affine(gen._tip(mast), rng.uniform(1.2, 1.6), 0.05, rng.uniform(-8, 8))
    skid = gen._blob_affine((0.0, cabin_y + 0.25), rng.uniform(0.7, 0.9), 0.05)
    return [
        gen.PartShape("skid", skid, 8.0, 0.0, "dark"),
        gen.PartShape("boom", boom, 4.0, -0.5, "primary"),
        gen.PartShape("tail_rotor", tail_rotor, 2.0, 0.0, "dark"),
        gen.PartShape("mast", mast, 8.0, 0.0, "dark"),
        gen.PartShape(
            "cabin",
            cabin,
            2.0,
            0.0,
            "primary",
            stripe_axis=1,
            details=(((0.55, -0.25), (0.4, 0.45), 2.0, "glass"),),
        ),
        gen.PartShape("rotor", rotor, 4.0, 0.0, "dark"),
    ]


EXTRA_CATEGORIES: tuple[gen.Category, ...] = (
    gen.Category("biped", _build_biped, (), ((200, 160, 130), (60, 90, 160))),
    gen.Category("insect", _build_insect, (), ((40, 40, 45), (160, 60, 30))),
    gen.Category("boat", _build_boat, (), ((120, 70, 40), (200, 50, 50))),
    gen.Category("flower", _build_flower, (), ((230, 80, 150), (250, 210, 40))),
    gen.Category("truck", _build_truck, (), ((40, 110, 70), (220, 220, 210))),
    gen.Category("helicopter", _build_helicopter, (), ((230, 190, 40), (60, 60, 70))),
)
# Label i is category i of this tuple: the benchmark's five first, then the extras.
CATEGORIES: tuple[gen.Category, ...] = gen.CATEGORIES + EXTRA_CATEGORIES


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def image_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed of one pretraining image: never a benchmark image's (module docstring)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown pretraining split {split!r}; use one of {SPLITS}.")
    return np.random.SeedSequence([seed, SPLITS.index(split), index], spawn_key=(NAMESPACE,))


def render_object(
    rng: np.random.Generator, spec: gen.Category, image_size: tuple[int, int]
) -> np.ndarray:
    """One instance of `spec` drawn as the benchmark draws it, image only (no keypoints).

    For a benchmark category it is the very image `generator.render_instance` gives from the
    same `rng` state (tests/test_pretrain.py checks it).

    Returns:
        `[H, W, 3]` uint8.
    """
    instance, _ = gen.draw_instance(rng, spec, image_size)
    return instance.image


def render_example(
    seed: int,
    split: str,
    index: int,
    num_classes: int,
    render_size: tuple[int, int],
    image_size: int,
) -> tuple[np.ndarray, int]:
    """One labelled pretraining image: class `index % num_classes`, resized to the canvas.

    Returns:
        `([image_size, image_size, 3] uint8, label)`.
    """
    label = index % num_classes
    rng = np.random.default_rng(image_seed(seed, split, index))
    image = render_object(rng, CATEGORIES[label], tuple(render_size))
    resized = Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(resized), label

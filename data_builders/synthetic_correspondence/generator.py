"""Procedural renderer for the synthetic semantic-correspondence benchmark (pure NumPy).

Every object is a set of *parts*. A part is a tapered superellipse in its own normalised
coordinates `(s, v)`: the filled region is `|s|^p + |v|^p <= 1`, and the part-local point is
`(u, v) = (s * (1 + taper * v), v)`, placed in the image by an affine map. The power `p` of a part
is fixed per category while sizes, tapers, angles, pose, colours and textures vary per instance,
so the same `(part, s, v)` names the same surface point on every instance of a category. That gives
both the named keypoints (fixed `(part, s, v)` triples) and the dense ground truth (a target pixel's
`(part, s, v)` mapped through the source instance's part).

Pixel convention: pixel `(col, row)` is sampled at the continuous point `(x, y) = (col, row)`, so a
keypoint at `(x, y)` lies on pixel `(round(x), round(y))` and "inside the image" means
`0 <= x <= W - 1` and `0 <= y <= H - 1`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

GRID_SIZE = 32
SPLITS = ("train", "unlabeled", "validation", "test")
MIN_COMMON_KEYPOINTS = 3
_MAX_ATTEMPTS = 64
_BOUNDARY_SAMPLES = 48


# --------------------------------------------------------------------------------------------
# Geometry primitives
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Detail:
    """A coloured mark painted inside a part (eye, window, hub light), in the part's `(s, v)`.

    Attributes:
        centre: `(s, v)` centre of the mark.
        radius: `(rs, rv)` half-extents of the mark.
        power: superellipse power of the mark (2 = ellipse, large = rectangle).
        colour: `[3]` RGB in [0, 255].
    """

    centre: tuple[float, float]
    radius: tuple[float, float]
    power: float
    colour: np.ndarray


@dataclasses.dataclass(frozen=True)
class Layer:
    """One filled, textured shape placed in the image.

    Attributes:
        affine: `[2, 3]` map from part-local `(u, v, 1)` to image `(x, y)`.
        power: superellipse power `p`.
        taper: width change along `v`, in (-1, 1): the half-width at `v` is `1 + taper * v`.
        colour: `[3]` base RGB in [0, 255].
        stripes: `(frequency, phase, amplitude, axis)`; brightness varies as
            `1 + amplitude * sin(2 pi frequency * coord + phase)` with coord `s` (axis 0) or `v`.
        details: marks painted over the part.
        part: index of the object part in its category, or -1 for clutter.
    """

    affine: np.ndarray
    power: float
    taper: float
    colour: np.ndarray
    stripes: tuple[float, float, float, int] = (0.0, 0.0, 0.0, 0)
    details: tuple[Detail, ...] = ()
    part: int = -1

    @functools.cached_property
    def _inverse(self) -> np.ndarray:
        """`[2, 2]` inverse of the linear part of `affine` (cached: layers are queried often)."""
        return np.linalg.inv(self.affine[:, :2])

    def normalised_coords(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Maps image points to this layer's normalised coordinates.

        Args:
            points: `[..., 2]` image `(x, y)`.

        Returns:
            `s, v`: each `[...]`.
        """
        local = (points - self.affine[:, 2]) @ self._inverse.T
        u, v = local[..., 0], local[..., 1]
        # Outside |v| <= 1 the width may reach zero; those points fail `contains` anyway.
        width = np.maximum(1.0 + self.taper * v, 1e-3)
        return u / width, v

    def contains(self, s: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Returns whether normalised points `s, v` (each `[...]`) lie inside the shape."""
        return (np.abs(v) <= 1.0) & (np.abs(s) ** self.power + np.abs(v) ** self.power <= 1.0)

    def to_image(self, s: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Maps normalised coordinates `s, v` (each `[...]`) to image points `[..., 2]`."""
        local = np.stack([s * (1.0 + self.taper * v), v, np.ones_like(v)], axis=-1)
        return local @ self.affine.T

    def boundary(self) -> np.ndarray:
        """Returns `[_BOUNDARY_SAMPLES, 2]` image points on the outline of the shape."""
        s, v = _unit_outline(self.power)
        return self.to_image(s, v)


@functools.cache
def _unit_outline(power: float) -> tuple[np.ndarray, np.ndarray]:
    """`(s, v)`, each `[_BOUNDARY_SAMPLES]`, on the outline `|s|^p + |v|^p = 1`."""
    angle = np.linspace(0.0, 2.0 * np.pi, _BOUNDARY_SAMPLES, endpoint=False)
    cos, sin = np.cos(angle), np.sin(angle)
    exponent = 2.0 / power
    return np.sign(cos) * np.abs(cos) ** exponent, np.sign(sin) * np.abs(sin) ** exponent


def _limb_affine(anchor: Sequence[float], angle: float, length: float, width: float) -> np.ndarray:
    """Affine of a part that grows from `anchor` (v = -1) to its tip (v = +1).

    Args:
        anchor: `(x, y)` joint position.
        angle: direction of the limb in degrees (y points down, so 90 is straight down).
        length: full length along `v`.
        width: full width along `u`.

    Returns:
        `[2, 3]` local-to-parent affine.
    """
    rad = np.deg2rad(angle)
    direction = np.array([np.cos(rad), np.sin(rad)])
    normal = np.array([-np.sin(rad), np.cos(rad)])
    centre = np.asarray(anchor, dtype=np.float64) + direction * length / 2.0
    return np.column_stack([normal * width / 2.0, direction * length / 2.0, centre])


def _blob_affine(
    centre: Sequence[float], half_x: float, half_y: float, angle: float = 0.0
) -> np.ndarray:
    """Affine of a part centred at `centre` with `u` along the (rotated) x axis.

    Args:
        centre: `(x, y)` centre.
        half_x: half-extent along `u`.
        half_y: half-extent along `v`.
        angle: rotation in degrees.

    Returns:
        `[2, 3]` local-to-parent affine.
    """
    rad = np.deg2rad(angle)
    axis_u = np.array([np.cos(rad), np.sin(rad)])
    axis_v = np.array([-np.sin(rad), np.cos(rad)])
    return np.column_stack([axis_u * half_x, axis_v * half_y, np.asarray(centre, np.float64)])


def _tip(affine: np.ndarray, s: float = 0.0, v: float = 1.0) -> np.ndarray:
    """Returns the parent-frame point at `(s, v)` of an untapered part (to attach other parts)."""
    return affine @ np.array([s, v, 1.0])


# --------------------------------------------------------------------------------------------
# Categories: parts (in drawing order) and named keypoints
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PartShape:
    """One part of an object in object coordinates, before pose and colour.

    Attributes:
        name: part name, unique within the category.
        affine: `[2, 3]` part-local to object coordinates.
        power: superellipse power (fixed per category and part).
        taper: width change along `v`.
        colour_role: "primary", "secondary", "dark", "light" or an RGB triple.
        details: marks painted over the part.
        stripe_axis: the normalised axis (0 = s, 1 = v) along which stripes vary.
    """

    name: str
    affine: np.ndarray
    power: float
    taper: float
    colour_role: str | tuple[int, int, int]
    details: tuple[tuple[tuple[float, float], tuple[float, float], float, str], ...] = ()
    stripe_axis: int = 0


@dataclasses.dataclass(frozen=True)
class Category:
    """A parametric object family.

    Attributes:
        name: category name.
        build: draws the parts of one instance, in drawing order, from a generator.
        keypoints: `(keypoint name, part name, s, v)` in keypoint order.
        colours: the category's typical primary and secondary RGB colours; instances vary
            around them (as real categories have typical colours), and some take random ones.
    """

    name: str
    build: Callable[[np.random.Generator], list[PartShape]]
    keypoints: tuple[tuple[str, str, float, float], ...]
    colours: tuple[tuple[int, int, int], tuple[int, int, int]]


def _eye(s: float, v: float, radius_s: float, radius_v: float) -> tuple:
    """An eye mark at `(s, v)` for `PartShape.details`."""
    return ((s, v), (radius_s, radius_v), 2.0, "eye")


def _build_quadruped(rng: np.random.Generator) -> list[PartShape]:
    body_x, body_y = rng.uniform(0.9, 1.25), rng.uniform(0.32, 0.48)
    leg_len, leg_w = rng.uniform(0.8, 1.25), rng.uniform(0.14, 0.22)
    swing = rng.uniform(-18.0, 18.0, size=4)
    body = _blob_affine((0.0, 0.0), body_x, body_y, rng.uniform(-6.0, 6.0))
    legs = {}
    for i, (name, x_frac) in enumerate(
        (
            ("back_left_leg", -0.62),
            ("front_left_leg", 0.55),
            ("back_right_leg", -0.72),
            ("front_right_leg", 0.68),
        )
    ):
        anchor = (x_frac * body_x, 0.45 * body_y)
        legs[name] = _limb_affine(anchor, 90.0 + swing[i], leg_len, leg_w)
    tail = _limb_affine(
        (-0.93 * body_x, -0.35 * body_y),
        rng.uniform(150.0, 235.0),
        rng.uniform(0.6, 1.0),
        rng.uniform(0.08, 0.14),
    )
    neck = _limb_affine(
        (0.78 * body_x, -0.35 * body_y),
        rng.uniform(-65.0, -25.0),
        rng.uniform(0.45, 0.75),
        rng.uniform(0.26, 0.34),
    )
    neck_tip = _tip(neck)
    head_angle = rng.uniform(-5.0, 35.0)
    head_x, head_y = rng.uniform(0.32, 0.45), rng.uniform(0.2, 0.28)
    head_rad = np.deg2rad(head_angle)
    head_centre = neck_tip + 0.55 * head_x * np.array([np.cos(head_rad), np.sin(head_rad)])
    head = _blob_affine(head_centre, head_x, head_y, head_angle)
    ear = _limb_affine(
        _tip(head, -0.35, -0.6), rng.uniform(-125.0, -70.0), rng.uniform(0.22, 0.38), 0.16
    )
    return [
        PartShape("back_left_leg", legs["back_left_leg"], 4.0, -0.3, "dark"),
        PartShape("front_left_leg", legs["front_left_leg"], 4.0, -0.3, "dark"),
        PartShape("body", body, 2.0, 0.0, "primary", stripe_axis=0),
        PartShape("tail", tail, 2.0, -0.6, "primary"),
        PartShape("back_right_leg", legs["back_right_leg"], 4.0, -0.3, "primary"),
        PartShape("front_right_leg", legs["front_right_leg"], 4.0, -0.3, "primary"),
        PartShape("neck", neck, 4.0, -0.2, "primary", stripe_axis=1),
        PartShape("ear", ear, 2.0, -0.8, "secondary"),
        PartShape(
            "head",
            head,
            2.0,
            0.0,
            "primary",
            details=(_eye(0.35, -0.3, 0.16, 0.22), ((0.92, 0.05), (0.12, 0.25), 2.0, "dark")),
        ),
    ]


_QUADRUPED_KEYPOINTS = (
    ("nose", "head", 0.9, 0.05),
    ("eye", "head", 0.35, -0.3),
    ("ear_tip", "ear", 0.0, 0.8),
    ("neck_top", "neck", 0.6, 0.0),
    ("tail_base", "tail", 0.0, -0.7),
    ("tail_tip", "tail", 0.0, 0.85),
    ("front_left_foot", "front_left_leg", 0.0, 0.85),
    ("front_right_foot", "front_right_leg", 0.0, 0.85),
    ("back_left_foot", "back_left_leg", 0.0, 0.85),
    ("back_right_foot", "back_right_leg", 0.0, 0.85),
    ("front_right_knee", "front_right_leg", 0.0, 0.1),
    ("back_right_knee", "back_right_leg", 0.0, 0.1),
)


def _build_bird(rng: np.random.Generator) -> list[PartShape]:
    body_x, body_y = rng.uniform(0.75, 1.0), rng.uniform(0.42, 0.58)
    body = _blob_affine((0.0, 0.0), body_x, body_y, rng.uniform(-25.0, 0.0))
    leg_len = rng.uniform(0.45, 0.75)
    left_leg = _limb_affine(_tip(body, 0.05, 0.7), 90.0 + rng.uniform(-25, 15), leg_len, 0.08)
    right_leg = _limb_affine(_tip(body, 0.25, 0.7), 90.0 + rng.uniform(-25, 15), leg_len, 0.08)
    tail = _limb_affine(
        _tip(body, -0.8, 0.0),
        rng.uniform(150.0, 200.0),
        rng.uniform(0.55, 0.9),
        rng.uniform(0.3, 0.42),
    )
    head_r = rng.uniform(0.27, 0.36)
    head = _blob_affine(_tip(body, 0.85, -0.75), head_r, head_r, rng.uniform(-20.0, 20.0))
    beak = _limb_affine(
        _tip(head, 0.8, 0.0),
        rng.uniform(-20.0, 30.0),
        rng.uniform(0.28, 0.55),
        rng.uniform(0.12, 0.2),
    )
    wing = _limb_affine(
        _tip(body, 0.2, -0.25),
        rng.uniform(155.0, 205.0),
        rng.uniform(0.85, 1.3),
        rng.uniform(0.35, 0.5),
    )
    return [
        PartShape("left_leg", left_leg, 4.0, 0.0, (190, 140, 60)),
        PartShape("tail", tail, 2.0, 0.7, "secondary", stripe_axis=0),
        PartShape("body", body, 2.0, 0.0, "primary", stripe_axis=1),
        PartShape("right_leg", right_leg, 4.0, 0.0, (210, 160, 70)),
        PartShape("beak", beak, 2.0, -0.85, (235, 170, 40)),
        PartShape("head", head, 2.0, 0.0, "primary", details=(_eye(0.3, -0.2, 0.22, 0.22),)),
        PartShape("wing", wing, 2.0, -0.55, "secondary", stripe_axis=1),
    ]


_BIRD_KEYPOINTS = (
    ("beak_tip", "beak", 0.0, 0.85),
    ("beak_base", "beak", 0.0, -0.7),
    ("eye", "head", 0.3, -0.2),
    ("crown", "head", 0.0, -0.85),
    ("wing_root", "wing", 0.0, -0.7),
    ("wing_tip", "wing", 0.0, 0.85),
    ("tail_tip", "tail", 0.0, 0.85),
    ("breast", "body", 0.7, 0.45),
    ("belly", "body", -0.1, 0.85),
    ("left_foot", "left_leg", 0.0, 0.85),
    ("right_foot", "right_leg", 0.0, 0.85),
)


def _build_car(rng: np.random.Generator) -> list[PartShape]:
    body_x, body_y = rng.uniform(1.1, 1.45), rng.uniform(0.26, 0.38)
    body = _blob_affine((0.0, 0.0), body_x, body_y)
    cabin_x, cabin_y = rng.uniform(0.55, 0.85), rng.uniform(0.22, 0.34)
    cabin_centre = (rng.uniform(-0.3, 0.05) * body_x, -body_y - 0.8 * cabin_y)
    cabin = _blob_affine(cabin_centre, cabin_x, cabin_y)
    wheel_r = rng.uniform(0.25, 0.36)
    front_wheel = _blob_affine((0.62 * body_x, 0.85 * body_y), wheel_r, wheel_r)
    rear_wheel = _blob_affine((-0.62 * body_x, 0.85 * body_y), wheel_r, wheel_r)
    hub = ((0.0, 0.0), (0.45, 0.45), 2.0, "light")
    return [
        PartShape(
            "cabin",
            cabin,
            6.0,
            rng.uniform(0.25, 0.45),
            "primary",
            details=(
                ((0.42, -0.05), (0.38, 0.5), 4.0, "glass"),
                ((-0.42, -0.05), (0.38, 0.5), 4.0, "glass"),
            ),
        ),
        PartShape(
            "body",
            body,
            6.0,
            0.0,
            "primary",
            stripe_axis=1,
            details=(
                ((0.93, -0.35), (0.07, 0.25), 2.0, "headlight"),
                ((-0.95, -0.35), (0.05, 0.25), 4.0, "taillight"),
                ((0.0, 0.55), (1.0, 0.08), 8.0, "dark"),
            ),
        ),
        PartShape("front_wheel", front_wheel, 2.0, 0.0, "tyre", details=(hub,)),
        PartShape("rear_wheel", rear_wheel, 2.0, 0.0, "tyre", details=(hub,)),
    ]


_CAR_KEYPOINTS = (
    ("front_bumper", "body", 0.95, 0.4),
    ("rear_bumper", "body", -0.95, 0.4),
    ("headlight", "body", 0.93, -0.35),
    ("taillight", "body", -0.95, -0.35),
    ("roof_front", "cabin", 0.75, -0.85),
    ("roof_rear", "cabin", -0.75, -0.85),
    ("windshield_base", "cabin", 0.9, 0.8),
    ("rear_window_base", "cabin", -0.9, 0.8),
    ("front_wheel_centre", "front_wheel", 0.0, 0.0),
    ("rear_wheel_centre", "rear_wheel", 0.0, 0.0),
)


def _build_aeroplane(rng: np.random.Generator) -> list[PartShape]:
    body_x, body_y = rng.uniform(1.2, 1.5), rng.uniform(0.2, 0.28)
    fuselage = _blob_affine((0.0, 0.0), body_x, body_y)
    fin = _limb_affine(
        _tip(fuselage, -0.85, -0.3),
        rng.uniform(-125.0, -95.0),
        rng.uniform(0.55, 0.8),
        rng.uniform(0.32, 0.42),
    )
    stabiliser = _limb_affine(
        _tip(fuselage, -0.8, 0.2), rng.uniform(170.0, 195.0), rng.uniform(0.3, 0.45), 0.13
    )
    wing = _limb_affine(
        _tip(fuselage, rng.uniform(-0.05, 0.15), 0.3),
        rng.uniform(115.0, 150.0),
        rng.uniform(0.75, 1.1),
        rng.uniform(0.26, 0.34),
    )
    engine = _blob_affine(_tip(wing, 0.0, -0.1), rng.uniform(0.22, 0.3), rng.uniform(0.09, 0.12))
    return [
        PartShape("fin", fin, 4.0, -0.45, "secondary"),
        PartShape("stabiliser", stabiliser, 4.0, -0.4, "secondary"),
        PartShape(
            "fuselage",
            fuselage,
            2.6,
            0.0,
            "light",
            details=(
                ((0.86, -0.35), (0.07, 0.3), 2.0, "glass"),
                ((0.0, -0.2), (0.6, 0.12), 8.0, "glass"),
                ((0.0, 0.45), (1.0, 0.12), 8.0, "primary"),
            ),
        ),
        PartShape("wing", wing, 4.0, -0.5, "primary"),
        PartShape(
            "engine",
            engine,
            3.0,
            0.0,
            "dark",
            details=(((0.85, 0.0), (0.12, 0.6), 2.0, "light"),),
        ),
    ]


_AEROPLANE_KEYPOINTS = (
    ("nose", "fuselage", 0.97, 0.05),
    ("cockpit", "fuselage", 0.86, -0.35),
    ("fuselage_rear", "fuselage", -0.97, 0.0),
    ("belly", "fuselage", 0.3, 0.8),
    ("fin_tip", "fin", 0.0, 0.85),
    ("fin_leading_edge", "fin", 0.7, 0.3),
    ("stabiliser_tip", "stabiliser", 0.0, 0.85),
    ("wing_root", "wing", 0.0, -0.6),
    ("wing_tip", "wing", 0.0, 0.85),
    ("engine_front", "engine", 0.85, 0.0),
    ("engine_rear", "engine", -0.85, 0.0),
)


def _build_fish(rng: np.random.Generator) -> list[PartShape]:
    body_x, body_y = rng.uniform(0.85, 1.2), rng.uniform(0.35, 0.6)
    body = _blob_affine((0.0, 0.0), body_x, body_y, rng.uniform(-8.0, 8.0))
    tail = _limb_affine(
        _tip(body, -0.85, 0.0),
        rng.uniform(165.0, 195.0),
        rng.uniform(0.45, 0.75),
        rng.uniform(0.45, 0.7),
    )
    dorsal = _limb_affine(
        _tip(body, rng.uniform(-0.2, 0.15), -0.8),
        rng.uniform(-135.0, -95.0),
        rng.uniform(0.3, 0.5),
        rng.uniform(0.3, 0.45),
    )
    anal = _limb_affine(
        _tip(body, -0.45, 0.75), rng.uniform(100.0, 135.0), rng.uniform(0.22, 0.38), 0.22
    )
    pectoral = _limb_affine(
        _tip(body, 0.35, 0.15), rng.uniform(115.0, 160.0), rng.uniform(0.3, 0.45), 0.16
    )
    return [
        PartShape("tail", tail, 2.0, 0.8, "secondary", stripe_axis=1),
        PartShape("dorsal_fin", dorsal, 2.0, -0.7, "secondary"),
        PartShape("anal_fin", anal, 2.0, -0.6, "secondary"),
        PartShape(
            "body",
            body,
            2.0,
            0.0,
            "primary",
            stripe_axis=0,
            details=(
                _eye(0.68, -0.25, 0.09, 0.16),
                ((0.42, 0.0), (0.04, 0.7), 2.0, "dark"),
                ((0.97, 0.12), (0.08, 0.12), 2.0, "dark"),
            ),
        ),
        PartShape("pectoral_fin", pectoral, 2.0, -0.5, "light"),
    ]


_FISH_KEYPOINTS = (
    ("mouth", "body", 0.97, 0.12),
    ("eye", "body", 0.68, -0.25),
    ("gill", "body", 0.42, 0.3),
    ("belly", "body", 0.0, 0.85),
    ("dorsal_fin_tip", "dorsal_fin", 0.0, 0.85),
    ("anal_fin_tip", "anal_fin", 0.0, 0.85),
    ("pectoral_fin_base", "pectoral_fin", 0.0, -0.6),
    ("pectoral_fin_tip", "pectoral_fin", 0.0, 0.85),
    ("tail_base", "tail", 0.0, -0.6),
    ("tail_top_tip", "tail", 0.8, 0.8),
    ("tail_bottom_tip", "tail", -0.8, 0.8),
)


CATEGORIES: tuple[Category, ...] = (
    Category(
        "quadruped", _build_quadruped, _QUADRUPED_KEYPOINTS, ((150, 105, 60), (235, 215, 180))
    ),
    Category("bird", _build_bird, _BIRD_KEYPOINTS, ((70, 110, 190), (240, 200, 60))),
    Category("car", _build_car, _CAR_KEYPOINTS, ((200, 40, 45), (225, 225, 230))),
    Category("aeroplane", _build_aeroplane, _AEROPLANE_KEYPOINTS, ((215, 220, 225), (40, 70, 160))),
    Category("fish", _build_fish, _FISH_KEYPOINTS, ((245, 140, 30), (250, 245, 240))),
)
CATEGORY_NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)
KEYPOINT_NAMES: dict[str, tuple[str, ...]] = {
    c.name: tuple(k[0] for k in c.keypoints) for c in CATEGORIES
}


# --------------------------------------------------------------------------------------------
# Instances: pose, colour, clutter, rendering
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instance:
    """One rendered object instance with its annotation.

    Attributes:
        category: index into `CATEGORIES`.
        image: `[H, W, 3]` uint8 RGB.
        parts: the object's parts in drawing order, placed in the image.
        occluders: clutter drawn in front of the object.
        keypoints: `[K, 2]` float32 `(x, y)` of every category keypoint, visible or not.
        truncated: `[K]` bool, keypoint outside the image.
        occluded: `[K]` bool, keypoint inside the image but hidden by clutter or another part.
        bbox: `[4]` float32 `x1 y1 x2 y2` of the whole object, clipped to the image.
        mirrored: whether the object faces left (horizontal mirror).
        rotation: in-plane rotation in degrees.
        size: object size in pixels (diagonal of its unclipped box).
    """

    category: int
    image: np.ndarray
    parts: tuple[Layer, ...]
    occluders: tuple[Layer, ...]
    keypoints: np.ndarray
    truncated: np.ndarray
    occluded: np.ndarray
    bbox: np.ndarray
    mirrored: bool
    rotation: float
    size: float

    @property
    def visible(self) -> np.ndarray:
        """`[K]` bool: the keypoint is inside the image and not hidden."""
        return ~(self.truncated | self.occluded)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated-enough random RGB colour in [0, 255]."""
    colour = rng.uniform(0.0, 255.0, size=3)
    grey = colour.mean()
    return np.clip(grey + rng.uniform(1.0, 1.8) * (colour - grey), 0.0, 255.0)


# Share of instances whose colours ignore their category's typical ones.
_RANDOM_COLOUR_SHARE = 0.2
# Per-channel standard deviation of an instance's colours around its category's.
_COLOUR_JITTER = 30.0


def _palette(rng: np.random.Generator, spec: Category) -> dict[str, np.ndarray]:
    """Per-instance colours for the colour roles of `PartShape`."""
    if rng.uniform() < _RANDOM_COLOUR_SHARE:
        primary, secondary = _random_colour(rng), _random_colour(rng)
    else:
        primary, secondary = (
            np.clip(np.asarray(c, np.float64) + rng.normal(0.0, _COLOUR_JITTER, 3), 0.0, 255.0)
            for c in spec.colours
        )
    return {
        "primary": primary,
        "secondary": secondary,
        "dark": primary * rng.uniform(0.35, 0.6),
        "light": primary + (255.0 - primary) * rng.uniform(0.45, 0.75),
        "glass": np.array([110.0, 150.0, 190.0]) * rng.uniform(0.6, 1.1),
        "tyre": np.full(3, rng.uniform(20.0, 55.0)),
        "headlight": np.array([245.0, 235.0, 170.0]),
        "taillight": np.array([205.0, 35.0, 30.0]),
        "eye": np.full(3, rng.uniform(5.0, 30.0)),
    }


def _role_colour(role: str | tuple[int, int, int], palette: dict[str, np.ndarray]) -> np.ndarray:
    if isinstance(role, str):
        return palette[role]
    return np.asarray(role, dtype=np.float64)


def _random_stripes(rng: np.random.Generator, axis: int, chance: float) -> tuple:
    """Stripes along `axis` with probability `chance`, else a flat texture."""
    if rng.uniform() >= chance:
        return (0.0, 0.0, 0.0, axis)
    return (rng.uniform(1.0, 3.5), rng.uniform(0.0, 2 * np.pi), rng.uniform(0.12, 0.3), axis)


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Composes two `[2, 3]` affines: `outer(inner(p))`."""
    return np.column_stack([outer[:, :2] @ inner[:, :2], outer[:, :2] @ inner[:, 2] + outer[:, 2]])


def _random_layer(
    rng: np.random.Generator, centre: np.ndarray, half_range: tuple[float, float]
) -> Layer:
    """A clutter shape (random superellipse, colour and stripes) centred at `centre`."""
    half_x, half_y = rng.uniform(*half_range, size=2)
    affine = _blob_affine(centre, half_x, half_y, rng.uniform(0.0, 180.0))
    return Layer(
        affine=affine,
        power=float(rng.choice([1.0, 2.0, 4.0, 8.0])),
        taper=rng.uniform(-0.7, 0.7),
        colour=_random_colour(rng),
        stripes=_random_stripes(rng, int(rng.integers(2)), 0.5),
    )


def _place(
    rng: np.random.Generator, outline: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, bool, float]:
    """Draws a pose and returns the object-to-image affine.

    Args:
        rng: random generator.
        outline: `[N, 2]` object-coordinate points on the outline of all parts.
        height: image height.
        width: image width.

    Returns:
        `(affine [2, 3], mirrored, rotation in degrees)`.
    """
    mirrored = bool(rng.uniform() < 0.5)
    rotation = rng.uniform(-25.0, 25.0)
    rad = np.deg2rad(rotation)
    rot = np.array([[np.cos(rad), -np.sin(rad)], [np.sin(rad), np.cos(rad)]])
    linear = rot @ np.diag([-1.0 if mirrored else 1.0, 1.0])
    posed = outline @ linear.T
    low, high = posed.min(axis=0), posed.max(axis=0)
    extent = high - low
    scale = rng.uniform(0.55, 0.88) * min(width / extent[0], height / extent[1])
    box = extent * scale
    size = np.array([width - 1.0, height - 1.0])
    # Usually the whole object fits; sometimes it hangs over a border (truncation).
    slack = np.maximum(size - box, 0.0)
    corner = rng.uniform(0.0, 1.0, size=2) * slack
    if rng.uniform() < 0.2:
        axis = int(rng.integers(2))
        overhang = rng.uniform(0.1, 0.3) * box[axis]
        corner[axis] = -overhang if rng.uniform() < 0.5 else slack[axis] + overhang
    offset = corner - low * scale
    return np.column_stack([scale * linear, offset]), mirrored, rotation


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """`[H, W, 3]` float32 background: a colour gradient plus low-frequency colour waves."""
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    angle = rng.uniform(0.0, 2 * np.pi)
    ramp = xs * np.cos(angle) + ys * np.sin(angle)
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    start, end = _random_colour(rng), _random_colour(rng)
    maps, colours = [np.ones_like(ramp), ramp], [start, end - start]
    for _ in range(2):
        freq = rng.uniform(0.5, 3.0, size=2) * 2 * np.pi / np.array([width, height])
        maps.append(np.sin(xs * freq[0] + ys * freq[1] + rng.uniform(0.0, 2 * np.pi)))
        colours.append(rng.uniform(-25.0, 25.0, size=3))
    # One [H, W, k] x [k, 3] product builds the whole image.
    return np.stack(maps, axis=-1) @ np.asarray(colours, dtype=np.float32)


def _paint(canvas: np.ndarray, layer: Layer) -> None:
    """Paints `layer` onto the `[H, W, 3]` float canvas in place (only inside its image box)."""
    height, width = canvas.shape[:2]
    outline = layer.boundary()
    x0, y0 = np.maximum(np.floor(outline.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(outline.max(axis=0)).astype(int) + 1, [width, height])
    if x0 >= x1 or y0 >= y1:
        return
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    s, v = layer.normalised_coords(np.stack([xs, ys], axis=-1))
    inside = layer.contains(s, v)
    if not inside.any():
        return
    freq, phase, amplitude, axis = layer.stripes
    coord = s if axis == 0 else v
    # Shading darkens the lower half of each part a little so parts read as solid.
    shade = (1.0 + amplitude * np.sin(2 * np.pi * freq * coord + phase)) * (1.0 - 0.12 * v)
    colour = shade[..., None] * layer.colour
    for detail in layer.details:
        ds = (s - detail.centre[0]) / detail.radius[0]
        dv = (v - detail.centre[1]) / detail.radius[1]
        mark = np.abs(ds) ** detail.power + np.abs(dv) ** detail.power <= 1.0
        colour[mark] = detail.colour
    region = canvas[y0:y1, x0:x1]
    region[inside] = colour[inside]


def topmost_part(instance: Instance, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finds which object part is seen at each image point, and where on that part.

    Args:
        instance: the rendered instance.
        points: `[N, 2]` image `(x, y)`.

    Returns:
        `part`: `[N]` int32, the part index seen at the point, or -1 for background or clutter.
        `coords`: `[N, 2]` the normalised `(s, v)` of the point on that part (0 where part is -1).
    """
    part = np.full(len(points), -1, dtype=np.int32)
    coords = np.zeros((len(points), 2))
    decided = np.zeros(len(points), dtype=bool)
    for layer in reversed(instance.parts + instance.occluders):
        s, v = layer.normalised_coords(points)
        hit = layer.contains(s, v) & ~decided
        part[hit] = layer.part
        coords[hit] = np.stack([s, v], axis=-1)[hit]
        decided |= hit
    coords[part < 0] = 0.0
    return part, coords


def _inside_image(points: np.ndarray, height: int, width: int) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    return (x >= 0.0) & (x <= width - 1.0) & (y >= 0.0) & (y <= height - 1.0)


def render_instance(
    rng: np.random.Generator, category: int, image_size: tuple[int, int]
) -> Instance:
    """Draws and renders one instance of a category, with its keypoints.

    Args:
        rng: random generator; the instance is a pure function of its state.
        category: index into `CATEGORIES`.
        image_size: inclusive `(min, max)` range of the image height and width.

    Returns:
        The rendered `Instance`.
    """
    spec = CATEGORIES[category]
    instance, part_names = draw_instance(rng, spec, image_size, category)
    return _annotate(instance, spec, part_names)


def draw_instance(
    rng: np.random.Generator, spec: Category, image_size: tuple[int, int], category: int = -1
) -> tuple[Instance, tuple[str, ...]]:
    """Draws and renders one instance of any `Category` (also one outside `CATEGORIES`).

    Args:
        rng: random generator; the instance is a pure function of its state.
        spec: the category's parts and colours.
        image_size: inclusive `(min, max)` range of the image height and width.
        category: recorded in the `Instance` (-1: not a benchmark category).

    Returns:
        The `Instance` without keypoints (`_annotate` adds them) and its part names.
    """
    height, width = (int(n) for n in rng.integers(image_size[0], image_size[1] + 1, size=2))
    shapes = spec.build(rng)
    palette = _palette(rng, spec)
    object_outline = np.concatenate(
        [Layer(p.affine, p.power, p.taper, np.zeros(3)).boundary() for p in shapes]
    )
    pose, mirrored, rotation = _place(rng, object_outline, height, width)
    parts = tuple(
        Layer(
            affine=_compose(pose, shape.affine),
            power=shape.power,
            taper=shape.taper,
            colour=np.clip(_role_colour(shape.colour_role, palette) + rng.normal(0, 12, 3), 0, 255),
            stripes=_random_stripes(rng, shape.stripe_axis, 0.35),
            details=tuple(
                Detail(c, r, p, _role_colour(role, palette)) for c, r, p, role in shape.details
            ),
            part=index,
        )
        for index, shape in enumerate(shapes)
    )
    outline = np.concatenate([p.boundary() for p in parts])
    low, high = outline.min(axis=0), outline.max(axis=0)
    object_extent = float(np.linalg.norm(high - low))
    bbox = np.concatenate(
        [np.clip(low, 0.0, [width - 1, height - 1]), np.clip(high, 0.0, [width - 1, height - 1])]
    ).astype(np.float32)

    canvas = _background(rng, height, width)
    short_side = min(height, width)
    for _ in range(int(rng.integers(3, 8))):
        centre = rng.uniform(0.0, 1.0, size=2) * [width, height]
        _paint(canvas, _random_layer(rng, centre, (0.05 * short_side, 0.22 * short_side)))
    for part in parts:
        _paint(canvas, part)
    occluders = []
    if rng.uniform() < 0.4:
        for _ in range(int(rng.integers(1, 3))):
            centre = low + rng.uniform(0.0, 1.0, size=2) * (high - low)
            occluders.append(
                _random_layer(rng, centre, (0.06 * object_extent, 0.14 * object_extent))
            )
            _paint(canvas, occluders[-1])
    canvas += rng.uniform(2.0, 8.0) * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)

    instance = Instance(
        category=category,
        image=image,
        parts=parts,
        occluders=tuple(occluders),
        keypoints=np.zeros((0, 2), np.float32),
        truncated=np.zeros(0, bool),
        occluded=np.zeros(0, bool),
        bbox=bbox,
        mirrored=mirrored,
        rotation=rotation,
        size=object_extent,
    )
    return instance, tuple(shape.name for shape in shapes)


def _annotate(instance: Instance, spec: Category, part_names: tuple[str, ...]) -> Instance:
    """Fills in the keypoints of `instance` with their truncation and occlusion flags."""
    part_index = {name: i for i, name in enumerate(part_names)}
    parts = np.array([part_index[k[1]] for k in spec.keypoints])
    coords = np.array([k[2:] for k in spec.keypoints], dtype=np.float64)
    keypoints = np.stack(
        [instance.parts[p].to_image(s, v) for p, (s, v) in zip(parts, coords, strict=True)]
    )
    height, width = instance.image.shape[:2]
    truncated = ~_inside_image(keypoints, height, width)
    seen, _ = topmost_part(instance, keypoints)
    occluded = ~truncated & (seen != parts)
    return dataclasses.replace(
        instance,
        keypoints=keypoints.astype(np.float32),
        truncated=truncated,
        occluded=occluded,
    )


# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


def correspond(
    source: Instance, target: Instance, points: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps target image points to the source pixels of the same surface points.

    Args:
        source: source instance (same category as `target`).
        target: target instance.
        points: `[N, 2]` target image `(x, y)`.

    Returns:
        `source_points`: `[N, 2]` float32 source `(x, y)`; 0 where the target point is off the
            object.
        `on_target`: `[N]` bool, the target point lies on the visible object.
        `visible`: `[N]` bool, additionally its surface point is visible in the source image.
    """
    if source.category != target.category:
        raise ValueError(
            f"correspond needs two instances of one category, got {source.category} and "
            f"{target.category}; pair instances of the same category."
        )
    part, coords = topmost_part(target, points)
    on_target = part >= 0
    source_points = np.zeros((len(points), 2))
    for index, layer in enumerate(source.parts):
        hit = part == index
        source_points[hit] = layer.to_image(coords[hit, 0], coords[hit, 1])
    height, width = source.image.shape[:2]
    seen, _ = topmost_part(source, source_points)
    visible = on_target & _inside_image(source_points, height, width) & (seen == part)
    return source_points.astype(np.float32), on_target, visible


def grid_points(height: int, width: int, grid: int = GRID_SIZE) -> np.ndarray:
    """Returns the `[grid, grid, 2]` target sample points.

    Point `[j, i]` is `((i + 0.5) * width / grid, (j + 0.5) * height / grid)`.
    """
    centres = np.arange(grid) + 0.5
    xs, ys = np.meshgrid(centres * width / grid, centres * height / grid)
    return np.stack([xs, ys], axis=-1)


def _bucket(value: float, edges: tuple[float, float]) -> int:
    """0, 1 or 2 as `value` is below, between or above the two `edges`."""
    return int(np.searchsorted(np.asarray(edges), value, side="right"))


def pair_seed(seed: int, split: str, index: int, attempt: int = 0) -> np.random.SeedSequence:
    """The seed sequence of one pair: a pure function of `(seed, split, index, attempt)`."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
    return np.random.SeedSequence([seed, SPLITS.index(split), index, attempt])


def sample_instances(
    seed: int, split: str, index: int, image_size: tuple[int, int]
) -> tuple[Instance, Instance]:
    """Draws the source and target instances of one pair, deterministically.

    The category is `index % len(CATEGORIES)`, so every split is balanced. Both images are fresh
    instances drawn from this pair's own seed, so no instance is shared between pairs or splits.
    A draw with fewer than `MIN_COMMON_KEYPOINTS` keypoints visible in both images is redrawn.

    Args:
        seed: dataset seed.
        split: one of `SPLITS`.
        index: pair index within the split.
        image_size: inclusive `(min, max)` range of image heights and widths.

    Returns:
        `(source, target)` instances of the same category.
    """
    category = index % len(CATEGORIES)
    for attempt in range(_MAX_ATTEMPTS):
        source_rng, target_rng = (
            np.random.default_rng(s) for s in pair_seed(seed, split, index, attempt).spawn(2)
        )
        source = render_instance(source_rng, category, image_size)
        target = render_instance(target_rng, category, image_size)
        if (source.visible & target.visible).sum() >= MIN_COMMON_KEYPOINTS:
            return source, target
    raise RuntimeError(
        f"No pair with {MIN_COMMON_KEYPOINTS} common keypoints after {_MAX_ATTEMPTS} draws for "
        f"seed={seed}, split={split!r}, index={index}; the image size {image_size} is too small."
    )


def generate_pair(seed: int, split: str, index: int, image_size: tuple[int, int]) -> dict[str, Any]:
    """Generates one annotated pair, deterministically from `(seed, split, index)`.

    Args:
        seed: dataset seed.
        split: one of `SPLITS`.
        index: pair index within the split.
        image_size: inclusive `(min, max)` range of image heights and widths.

    Returns:
        A dict with `source_image`, `target_image` (`[H, W, 3]` uint8); `source_keypoints`,
        `target_keypoints` (`[N, 2]` float32, keypoints visible in both, category order);
        `keypoint_ids` (`[N]` int32 index into the category's keypoint names); `source_bbox`,
        `target_bbox` (`[4]` float32); `category` (int); `flip` (False); `viewpoint_variation`
        (0: same facing and rotation within 15 deg, 1: larger rotation, 2: mirrored);
        `scale_variation` (object size ratio < 1.3, < 1.8, larger); `truncation`, `occlusion`
        (number of category keypoints truncated, respectively hidden, in either image);
        `dense_correspondence` (`[32, 32, 2]` float32) and `dense_correspondence_mask`
        (`[32, 32]` bool) on the target grid of `grid_points`.
    """
    return pair_record(*sample_instances(seed, split, index, image_size))


def pair_record(source: Instance, target: Instance) -> dict[str, Any]:
    """Packs two instances of one category into the feature dict of `generate_pair`."""
    common = source.visible & target.visible
    height, width = target.image.shape[:2]
    points = grid_points(height, width).reshape(-1, 2)
    dense, _, visible = correspond(source, target, points)
    rotation_change = abs(source.rotation - target.rotation)
    if source.mirrored != target.mirrored:
        viewpoint = 2
    else:
        viewpoint = int(rotation_change > 15.0)
    size_ratio = max(source.size, target.size) / min(source.size, target.size)
    return {
        "source_image": source.image,
        "target_image": target.image,
        "source_keypoints": source.keypoints[common],
        "target_keypoints": target.keypoints[common],
        "keypoint_ids": np.flatnonzero(common).astype(np.int32),
        "source_bbox": source.bbox,
        "target_bbox": target.bbox,
        "category": source.category,
        "flip": False,
        "viewpoint_variation": viewpoint,
        "scale_variation": _bucket(size_ratio, (1.3, 1.8)),
        "truncation": int((source.truncated | target.truncated).sum()),
        "occlusion": int((source.occluded | target.occluded).sum()),
        "dense_correspondence": dense.reshape(GRID_SIZE, GRID_SIZE, 2),
        "dense_correspondence_mask": visible.reshape(GRID_SIZE, GRID_SIZE),
    }

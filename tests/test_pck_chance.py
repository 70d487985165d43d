"""benchmarks/pck_chance.py: the probability that a uniform guess in the box is correct."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "pck_chance.py"
_SPEC = importlib.util.spec_from_file_location("pck_chance", _PATH)
pck_chance = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(pck_chance)


@pytest.mark.parametrize(
    "point, share",
    [((50.0, 40.0), 1.0), ((0.0, 0.0), 0.25), ((0.0, 40.0), 0.5)],  # inside, corner, edge
)
def test_hit_probability_is_the_disc_share_of_the_box(point, share):
    box = np.array([0.0, 0.0, 100.0, 80.0])
    radius = 10.0
    expected = share * math.pi * radius**2 / (100.0 * 80.0)
    got = pck_chance.hit_probability(box, np.array(point), radius)
    assert got == pytest.approx(expected, rel=0.03)


def test_a_radius_covering_the_box_always_hits():
    box = np.array([10.0, 20.0, 30.0, 50.0])
    assert pck_chance.hit_probability(box, np.array([20.0, 35.0]), 100.0) == 1.0

"""The SPair-C corruptions: every corruption x severity runs, reproducibly, as documented."""

import sys

import imagecorruptions
import numpy as np
import pytest

from data_builders import corruption_recipe as recipe
from matchme_jax.data.corruptions import CorruptedPairs

# Under 32 px on one side (the padded path) and not square (height and width kept apart).
SMALL = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
PAIR = "000001-2008_000585-2008_004704:aeroplane"


@pytest.mark.parametrize("severity", recipe.SEVERITIES)
@pytest.mark.parametrize("corruption", recipe.CORRUPTIONS)
def test_every_corruption_and_severity_is_reproducible(corruption, severity):
    first = recipe.corrupt(SMALL, corruption, severity, seed=7)
    again = recipe.corrupt(SMALL, corruption, severity, seed=7)
    other_seed = recipe.corrupt(SMALL, corruption, severity, seed=8)
    assert first.shape == SMALL.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, SMALL)
    # Random corruptions change with the seed; the others are a fixed function of the image.
    changed = not np.array_equal(first, other_seed)
    assert changed == (corruption in recipe.RANDOM_CORRUPTIONS)


@pytest.mark.parametrize("corruption", recipe.CORRUPTIONS)
def test_matches_the_documented_recipe(corruption):
    """What the README says: np.random.seed(seed), plus seed= for glass_blur/impulse_noise."""
    image = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    np.random.seed(123)
    kwargs = {"seed": 123} if corruption in ("glass_blur", "impulse_noise") else {}
    expected = imagecorruptions.corrupt(image, severity=2, corruption_name=corruption, **kwargs)
    np.testing.assert_array_equal(recipe.corrupt(image, corruption, 2, seed=123), expected)


def test_global_random_state_is_left_alone():
    np.random.seed(5)
    state = np.random.get_state()
    recipe.corrupt(SMALL, "gaussian_noise", 3, seed=1)
    after = np.random.get_state()
    np.testing.assert_array_equal(state[1], after[1])
    assert state[2:] == after[2:]


def test_pair_seed_is_a_stable_hash():
    # The first 4 bytes of sha256(f"{pair}|gaussian_noise|3|source"), 706acbaf: fixed forever,
    # as the SPair-C images depend on it.
    assert recipe.pair_seed(PAIR, "gaussian_noise", 3, "source") == 0x706ACBAF
    seeds = {
        recipe.pair_seed(PAIR, c, s, side)
        for c in ("fog", "snow")
        for s in (1, 2)
        for side in recipe.SIDES
    }
    assert len(seeds) == 8


def test_corrupt_pair_seeds_each_image_from_the_pair_id():
    example = {"pair_id": PAIR.encode(), "source_image": SMALL, "target_image": SMALL, "x": 3}
    out = recipe.corrupt_pair(example, "shot_noise", 4)
    expected = recipe.corrupt(
        SMALL, "shot_noise", 4, recipe.pair_seed(PAIR, "shot_noise", 4, "target")
    )
    np.testing.assert_array_equal(out["target_image"], expected)
    assert not np.array_equal(out["source_image"], out["target_image"])
    assert out["x"] == 3 and example["source_image"] is SMALL


@pytest.mark.parametrize(
    "args,message",
    [
        (("fogg", 1), "Unknown corruption 'fogg': use one of gaussian_noise, .*jpeg_compression"),
        (("fog", 6), r"severity 6: use an integer in \(1, 2, 3, 4, 5\)"),
        (("fog", 0), "severity 0"),
    ],
)
def test_bad_names_and_severities_list_the_valid_ones(args, message):
    with pytest.raises(ValueError, match=message):
        recipe.corrupt(SMALL, *args, seed=0)
    with pytest.raises(ValueError, match=message):
        CorruptedPairs([], *args)


def test_bad_image_is_refused():
    with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8"):
        recipe.corrupt(SMALL.astype(np.float32), "fog", 1, seed=0)


def test_missing_package_names_the_extra(monkeypatch):
    # None in sys.modules makes `import imagecorruptions` raise ImportError, as when not installed.
    monkeypatch.setitem(sys.modules, "imagecorruptions", None)
    with pytest.raises(RuntimeError, match=r"'spair-c' extra: pip install -e \.\[spair-c\]"):
        recipe.corrupt(SMALL, "fog", 1, seed=0)

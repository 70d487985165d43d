"""The 15 ImageNet-C corruptions (Hendrycks & Dietterich, 2019) of an image pair, reproducibly.

SPair-C is SPair-71k's test pairs with both images corrupted. The official SPair-C files are not
available to us, so this module *defines* our construction, and both the on-the-fly evaluation
(`--config.mode=evaluate_corruptions`, through `matchme_jax.data.corruptions.CorruptedPairs`) and
the `spair_c` TFDS builder go through it:

* The corruption functions are those of `imagecorruptions-imaug==1.1.5` (a maintained fork of
  `imagecorruptions`, the reference ImageNet-C code packaged for arbitrary image sizes), the
  `spair-c` extra: `pip install -e .[spair-c]`.
* Both images of a pair are corrupted, each at its original resolution as uint8 RGB, before the
  resize to the model's canvas.
* Each image gets its own seed, `pair_seed(pair_id, corruption, severity, side)`: the first four
  bytes, read as a big-endian unsigned integer, of the SHA-256 digest of the UTF-8 string
  `"<pair_id>|<corruption>|<severity>|<side>"`, e.g. `"000001-2008_000585-2008_004704:aeroplane|
  gaussian_noise|3|source"`; `side` is `source` or `target`. The seed goes to `np.random.seed`
  before the corruption runs and, for `glass_blur` and `impulse_noise` (which draw from their own
  generators), also as their `seed=` argument.
* `imagecorruptions` refuses images under 32 px on a side; such an image (test-sized data, such as
  the builders' dummy data) is padded to 32 px by repeating its last row/column, corrupted, and
  cropped back.

A leaf: it imports nothing from `data_builders` or `matchme_jax`, so both packages can import it
without importing each other.
"""

import hashlib
import threading
from collections.abc import Mapping

import numpy as np

# In the order of the ImageNet-C paper: noise, blur, weather, digital.
CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)
TABLE_ALPHA = 0.1  # the corruption table reports PCK@0.1, as the SPair-C literature does
# The corruptions that draw random numbers; the others are a fixed function of the image.
RANDOM_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "snow",
    "frost",
    "fog",
    "elastic_transform",
)
SIDES = ("source", "target")
MIN_SIDE = 32  # imagecorruptions' smallest accepted height and width

# These two take their seed as an argument instead of reading NumPy's global generator.
_SEEDED_BY_ARGUMENT = ("glass_blur", "impulse_noise")
# The other corruptions draw from NumPy's global generator: seeding it and corrupting must not
# interleave with another thread doing the same (grain reads with several threads).
_GLOBAL_RNG_LOCK = threading.Lock()

PACKAGE = "imagecorruptions-imaug==1.1.5"  # the corruption code this recipe is defined with
EXTRA = "spair-c"  # the setup.cfg extra that installs it
INSTALL_HINT = (
    f"SPair-C corruptions need the '{EXTRA}' extra: pip install -e .[{EXTRA}] "
    f"(or pip install {PACKAGE})."
)


def check(corruption: str, severity: int) -> None:
    """Raises a ValueError naming the valid values if `corruption` or `severity` is not one."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"Unknown corruption {corruption!r}: use one of {', '.join(CORRUPTIONS)}.")
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"Corruption severity {severity!r}: use an integer in {SEVERITIES}.")


def pair_seed(pair_id: str, corruption: str, severity: int, side: str) -> int:
    """The seed of one image of one pair under one corruption (see the module docstring).

    Returns:
        An integer in [0, 2**32), the same on every machine and Python version.
    """
    if side not in SIDES:
        raise ValueError(f"Image side {side!r}: use one of {SIDES}.")
    key = f"{pair_id}|{corruption}|{int(severity)}|{side}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big")


def _imagecorruptions():
    """The `imagecorruptions` module, or a RuntimeError that says how to install it."""
    # Imported here: the package loads OpenCV, numba and scikit-image, which only a corruption
    # needs (configs and the rest of the pipeline import this module for its names), and it is an
    # optional extra.
    try:
        import imagecorruptions
    except ImportError as error:
        raise RuntimeError(f"{INSTALL_HINT} Importing it failed: {error}") from error
    return imagecorruptions


def corrupt(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """One image under one corruption and severity, the same bytes for the same seed.

    Leaves NumPy's global random state as it found it.

    Args:
        image: [H, W, 3] uint8 RGB, at any size (see the module docstring for H or W < 32).
        corruption: one of `CORRUPTIONS`.
        severity: one of `SEVERITIES`.
        seed: an integer in [0, 2**32), e.g. from `pair_seed`.

    Returns:
        [H, W, 3] uint8, the corrupted image.
    """
    check(corruption, severity)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"corrupt() takes an [H, W, 3] uint8 RGB image, got {image.dtype} {image.shape}."
        )
    if not 0 <= seed < 2**32:
        raise ValueError(f"Corruption seed {seed}: use an integer in [0, 2**32).")
    imagecorruptions = _imagecorruptions()
    height, width = image.shape[:2]
    pad = ((0, max(0, MIN_SIDE - height)), (0, max(0, MIN_SIDE - width)), (0, 0))
    padded = np.pad(image, pad, mode="edge")
    kwargs = {"seed": seed} if corruption in _SEEDED_BY_ARGUMENT else {}
    with _GLOBAL_RNG_LOCK:
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            out = imagecorruptions.corrupt(
                padded, severity=severity, corruption_name=corruption, **kwargs
            )
        finally:
            np.random.set_state(state)
    return np.ascontiguousarray(out[:height, :width], dtype=np.uint8)


def corrupt_pair(example: Mapping, corruption: str, severity: int) -> dict:
    """A pair (TFDS features) with both images corrupted, each with its `pair_seed`.

    Args:
        example: holds `pair_id` (str or bytes) and `source_image`, `target_image`
            ([H, W, 3] uint8 each, original resolution); other features are passed through.
        corruption: one of `CORRUPTIONS`.
        severity: one of `SEVERITIES`.

    Returns:
        A new dict with the corrupted images.
    """
    pair_id = example["pair_id"]
    pair_id = pair_id.decode() if isinstance(pair_id, bytes) else str(pair_id)
    out = dict(example)
    for side in SIDES:
        seed = pair_seed(pair_id, corruption, severity, side)
        out[f"{side}_image"] = corrupt(example[f"{side}_image"], corruption, severity, seed)
    return out

"""Test setup: CPU only, absl flags parsed (grain workers need them), a shared TFDS dir."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """One TFDS data dir for the session, so each dataset is generated once."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))

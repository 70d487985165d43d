"""Test setup: CPU only, absl flags parsed (grain workers need them), a shared TFDS dir, and
how many processes share the suite."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject.toml): one worker per core, at most 4 (each may hold a few GiB).

    Whole files go to one worker (`--dist loadfile`), so a module's expensive fixtures (the
    parity runs, the parallel and resume subprocesses) are built once.
    """
    return max(1, min(len(os.sched_getaffinity(0)), 4))


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """One TFDS data dir per test process, so each dataset is generated once in each."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))

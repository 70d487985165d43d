"""Test setup: CPU only, a shared compilation cache, quick compiles, absl flags parsed (grain
workers need them), a shared TFDS dir, and how many processes share the suite."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, its xdist workers and the subprocesses they
# start (all inherit the variable): the many tests that build the same tiny model compile each of
# its programs once. The process that made it removes it at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="matchme_test_jax_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


# The longest files, longest first (by their seconds in the suites of 2026-12-06). They start
# first so that no worker is left with one of them while the other has nothing to do: given in
# alphabetical order, the train parity file started last and ran alone for minutes.
LONGEST_FIRST = (
    "test_train_parity.py",
    "test_dinov2_cats.py",
    "test_parallel.py",
    "test_cats_parity.py",
    "test_catspp_parity.py",
    "test_resume.py",
    "test_selftrain.py",
    "test_study.py",
)


def pytest_collection_modifyitems(items):
    """Runs the LONGEST_FIRST files first, in that order; the rest keep theirs."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.hookimpl(optionalhook=True)  # plain `pytest` runs without pytest-xdist
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (.ci/run): one worker per core, at most 4 (each may hold a few GiB).

    Whole files go to one worker (`--dist loadfile`), so a module's expensive fixtures (the
    parity runs, the parallel and resume subprocesses) are built once.
    """
    return max(1, min(len(os.sched_getaffinity(0)), 4))


@pytest.fixture(scope="module")
def tiny_cats():
    """The `:tiny` embedded CATs (BatchNorm on fixed statistics), its variables and a random
    batch: (config, model, variables, (source, target, flow, weight)), flow [2, n, n, 2] in
    cells and weight [2, n, n] ones. Module-scoped: tests must not change the config."""
    import jax.numpy as jnp
    from test_config import load

    from matchme_jax.models import build_model

    config = load("synthetic.py:tiny")
    config.model.bn_mode = "frozen"
    model = build_model(config.model)
    size, n = config.dataset.image_size, config.model.feature_size
    source = jax.random.normal(jax.random.key(1), (2, size, size, 3))
    target = jax.random.normal(jax.random.key(2), (2, size, size, 3))
    variables = jax.jit(model.init)(jax.random.key(0), source, target)
    flow = jax.random.uniform(jax.random.key(3), (2, n, n, 2), minval=-2.0, maxval=2.0)
    return config, model, variables, (source, target, flow, jnp.ones((2, n, n)))


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """One TFDS data dir per test process, so each dataset is generated once in each."""
    return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "full_optimization: the module compiles as users do (it compares with the official "
        "code's numbers at tight tolerances); the others compile quickly",
    )


@pytest.fixture(scope="module", autouse=True)
def quick_compiles(request):
    """XLA's CPU backend without most optimisations, for every module but `full_optimization`.

    Most tests compile far more than they run, and the unoptimised backend compiles about twice
    as fast (a tiny CATs++ run, cold, with the equivalent XLA flag
    --xla_backend_optimization_level=0: 41 s against 68 s). Its results differ from the
    optimised ones in the last bits, so modules that compare with the official code's outputs
    opt out with `pytestmark = pytest.mark.full_optimization`. Module-scoped, so that a
    module's expensive fixtures compile the way its tests do.
    """
    if request.node.get_closest_marker("full_optimization"):
        yield
        return
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", False)

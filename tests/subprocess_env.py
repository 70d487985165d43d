"""The environment of the Python processes that tests start: workers and whole runs."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# XLA's unoptimised CPU backend compiles about twice as fast, and these processes mostly compile
# (tests/test_parallel.py: 166 s -> 110 s on 2 cores). Their tests compare the processes' results
# with each other (device counts, a killed run with an unbroken one), never with values computed
# at full optimisation, which can differ in the last bits.
QUICK_COMPILES = "--xla_backend_optimization_level=0"


def subprocess_env(*xla_flags: str, **variables: str) -> dict[str, str]:
    """os.environ for a subprocess: CPU only, quick compiles plus `xla_flags`, this checkout
    first on the path (whatever `pip install -e` points at), and `variables`."""
    flags = " ".join([os.environ.get("XLA_FLAGS", ""), QUICK_COMPILES, *xla_flags]).strip()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags, "PYTHONPATH": path}
    return {**env, **variables}

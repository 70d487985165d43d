#!/usr/bin/env bash
# Downloads, into .whl/, the Python 3.12 wheels that the GPU benchmark machines lack (they have
# JAX, Flax, Optax, Orbax, einops, absl, etils and no network): ml-collections for the configs,
# and grain + TFDS with their missing dependencies for the input-pipeline row. About 11 MB.
# Run once, where pip can reach PyPI:  bash benchmarks/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-python3 -m pip}
mkdir -p .whl
# Compiled packages: CPython 3.12 manylinux wheels.
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    grain==0.2.18 array_record==0.8.6 dm-tree==0.1.10
# Pure-Python packages (promise is published as a source archive only: build its wheel here).
$PIP wheel -q --no-deps -w .whl \
    ml_collections==1.1.0 tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 \
    googleapis-common-protos==1.76.0 promise==2.3 simple-parsing==0.1.9 docstring_parser==0.18.0 \
    termcolor==3.3.0 toml==0.10.2 immutabledict==4.3.1 importlib_resources==7.1.0 \
    portpicker==1.6.0
ls .whl

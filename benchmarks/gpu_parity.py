r"""Our CATs and CATs++ flows against the official ones, on whatever device JAX runs on.

    JAX_PLATFORMS=cuda python benchmarks/gpu_parity.py --json=parity.json

The compact parity fixtures of the tests (official model, seeded weights, two image pairs; see
tests/fixtures/make_*_compact.py) are converted and run here at several precisions:

- float32 at XLA's default matmul/convolution precision (TF32 on an Ampere or newer GPU) and at
  "highest" (true float32), each against the official float32 flow;
- float64 against the official float64 flow (CATs++: the first pair, as in its test);
- bfloat16 compute (`model.dtype`; CATs with cuDNN's and with XLA's attention), against our
  "highest" float32 flow and against the official flow.

Flow errors are in feature cells (16 px for both models). Every comparison is one entry of the
JSON, written after each, so a run stopped by a time limit keeps what it finished; one that
fails records its error. The pass/fail tolerances stay in the tests (tests/test_cats_parity.py,
tests/test_catspp_parity.py); this script reports the numbers.
"""

import argparse
import json
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from matchme_jax.convert import cats_from_torch, catspp_from_torch
from matchme_jax.testing.seeded_weights import fixture_state_dict

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
MODELS = {
    "cats": ("cats_depth1_seed0_compact.npz", cats_from_torch),
    "catspp": ("catspp_seed0_compact.npz", catspp_from_torch),
}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CELL_PX = 16


def flow_errors(flow, reference) -> dict:
    """Absolute flow differences in feature cells: max, mean, 99th percentile, share <= 1e-3."""
    err = np.abs(np.asarray(flow, np.float64) - np.asarray(reference, np.float64))
    return {
        "max": float(err.max()),
        "mean": float(err.mean()),
        "p99": float(np.percentile(err, 99)),
        "within_1e-3": float((err <= 1e-3).mean()),
        "max_px": float(err.max() * CELL_PX),
    }


def _load(name: str):
    file, convert = MODELS[name]
    with np.load(FIXTURES / file) as npz:
        fixture = {k: npz[k] for k in npz.files}
    model, variables = convert(fixture_state_dict(fixture))
    images = [
        (fixture[f"input/{role}_u8"].astype(np.float32) / np.float32(255.0) - IMAGENET_MEAN)
        / IMAGENET_STD
        for role in ("source", "target")
    ]
    return model, variables, images, fixture


def _flow(model, variables, source, target, precision: str | None = None) -> np.ndarray:
    run = jax.jit(lambda v, s, t: model.apply(v, source=s, target=t))
    with jax.default_matmul_precision(precision):
        return np.asarray(run(variables, source, target))


def comparisons(name: str):
    """(description, function returning its errors) for one model, most important first."""
    model, variables, (source, target), fixture = _load(name)
    official, official64 = fixture["output/flow"], fixture["output/flow_float64"]
    ours = {}

    def float32(precision):
        def measure():
            ours[precision] = _flow(model, variables, source, target, precision)
            return {"vs_official": flow_errors(ours[precision], official)}

        return measure

    def float64():
        pairs = 1 if name == "catspp" else len(source)  # as in the tests
        with jax.enable_x64(True):
            model64 = model.clone(dtype="float64")
            variables64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
            s, t = (jnp.asarray(x[:pairs], jnp.float64) for x in (source, target))
            flow = _flow(model64, variables64, s, t)
        return {"pairs": pairs, "vs_official_float64": flow_errors(flow, official64[:pairs])}

    def bfloat16(attention):
        def measure():
            # CATs++ has one attention path (no `attention` field): its model stays as it is.
            fields = {"attention": attention} if attention else {}
            flow = _flow(model.clone(dtype="bfloat16", **fields), variables, source, target)
            reference = ours.get("highest")
            return {
                "vs_ours_float32_highest": None
                if reference is None
                else flow_errors(flow, reference),
                "vs_official": flow_errors(flow, official),
            }

        return measure

    yield {"precision": "float32", "matmul_precision": "highest"}, float32("highest")
    yield {"precision": "float32", "matmul_precision": "default"}, float32(None)
    if hasattr(model, "attention"):
        yield {"precision": "bfloat16", "attention": "auto"}, bfloat16("auto")
        yield {"precision": "bfloat16", "attention": "xla"}, bfloat16("xla")
    else:
        yield {"precision": "bfloat16"}, bfloat16(None)
    yield {"precision": "float64"}, float64


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--models", default="cats,catspp", help="Any of cats,catspp.")
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    result = {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "jax": jax.__version__,
        "flow_unit": f"feature cells ({CELL_PX} px)",
        "rows": [],
    }
    for name in args.models.split(","):
        try:
            measures = list(comparisons(name))
        except Exception as e:  # noqa: BLE001 -- one model's failure must not lose the other's
            traceback.print_exc()
            result["rows"].append({"model": name, "error": f"{type(e).__name__}: {e}"[:2000]})
            continue
        for description, measure in measures:
            start = time.perf_counter()
            try:
                numbers = measure()
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                numbers = {"error": f"{type(e).__name__}: {e}"[:2000]}
            row = {"model": name, **description, **numbers}
            row["seconds"] = round(time.perf_counter() - start, 1)
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")
    args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

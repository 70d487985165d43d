"""Our train step against four official CATs training steps (compact copy of the shared fixture).

tests/fixtures/cats_train_steps_compact.npz comes from ../shared/fixtures/cats_train_steps_seed0.npz
(see make_cats_train_compact.py and that fixture's README, section 8): the official training loop
run from the seed-0 weights of cats_depth1_seed0_compact.npz on 4 batches, with the backbone
fine-tuned and frozen (BatchNorm in training mode in both), in float32 and in float64. Our
`make_update_fn` with `make_optimizer` (constant schedule, the official learning rates) runs the
same 4 steps; the losses, train flows (`make_train_forward`, the forward the update takes its loss
of), probe flow after step 4, parameter updates, BatchNorm statistics and step-1 gradients must
match within the README's tolerances (section 8.6).

Each run compiles the update once (ResNet-101 at batch 2, 256 px) and dominates the file. The
suite runs the fine-tuned update in float64, where every quantity, the backbone's included, is
held to tight bounds; float32 is held to the official forward by tests/test_cats_parity.py.
`MATCHME_TRAIN_PARITY=all` runs all four (the frozen variant and float32 too: three more
ResNet-101 runs), for a change to the train step or the optimizer.
"""

import functools
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from matchme_jax.convert import cats_from_torch, cats_to_torch
from matchme_jax.defaults import base_config
from matchme_jax.losses import official_valid_cells
from matchme_jax.testing.seeded_weights import fixture_state_dict
from matchme_jax.train.state import create_train_state, make_optimizer
from matchme_jax.train.step import make_train_forward, make_update_fn

pytestmark = pytest.mark.full_optimization  # compares with the official code's outputs

FIXTURES = Path(__file__).parent / "fixtures"
TRAIN_FIXTURE = FIXTURES / "cats_train_steps_compact.npz"
FORWARD_FIXTURE = FIXTURES / "cats_depth1_seed0_compact.npz"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
STEPS = 4
BN_MOMENTUM = 0.1
INITIAL_NUM_BATCHES_TRACKED = 4
BACKBONE = "feature_extraction."
ALL_RUNS = [
    ("finetune", "float32"),
    ("frozen", "float32"),
    ("finetune", "float64"),
    ("frozen", "float64"),
]
RUNS = ALL_RUNS if os.environ.get("MATCHME_TRAIN_PARITY") == "all" else [("finetune", "float64")]

# README section 8.6. Flows: (max, mean) absolute error in cells; the rest relative.
TOLERANCES = {
    ("finetune", "float32"): dict(
        loss_step1=1e-5,
        loss_later=2e-4,
        flow_step1=(2e-3, 1e-4),
        flow_later=(3e-2, 2e-3),
        probe=(3e-2, 2e-3),
        update_head=2e-2,
        update_backbone={"conv1.weight": 0.25, "layer3.22.bn3": 5e-2},
        bn=1e-4,
        grad=1e-3,
        grad_overrides={"feature_extraction.backbone.bn1.bias": 5e-2},
    ),
    ("frozen", "float32"): dict(
        loss_step1=1e-5,
        loss_later=2e-4,
        flow_step1=(2e-3, 1e-4),
        flow_later=(3e-2, 3e-4),
        # The recommended 5e-3 max is exceeded on some CPUs: 9.3e-3 (mean 8.9e-5) on an AVX-512/AMX
        # Xeon, where XLA sums float32 in another order; every slip the README lists moves it
        # by 0.15 or more, and float64 keeps the tight bound.
        probe=(2e-2, 2e-4),
        update_head=2e-2,
        bn=1e-4,
        grad=1e-3,
    ),
    ("finetune", "float64"): dict(
        loss_step1=1e-6,
        loss_later=1e-6,
        flow_step1=(1e-3, 1e-4),
        flow_later=(1e-3, 1e-4),
        probe=(2e-3, 2e-4),
        update_head=1e-4,
        update_backbone={"conv1.weight": 1e-2, "layer3.22.bn3": 1e-2},
        bn=2e-6,
        grad=1e-5,
    ),
    ("frozen", "float64"): dict(
        loss_step1=1e-6,
        loss_later=1e-6,
        flow_step1=(1e-4, 1e-5),
        flow_later=(1e-4, 1e-5),
        probe=(1e-4, 1e-5),
        update_head=1e-4,
        bn=1e-6,
        grad=1e-5,
    ),
}


def _normalise(u8: np.ndarray) -> np.ndarray:
    return (u8.astype(np.float32) / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD


def _decode_png(encoded: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded.tobytes()))).reshape(shape)


@pytest.fixture(scope="module")
def fixture():
    with np.load(TRAIN_FIXTURE) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["batch/src_u8"] = _decode_png(arrays.pop("batch/src_png"), (STEPS, 2, 256, 256, 3))
    arrays["batch/trg_u8"] = _decode_png(arrays.pop("batch/trg_png"), (STEPS, 2, 256, 256, 3))
    arrays["probe/src_u8"] = _decode_png(arrays.pop("probe/src_png"), (2, 256, 256, 3))
    arrays["probe/trg_u8"] = _decode_png(arrays.pop("probe/trg_png"), (2, 256, 256, 3))
    return arrays


@pytest.fixture(scope="module")
def forward_fixture():
    with np.load(FORWARD_FIXTURE) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def initial_state(forward_fixture):
    """The official initial state dict: the forward fixture's weights and BN buffers."""
    return fixture_state_dict(forward_fixture)


def test_training_starts_from_the_forward_fixture_state(fixture, forward_fixture):
    # The compact training fixture does not repeat the initial state; it must be this one.
    assert str(forward_fixture["meta/params_sha256"]) == str(fixture["meta/params_sha256"])
    digest = hashlib.sha256()
    for name in sorted(k for k in forward_fixture if k.startswith("bn/")):
        digest.update(name.encode("utf-8"))
        digest.update(np.ascontiguousarray(forward_fixture[name]).tobytes())
    assert digest.hexdigest() == str(fixture["meta/bn_sha256"])


def test_cats_to_torch_inverts_the_converter(initial_state):
    model, variables = cats_from_torch(initial_state)
    back = cats_to_torch(model, variables)
    unused = re.compile(r"layer4\.|backbone\.fc\.|^decoder\.norm\.|num_batches_tracked$")
    assert set(back) == {k for k in initial_state if not unused.search(k)}
    for key, value in back.items():
        np.testing.assert_array_equal(value, initial_state[key], err_msg=key)


def test_targets_use_the_official_valid_cells(fixture):
    valid = np.asarray(official_valid_cells(jnp.asarray(fixture["batch/flow_gt"])))
    np.testing.assert_array_equal(valid, fixture["batch/valid"])
    assert valid.reshape(STEPS, -1).sum(axis=1).tolist() == [138, 32, 125, 40]


def _record_gradients() -> optax.GradientTransformation:
    """Passes the gradients on unchanged and keeps the last ones in its state."""
    return optax.GradientTransformation(
        init=lambda params: jax.tree.map(jnp.zeros_like, params),
        update=lambda grads, state, params=None: (grads, grads),
    )


def _parity_optimizer(freeze_backbone: bool) -> optax.GradientTransformation:
    optim = base_config().optim
    optim.schedule = "constant"  # the 4 official steps run in epoch 0, at the base rates
    return make_optimizer(optim, total_steps=STEPS, freeze_backbone=freeze_backbone)


@dataclass
class Run:
    """One variant in one precision, as numpy; tensors under torch keys, in torch layouts."""

    variant: str
    precision: str
    losses: np.ndarray
    flows: np.ndarray
    probe_flow: np.ndarray
    grads_step1: dict
    final: dict
    backbone_unchanged: bool
    bn_updates_per_step: np.ndarray | None

    def ref(self, fixture: dict, name: str) -> np.ndarray:
        """The fixture entry ``name`` of this variant and precision."""
        suffix = "_float64" if self.precision == "float64" else ""
        return fixture[f"train/{self.variant}/{name}{suffix}"]

    def stored(self, fixture: dict, group: str) -> dict[str, np.ndarray]:
        """The fixture's ``group`` entries (update, bn, grad_step1) of this run, by torch key."""
        suffix = "_float64" if self.precision == "float64" else ""
        prefix = f"train/{self.variant}/{group}{suffix}/"
        return {k.removeprefix(prefix): v for k, v in fixture.items() if k.startswith(prefix)}


def _stored_keys(fixture: dict, group: str) -> set[str]:
    """Torch keys with a ``train/<variant>/<group>[_float64]/<key>`` entry."""
    pattern = re.compile(rf"^train/\w+/{group}(_float64)?/(?P<key>.+)$")
    return {m["key"] for k in fixture if (m := pattern.match(k))}


def _bn_updates_per_step(update, state, args, after) -> np.ndarray:
    """How many running-stat updates each BatchNorm statistic gets in one step.

    The train-mode step never reads the running statistics, and each update maps them by
    ``0.9 x + 0.1 stat``: shifting them all by 1 before the step shifts them by ``0.9**k``
    after it, k being the number of updates.
    """
    shifted_stats = jax.tree.map(lambda x: x + 1.0, state.batch_stats)
    shifted, metrics, _ = update(state.replace(batch_stats=shifted_stats), *args)
    np.testing.assert_array_equal(np.asarray(metrics["loss"]), np.asarray(after[1]["loss"]))
    diffs = jax.tree.map(
        lambda a, b: float(np.mean(np.asarray(a, np.float64) - np.asarray(b, np.float64))),
        shifted.batch_stats,
        after[0].batch_stats,
    )
    return np.log(np.array(jax.tree.leaves(diffs))) / np.log(1.0 - BN_MOMENTUM)


def _update_with_flow(model, optimizer: optax.GradientTransformation):
    """`update(state, source, target, flow_gt, cell_weight) -> (state, metrics, flow)`, jitted.

    The update of `make_update_fn`, plus the train-mode flow of `make_train_forward` on the
    state before the step: the flow whose loss the update takes.
    """
    update = make_update_fn(model, optimizer, bn_train=True)
    forward = make_train_forward(model, bn_train=True)

    def update_with_flow(state, source, target, flow_gt, cell_weight):
        flow, _ = forward(state.params, state.batch_stats, source, target)
        return (*update(state, source, target, flow_gt, cell_weight), flow)

    return jax.jit(update_with_flow)


@functools.partial(jax.jit, static_argnums=0)
def _eval_flow(model, variables, source, target):
    return model.apply(variables, source=source, target=target)


def _train(fixture, initial_state, variant: str, precision: str, count_bn_updates: bool) -> Run:
    frozen = variant == "frozen"
    dtype = jnp.dtype(precision)
    model, variables = cats_from_torch(initial_state, freeze_backbone=frozen, dtype=precision)
    variables = jax.tree.map(lambda x: jnp.asarray(x, dtype), variables)
    optimizer = optax.chain(_record_gradients(), _parity_optimizer(frozen))
    update = _update_with_flow(model, optimizer)
    state = initial = create_train_state(variables, optimizer)

    def batch(i: int):
        return (
            jnp.asarray(_normalise(fixture["batch/src_u8"][i]), dtype),
            jnp.asarray(_normalise(fixture["batch/trg_u8"][i]), dtype),
            jnp.asarray(fixture["batch/flow_gt"][i], dtype),
            jnp.ones(fixture["batch/valid"][i].shape, dtype),
        )

    losses, flows, grads, updates_per_step = [], [], {}, None
    for i in range(STEPS):
        after = update(state, *batch(i))
        if i == 0:
            grads = cats_to_torch(model, {**variables, "params": after[0].opt_state[0]})
            if count_bn_updates:
                updates_per_step = _bn_updates_per_step(update, state, batch(0), after)
        state, metrics, flow = after
        losses.append(float(metrics["loss"]))
        flows.append(np.asarray(flow))

    # Evaluation does not depend on freeze_backbone: both variants share one compilation.
    probe = _eval_flow(
        model.clone(freeze_backbone=False),
        state.variables(),
        jnp.asarray(_normalise(fixture["probe/src_u8"]), dtype),
        jnp.asarray(_normalise(fixture["probe/trg_u8"]), dtype),
    )
    unchanged = jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)),
        state.params["backbone"],
        initial.params["backbone"],
    )
    final = cats_to_torch(model, state.variables())
    keep_final = _stored_keys(fixture, "update") | _stored_keys(fixture, "bn")
    keep_grads = _stored_keys(fixture, "grad_step1")
    return Run(
        variant,
        precision,
        np.array(losses),
        np.stack(flows),
        np.asarray(probe),
        {k: v for k, v in grads.items() if k in keep_grads},
        {k: v for k, v in final.items() if k in keep_final},
        all(jax.tree.leaves(unchanged)),
        updates_per_step,
    )


class _Runs:
    """Each variant and precision trained once, on first use, and kept for every test."""

    def __init__(self, fixture: dict, initial_state: dict):
        self._fixture, self._initial_state, self._runs = fixture, initial_state, {}

    def __getitem__(self, key: tuple[str, str]) -> Run:
        if key not in self._runs:
            variant, precision = key
            # One extra step counts the BatchNorm updates; the first run does it.
            count = key == RUNS[0]
            with jax.enable_x64(precision == "float64"):
                self._runs[key] = _train(
                    self._fixture, self._initial_state, variant, precision, count
                )
        return self._runs[key]


@pytest.fixture(scope="module")
def runs(fixture, initial_state) -> _Runs:
    return _Runs(fixture, initial_state)


@pytest.fixture(params=RUNS, ids=["-".join(r) for r in RUNS])
def run(request, runs) -> Run:
    return runs[request.param]


def _flow_errors(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    err = np.abs(np.asarray(ours, np.float64) - ref)
    return float(err.max()), float(err.mean())


def _rel_l2(ours: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.linalg.norm(np.asarray(ours, np.float64) - ref) / np.linalg.norm(ref))


def test_losses(fixture, run, record_property):
    tol = TOLERANCES[run.variant, run.precision]
    ref = run.ref(fixture, "loss")
    rel = np.abs(run.losses - ref) / np.abs(ref)
    record_property("loss_rel", rel.tolist())
    assert rel[0] <= tol["loss_step1"], rel
    assert rel[1:].max() <= tol["loss_later"], rel


def test_train_flows(fixture, run, record_property):
    tol = TOLERANCES[run.variant, run.precision]
    ref = run.ref(fixture, "flow")
    step1 = _flow_errors(run.flows[0], ref[0])
    later = _flow_errors(run.flows[1:], ref[1:])
    record_property("flow_step1_max_mean", step1)
    record_property("flow_later_max_mean", later)
    assert np.all(np.array(step1) <= tol["flow_step1"]), step1
    assert np.all(np.array(later) <= tol["flow_later"]), later


def test_probe_flow_after_training(fixture, run, record_property):
    tol = TOLERANCES[run.variant, run.precision]
    errors = _flow_errors(run.probe_flow, run.ref(fixture, "probe_flow"))
    record_property("probe_max_mean", errors)
    assert np.all(np.array(errors) <= tol["probe"]), errors


def _update_tolerance(tol: dict, key: str) -> float:
    if not key.startswith(BACKBONE):
        return tol["update_head"]
    return next(v for part, v in tol["update_backbone"].items() if part in key)


def test_parameter_updates(fixture, initial_state, run, record_property):
    tol = TOLERANCES[run.variant, run.precision]
    meta = json.loads(str(fixture["meta/compact_json"]))
    refs = run.stored(fixture, "update")
    assert refs, "no stored updates"
    assert any(k.startswith(BACKBONE) for k in refs) == (run.variant == "finetune")
    errors = {}
    for key, ref in refs.items():
        ours = run.final[key].astype(np.float64) - initial_state[key].astype(np.float64)
        if key == meta["sliced_key"]:
            ours = ours[:: meta["proj_row_stride"]]
        errors[key] = _rel_l2(ours, ref)
    record_property("update_rel_l2", errors)
    bad = {k: e for k, e in errors.items() if not e <= _update_tolerance(tol, k)}
    assert not bad, bad


def test_frozen_backbone_stays_bit_identical(run):
    assert run.backbone_unchanged == (run.variant == "frozen")


def test_batchnorm_running_statistics(fixture, run, record_property):
    tol = TOLERANCES[run.variant, run.precision]
    refs = run.stored(fixture, "bn")
    assert len(refs) == 4
    errors = {
        key: float(np.abs(run.final[key].astype(np.float64) - ref).max() / np.abs(ref).max())
        for key, ref in refs.items()
    }
    record_property("bn_rel_max", errors)
    assert max(errors.values()) <= tol["bn"], errors


def test_batchnorm_updates_reach_the_official_num_batches_tracked(fixture, runs, record_property):
    # Our BatchNorm keeps no counter (with momentum 0.1 PyTorch never reads it), so count the
    # updates: source and target each update every BatchNorm once per step. The count is the
    # same code path in both variants (freezing only stops gradients).
    counts = runs[RUNS[0]].bn_updates_per_step
    record_property("bn_updates_per_step_range", (float(counts.min()), float(counts.max())))
    assert counts.size == 2 * 94  # mean and var: the stem BN, 3 per block, 3 downsample BNs
    np.testing.assert_allclose(counts, 2.0, atol=1e-2)
    tracked = INITIAL_NUM_BATCHES_TRACKED + STEPS * int(np.rint(counts).max())
    for variant in ("finetune", "frozen"):
        assert tracked == int(fixture[f"train/{variant}/num_batches_tracked"]) == 12


def test_step1_gradients(fixture, run, record_property):
    tol = TOLERANCES[run.variant, run.precision]
    refs = run.stored(fixture, "grad_step1")
    assert any(k.startswith(BACKBONE) for k in refs) == (run.variant == "finetune")
    errors = {key: _rel_l2(run.grads_step1[key], ref) for key, ref in refs.items()}
    record_property("grad_rel_l2", errors)
    limits = {k: tol.get("grad_overrides", {}).get(k, tol["grad"]) for k in refs}
    bad = {k: e for k, e in errors.items() if not e <= limits[k]}
    assert not bad, bad

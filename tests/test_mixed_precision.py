"""bfloat16 compute (`config.model.dtype = "bfloat16"`) with float32 parameters, and the attention.

The tiny synthetic CATs (`configs/synthetic.py:tiny`): the bfloat16 forward pass gives nearly the
float32 flow from the same (float32) weights. That THE train step runs in bfloat16 and keeps the
parameters and Adam moments in float32 is checked by tests/test_bench.py (its bf16 train row),
which compiles that step anyway.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_config import load

from matchme_jax.annotate.step import make_annotate_step
from matchme_jax.bench import random_batch
from matchme_jax.models import build_model, common

BATCH = 4


@pytest.fixture(scope="module")
def setup():
    config = load("synthetic.py:tiny")
    config.model.dtype = "bfloat16"
    size = config.dataset.image_size
    model = build_model(config.model)
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = jax.jit(lambda k: model.init(k, source=images, target=images))(
        jax.random.key(0, impl="rbg")
    )
    batch = random_batch(BATCH, size, config.dataset.max_keypoints, seed=3)
    return config, model, variables, batch


def _float_dtypes(tree) -> set[str]:
    return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_bfloat16_flow_is_close_to_float32(setup):
    _, model, variables, batch = setup
    assert _float_dtypes(variables) == {"float32"}  # a bfloat16 model's parameters
    out16 = make_annotate_step(model)(variables, batch)
    out32 = make_annotate_step(model.clone(dtype="float32"))(variables, batch)
    flow16, conf16 = out16["flow"], out16["confidence"]
    flow32, conf32 = out32["flow"], out32["confidence"]
    assert flow16.dtype == conf16.dtype == jnp.float32
    err = np.abs(np.asarray(flow16) - np.asarray(flow32))
    # Flow is in feature cells (4 x 4 grid); bfloat16 keeps ~3 significant digits.
    assert err.max() < 0.1 and err.mean() < 0.02, (err.max(), err.mean())
    assert not np.array_equal(np.asarray(flow16), np.asarray(flow32))  # bf16 did run
    np.testing.assert_allclose(conf16, conf32, atol=0.05)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_attention_matches_a_plain_softmax_attention(dtype):
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 5, 3, 8)) for _ in range(3))
    logits = np.einsum("bnhd,bmhd->bhnm", q, k) / np.sqrt(8)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    expected = np.einsum("bhnm,bmhd->bnhd", probs / probs.sum(-1, keepdims=True), v)
    with jax.enable_x64(dtype == "float64"):
        args = [jnp.asarray(x, dtype) for x in (q, k, v)]
        for implementation in ("auto", "xla"):
            out = common.dot_product_attention(*args, 8**-0.5, implementation)
            assert out.dtype == jnp.dtype(dtype)
            tol = {"float32": 1e-5, "bfloat16": 5e-2, "float64": 1e-12}[dtype]
            np.testing.assert_allclose(np.asarray(out, np.float64), expected, atol=tol)


def test_an_unknown_attention_kernel_is_refused():
    with pytest.raises(ValueError, match="attention='flash': use one of"):
        build_model({"name": "cats", "attention": "flash"})

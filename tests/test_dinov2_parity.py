"""DINOv2 ViT against the official model (compact fixtures), its converter, and its behaviour.

The fixtures tests/fixtures/dinov2_{plain,reg}_seed0_compact.npz hold the outputs of the
official ``DinoVisionTransformer`` (facebookresearch/dinov2 @
b8931f7bf91576930313be2c6d6af376033b35f0, ``dinov2/models/vision_transformer.py``) built as the
``dinov2_vits14`` and ``dinov2_vits14_reg`` hub entries at width 96, depth 4, 3 heads, on seeded
weights, for 224 x 224 and 182 x 252 inputs (see make_dinov2_compact.py for what is kept). The
weights are regenerated with our seeded_weights and checked against the fixtures' sha256.

Tolerances (absolute; about 10x the noise floor measured at generation: float32 vs float64 and
an independent float32 implementation give ~5e-6 on the tokens, and an exact float64 resize is
~3e-7 off the official float32 resize):

* float32 vs the official float32 run: normalised tokens 5e-5 max / 5e-6 mean; ``x_prenorm``
  and raw block outputs 1e-4 / 5e-6; the resized positional embedding 3e-6 / 3e-7;
* float64 vs the official float64 run: every token output 1e-5 / 3e-7 (the official float64
  run resizes the positional embedding in float32, as we do, but rounds differently);
* float64 fed the official resized positional embedding: 1e-12 (the rest of the model is then
  exact);
* our float64 resize vs torch's float64 resize: 1e-13.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from matchme_jax.convert import (
    dinov2_from_torch,
    dinov2_to_huggingface,
    dinov2_to_torch,
    load_state_dict_file,
)
from matchme_jax.models.dinov2 import (
    HUB,
    DinoVisionTransformer,
    HubEntry,
    SwiGLUFFN,
    swiglu_hidden_features,
)
from matchme_jax.models.pos_embed import keeps_pos_embed, pos_embed_resize_matrices
from matchme_jax.testing.seeded_weights import fixture_state_dict

pytestmark = pytest.mark.full_optimization  # compares with the official code's outputs

FIXTURES = Path(__file__).parent / "fixtures"
VARIANTS = ("plain", "reg")
SIZES = ("224x224", "182x252")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# (max, mean) absolute tolerances by kind of output.
FLOAT32_TOL = {"norm": (5e-5, 5e-6), "raw": (1e-4, 5e-6), "pos": (3e-6, 3e-7)}
FLOAT64_TOL = (1e-5, 3e-7)
FED_TOL = 1e-12
RESIZE_TOL = 1e-13
ALL_BLOCKS = (0, 1, 2, 3)


def _normalise(u8):
    return (u8.astype(np.float32) / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD


def _hw(size: str) -> tuple[int, int]:
    """Patch grid of an "HxW" size."""
    height, width = (int(s) for s in size.split("x"))
    return height // 14, width // 14


class Variant:
    """One compact fixture, its regenerated weights and the converted model."""

    def __init__(self, variant: str):
        with np.load(FIXTURES / f"dinov2_{variant}_seed0_compact.npz") as npz:
            self.fx = {k: npz[k] for k in npz.files}
        self.compact = json.loads(str(self.fx["meta/compact_json"]))
        self.name = str(self.fx["meta/hub_entry"])
        self.num_heads = int(self.fx["meta/num_heads"])
        self.state_dict = fixture_state_dict(self.fx)  # checks the sha256
        self.model, self.variables = dinov2_from_torch(
            self.state_dict, self.name, num_heads=self.num_heads
        )
        self.images = {s: _normalise(self.fx[f"input/{s}/u8"]) for s in SIZES}
        self.forward = jax.jit(lambda v, x: self.model.apply(v, x))


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request) -> Variant:
    return Variant(request.param)


def _all_outputs(module: DinoVisionTransformer, images: jnp.ndarray):
    """forward_features, every block's intermediate outputs (norm and raw), the pos-embed."""
    grid = (images.shape[1] // 14, images.shape[2] // 14)
    return (
        module(images),
        module.intermediate_layers(images, ALL_BLOCKS, norm=True),
        module.intermediate_layers(images, ALL_BLOCKS, norm=False),
        module.interpolate_pos_encoding(grid),
    )


def _comparisons(v: Variant, size: str, dtype: str, outputs) -> list[tuple[str, str, tuple]]:
    """(label, kind, (ours, stored)) for every stored token output, ours cut as the stored one."""
    forward, layers_norm, layers_raw = outputs[:3]
    stride, r = v.compact["channel_stride"], v.model.num_register_tokens
    ch = slice(None, None, stride)

    def stored(key):
        return v.fx[f"output/{size}/{dtype}/{key}"]

    checks = [
        ("x_norm_clstoken", "norm", forward["x_norm_clstoken"]),
        ("x_norm_patchtokens", "norm", forward["x_norm_patchtokens"][..., ch]),
        ("x_prenorm", "raw", forward["x_prenorm"][..., ch]),
    ]
    if r:
        checks.append(("x_norm_regtokens", "norm", forward["x_norm_regtokens"]))
    for kind, layers in (("norm", layers_norm), ("raw", layers_raw)):
        for i in v.compact["patch_layers"]:
            checks.append((f"layers_{kind}/{i}/patch", kind, layers[i][0][..., ch]))
        for i in v.compact["cls_layers"]:
            checks.append((f"layers_{kind}/{i}/cls", kind, layers[i][1]))
    out = [(key, kind, (ours, stored(key))) for key, kind, ours in checks]
    # The last block's intermediate outputs are forward_features in the official model.
    last = v.compact["last_block"]
    b, h, w, c = layers_raw[last][0].shape
    raw_patch, raw_cls = layers_raw[last][0].reshape(b, h * w, c)[..., ch], layers_raw[last][1]
    norm_patch, norm_cls = layers_norm[last][0].reshape(b, h * w, c), layers_norm[last][1]
    out += [
        (f"layers_raw/{last}/patch", "raw", (raw_patch, stored("x_prenorm")[:, 1 + r :])),
        (f"layers_raw/{last}/cls", "raw", (raw_cls[..., ch], stored("x_prenorm")[:, 0])),
        (f"layers_norm/{last}/patch", "norm", (norm_patch[..., ch], stored("x_norm_patchtokens"))),
        (f"layers_norm/{last}/cls", "norm", (norm_cls, stored("x_norm_clstoken"))),
    ]
    return out


def _errors(ours, ref) -> tuple[float, float]:
    ours = np.asarray(ours, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = np.abs(ours - np.asarray(ref, np.float64))
    return float(err.max()), float(err.mean())


# ---- fixture integrity ----


def interpolate_pos_embed(
    pos_embed: np.ndarray,
    out_hw: tuple[int, int],
    antialias: bool,
    offset: float,
    dtype: np.dtype = np.float32,
) -> np.ndarray:
    """The official ``interpolate_pos_encoding`` in numpy, the resize in ``dtype``.

    Args:
        pos_embed: [1, 1 + M*M, C], the parameter.
        out_hw: (h, w) patch grid.
        antialias, offset: the model's interpolation settings.
        dtype: arithmetic of the resize: float32 as the official code, or float64 for the
            exact resize.

    Returns:
        [1, 1 + h*w, C]: the cls position, then the patch positions row-major; ``pos_embed``
        itself when the grid is the trained one.
    """
    _, n, c = pos_embed.shape
    grid = math.isqrt(n - 1)
    if keeps_pos_embed(grid, out_hw):
        return pos_embed
    rows, cols = pos_embed_resize_matrices(grid, tuple(out_hw), antialias, offset)
    pos = np.asarray(pos_embed, dtype)
    patch = np.einsum("hwc,pw->hpc", pos[0, 1:].reshape(grid, grid, c), cols.astype(dtype))
    patch = np.einsum("oh,hpc->opc", rows.astype(dtype), patch)
    return np.concatenate([pos[:, :1], patch.reshape(1, -1, c)], axis=1)


def test_weights_are_regenerated_bit_for_bit(variant):
    # fixture_state_dict checked the sha256; LayerScale gammas follow 0.1 * (1 + 0.1 z).
    sd = variant.state_dict
    assert len(sd) == (64 if variant.model.num_register_tokens else 63)
    gammas = np.concatenate([v for k, v in sd.items() if k.endswith(".gamma")])
    assert gammas.size == 8 * 96 and 0.05 < gammas.min() and gammas.max() < 0.15


def test_uint8_inputs_renormalise_to_the_official_float_inputs(variant):
    for size in SIZES:
        nchw = np.ascontiguousarray(variant.images[size].transpose(0, 3, 1, 2).astype("<f4"))
        digest = hashlib.sha256(nchw.tobytes()).hexdigest()
        assert digest == str(variant.fx[f"input/{size}/x_sha256"])


# ---- parity ----


@pytest.mark.parametrize("size", SIZES)
def test_float32_matches_the_official_float32_run(variant, size):
    run = jax.jit(lambda v, x: variant.model.apply(v, x, method=_all_outputs))
    outputs = run(variant.variables, variant.images[size])
    pos = outputs[3]
    assert pos.dtype == jnp.float32 and pos.shape == (1, 1 + np.prod(_hw(size)), 96)
    checks = _comparisons(variant, size, "float32", outputs)
    checks.append(
        (f"output/{size}/pos_embed", "pos", (pos, variant.fx[f"output/{size}/pos_embed"]))
    )
    errors = {key: (*_errors(*arrays), *FLOAT32_TOL[kind]) for key, kind, arrays in checks}
    bad = {k: e for k, e in errors.items() if not (e[0] <= e[2] and e[1] <= e[3])}
    assert not bad, f"(max, mean, max tol, mean tol) beyond tolerance: {bad}"


@pytest.mark.parametrize("size", SIZES)
def test_float64_matches_the_official_float64_run(variant, size):
    """Our resize (in float32, as the official code) and, separately, the official one fed in."""
    # The official float64 run resized in float32: its pos-embed is the float32 one, exactly.
    stored_pos = np.asarray(variant.fx[f"output/{size}/pos_embed"], np.float64)

    def feed_official_pos_embed(next_fun, args, kwargs, context):
        if context.method_name == "interpolate_pos_encoding":
            return jnp.asarray(stored_pos)
        return next_fun(*args, **kwargs)

    samples = variant.compact["float64_samples"]
    with jax.enable_x64(True):
        model = variant.model.clone(dtype="float64")
        variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variant.variables)

        def run(v, x):
            own = model.apply(v, x, method=_all_outputs)
            with nn.intercept_methods(feed_official_pos_embed):
                fed = model.apply(v, x, method=_all_outputs)
            return own, fed

        images = jnp.asarray(variant.images[size][:samples], jnp.float64)
        own, fed = jax.tree.map(np.asarray, jax.jit(run)(variables, images))
    assert own[0]["x_prenorm"].dtype == np.float64
    pos_max, pos_mean = _errors(own[3], variant.fx[f"output/{size}/pos_embed"])
    assert pos_max <= FLOAT32_TOL["pos"][0] and pos_mean <= FLOAT32_TOL["pos"][1]
    errors = {k: _errors(*a) for k, _, a in _comparisons(variant, size, "float64", own)}
    bad = {
        k: e for k, e in errors.items() if not (e[0] <= FLOAT64_TOL[0] and e[1] <= FLOAT64_TOL[1])
    }
    assert not bad, f"(max, mean) beyond {FLOAT64_TOL}: {bad}"
    fed_errors = {k: _errors(*a)[0] for k, _, a in _comparisons(variant, size, "float64", fed)}
    bad = {k: e for k, e in fed_errors.items() if not e <= FED_TOL}
    assert not bad, f"fed the official pos-embed, max errors beyond {FED_TOL}: {bad}"


def test_float64_resize_matches_torch_float64_resize(variant):
    model, stride = variant.model, variant.compact["channel_stride"]
    pos = variant.state_dict["pos_embed"].astype(np.float64)
    for size in SIZES:
        ours = interpolate_pos_embed(
            pos, _hw(size), model.interpolate_antialias, model.interpolate_offset, np.float64
        )
        ref = variant.fx[f"output/{size}/pos_embed_interp_float64"]
        assert _errors(ours[..., ::stride], ref)[0] <= RESIZE_TOL


def test_a_518_input_keeps_the_positional_embedding(variant):
    model, variables = variant.model, variant.variables
    pos = variables["params"]["pos_embed"]
    antialias, offset = model.interpolate_antialias, model.interpolate_offset
    assert interpolate_pos_embed(pos, (37, 37), antialias, offset) is pos
    ours = model.apply(variables, (37, 37), method=DinoVisionTransformer.interpolate_pos_encoding)
    np.testing.assert_array_equal(ours, pos)
    # The special case matters: with the offset, a 37 -> 37 resize is not the identity.
    rows, cols = pos_embed_resize_matrices(37, (37, 37), antialias, offset)
    moved = np.abs(rows - np.eye(37)).max()
    assert moved > 1e-3 if offset else moved < 1e-15
    with jax.enable_x64(True):  # a float64 run takes the float64 parameter as is, too
        pos64 = jnp.asarray(pos, jnp.float64)
        got = model.clone(dtype="float64").apply(
            {"params": {**variables["params"], "pos_embed": pos64}},
            (37, 37),
            method=DinoVisionTransformer.interpolate_pos_encoding,
        )
        assert got.dtype == jnp.float64 and np.array_equal(got, pos64)


# ---- converter ----


def test_the_converted_tree_is_the_model_tree(variant):
    model, variables = variant.model, variant.variables
    images = jax.ShapeDtypeStruct((1, 28, 28, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
    ours = jax.tree.map(lambda a: (a.shape, a.dtype), variables)
    assert ours == jax.tree.map(lambda a: (a.shape, a.dtype), shapes)
    assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(variables))
    assert model.mlp_ratio == 4.0 and model.pos_embed_grid == 37 and model.patch_size == 14
    entry = HUB[variant.name]
    assert model.interpolate_antialias == entry.interpolate_antialias
    assert model.interpolate_offset == entry.interpolate_offset


def test_torch_round_trip_is_exact(variant):
    back = dinov2_to_torch(variant.model, variant.variables)
    assert list(back) == list(variant.state_dict)  # the official order
    for key, value in variant.state_dict.items():
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_huggingface_safetensors_gives_the_same_model(variant, tmp_path):
    from safetensors.numpy import save_file

    hf = dinov2_to_huggingface(variant.model, variant.variables)
    assert hf["encoder.layer.0.attention.attention.key.weight"].shape == (96, 96)
    assert hf["encoder.layer.3.layer_scale2.lambda1"].shape == (96,)
    assert hf["embeddings.position_embeddings"].shape == (1, 1370, 96)
    assert ("embeddings.register_tokens" in hf) == (variant.model.num_register_tokens > 0)
    assert not any(k.startswith(("blocks.", "norm.", "cls_token")) for k in hf)
    save_file(hf, str(tmp_path / "model.safetensors"))
    loaded = load_state_dict_file(tmp_path / "model.safetensors")
    model, variables = dinov2_from_torch(loaded, variant.name, num_heads=variant.num_heads)
    assert model == variant.model
    jax.tree.map(np.testing.assert_array_equal, variables, variant.variables)
    x = variant.images["224x224"]
    want, got = variant.forward(variant.variables, x), variant.forward(variables, x)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    # A task model's prefix is removed.
    prefix = "dinov2_with_registers." if variant.model.num_register_tokens else "dinov2."
    prefixed = {prefix + k: v for k, v in hf.items()}
    _, again = dinov2_from_torch(prefixed, variant.name, num_heads=variant.num_heads)
    jax.tree.map(np.testing.assert_array_equal, again, variant.variables)


@pytest.fixture(scope="module")
def plain_state_dict():
    with np.load(FIXTURES / "dinov2_plain_seed0_compact.npz") as npz:
        return fixture_state_dict({k: npz[k] for k in npz.files})


def test_bad_keys_are_listed_in_one_error(plain_state_dict):
    bad = dict(plain_state_dict)
    del bad["blocks.1.ls2.gamma"]
    bad["head.weight"] = np.zeros((10, 96), np.float32)
    bad["blocks.0.attn.qkv.bias"] = np.zeros(96, np.float32)
    with pytest.raises(ValueError, match="does not fit the DINOv2 model dinov2_vits14") as err:
        dinov2_from_torch(bad, "dinov2_vits14", num_heads=3)
    message = str(err.value)
    assert "missing keys (1): blocks.1.ls2.gamma" in message
    assert "unexpected keys (1): head.weight" in message
    assert "blocks.0.attn.qkv.bias: (96,), expected (288,)" in message


def test_bad_huggingface_keys_are_named_in_that_layout(plain_state_dict):
    model, variables = dinov2_from_torch(plain_state_dict, "dinov2_vits14", num_heads=3)
    hf = dinov2_to_huggingface(model, variables)
    del hf["encoder.layer.2.attention.attention.value.bias"]
    hf["encoder.layer.0.mlp.fc2.bias"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="huggingface layout") as err:
        dinov2_from_torch(hf, "dinov2_vits14", num_heads=3)
    assert "missing keys (1): encoder.layer.2.attention.attention.value.bias" in str(err.value)
    assert "encoder.layer.0.mlp.fc2.bias: (3,), expected (96,)" in str(err.value)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        (
            "dinov2_vits14_reg",
            dict(num_heads=3),
            "hold 0 register tokens, but the hub entry dinov2_vits14_reg has 4: use dinov2_vits14",
        ),
        ("dinov2_vitx14", dict(num_heads=3), "unknown DINOv2 hub entry 'dinov2_vitx14'"),
        ("dinov2_vits14", {}, "96 wide, dinov2_vits14 is 384 wide: pass num_heads="),
        ("dinov2_vits14", dict(num_heads=3, model_overrides={"colour": 1}), "unknown Dino"),
        ("dinov2_vits14", dict(num_heads=5), "num_heads=5 must divide embed_dim=96"),
    ],
)
def test_inconsistent_requests_raise_a_clear_error(plain_state_dict, name, kwargs, message):
    with pytest.raises(ValueError) as err:
        dinov2_from_torch(plain_state_dict, name, **kwargs)
    assert message in str(err.value)


def test_overrides_set_the_compute_dtype(plain_state_dict):
    model, _ = dinov2_from_torch(
        plain_state_dict, "dinov2_vits14", num_heads=3, model_overrides={"dtype": "bfloat16"}
    )
    assert model.dtype == "bfloat16" and model.depth == 4 and model.embed_dim == 96


def test_hub_entries_are_the_official_constructors():
    sizes = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "g": (1536, 40, 24)}
    assert len(HUB) == 8
    for size, (dim, depth, heads) in sizes.items():
        ffn = "swiglufused" if size == "g" else "mlp"
        assert HUB[f"dinov2_vit{size}14"] == HubEntry(dim, depth, heads, ffn, 0, False, 0.1)
        assert HUB[f"dinov2_vit{size}14_reg"] == HubEntry(dim, depth, heads, ffn, 4, True, 0.0)
    assert swiglu_hidden_features(1536, 4.0) == 4096  # ViT-g's w12 is [8192, 1536]


def test_swiglu_converts_both_ways_and_computes_silu_gating():
    model = DinoVisionTransformer(
        embed_dim=48, depth=2, num_heads=2, ffn_layer="swiglufused", pos_embed_grid=4
    )
    images = jax.ShapeDtypeStruct((1, 28, 28, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
    sd = dinov2_to_torch(model, variables)
    assert sd["blocks.1.mlp.w12.weight"].shape == (256, 48)  # hidden (int(192 * 2/3) + 7) // 8 * 8
    assert sd["blocks.1.mlp.w3.weight"].shape == (48, 128)
    for state_dict in (sd, dinov2_to_huggingface(model, variables)):
        back_model, back = dinov2_from_torch(state_dict, "dinov2_vitg14", num_heads=2)
        assert back_model == model
        jax.tree.map(np.testing.assert_array_equal, back, variables)
    assert "encoder.layer.0.mlp.weights_in.weight" in dinov2_to_huggingface(model, variables)
    # w3(silu(x1) * x2) with [x1 | x2] = w12(x).
    x = rng.standard_normal((3, 48)).astype(np.float32)
    mlp = variables["params"]["blocks_0"]["mlp"]
    x12 = x @ mlp["w12"]["kernel"] + mlp["w12"]["bias"]
    x1, x2 = x12[:, :128], x12[:, 128:]
    want = (x1 / (1 + np.exp(-x1)) * x2) @ mlp["w3"]["kernel"] + mlp["w3"]["bias"]
    got = SwiGLUFFN(128).apply({"params": mlp}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# ---- intermediate layers: parameters and frozen blocks ----


def test_intermediate_layers_build_only_the_blocks_they_run(plain_state_dict):
    model = DinoVisionTransformer(embed_dim=96, depth=4, num_heads=3)
    images = jax.ShapeDtypeStruct((1, 28, 28, 3), jnp.float32)
    common = {"cls_token", "pos_embed", "mask_token", "patch_embed"}
    for norm, extra in ((True, {"norm"}), (False, set())):
        shapes = jax.eval_shape(
            lambda x, norm=norm: model.init(
                jax.random.key(0), x, (1,), norm=norm, method=model.intermediate_layers
            ),
            images,
        )
        assert set(shapes["params"]) == common | {"blocks_0", "blocks_1"} | extra


def test_frozen_blocks_stop_the_gradients(variant):
    model, params = variant.model, variant.variables["params"]
    x = variant.images["224x224"][:, :28, :28]  # a 2 x 2 patch grid

    def loss(p, frozen):
        layers = model.apply(
            {"params": p}, x, (1,), frozen_blocks=frozen, method=model.intermediate_layers
        )
        return sum(jnp.sum(patch**2) + jnp.sum(cls**2) for patch, cls in layers)

    def norms(grads):
        flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, grads))
        top = {path[0] for path in flat}
        return {t: sum(float(np.abs(g).sum()) for p, g in flat.items() if p[0] == t) for t in top}

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    embedding = ["patch_embed", "cls_token", "pos_embed"]
    embedding += ["register_tokens"] if model.num_register_tokens else []
    frozen = norms(grad(params, 1))
    for name in [*embedding, "blocks_0", "blocks_2", "blocks_3", "mask_token"]:
        assert frozen[name] == 0.0, name
    assert frozen["blocks_1"] > 0 and frozen["norm"] > 0
    embedding_only = norms(grad(params, 0))
    assert all(embedding_only[name] == 0.0 for name in embedding)
    assert embedding_only["blocks_0"] > 0
    free = norms(grad(params, None))
    assert all(free[name] > 0 for name in [*embedding, "blocks_0"])


def test_bad_images_and_block_ids_are_refused(variant):
    model, variables = variant.model, variant.variables
    with pytest.raises(ValueError, match="multiples of the patch size 14"):
        jax.eval_shape(lambda x: model.apply(variables, x), jnp.zeros((1, 30, 28, 3)))
    with pytest.raises(ValueError, match="block_ids=\\(4,\\)"):
        model.apply(variables, jnp.zeros((1, 28, 28, 3)), (4,), method=model.intermediate_layers)
    with pytest.raises(ValueError, match="invalid DINOv2 config"):
        DinoVisionTransformer(ffn_layer="swiglu")


def test_bfloat16_computes_in_bfloat16_with_float32_params(variant):
    model = variant.model.clone(dtype="bfloat16")
    images = jax.ShapeDtypeStruct((2, 28, 42, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype("float32")}
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variant.variables, images)
    r = model.num_register_tokens
    assert out["x_norm_patchtokens"].shape == (2, 6, 96)
    assert out["x_prenorm"].shape == (2, 1 + r + 6, 96)
    assert {o.dtype for o in out.values()} == {jnp.dtype("bfloat16")}


def test_resize_matrices_beyond_the_fixture_sizes():
    """Upsampling is not in the fixtures: the antialiased resize agrees with jax.image.resize
    (Keys a = -0.5, antialiased, taps renormalised at the border) both ways, and the plain
    bicubic weights still sum to one per output (the replicated border keeps every tap)."""
    grid = np.random.default_rng(0).standard_normal((37, 37))
    with jax.enable_x64(True):
        for out_hw in ((13, 40), (60, 5)):
            rows, cols = pos_embed_resize_matrices(37, out_hw, True, 0.0)
            want = jax.image.resize(jnp.asarray(grid), out_hw, "bicubic", antialias=True)
            np.testing.assert_allclose(rows @ grid @ cols.T, want, rtol=0, atol=1e-13)
    for n in (5, 16, 40, 100):
        rows, _ = pos_embed_resize_matrices(37, (n, n), False, 0.1)
        np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=0, atol=1e-14)

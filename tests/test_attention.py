"""Attention implementations agree with the reference einsum (scores and gradients), on left/right
padding and packed rows, causal and bidirectional; packed segments never see each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from querit_jax import sharding
from querit_jax.models.attention import attention_mask, resolve_impl, segment_attention
from querit_jax.models.decoder_config import DecoderConfig
from querit_jax.models.heads import HeadConfig
from querit_jax.models.spec import RUNTIME_FIELDS, ModelSpec, abstract_params
from querit_jax.models.templates import qwen3_pair

T = 128  # splash tiles by 128


def _segments() -> np.ndarray:
    """Rows: right padding, left padding, three packed pairs + padding, one full segment."""
    rows = [
        [1] * 90 + [0] * 38,
        [0] * 50 + [1] * 78,
        [1] * 30 + [2] * 45 + [3] * 40 + [0] * 13,
        [1] * T,
    ]
    return np.asarray(rows, np.int32)


def _qkv(seed=0, n=4, kv=2, d=16):
    rng = np.random.default_rng(seed)
    b = len(_segments())
    q = rng.standard_normal((b, T, n, d)).astype(np.float32)
    k = rng.standard_normal((b, T, kv, d)).astype(np.float32)
    v = rng.standard_normal((b, T, kv, d)).astype(np.float32)
    cot = rng.standard_normal((b, T, n, d)).astype(np.float32)
    return q, k, v, cot


def _value_and_grads(impl, causal, seg, q, k, v, cot):
    def f(q, k, v):
        out = segment_attention(q, k, v, seg, causal=causal, scale=0.25, impl=impl)
        return jnp.sum(out * cot), out

    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return np.asarray(out), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("impl", ["xla", "splash"])
def test_implementations_equal_the_reference(impl, causal):
    seg = jnp.asarray(_segments())
    q, k, v, cot = _qkv()
    ref_out, ref_grads = _value_and_grads("reference", causal, seg, q, k, v, cot)
    out, grads = _value_and_grads(impl, causal, seg, q, k, v, cot)
    real = _segments() > 0  # padding rows' outputs are never read; they must still be finite
    np.testing.assert_allclose(out[real], ref_out[real], atol=2e-5, rtol=0)
    assert np.isfinite(out).all()
    for name, a, b in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("impl", ["reference", "xla"])  # splash == reference: tested above
@pytest.mark.parametrize("causal", [True, False])
def test_a_packed_segment_equals_the_same_tokens_alone(impl, causal):
    """Segment 2 of the packed row, computed alone in a row of its own (the rest padding), gives
    the same outputs: a mask that let packed pairs see each other would change them."""
    seg = _segments()
    q, k, v, _ = _qkv(seed=1)
    packed = np.asarray(segment_attention(q, k, v, seg, causal=causal, scale=0.25, impl=impl))
    row, span = 2, slice(30, 75)
    alone = np.where(seg[row] == 2, 1, 0)[None]  # only segment 2 is real, in place
    single = np.asarray(
        segment_attention(
            q[row : row + 1], k[row : row + 1], v[row : row + 1], alone, causal=causal,
            scale=0.25, impl=impl,
        )
    )  # fmt: skip
    np.testing.assert_allclose(packed[row, span], single[0, span], atol=2e-6, rtol=0)
    merged = np.where(seg > 0, 1, 0)  # the planted bug: one segment per row
    leaky = np.asarray(segment_attention(q, k, v, merged, causal=causal, scale=0.25, impl=impl))
    assert np.abs(leaky[row, span] - packed[row, span]).max() > 1e-2


def test_reference_mask_blocks_the_future_and_other_segments():
    mask = np.asarray(attention_mask(jnp.asarray([[1, 1, 2, 2, 0]]), causal=True))[0]
    assert mask[1, 0] and not mask[0, 1]  # causal inside a segment
    assert not mask[2, 1] and mask[3, 2]  # segment 2 never sees segment 1
    assert mask[4, 4] and not mask[4, 3]  # padding sees only padding (no empty row)


def test_auto_picks_the_backend_kernel_and_bad_names_fail():
    assert jax.default_backend() == "cpu"
    assert resolve_impl("auto", jnp.float32, 128) == "xla"
    assert resolve_impl("reference", jnp.bfloat16, 7) == "reference"
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        resolve_impl("flash", jnp.float32, 128)
    with pytest.raises(ValueError, match="attention_impl"):
        DecoderConfig.tiny(attention_impl="flash")


@pytest.mark.parametrize("preset,mesh", [("fsdp", (1, 8, 1, 1)), ("fsdp+tp", (1, 4, 2, 1))])
def test_sharded_kernels_equal_the_reference_on_8_devices(preset, mesh):
    """Under a mesh with rules (as in training): splash runs in a shard_map over the batch axes
    (and the head axis under tensor parallelism), xla is partitioned by GSPMD."""
    seg = jnp.asarray(np.tile(_segments(), (2, 1)))  # 8 rows: one per batch shard
    q, k, v, cot = (np.concatenate([a, a[::-1]]) for a in _qkv(seed=4))
    ref_out, ref_grads = _value_and_grads("reference", True, seg, q, k, v, cot)
    with sharding.use_rules(sharding.make_mesh(mesh), sharding.rules.resolve_rules(preset)):
        for impl in ("xla", "splash"):
            out, grads = _value_and_grads(impl, True, seg, q, k, v, cot)
            real = np.asarray(seg) > 0
            np.testing.assert_allclose(out[real], ref_out[real], atol=2e-5, rtol=0, err_msg=impl)
            for a, b in zip(grads, ref_grads):
                np.testing.assert_allclose(a, b, atol=2e-5, rtol=0, err_msg=impl)


def test_model_attention_impl_is_a_runtime_field():
    """Changing attention_impl keeps the parameters (a checkpoint loads under any of them)."""
    shapes = []
    for impl in ("reference", "auto"):
        spec = ModelSpec(
            "qwen3", DecoderConfig.tiny(attention_impl=impl), HeadConfig(), qwen3_pair(), T
        )
        shapes.append(jax.tree.map(lambda a: a.shape, abstract_params(spec)[1]))
    assert shapes[0] == shapes[1]
    assert "attention_impl" in RUNTIME_FIELDS and "moe_capacity_factor" in RUNTIME_FIELDS

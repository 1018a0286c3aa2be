"""The parity tests can see the bugs they exist for.

Deliberately broken variants of our models (RoPE removed, the interleaved rotation, the rotation
inverted, theta x100, a wrong norm epsilon, tanh-GELU for the exact one, a wrong XLM-R position
offset, the MoE routing weights renormalised when the checkpoint does not) run on the tiny fixtures
of the parity tests (tests/fixtures.py) and the same inputs. Each must move our outputs by at least
100x the tolerance the parity test uses, and so fail that test's assertion against transformers,
which each case also checks. The bugs are planted where a real one would sit: `apply_rope` as the
attention module calls it (monkeypatched: removed, interleaved, inverted, theta x100), or a config
field the converter fills (epsilon, activation, position offset, norm_topk_prob), rebuilt into a new
graph on the same parameters.

Measured moves (max |broken - ours|, float32, CPU) are in the comment above each family's test; the
assertions need >= 100x ATOL: 1e-2 for the decoders, 2e-3 for the encoders.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from querit_jax.data.tokenize import PairEncoder, pad_batch
from querit_jax.inference.runners import embedder_for
from querit_jax.loading import load_model
from querit_jax.models import attention, layers
from querit_jax.models.spec import abstract_params
from tests.fixtures import (
    DOCS,
    PAIRS,
    QUERIES,
    TEXTS,
    make_hf_encoder,
    make_hf_qwen3,
    make_hf_qwen3_moe,
)
from tests.test_encoders import ATOL as ENCODER_ATOL
from tests.test_encoders import needs_minilm, needs_xlmr_tok
from tests.test_qwen3_parity import ATOL as DECODER_ATOL

FACTOR = 100  # the least move, in parity tolerances


def _interleaved_rope(x, positions, theta):
    """RoPE on adjacent pairs (x[2i], x[2i+1]) (GPT-J / Meta's convention), not HF's halves."""
    inv_freq = layers.rope_inv_freq(x.shape[-1], theta)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    cos, sin = jnp.cos(freqs)[:, :, None, :], jnp.sin(freqs)[:, :, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    return jnp.stack([even * cos - odd * sin, even * sin + odd * cos], -1).reshape(x.shape)


_ROPE = layers.apply_rope
ROPE_BUGS = {
    "no_rope": lambda x, p, theta: x,
    "interleaved_pairs": _interleaved_rope,
    # rotate_half with the signs swapped ([x2, -x1]): every rotation runs backwards
    "inverted_rotation": lambda x, p, theta: _ROPE(x, -p, theta),
    "theta_x100": lambda x, p, theta: _ROPE(x, p, 100 * theta),
}


def _outputs(model, inputs, patch=None, monkeypatch=None, **spec_fields):
    """Our model's outputs on `inputs` (ids, segment ids[, token types]); with `spec_fields` the
    graph
    is rebuilt from the changed spec on the same parameters, with `patch` apply_rope is replaced."""
    graphdef = abstract_params(model.spec.replace(**spec_fields))[0] if spec_fields else None
    module = nnx.merge(graphdef or model.graphdef, model.params)
    ids, seg, *types = inputs
    kwargs = {"token_type_ids": jnp.asarray(types[0])} if types else {}
    if patch is None:
        return np.asarray(module(jnp.asarray(ids), jnp.asarray(seg), **kwargs))
    with monkeypatch.context() as m:
        m.setattr(attention, "apply_rope", patch)
        return np.asarray(module(jnp.asarray(ids), jnp.asarray(seg), **kwargs))


def _check(broken, ours, ref, atol):
    """The broken variant moves the outputs by >= FACTOR * atol and fails the parity assertion."""
    move = float(np.abs(broken - ours).max())
    assert move >= FACTOR * atol, f"moved by only {move:.2e} < {FACTOR} x {atol:g}"
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(broken, ref, atol=atol, rtol=0)
    return move


# ----- Qwen3 cross-encoder (test_qwen3_parity.test_seq_cls_scores_match_transformers) ------------

# max |broken - ours| on the 4 pairs' scores (spread 2.3): no_rope 1.03, interleaved 1.42, inverted
# 1.38, theta_x100 1.13, rms_norm_eps 1e-5 (for 1e-6) 2.8e-2.
QWEN3_BUGS = [*ROPE_BUGS, "rms_norm_eps_1e-5"]


@pytest.fixture(scope="module")
def qwen3_seq_cls(tmp_path_factory):
    hf_dir = make_hf_qwen3(
        str(tmp_path_factory.mktemp("sens") / "qwen3"), "seq_cls", pad_token="<|fim_pad|>"
    )
    model = load_model(hf_dir)
    seqs = PairEncoder(model.tokenizer, model.spec.template, 96)(QUERIES, DOCS)
    ids, seg, _ = pad_batch(seqs, 96, model.tokenizer.pad_token_id, left=True)
    ref_model = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(seg)).logits
    return model, (ids, seg), ref[:, 0].numpy(), _outputs(model, (ids, seg))[:, 0]


@pytest.mark.parametrize("bug", QWEN3_BUGS)
def test_qwen3_scores_see_rope_and_norm_bugs(qwen3_seq_cls, bug, monkeypatch):
    model, inputs, ref, ours = qwen3_seq_cls
    np.testing.assert_allclose(ours, ref, atol=DECODER_ATOL, rtol=0)  # the unbroken model passes
    assert np.ptp(ref) > 1.0
    if bug in ROPE_BUGS:
        broken = _outputs(model, inputs, ROPE_BUGS[bug], monkeypatch)[:, 0]
    else:
        assert model.spec.backbone.rms_norm_eps == 1e-6
        broken = _outputs(model, inputs, rms_norm_eps=1e-5)[:, 0]
    _check(broken, ours, ref, DECODER_ATOL)


# ----- Qwen3 embedder (test_encoders.test_qwen3_embedder_reads_the_last_real_token)
# ----------------

# max |broken - ours| over the unit embeddings' coordinates: no_rope 0.48, interleaved 0.59,
# inverted 0.48, theta_x100 0.45. (An epsilon of 1e-5 moves them by 4.4e-3 only: the norm bug is
# the cross-encoder's case above.)


@pytest.fixture(scope="module")
def qwen3_embedder(tmp_path_factory):
    hf_dir = make_hf_qwen3(str(tmp_path_factory.mktemp("sens") / "qwen3_base"), "base")
    model = load_model(hf_dir, head="embed")
    seqs = embedder_for(model, batch_size=4).encoder(TEXTS[:3], "query")
    ids, seg, _ = pad_batch(seqs, max(map(len, seqs)), model.tokenizer.pad_token_id, left=True)
    base = transformers.Qwen3Model.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        hidden = base(input_ids=torch.tensor(ids), attention_mask=torch.tensor(seg))
    ref = torch.nn.functional.normalize(hidden.last_hidden_state[:, -1], dim=-1).numpy()
    return model, (ids, seg), ref, _outputs(model, (ids, seg))[:, 0]


@pytest.mark.parametrize("bug", list(ROPE_BUGS))
def test_qwen3_embeddings_see_rope_bugs(qwen3_embedder, bug, monkeypatch):
    model, inputs, ref, ours = qwen3_embedder
    np.testing.assert_allclose(ours, ref, atol=DECODER_ATOL, rtol=0)
    broken = _outputs(model, inputs, ROPE_BUGS[bug], monkeypatch)[:, 0]
    _check(broken, ours, ref, DECODER_ATOL)


# ----- Qwen3-MoE cross-encoder (test_moe.test_hf_parity_routing_and_round_trip) -------------------

# max |broken - ours| (scores spread 1.35): no_rope 1.06, interleaved 1.26, inverted 1.35,
# theta_x100 1.04, rms_norm_eps 1e-5 (for 1e-6) 1.4e-2, the top-k routing weights renormalised
# (norm_topk_prob=True on a checkpoint without it) 0.40.
MOE_BUGS = [*QWEN3_BUGS, "norm_topk_prob"]


@pytest.fixture(scope="module")
def qwen3_moe(tmp_path_factory):
    hf_dir = make_hf_qwen3_moe(str(tmp_path_factory.mktemp("sens") / "moe"), "seq_cls")
    model = load_model(hf_dir)
    seqs = PairEncoder(model.tokenizer, model.spec.template, 96)(QUERIES, DOCS)
    ids, seg, _ = pad_batch(seqs, 96, model.tokenizer.pad_token_id, left=True)
    ref_model = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(seg)).logits
    return model, (ids, seg), ref[:, 0].numpy(), _outputs(model, (ids, seg))[:, 0]


@pytest.mark.parametrize("bug", MOE_BUGS)
def test_qwen3_moe_scores_see_rope_norm_and_routing_bugs(qwen3_moe, bug, monkeypatch):
    model, inputs, ref, ours = qwen3_moe
    np.testing.assert_allclose(ours, ref, atol=DECODER_ATOL, rtol=0)
    if bug == "norm_topk_prob":
        assert not model.spec.backbone.norm_topk_prob
        broken = _outputs(model, inputs, norm_topk_prob=True)[:, 0]
    elif bug in ROPE_BUGS:
        broken = _outputs(model, inputs, ROPE_BUGS[bug], monkeypatch)[:, 0]
    else:
        assert model.spec.backbone.rms_norm_eps == 1e-6
        broken = _outputs(model, inputs, rms_norm_eps=1e-5)[:, 0]
    _check(broken, ours, ref, DECODER_ATOL)


# ----- BERT and XLM-R cross-encoders (test_encoders.test_encoder_cross_encoders_match_...)
# ----------

# max |broken - ours| on the 4 pairs' scores (64 tokens; ours vs transformers: 5.5e-6 and 2.9e-6).
# BERT (spread 3.3): tanh-GELU 3.2e-3, LayerNorm eps 1e-5 (for 1e-12) 5.5e-2, token types ignored
# 1.7. XLM-R (spread 2.6; its fixture is drawn so that GELU matters: tests/fixtures.py XLMR_INIT):
# the exact GELU for gelu_new 2.4e-3, eps 1e-5 7.3e-2, position offset 0 (BERT's) 1.9, offset 1
# (padding_idx without the + 1) 2.7. The last test checks the activations one by one as well.
ENCODER_BUGS = {
    "bert": {
        "tanh_gelu": dict(hidden_act="gelu_new"),
        "layer_norm_eps_1e-5": dict(layer_norm_eps=1e-5),
        "token_types_ignored": None,
    },
    "xlm_roberta": {
        "exact_gelu": dict(hidden_act="gelu"),
        "layer_norm_eps_1e-5": dict(layer_norm_eps=1e-5),
        "position_offset_0": dict(position_offset=0),
        "position_offset_1": dict(position_offset=1),
    },
}


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    out = {}
    for family in ENCODER_BUGS:
        hf_dir, ref_model, tok = make_hf_encoder(
            str(tmp_path_factory.mktemp("sens") / family), family
        )
        batch = tok(
            [p[0] for p in PAIRS],
            [p[1] for p in PAIRS],
            padding=True,
            truncation=True,
            max_length=64,
            return_tensors="np",
        )
        with torch.no_grad():
            ref = ref_model(**{k: torch.tensor(v) for k, v in batch.items()}).logits[:, 0].numpy()
        ids, seg = batch["input_ids"], batch["attention_mask"]
        types = batch.get("token_type_ids", np.zeros_like(ids))
        model = load_model(hf_dir)
        out[family] = (model, (ids, seg, types), ref, _outputs(model, (ids, seg, types))[:, 0])
    return out


@pytest.mark.parametrize(
    "family,bug",
    [
        pytest.param(f, b, marks=needs_minilm if f == "bert" else needs_xlmr_tok)
        for f, bugs in ENCODER_BUGS.items()
        for b in bugs
    ],
)
def test_encoder_scores_see_activation_norm_and_position_bugs(encoders, family, bug):
    model, inputs, ref, ours = encoders[family]
    np.testing.assert_allclose(ours, ref, atol=ENCODER_ATOL, rtol=0)
    assert np.ptp(ref) > 1.0
    fields = ENCODER_BUGS[family][bug]
    if fields is None:  # BERT pairs read with token type 0 everywhere
        assert inputs[2].any()
        broken = _outputs(model, (*inputs[:2], np.zeros_like(inputs[2])))
    else:
        assert all(getattr(model.spec.backbone, k) != v for k, v in fields.items())
        broken = _outputs(model, inputs, **fields)
    broken = broken[:, 0]
    _check(broken, ours, ref, ENCODER_ATOL)


def test_encoder_activations_equal_transformers_and_tell_the_gelus_apart():
    """Every hidden_act an encoder checkpoint may name runs transformers' function (within 1e-6 on
    [-8, 8]; measured 2.4e-7); exact and tanh GELU differ by 4.7e-4, 470x that."""
    from transformers.activations import ACT2FN

    from querit_jax.models.encoder import _ACT
    from querit_jax.models.encoder_config import ACTIVATIONS

    x = np.linspace(-8, 8, 4001, dtype=np.float32)
    for name in ACTIVATIONS:
        want = ACT2FN[name](torch.tensor(x)).numpy()
        np.testing.assert_allclose(
            np.asarray(_ACT[name](jnp.asarray(x))), want, atol=1e-6, err_msg=name
        )
    exact, tanh = (np.asarray(_ACT[n](jnp.asarray(x))) for n in ("gelu", "gelu_new"))
    assert np.abs(exact - tanh).max() >= FACTOR * 1e-6

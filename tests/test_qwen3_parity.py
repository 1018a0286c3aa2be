"""Hugging Face parity of the dense Qwen3 cross-encoder: import, forward, export, reload.

Reference: transformers' Qwen3 (fp32) on the same weights. Scores must agree within 1e-4 on batches
of unequal lengths with left and right padding, including the Qwen3-Embedding case where the pad id
equals the end token the template appends (HF's own seq-cls pooling is wrong there, so the reference
is the last real token of Qwen3Model's hidden states, as Qwen3-Embedding's `last_token_pool`).
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Qwen3Model

from querit_jax.convert import hf_import
from querit_jax.convert.safetensors_io import read_file
from querit_jax.data.tokenize import PairEncoder, pad_batch
from querit_jax.errors import CheckpointError
from querit_jax.loading import load_model
from querit_jax.models.spec import ModelSpec, flatten
from querit_jax.models.templates import qwen3_pair, qwen3_reranker
from querit_jax.release.export import export_hf
from tests.fixtures import DOCS, QUERIES, make_hf_qwen3

# Scores and hidden states agree with transformers within this in float32 (observed: ~4e-6 on the
# tiny fixtures, whose scores spread over ~2; tests/test_sensitivity.py checks that RoPE, theta and
# epsilon bugs move them by more than 100x this).
ATOL = 1e-4


def _batch(model, max_length, left):
    seqs = PairEncoder(model.tokenizer, model.spec.template, max_length)(QUERIES, DOCS)
    assert len({len(s) for s in seqs}) > 1, "the batch must have unequal lengths"
    ids, seg, _ = pad_batch(seqs, max_length, model.tokenizer.pad_token_id, left=left)
    return seqs, ids, seg


def _jax_scores(model, ids, seg):
    return np.asarray(model.module()(jnp.asarray(ids), jnp.asarray(seg)))[:, 0]


@pytest.mark.parametrize("left", [False, True])
def test_seq_cls_scores_match_transformers(tmp_path, left):
    hf_dir = make_hf_qwen3(str(tmp_path / "hf"), "seq_cls", pad_token="<|fim_pad|>")
    model = load_model(hf_import.import_hf(hf_dir, str(tmp_path / "ckpt")))
    _, ids, seg = _batch(model, 96, left)
    ref_model = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        ref = ref_model(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(seg)
        ).logits[:, 0]
    np.testing.assert_allclose(_jax_scores(model, ids, seg), ref.numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("left", [False, True])
def test_hidden_states_match_transformers_with_pad_equal_to_appended_eos(tmp_path, left):
    """Qwen3-Embedding case: pad id == the <|endoftext|> the template appends; every real token
    matches."""
    hf_dir = make_hf_qwen3(str(tmp_path / "hf"), "seq_cls")  # demo tokenizer: pad = <|endoftext|>
    model = load_model(hf_dir)
    assert model.spec.template.suffix == "<|endoftext|>" == model.tokenizer.pad_token
    seqs, ids, seg = _batch(model, 96, left)
    assert all(s[-1] == model.tokenizer.pad_token_id for s in seqs)
    base = Qwen3Model.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        hidden = base(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(seg)
        ).last_hidden_state
    ours = np.asarray(model.module().model(jnp.asarray(ids), jnp.asarray(seg)))
    real = seg.astype(bool)
    np.testing.assert_allclose(ours[real], hidden.numpy()[real], atol=ATOL, rtol=0)
    last = np.array([np.flatnonzero(r).max() for r in real])
    score_w = read_file(os.path.join(hf_dir, "model.safetensors"))["score.weight"][0]
    ref = hidden.numpy()[np.arange(len(last)), last] @ score_w
    np.testing.assert_allclose(_jax_scores(model, ids, seg), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("left", [False, True])
def test_causal_lm_yes_no_scores_match_transformers(tmp_path, left):
    hf_dir = make_hf_qwen3(str(tmp_path / "hf"), "causal_lm", tie=False)
    model = load_model(hf_dir)
    assert model.spec.head.kind == "yes_no" and model.spec.template.name == "qwen3_reranker"
    from transformers import Qwen3ForCausalLM

    _, ids, seg = _batch(model, 200, left)
    lm = Qwen3ForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        logits = lm(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(seg)
        ).logits.numpy()
    last = np.array([np.flatnonzero(r).max() for r in seg])
    rows = logits[np.arange(len(last)), last]
    ref = rows[:, model.spec.head.yes_token_id] - rows[:, model.spec.head.no_token_id]
    np.testing.assert_allclose(_jax_scores(model, ids, seg), ref, atol=ATOL, rtol=0)


def _cross_encoder_scores(path):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(path).predict(list(zip(QUERIES, DOCS)), batch_size=4)


@pytest.mark.parametrize("arch", ["seq_cls", "causal_lm"])
def test_export_round_trip_loads_in_transformers_and_sentence_transformers(tmp_path, arch):
    hf_dir = make_hf_qwen3(str(tmp_path / "hf"), arch, tie=False)
    model = load_model(hf_import.import_hf(hf_dir, str(tmp_path / "ckpt")))
    max_length = 200
    seqs, ids, seg = _batch(model, max_length, left=False)
    ours = _jax_scores(model, ids, seg)

    out = export_hf(model, str(tmp_path / "export"), max_length=max_length)
    exported = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.pad_token_id == exported.config.pad_token_id
    assert tok.pad_token_id not in {t for s in seqs for t in s}, (
        "export pad token must never occur in inputs"
    )
    batch = tok.pad([{"input_ids": s} for s in seqs], return_tensors="pt")
    with torch.no_grad():
        hf_scores = exported(**batch).logits[:, 0].numpy()
    np.testing.assert_allclose(hf_scores, ours, atol=ATOL, rtol=0)
    np.testing.assert_allclose(_cross_encoder_scores(out), ours, atol=ATOL, rtol=0)

    # The round trip of the original format is bit-identical.
    original = read_file(os.path.join(hf_dir, "model.safetensors"))
    again = export_hf(
        model,
        str(tmp_path / "again"),
        head_format="causal_lm" if arch == "causal_lm" else "seq_cls",
        max_length=max_length,
    )
    back = read_file(os.path.join(again, "model.safetensors"))
    assert set(back) == set(original)
    for name, tensor in original.items():
        np.testing.assert_array_equal(back[name], tensor, err_msg=name)
    if arch == "causal_lm":
        np.testing.assert_allclose(_cross_encoder_scores(again), ours, atol=ATOL, rtol=0)


def test_bare_qwen3_model_without_prefix_imports(tmp_path):
    """Qwen3Model checkpoints (Qwen3-Embedding) store keys with or without the `model.` prefix."""
    hf_dir = make_hf_qwen3(str(tmp_path / "hf"), "base")
    from safetensors.numpy import load_file

    keys = list(load_file(os.path.join(hf_dir, "model.safetensors")))
    assert not any(k.startswith("model.") for k in keys)
    model = load_model(hf_dir)
    assert model.spec.head.kind == "score"
    base = Qwen3Model.from_pretrained(hf_dir).eval()
    _, ids, seg = _batch(model, 96, left=True)
    with torch.no_grad():
        hidden = base(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(seg)
        ).last_hidden_state
    ours = np.asarray(model.module().model(jnp.asarray(ids), jnp.asarray(seg)))
    np.testing.assert_allclose(
        ours[seg.astype(bool)], hidden.numpy()[seg.astype(bool)], atol=ATOL, rtol=0
    )


def test_templates_render_like_the_exported_chat_template(tmp_path):
    """Our tokenisation of a pair equals the tokenizer applying the exported chat template."""
    hf_dir = make_hf_qwen3(str(tmp_path / "hf"), "seq_cls")
    model = load_model(hf_dir)
    for template in (qwen3_pair(), qwen3_reranker()):
        model.spec = ModelSpec("qwen3", model.spec.backbone, model.spec.head, template, 512)
        out = export_hf(model, str(tmp_path / template.name))
        tok = AutoTokenizer.from_pretrained(out)
        ours = PairEncoder(model.tokenizer, template, 512)(QUERIES, DOCS)
        for q, d, ids in zip(QUERIES, DOCS, ours):
            msgs = [{"role": "query", "content": q}, {"role": "document", "content": d}]
            assert (
                tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"] == ids
            )


def test_listwise_loss_gradients_match_torch(tmp_path):
    """Backward parity: the listwise loss and every parameter gradient equal torch autograd's,
    computed in float64 (the exact reference: two float32 implementations differ from it, and so
    from each other, by their own rounding, which depends on the CPU's vector units; on this
    fixture torch's float32 gradients are within 6.7e-6 of its float64 ones, ours within 9.0e-6,
    relative to each tensor's largest gradient; the bound, 3e-5, leaves other CPUs' rounding room
    and is still far below any backward bug's error)."""
    import jax

    from querit_jax.convert import qwen3 as table
    from querit_jax.training import losses, steps

    hf_dir = make_hf_qwen3(str(tmp_path / "hf"), "seq_cls", pad_token="<|fim_pad|>")
    model = load_model(hf_dir)
    seqs = PairEncoder(model.tokenizer, model.spec.template, 64, 24)(QUERIES, DOCS)
    ids, seg, _ = pad_batch(seqs, 64, model.tokenizer.pad_token_id)
    batch = {"input_ids": ids.reshape(2, 2, 64), "segment_ids": seg.reshape(2, 2, 64)}

    def loss_fn(params):
        return losses.listwise_ce(
            steps.group_scores(model.graphdef, params, batch), temperature=0.5
        )

    loss, grads = jax.value_and_grad(loss_fn)(model.params)
    ref = AutoModelForSequenceClassification.from_pretrained(hf_dir).eval().double()
    logits = ref(
        input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(seg)
    ).logits[:, 0]
    ref_loss = -torch.log_softmax(logits.reshape(2, 2) / 0.5, dim=-1)[:, 0].mean()
    ref_loss.backward()
    np.testing.assert_allclose(float(loss), float(ref_loss), atol=1e-5)
    named = dict(ref.named_parameters())
    flat = flatten(grads)
    for e in table.backbone_entries(model.spec.backbone) + table.head_entries(
        model.spec.backbone, model.spec.head
    ):
        ours = e.to_hf(np.asarray(flat[".".join(map(str, e.path))]))
        want = named[e.hf_name].grad.numpy()
        np.testing.assert_allclose(
            ours, want, atol=3e-5 * max(1.0, np.abs(want).max()), rtol=0, err_msg=e.hf_name
        )


def test_yes_no_head_converts_exactly_to_a_score_head(tmp_path):
    """`head="score"` on a Qwen3ForCausalLM (e.g. Qwen3-Reranker) gives the same scores,
    linearly."""
    hf_dir = make_hf_qwen3(str(tmp_path / "hf"), "causal_lm", tie=True)
    yes_no = load_model(hf_dir)
    score = load_model(hf_dir, head="score")
    assert yes_no.spec.head.kind == "yes_no" and score.spec.head.kind == "score"
    _, ids, seg = _batch(yes_no, 200, left=False)
    np.testing.assert_allclose(
        _jax_scores(score, ids, seg), _jax_scores(yes_no, ids, seg), atol=1e-5
    )
    ckpt = hf_import.import_hf(hf_dir, str(tmp_path / "ckpt"))  # stored as yes/no
    again = load_model(ckpt, head="score")
    np.testing.assert_allclose(
        _jax_scores(again, ids, seg), _jax_scores(yes_no, ids, seg), atol=1e-5
    )
    with pytest.raises(CheckpointError, match="cannot be turned into a yes_no head"):
        load_model(_seq_cls_ckpt(tmp_path), head="yes_no")


def _seq_cls_ckpt(tmp_path):
    return hf_import.import_hf(
        make_hf_qwen3(str(tmp_path / "seq"), "seq_cls"), str(tmp_path / "seq_ckpt")
    )


def test_bf16_compute_stays_close_to_float32(tmp_path):
    """bf16 activations with fp32 master weights: within 4% of the fp32 scores' spread (a bound
    relative to |score| passes anything on scores near 0), and bf16 really runs. Measured: 2.0%
    here; transformers' own bf16 model is off by 1.1% of the spread on the same weights and
    inputs."""
    import jax
    from flax import nnx

    hf_dir = make_hf_qwen3(str(tmp_path / "hf"), "seq_cls")
    fp32 = load_model(hf_dir)
    bf16 = load_model(hf_dir, dtype="bfloat16")
    assert (
        bf16.params["model"]["embed_tokens"]["embedding"].dtype == np.float32
    )  # master weights stay fp32
    _, ids, seg = _batch(fp32, 96, left=False)
    a, b = _jax_scores(fp32, ids, seg), _jax_scores(bf16, ids, seg)
    spread = a.max() - a.min()
    assert spread > 0.5, spread  # the pairs score differently, so the bound below means something
    assert np.abs(a - b).max() <= 4e-2 * spread, (np.abs(a - b).max(), spread)
    assert not np.array_equal(a, b)
    forward = jax.jit(lambda p, i, s: nnx.merge(bf16.graphdef, p)(i, s))
    hlo = forward.lower(bf16.params, jnp.asarray(ids), jnp.asarray(seg)).as_text()
    dots = [line for line in hlo.splitlines() if "dot_general" in line]
    assert dots and all("bf16" in line for line in dots), "matmuls must take bf16 operands"


def test_verify_tool_checks_causal_lm_exports(tmp_path):
    from querit_jax.release.verify import verify

    hf_dir = make_hf_qwen3(str(tmp_path / "hf"), "causal_lm", tie=False)
    model = load_model(hf_dir, dtype="bfloat16")  # verify must compare in float32 regardless
    out = export_hf(model, str(tmp_path / "export"), head_format="causal_lm")
    report = verify(model, out)
    assert report["max_abs_diff_transformers"] < 1e-4
    assert report["max_abs_diff_sentence_transformers"] < 1e-4


def test_token_ids_outside_the_embedding_are_a_clear_error(tokenizer):
    encoder = PairEncoder(tokenizer, qwen3_pair(), 64, 16, vocab_size=1000)
    with pytest.raises(ValueError, match="outside the model's 1000-row embedding"):
        encoder(["Сколько очков пропустила защита?"], ["Защита пропустила 308 очков."])
    with pytest.raises(ValueError, match="leaves no room for the document"):
        PairEncoder(tokenizer, qwen3_reranker(), 128, 16)

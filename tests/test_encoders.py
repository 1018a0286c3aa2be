"""BERT / XLM-RoBERTa encoders and embedders: parity with transformers and sentence-transformers."""

import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from querit_jax.convert import hf_import
from querit_jax.convert.safetensors_io import read_file
from querit_jax.data.tokenize import pad_batch
from querit_jax.errors import CheckpointError, DataFormatError
from querit_jax.inference.runners import embedder_for, scorer_for
from querit_jax.loading import embedding_function, load_model
from querit_jax.release.export import export_hf
from querit_jax.retrieval.dense import DenseRetriever
from tests.fixtures import MINILM, PAIRS, TEXTS, XLMR_TOKENIZER, make_hf_encoder, make_hf_qwen3

needs_minilm = pytest.mark.skipif(not os.path.isdir(MINILM), reason=f"{MINILM} is absent")
needs_xlmr_tok = pytest.mark.skipif(
    not os.path.isdir(XLMR_TOKENIZER), reason=f"{XLMR_TOKENIZER} is absent"
)

# Tiny-encoder scores agree with transformers within this in float32 (observed: 5.5e-6 for BERT,
# 2e-6 for XLM-R, on scores that spread over ~3). Tighter than the decoders' 1e-4 on purpose:
# tanh-GELU differs from the exact GELU by ~2e-4 of an activation, which moves BERT's scores by
# 3.2e-3 and XLM-R's by 2.6e-4 (tests/test_sensitivity.py).
ATOL = 2e-5


@needs_minilm
def test_real_minilm_embeddings_match_transformers_mean_pooling():
    model = load_model(MINILM)
    assert model.spec.family == "bert" and model.spec.head.pooling == "mean"
    assert model.spec.head.normalize
    ours = embedder_for(model, batch_size=4).embed(model.params, TEXTS, "document")
    tok = transformers.AutoTokenizer.from_pretrained(MINILM)
    ref_model = transformers.BertModel.from_pretrained(MINILM).eval()
    batch = tok(
        TEXTS, padding=True, truncation=True, max_length=model.spec.max_length, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = ref_model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    mean = (hidden * mask).sum(1) / mask.sum(1)
    ref = torch.nn.functional.normalize(mean, dim=-1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    # the long input was truncated
    assert batch["input_ids"].shape[1] == model.spec.max_length == 256


def _tiny_encoder_dir(tmp_path, family, arch="seq_cls"):
    """(HF directory, transformers model, tokenizer) of a tiny random BERT or XLM-R."""
    return make_hf_encoder(str(tmp_path / family), family, arch)


@pytest.mark.parametrize("family", ["bert", pytest.param("xlm_roberta", marks=needs_xlmr_tok)])
def test_encoder_cross_encoders_match_transformers_and_round_trip(tmp_path, family):
    if family == "bert" and not os.path.isdir(MINILM):
        pytest.skip("needs the MiniLM tokenizer")
    hf_dir, ref, tok = _tiny_encoder_dir(tmp_path, family)
    model = load_model(hf_dir)
    assert model.spec.family == family and model.spec.head.kind == "score"
    ours = scorer_for(model, batch_size=4).score(
        model.params, [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    )
    batch = tok(
        [p[0] for p in PAIRS],
        [p[1] for p in PAIRS],
        padding=True,
        truncation=True,
        max_length=model.spec.max_length,
        return_tensors="pt",
    )
    with torch.no_grad():
        want = ref(**batch).logits[:, 0].numpy()
    np.testing.assert_allclose(ours, want, atol=ATOL, rtol=0)
    assert np.ptp(want) > 1.0  # the pairs score differently (a constant score would match anything)

    # Left padding gives the same scores (positions restart at each sequence's first real token).
    seqs, types = model_encoder(model)
    ids, seg, tt = pad_batch(seqs, max(map(len, seqs)), tok.pad_token_id, left=True, types=types)
    left = np.asarray(
        model.module()(jnp.asarray(ids), jnp.asarray(seg), token_type_ids=jnp.asarray(tt))
    )[:, 0]
    np.testing.assert_allclose(left, ours, atol=1e-5, rtol=0)

    out = export_hf(model, str(tmp_path / "export"))
    original, back = (
        read_file(os.path.join(hf_dir, "model.safetensors")),
        read_file(os.path.join(out, "model.safetensors")),
    )
    assert set(back) == set(original) - {k for k in original if k.endswith("position_ids")}
    for name, tensor in back.items():
        np.testing.assert_array_equal(tensor, original[name], err_msg=name)
    from sentence_transformers import CrossEncoder

    st = CrossEncoder(out).predict(PAIRS, batch_size=4)
    np.testing.assert_allclose(st, ours, atol=ATOL, rtol=0)


def model_encoder(model):
    from querit_jax.data.tokenize import PairEncoder

    encoder = PairEncoder(model.tokenizer, model.spec.template, model.spec.max_length)
    return encoder.encode([p[0] for p in PAIRS], [p[1] for p in PAIRS])


@needs_minilm
def test_embedder_export_loads_in_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    model = load_model(MINILM)
    ckpt = hf_import.import_hf(MINILM, str(tmp_path / "ckpt"))
    again = load_model(ckpt)
    out = export_hf(again, str(tmp_path / "export"))
    ours = embedder_for(model).embed(model.params, TEXTS, "query")
    st = SentenceTransformer(out).encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(st, ours, atol=1e-5, rtol=0)


def test_qwen3_embedder_reads_the_last_real_token(tmp_path):
    hf_dir = make_hf_qwen3(str(tmp_path / "hf"), "base")
    model = load_model(hf_dir, head="embed")
    assert model.spec.head.pooling == "last" and model.spec.template.name == "qwen3_embedding"
    emb = embedder_for(model, batch_size=4)
    ours = emb.embed(model.params, TEXTS[:3], "query")
    seqs = emb.encoder(TEXTS[:3], "query")
    # <|endoftext|> (the pad token) closes every text
    assert all(s[-1] == model.tokenizer.pad_token_id for s in seqs)
    ids, seg, _ = pad_batch(seqs, max(map(len, seqs)), model.tokenizer.pad_token_id, left=True)
    base = transformers.Qwen3Model.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        hidden = base(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(seg)
        ).last_hidden_state
    # left padding: every text ends at the last position
    ref = torch.nn.functional.normalize(hidden[:, -1], dim=-1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@needs_xlmr_tok
def test_xlm_roberta_embedder_matches_sentence_transformers(tmp_path):
    """A sentence-transformers folder (XLMRobertaModel + mean pooling + Normalize, the
    multilingual-e5 layout): our embedder reads its pooling and equals
    SentenceTransformer.encode."""
    from sentence_transformers import SentenceTransformer, models

    hf_dir, _, _ = _tiny_encoder_dir(tmp_path, "xlm_roberta", arch="base")
    word = models.Transformer(hf_dir, max_seq_length=64)
    pooling = models.Pooling(word.get_word_embedding_dimension(), "mean")
    st_dir = str(tmp_path / "st")
    SentenceTransformer(modules=[word, pooling, models.Normalize()], device="cpu").save(st_dir)
    model = load_model(st_dir)
    assert model.spec.family == "xlm_roberta" and model.spec.max_length == 64
    assert model.spec.head.pooling == "mean" and model.spec.head.normalize
    ours = embedder_for(model, batch_size=4).embed(model.params, TEXTS, "document")
    ref = SentenceTransformer(st_dir, device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(ours, ref, atol=ATOL, rtol=0)
    cosines = ref @ ref.T
    assert cosines[np.triu_indices(len(TEXTS), 1)].max() < 0.99  # the texts embed differently


@needs_minilm
def test_bad_input_for_embedders_and_architectures(tmp_path):
    retriever = DenseRetriever(embedding_function(MINILM), progress=False)
    with pytest.raises(DataFormatError, match="The corpus is empty"):
        retriever.index([], [])
    bad = tmp_path / "gpt2"
    shutil.copytree(MINILM, bad)
    (bad / "config.json").write_text('{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(CheckpointError, match="model_type 'gpt2'.*not supported"):
        load_model(str(bad))
    from querit_jax.errors import ConfigError

    model = load_model(MINILM)  # 512 learned positions: a longer input would read NaN rows
    with pytest.raises(ConfigError, match="max_length=1024 is longer than .* 512 positions"):
        embedder_for(model, max_length=1024)


@needs_minilm
@pytest.mark.parametrize("kind", ["reranker", "embedder"])
def test_verify_tool_covers_encoders(tmp_path, kind):
    from querit_jax.release.verify import verify

    if kind == "reranker":
        hf_dir, _, _ = _tiny_encoder_dir(tmp_path, "bert")
        model = load_model(hf_dir)
    else:
        model = load_model(MINILM)
    report = verify(model, export_hf(model, str(tmp_path / "export")))
    assert max(v for k, v in report.items() if k.startswith("max_abs_diff")) < 1e-4


@needs_minilm
def test_new_bert_reranker_head_starts_from_the_pretrained_pooler():
    spec, params, _ = hf_import.read_hf_dir(MINILM, head="score")
    ref = transformers.BertForSequenceClassification.from_pretrained(MINILM, num_labels=1)
    pooler = ref.bert.pooler.dense
    np.testing.assert_array_equal(params["dense"]["kernel"], pooler.weight.detach().numpy().T)
    np.testing.assert_array_equal(params["dense"]["bias"], pooler.bias.detach().numpy())
    assert params["out_proj"]["kernel"].shape == (spec.backbone.hidden_size, 1)  # new classifier

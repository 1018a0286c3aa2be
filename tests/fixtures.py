"""Tiny Hugging Face models and the texts the parity tests and the benchmarks share.

A plain module, not conftest.py (which forces 8 fake CPU devices when imported): the tests import it
as `tests.fixtures`, and so do the benchmarks, run from the repository root as
`python -m benchmarks.<name>`.

The random weights look like a trained checkpoint wherever that decides what a parity test can see:
  * norm scales (RMSNorm, q/k-norm, LayerNorm) are 1 + small noise. Scales drawn around 0 (as a
    plain `normal_(0, std)` over every parameter gives) shrink every activation towards 0, so
    attention is uniform and positions barely matter: on such a fixture removing RoPE moved Qwen3
    scores by 2.5e-4 and a 100x wrong rope_theta by 1e-4, about the 1e-4 parity tolerance;
  * embeddings are small (transformers' initializer_range, 0.02), as in real checkpoints, so a wrong
    norm epsilon shows in the first layers' statistics;
  * attention is peaked: Qwen3 normalises q and k per head, so the q/k-norm scales (not the
    projections) set the logit scale; encoders have no q/k norm and get wider projections instead;
  * encoder classification heads are wide enough that scores spread over a few units, as a trained
    cross-encoder's logits do.
tests/test_sensitivity.py checks that deliberately broken variants of our models (no RoPE, the
interleaved or inverted rotation, a wrong theta or epsilon, tanh-GELU, a wrong XLM-R position
offset, wrong MoE routing weights) move the outputs of these fixtures by at least 100x the parity
tolerance. The one exception is the GELU variant on XLM-R (13x: the tanh approximation is within
~2e-4 of an activation, too close to float32 noise for any realistic fixture), where the activation
functions are compared with transformers' one by one instead.
"""

import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
DEMO_TOKENIZER = os.path.join(ROOT, "data", "tokenizers", "xquad_r_bpe")
XQUAD = os.path.join(ROOT, "data", "xquad_r")
MINILM = os.path.join(SHARED, "models", "all-MiniLM-L6-v2")
XLMR_TOKENIZER = os.path.join(SHARED, "models", "multilingual-e5-small-tokenizer")

# (query, document) pairs of unequal lengths in four scripts; the last document is longer than the
# parity tests' token budgets, so it is truncated.
QUERIES = [
    "How many points did the Panthers defense surrender?",
    "黑豹队的防守丢了多少分",
    "Сколько очков?",
    "a",
]
DOCS = [
    "The Panthers defense gave up just 308 points, ranking sixth in the league.",
    "黑豹队的防守只丢了 308分，在联赛中排名第六，同时也以 24 次拦截领先国家橄榄球联盟。",
    "Защита пропустила 308 очков.",
    "Ein sehr langes Dokument über nichts. " * 12,
]
# Texts for the encoders and embedders; the last is longer than any token budget.
TEXTS = [
    "How many points did the Panthers defense surrender?",
    "黑豹队的防守只丢了 308分，在联赛中排名第六。",
    "Защита «Пантер» пропустила всего 308 очков.",
    "Die Verteidigung der Panthers gab nur 308 Punkte ab. " * 40,
]
PAIRS = [(TEXTS[0], TEXTS[2]), (TEXTS[1], "短"), ("Wer?", TEXTS[3]), ("q", "d")]


def init_like_a_checkpoint_(
    model,
    std: float,
    *,
    embed_std: float = 0.02,
    norm_noise: float = 0.1,
    qk_gain: float = 1.0,
    head_std: float | None = None,
    bias_std: float = 0.02,
) -> None:
    """Draws every parameter of a transformers model in place (under torch's current seed).

    Args:
      std: standard deviation of the weight matrices.
      embed_std: of the token, position and token-type embeddings.
      norm_noise: norm scales are 1 + N(0, norm_noise) (times qk_gain for Qwen3's q_norm/k_norm).
      qk_gain: multiplies Qwen3's q/k-norm scales and the encoders' query/key projections, which set
        how peaked attention is.
      head_std: of the encoders' classification head (pooler, classifier); default `std`.
      bias_std: of the biases (encoders).
    """
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "LayerNorm.weight")):
                gain = qk_gain if name.endswith(("q_norm.weight", "k_norm.weight")) else 1.0
                p.copy_(gain * (1.0 + norm_noise * torch.randn_like(p)))
            elif name.endswith("bias"):
                p.normal_(0.0, bias_std)
            elif "embed" in name:  # embed_tokens, word/position/token_type_embeddings
                p.normal_(0.0, embed_std)
            elif name.startswith(("classifier", "pooler", "bert.pooler")):
                p.normal_(0.0, head_std or std)
            elif name.endswith(("attention.self.query.weight", "attention.self.key.weight")):
                p.normal_(0.0, std * qk_gain)
            else:
                p.normal_(0.0, std)


def _save(model, tok, out_dir: str) -> str:
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def demo_tokenizer(pad_token: str | None = None):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    if pad_token:
        tok.pad_token = pad_token
    return tok


# Qwen3 fixtures: q/k-norm scales ~2 give attention logits of standard deviation ~4 (peaked).
QWEN3_INIT = dict(std=0.1, qk_gain=2.0)


def build_hf_qwen3(arch: str = "seq_cls", tok=None, seed: int = 0, std: float = 0.1, **config):
    """(transformers Qwen3 model in eval mode, its tokenizer): a tiny random model by default.

    arch: seq_cls (Qwen3ForSequenceClassification), causal_lm (Qwen3ForCausalLM) or base
    (Qwen3Model). config: Qwen3Config fields overriding the tiny defaults (width 64, 2 layers, 4
    heads of 16).
    """
    import torch
    import transformers

    tok = tok or demo_tokenizer()
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        max_position_embeddings=512,
    )
    fields.update(config)
    cls = {
        "seq_cls": transformers.Qwen3ForSequenceClassification,
        "causal_lm": transformers.Qwen3ForCausalLM,
        "base": transformers.Qwen3Model,
    }[arch]
    model = cls(transformers.Qwen3Config(**fields)).eval()
    init_like_a_checkpoint_(model, std, qk_gain=QWEN3_INIT["qk_gain"])
    return model, tok


def make_hf_qwen3(
    out_dir: str,
    arch: str = "seq_cls",
    tie: bool = False,
    seed: int = 0,
    std: float = QWEN3_INIT["std"],
    pad_token: str | None = None,
    **config,
) -> str:
    """Saves a tiny random transformers Qwen3 model (+ the demo tokenizer) to out_dir; returns it.

    arch: seq_cls, causal_lm or base (see `build_hf_qwen3`). The demo tokenizer's pad token is
    <|endoftext|>, which the Qwen3-Embedding template appends; pass pad_token="<|fim_pad|>" for a
    pad id that never occurs in a pair (HF's seq-cls pooling reads the rightmost non-pad token).
    """
    config.setdefault("tie_word_embeddings", tie)
    model, tok = build_hf_qwen3(arch, demo_tokenizer(pad_token), seed, std, **config)
    return _save(model, tok, out_dir)


def make_hf_qwen3_moe(
    out_dir: str,
    arch: str = "seq_cls",
    norm_topk_prob: bool = False,
    mlp_only_layers=(),
    seed: int = 0,
    std: float = QWEN3_INIT["std"],
    **config,
) -> str:
    """Saves a tiny random transformers Qwen3-MoE (8 experts, top-2, 3 layers) with the demo
    tokenizer
    (pad token <|fim_pad|>); arch: seq_cls, causal_lm or base. Returns out_dir."""
    import torch
    import transformers

    tok = demo_tokenizer("<|fim_pad|>")
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        norm_topk_prob=norm_topk_prob,
        mlp_only_layers=list(mlp_only_layers),
        tie_word_embeddings=False,
    )
    fields.update(config)
    cls = {
        "seq_cls": transformers.Qwen3MoeForSequenceClassification,
        "causal_lm": transformers.Qwen3MoeForCausalLM,
        "base": transformers.Qwen3MoeModel,
    }[arch]
    model = cls(transformers.Qwen3MoeConfig(**fields)).eval()
    init_like_a_checkpoint_(model, std, qk_gain=QWEN3_INIT["qk_gain"])
    return _save(model, tok, out_dir)


# Encoder fixtures (hidden 32): projections of std 0.3 give attention logits of standard deviation
# ~3 and MLP pre-activations ~1.7 (where tanh-GELU differs most from the exact one); the 0.5 head
# spreads the scores over ~3 units.
ENCODER_INIT = dict(std=0.3, head_std=0.5)
# XLM-R's fixture draws its projections at 0.4 and its head at 0.6: on its pairs the MLP
# pre-activations then reach where the exact and tanh GELUs differ, so the wrong one moves the
# scores by 2.4e-3 (at 0.3 / 0.5: 2.6e-4), while float32 parity stays at ~3e-6.
XLMR_INIT = dict(std=0.4, head_std=0.6)


def make_hf_encoder(
    out_dir: str, family: str, arch: str = "seq_cls", seed: int = 0, init=None, **config
):
    """Saves a tiny random BERT (MiniLM tokenizer) or XLM-R (multilingual-e5 tokenizer) model.

    arch: seq_cls (one-label *ForSequenceClassification) or base (BertModel / XLMRobertaModel).
    init: `init_like_a_checkpoint_` arguments overriding ENCODER_INIT (XLM-R: XLMR_INIT); config:
    config fields.
    Returns (out_dir, the transformers model in eval mode, the tokenizer).
    """
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(MINILM if family == "bert" else XLMR_TOKENIZER)
    common = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_labels=1,
        vocab_size=len(tok),
    )
    common.update(config)
    if family == "bert":
        cfg = transformers.BertConfig(
            **{"max_position_embeddings": 512, "hidden_act": "gelu", **common}
        )
        cls = {
            "seq_cls": transformers.BertForSequenceClassification,
            "base": transformers.BertModel,
        }
    else:
        fields = dict(
            max_position_embeddings=514,
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            hidden_act="gelu_new",
        )
        cfg = transformers.XLMRobertaConfig(**{**fields, **common})
        cls = {
            "seq_cls": transformers.XLMRobertaForSequenceClassification,
            "base": transformers.XLMRobertaModel,
        }
    torch.manual_seed(seed)
    model = cls[arch](cfg).eval()
    family_init = XLMR_INIT if family == "xlm_roberta" else ENCODER_INIT
    init_like_a_checkpoint_(model, **{**family_init, **(init or {})})
    return _save(model, tok, out_dir), model, tok

"""Shared pieces of the reranker benchmarks (B1-B7): the tiny Qwen3 model in both frameworks, the
XQuAD-R pair mix, interleaved timing, per-framework matmul FLOP/s and FLOP formulas.

Protocol (notes/performance-and-reliability.md, section 2): one process, no fake-device XLA flag,
fp32, compile excluded, the compared variants run interleaved (A B A B ...) and each reported ratio
is the median over rounds of the per-round ratio; the machine is shared, so only ratios mean
anything.
"""

import glob
import json
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
DEMO_TOKENIZER = os.path.join(ROOT, "data", "tokenizers", "xquad_r_bpe")
XQUAD = os.path.join(ROOT, "data", "xquad_r")

# ~30M parameters (25M in the layers + 8.4M embedding) with the demo tokenizer's 16,384 tokens.
TINY_QWEN3 = dict(
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    rope_theta=10000.0,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)


def check_flags():
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        sys.exit("Unset XLA_FLAGS=--xla_force_host_platform_device_count: never time fake devices.")


def make_models(out_dir: str, seed: int = 0):
    """(HF Qwen3ForSequenceClassification in eval mode, our LoadedModel) with the same weights.

    The HF model is saved with the demo tokenizer (pad token `<|fim_pad|>`, never inside a pair, so
    HF's "rightmost non-pad token" pooling reads the same token as our segment pooling) and loaded
    by `querit_jax.models.api.load_model` through the HF importer.
    """
    import torch
    import transformers

    from querit_jax.loading import load_model

    tok = transformers.AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    tok.pad_token = "<|fim_pad|>"
    torch.manual_seed(seed)
    cfg = transformers.Qwen3Config(
        vocab_size=len(tok), num_labels=1, pad_token_id=tok.pad_token_id, **TINY_QWEN3
    )
    hf = transformers.Qwen3ForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.02)
    hf.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return hf, load_model(out_dir, max_length=512)


def count_params(hf) -> tuple[int, int]:
    """(all parameters, non-embedding parameters) of the HF model."""
    total = sum(p.numel() for p in hf.parameters())
    return total, total - hf.model.embed_tokens.weight.numel()


def flops_per_token(
    n_non_embedding: int, layers: int, heads: int, head_dim: int, seq: float, train: bool
):
    """Model FLOPs per token (causal attention halved, MaxText's convention): 2N (+ attention) for a
    forward, 6N (+ 3x attention) for a train step; `seq` is the attended length (pair length)."""
    attention = 2 * layers * heads * head_dim * seq  # 4*S*n*d per layer forward, halved (causal)
    return (6 if train else 2) * n_non_embedding + (3 if train else 1) * attention


def xquad_pairs(n_pairs: int, group: int = 8, seed: int = 0):
    """(queries, documents): XQuAD-R questions of all 8 languages, each with its answer sentence and
    `group - 1` random sentences of the same language (a reranking candidate list)."""
    rng = random.Random(seed)
    queries, docs = [], []
    langs = sorted(os.listdir(XQUAD))
    langs = [x for x in langs if os.path.isdir(os.path.join(XQUAD, x))]
    per_lang = -(-n_pairs // (group * len(langs)))
    for lang in langs:
        d = os.path.join(XQUAD, lang, "train")
        corpus = {}
        with open(os.path.join(d, "corpus.jsonl"), encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                corpus[r["_id"]] = r["text"]
        with open(os.path.join(d, "queries.jsonl"), encoding="utf-8") as f:
            qs = {(r := json.loads(line))["_id"]: r["text"] for line in f}
        qrels = {}
        for path in glob.glob(os.path.join(d, "qrels", "*.tsv")):
            with open(path, encoding="utf-8") as f:
                for row in f.read().splitlines()[1:]:
                    qid, cid, _ = row.split("\t")
                    qrels.setdefault(qid, cid)
        ids = list(corpus)
        for qid in rng.sample(sorted(qrels), per_lang):
            for doc in [qrels[qid], *rng.sample(ids, group - 1)]:
                queries.append(qs[qid])
                docs.append(corpus[doc])
    return queries[:n_pairs], docs[:n_pairs]


def interleave(fns: dict, rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Runs each callable once per round in turn (A B A B ...); returns seconds per call per
    name."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for r in range(rounds):
        order = list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]
        for name, fn in order:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def median_ratio(slow: list[float], fast: list[float]) -> tuple[float, float, float]:
    """(median, lower quartile, upper quartile) of the per-round ratios slow/fast."""
    r = sorted(a / b for a, b in zip(slow, fast))
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return statistics.median(r), q[0], q[2]


def matmul_shapes(tokens: int, cfg=TINY_QWEN3) -> list[tuple[int, int, int]]:
    """(M, K, N) of the model's projection GEMMs for `tokens` rows."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    return [(tokens, h, q), (tokens, h, kv), (tokens, q, h), (tokens, h, i), (tokens, i, h)]


def jax_matmul_flops(shapes, repeats: int = 5) -> float:
    """XLA's best fp32 GEMM FLOP/s over the shapes (median of repeats each)."""
    import jax
    import jax.numpy as jnp

    best = 0.0
    for m, k, n in shapes:
        a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
        f = jax.jit(jnp.matmul)
        f(a, b).block_until_ready()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            f(a, b).block_until_ready()
            ts.append(time.perf_counter() - t)
        best = max(best, 2 * m * k * n / statistics.median(ts))
    return best


def torch_matmul_flops(shapes, repeats: int = 5) -> float:
    """PyTorch's best fp32 GEMM FLOP/s over the shapes (median of repeats each)."""
    import torch

    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.matmul(a, b)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            torch.matmul(a, b)
            ts.append(time.perf_counter() - t)
        best = max(best, 2 * m * k * n / statistics.median(ts))
    return best


def torch_compiled(model, warmup, **kwargs):
    """(`torch.compile(model, **kwargs)` (inductor), `warmup(compiled)`'s result, its seconds), or
    None with the reason printed when this machine cannot compile (no C++ compiler, an unsupported
    op): PyTorch at its best where it can be, eager numbers otherwise. torch.compile is lazy, so
    `warmup` (the first calls, which compile) is where a failure shows."""
    import torch

    try:
        compiled = torch.compile(model, **kwargs)
        start = time.perf_counter()
        out = warmup(compiled)
        return compiled, out, time.perf_counter() - start
    except Exception as e:  # report it and time eager PyTorch only
        print(f"torch.compile unavailable ({type(e).__name__}: {str(e)[:200]}); eager only")
        return None


def header(title: str) -> None:
    import jax
    import torch

    print(f"== {title}")
    print(
        f"cpus={os.cpu_count()} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"jax={jax.__version__} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} (shared machine: "
        "ratios only)"
    )

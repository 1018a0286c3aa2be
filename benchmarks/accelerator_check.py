"""The accelerator check: one run on a lent GPU (or TPU) chip, every figure into one JSON file.

Run through benchmarks/accelerator_check.sh (which installs missing pure-Python dependencies from
wheels; no network needed). Sections, each timed after compilation and recorded even if a later one
fails:

  attention   cuDNN (GPU) / splash (TPU) attention against the XLA path on packed bf16 rows: output
              and gradient differences, and which kernel `attention_impl="auto"` picks;
  train       a Qwen3-0.6B-shaped reranker (random weights, bf16 compute, fp32 params + AdamW,
              remat) on packed rows of 512 tokens of the XQuAD-R pair-length mix: real tokens/s and
              MFU = (6 N_non-embedding + 6 L n_q d_h S_eff) * tokens/s / peak, with S_eff = sum s^2
              / sum s over the packed pairs (causal attention within each pair), target >= 40% on
              H200;
  scoring     pairs/s of the same model scoring the length mix, JAX (packed rows, bf16) against
              transformers + torch (bf16, sdpa, length-sorted padded batches of 64) on the same
              chip, after a score-agreement check; target >= 1.5x;
  moe         an A0.4B-shaped MoE decoder (4 layers) train step, `grouped` against `dense` experts:
              tokens/s and active-parameter MFU;
  memory      peak device memory (the allocator's peak over the run).

  python benchmarks/accelerator_check.py --out_dir=DIR [--dry_run]

`--dry_run` runs every section at tiny shapes in float32 on CPU (the suite runs it).
"""

import json
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from querit_jax import sharding  # noqa: E402
from querit_jax.config_lib import OptimConfig  # noqa: E402
from querit_jax.data.packing import (  # noqa: E402
    PackGroups,
    StepShapes,
    pack_sequences,
    rows_needed,
)
from querit_jax.models.attention import resolve_impl, segment_attention  # noqa: E402
from querit_jax.models.decoder_config import DecoderConfig  # noqa: E402
from querit_jax.models.heads import HeadConfig  # noqa: E402
from querit_jax.models.spec import LoadedModel, ModelSpec, abstract_params, init_params  # noqa: E402
from querit_jax.models.templates import qwen3_pair  # noqa: E402
from querit_jax.training import optim, steps  # noqa: E402
from querit_jax.training.state import init_state, state_shardings  # noqa: E402

_OUT = flags.DEFINE_string("out_dir", os.environ.get("OUT", "/tmp/accelerator_check"), "Output.")
_DRY = flags.DEFINE_bool("dry_run", False, "Tiny shapes, float32, on CPU: checks the script.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "bf16 dense peak of one chip (0: from its name).")

PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L4": 121.0, "v5p": 459.0}
TOKENIZER = os.path.join(ROOT, "data", "tokenizers", "xquad_r_bpe")
LANGS = ("en", "de", "es", "ru", "zh", "ar", "tr", "vi")


def pair_lengths(max_length: int, limit: int) -> np.ndarray:
    """Token counts of XQuAD-R (question, sentence) pairs in the qwen3_pair template: each question
    with its relevant sentence and one random sentence (a reranking candidate mix)."""
    from transformers import AutoTokenizer

    from querit_jax.data.tokenize import PairEncoder

    query_budget = min(48, max_length // 4)
    encoder = PairEncoder(
        AutoTokenizer.from_pretrained(TOKENIZER), qwen3_pair(), max_length, query_budget
    )
    rng = np.random.default_rng(0)
    queries, docs = [], []
    for lang in LANGS:
        base = os.path.join(ROOT, "data", "xquad_r", lang, "test")
        with open(os.path.join(base, "queries.jsonl"), encoding="utf-8") as f:
            qs = [json.loads(line)["text"] for line in f][: limit // 16 + 1]
        with open(os.path.join(base, "corpus.jsonl"), encoding="utf-8") as f:
            ds = [json.loads(line)["text"] for line in f]
        for q in qs:
            queries += [q, q]
            docs += [ds[rng.integers(len(ds))], ds[rng.integers(len(ds))]]
    lengths = np.array([len(s) for s in encoder(queries, docs)])
    return rng.permutation(lengths)[:limit]


def sync(tree):
    return jax.block_until_ready(tree)


def timed(fn, *args, repeats: int):
    """(seconds per call after one warm-up call, last output)."""
    out = sync(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = sync(fn(*args))
    return (time.perf_counter() - start) / repeats, out


def peak_flops(dry: bool) -> float | None:
    if _PEAK.value:
        return _PEAK.value * 1e12
    kind = jax.devices()[0].device_kind
    found = [v for k, v in PEAK_TFLOPS.items() if k.lower() in kind.lower()]
    return None if dry or not found else found[0] * 1e12


def flops_per_token(spec: ModelSpec, s_eff: float) -> float:
    """Training FLOPs per token: 6 x (non-embedding, active) parameters + causal attention."""
    c = spec.backbone
    attn = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    if c.num_experts:
        mlp = c.hidden_size * c.num_experts + 3 * c.hidden_size * c.moe_intermediate_size * (
            c.num_experts_per_tok
        )
    else:
        mlp = 3 * c.hidden_size * c.intermediate_size
    n_active = c.num_layers * (attn + mlp)
    return 6 * n_active + 6 * c.num_layers * c.num_heads * c.head_dim * s_eff


def group_batch(lengths, q: int, g: int, row_length: int, vocab: int, max_pairs: int, seed=0):
    """A packed training batch (`PackGroups`) of q groups of g pairs with the given lengths."""
    rng = np.random.default_rng(seed)
    take = lengths[: q * g]
    seg = (np.arange(row_length)[None] < take[:, None]).astype(np.int32)
    ids = rng.integers(1, vocab, size=seg.shape).astype(np.int32) * seg
    padded = {
        "input_ids": ids.reshape(q, g, -1),
        "segment_ids": seg.reshape(q, g, -1),
        "token_type_ids": np.zeros_like(ids).reshape(q, g, -1),
        "teacher": rng.standard_normal((q, g)).astype(np.float32),
        "has_teacher": np.ones((q,), bool),
    }
    rows = rows_needed(take, row_length, max_pairs)
    return PackGroups(StepShapes(row_length, (rows,), rows), max_pairs, 0)(padded), take


def decoder_spec(dry: bool, moe: bool, **overrides) -> ModelSpec:
    if dry:
        tiny = DecoderConfig.tiny_moe if moe else DecoderConfig.tiny
        cfg = tiny(dtype="float32", num_layers=1, hidden_size=64, head_dim=16, **overrides)
    elif moe:
        cfg = DecoderConfig.qwen3_moe_a0p4b(num_layers=4, dtype="bfloat16", **overrides)
    else:
        cfg = DecoderConfig.qwen3_0p6b(dtype="bfloat16", remat=True, **overrides)
    return ModelSpec(cfg.family, cfg, HeadConfig(), qwen3_pair(), 512)


def train_throughput(spec: ModelSpec, batch: dict, lengths, repeats: int, dry: bool) -> dict:
    mesh = sharding.single_device_mesh()
    rules = sharding.rules.resolve_rules("fsdp")
    graphdef, params = init_params(spec, mesh, rules, seed=0)
    tx, schedule = optim.make_optimizer(OptimConfig(learning_rate=1e-5, warmup_steps=0), 100)
    state = init_state(params, tx, state_shardings(abstract_params(spec, mesh, rules)[1], tx, mesh))
    moe = spec.backbone if spec.family == "qwen3_moe" else None
    step = jax.jit(steps.make_train_step(graphdef, tx, schedule, 1.0, moe=moe), donate_argnums=0)
    device_batch = jax.device_put(batch)
    with sharding.use_rules(mesh, rules):
        state, _ = sync(step(state, device_batch))  # compile
        start = time.perf_counter()
        for _ in range(repeats):
            state, metrics = step(state, device_batch)
        sync(metrics)
    seconds = (time.perf_counter() - start) / repeats
    tokens = int(np.sum(lengths))
    s_eff = float(np.sum(lengths.astype(np.float64) ** 2) / tokens)
    flops = flops_per_token(spec, s_eff) * tokens / seconds
    peak = peak_flops(dry)
    return {
        "step_s": seconds,
        "real_tokens_per_step": tokens,
        "packed_rows": int(batch["input_ids"].shape[0]),
        "tokens_per_s": tokens / seconds,
        "s_eff": s_eff,
        "model_tflops_per_s": flops / 1e12,
        "mfu": None if peak is None else flops / peak,
        "loss": float(metrics["loss"]),
    }, (graphdef, state.params)


def jax_scores(spec, graphdef, params, seqs, row_length: int, max_pairs: int, rows_per_call: int):
    packed = pack_sequences(seqs, row_length, max_pairs, 0)
    n_rows = -(-packed.input_ids.shape[0] // rows_per_call) * rows_per_call
    ids = np.zeros((n_rows, row_length), np.int32)
    seg = np.zeros_like(ids)
    ids[: packed.input_ids.shape[0]], seg[: packed.input_ids.shape[0]] = (
        packed.input_ids,
        packed.segment_ids,
    )

    @jax.jit
    def score(p, i, s):
        return nnx.merge(graphdef, p)(i, s, num_segments=max_pairs)

    def run():
        outs = [score(params, ids[r : r + rows_per_call], seg[r : r + rows_per_call])
                for r in range(0, n_rows, rows_per_call)]  # fmt: skip
        return jnp.concatenate(outs)

    seconds, out = timed(run, repeats=2)
    place = packed.placement
    return seconds, np.asarray(out, np.float32)[place.row, place.slot]


def torch_model(spec, graphdef, params, dry: bool):
    import torch
    import transformers

    from querit_jax.convert import hf_export

    model = LoadedModel(spec, graphdef, params, None, "", {}, None, None)
    config = transformers.Qwen3Config(
        **{**hf_export.hf_config(spec.backbone), "num_labels": 1, "pad_token_id": 0}
    )
    device = "cpu" if dry else "cuda"
    dtype = torch.float32 if dry else torch.bfloat16
    hf = transformers.Qwen3ForSequenceClassification(config).to(dtype)
    state = {
        k: torch.from_numpy(np.asarray(v, np.float32))
        for k, v in hf_export.hf_tensors(model, "seq_cls").items()
    }
    hf.load_state_dict(state, strict=False)
    hf.config._attn_implementation = "sdpa"
    return hf.to(device).eval(), device


def torch_scores(hf, device, seqs, batch: int):
    import torch

    order = np.argsort([len(s) for s in seqs])
    out = np.zeros(len(seqs), np.float32)

    def run():
        with torch.no_grad():
            for b in range(0, len(order), batch):
                idx = order[b : b + batch]
                width = max(len(seqs[i]) for i in idx)
                ids = torch.zeros((len(idx), width), dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, i in enumerate(idx):
                    ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
                    mask[row, : len(seqs[i])] = 1
                logits = hf(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                out[idx] = logits[:, 0].float().cpu().numpy()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    seconds, scores = timed(run, repeats=2)
    return seconds, scores.copy()


def moe_layer(spec: ModelSpec, tokens: int, dry: bool) -> dict:
    """Forward + backward of one MoE layer on `tokens` tokens: grouped against dense experts."""
    from querit_jax.models import moe

    c = spec.backbone
    dtype = jnp.float32 if dry else jnp.bfloat16
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((tokens, c.hidden_size)), dtype)
    router = jnp.asarray(rng.standard_normal((c.hidden_size, c.num_experts)) * 0.02, dtype)
    h, i, e = c.hidden_size, c.moe_intermediate_size, c.num_experts
    ws = [
        jnp.asarray(rng.standard_normal(s) * 0.02, dtype) for s in ((e, h, i), (e, h, i), (e, i, h))
    ]
    out = {}
    for name, fn in (("grouped", moe.experts_grouped), ("dense", moe.experts_dense)):

        def loss(x, *ws, fn=fn):
            _, w, ex = moe.route(x, router, c.num_experts_per_tok, c.norm_topk_prob)
            return jnp.sum(fn(x, w, ex, *ws).astype(jnp.float32) ** 2)

        step = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
        seconds, _ = timed(step, x, *ws, repeats=1 if dry else 5)
        useful = 6 * tokens * c.num_experts_per_tok * 3 * h * i  # fwd + bwd of the chosen experts
        out[name] = {"fwd_bwd_ms": seconds * 1e3, "useful_tflops_per_s": useful / seconds / 1e12}
    out["grouped_over_dense"] = out["dense"]["fwd_bwd_ms"] / out["grouped"]["fwd_bwd_ms"]
    return out


def attention_check(dry: bool) -> dict:
    dtype = jnp.float32 if dry else jnp.bfloat16
    rng = np.random.default_rng(0)
    t = 128 if dry else 512
    b, n, k, d = (2, 4, 2, 16) if dry else (8, 16, 8, 128)
    q = jnp.asarray(rng.standard_normal((b, t, n, d)), dtype)
    kv = jnp.asarray(rng.standard_normal((b, t, k, d)), dtype)
    seg = np.repeat(np.arange(1, 5), t // 4)[None].repeat(b, 0)
    seg[:, -t // 8 :] = 0
    fused = resolve_impl("auto", dtype, t)

    def run(impl):
        def f(q, kv):
            return jnp.sum(
                segment_attention(q, kv, kv, seg, causal=True, scale=d**-0.5, impl=impl).astype(
                    jnp.float32
                )
                ** 2
            )

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(q, kv)

    out = {"auto_impl": fused, "backend": jax.default_backend()}
    ref = run("xla")
    if fused != "xla":
        got = run(fused)
        out["loss_rel_diff"] = float(abs(got[0] - ref[0]) / abs(ref[0]))
        out["grad_max_abs_diff"] = [
            float(jnp.max(jnp.abs(a.astype(jnp.float32) - r.astype(jnp.float32))))
            for a, r in zip(got[1], ref[1])
        ]
        for impl in (fused, "xla"):
            seconds, _ = timed(lambda i=impl: run(i), repeats=3)
            out[f"{impl}_fwd_bwd_ms"] = seconds * 1e3
    return out


def main(argv):
    del argv
    dry = _DRY.value
    os.makedirs(_OUT.value, exist_ok=True)
    path = os.path.join(_OUT.value, "accelerator_check.json")
    report = {
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "dry_run": dry,
    }

    def section(name, fn):
        start = time.time()
        try:
            report[name] = fn()
        except Exception as e:  # record and go on: one section must not lose the others
            report[name] = {
                "error": f"{type(e).__name__}: {e}",
                "trace": traceback.format_exc()[-2000:],
            }
        report[name]["seconds"] = round(time.time() - start, 1)
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
        print(f"[{name}] {json.dumps(report[name])[:400]}", flush=True)

    row, max_pairs = (64, 8) if dry else (512, 16)
    lengths = pair_lengths(row, 64 if dry else 4096)
    report["length_mix"] = {
        "pairs": len(lengths),
        "mean": float(lengths.mean()),
        "p95": float(np.percentile(lengths, 95)),
    }
    q, g = (4, 4) if dry else (32, 8)
    batch, used = group_batch(lengths, q, g, row, 16384 if not dry else 1024, max_pairs)
    trained = {}

    def train():
        result, trained["model"] = train_throughput(
            decoder_spec(dry, False), batch, used, 1 if dry else 10, dry
        )
        return result

    def scoring():
        spec = decoder_spec(dry, False, remat=False)
        graphdef, params = trained["model"]
        rng = np.random.default_rng(1)
        n = len(lengths)
        seqs = [list(rng.integers(1, 1024 if dry else 16384, size=int(s))) for s in lengths[:n]]
        jax_s, ours = jax_scores(spec, graphdef, params, seqs, row, max_pairs, 8 if dry else 64)
        hf, device = torch_model(spec, graphdef, params, dry)
        torch_s, theirs = torch_scores(hf, device, seqs, 64)
        return {
            "pairs": n,
            "jax_pairs_per_s": n / jax_s,
            "torch_pairs_per_s": n / torch_s,
            "speedup": torch_s / jax_s,
            "score_max_abs_diff": float(np.abs(ours - theirs).max()),
            "score_scale": float(np.abs(theirs).max()),
        }

    def moe():
        out = {"layer": moe_layer(decoder_spec(dry, True), int(np.sum(used)), dry)}
        if dry:  # the model-level code path is the train section's
            return out
        for impl in ("grouped", "dense"):
            spec = decoder_spec(dry, True, moe_impl=impl)
            result, _ = train_throughput(spec, batch, used, 5, dry)
            out[impl] = {k: result[k] for k in ("step_s", "tokens_per_s", "mfu", "loss")}
        out["grouped_over_dense"] = out["dense"]["step_s"] / out["grouped"]["step_s"]
        return out

    section("attention", lambda: attention_check(dry))
    section("train", train)
    section("scoring", scoring)
    section("moe", moe)

    def memory():
        stats = jax.devices()[0].memory_stats() or {}
        return {k: stats.get(k) for k in ("peak_bytes_in_use", "bytes_limit", "bytes_in_use")}

    section("memory", memory)
    print(f"Wrote {path}")


if __name__ == "__main__":
    app.run(main)

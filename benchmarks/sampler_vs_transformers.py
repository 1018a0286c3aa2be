"""Greedy generation tokens/s: querit_jax's JaxSampler against transformers' `generate`.

The same tiny random Qwen3 causal LM (bench_common.TINY_QWEN3, ~30M parameters, fp32) in both
frameworks, the same 32 prompts (XQuAD-R sentences of every language, 10-140 tokens), greedy, batch
32, `--max_new_tokens` new tokens per prompt (a random model rarely emits a stop token, so both
sides generate the full budget). The two run interleaved (A B A B ...) after one warm-up each
(compilation excluded); the ratio reported is the median over rounds of the per-round tokens/s
ratio. The tokens are compared too (greedy: they must be equal). Run without a fake-device XLA flag;
the machine is shared, so only the ratio means anything.

  python benchmarks/sampler_vs_transformers.py [--rounds=3] [--max_new_tokens=64]
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import DEMO_TOKENIZER, TINY_QWEN3, XQUAD, check_flags, median_ratio


def prompts(n: int = 32) -> list[str]:
    langs = sorted(os.listdir(XQUAD))
    out = []
    for i in range(n):
        lang = [x for x in langs if os.path.isdir(os.path.join(XQUAD, x))][i % 8]
        with open(os.path.join(XQUAD, lang, "test", "corpus.jsonl"), encoding="utf-8") as f:
            lines = f.readlines()
        out.append(json.loads(lines[(i * 37) % len(lines)])["text"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    check_flags()
    import torch
    import transformers

    from querit_jax.mining.generators import SamplingConfig
    from querit_jax.mining.jax_sampler import JaxSampler

    tok = transformers.AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TINY_QWEN3)
    hf = transformers.Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        tok.save_pretrained(d)
        sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0.0)
        ours = JaxSampler(d, sampling, batch_size=args.batch, use_chat_template=False)
    ids = [ours.encode_prompt(p) for p in prompts(args.batch)]
    tok.padding_side = "left"
    batch = tok.pad([{"input_ids": p} for p in ids], return_tensors="pt")
    stop = ours.stop_ids.tolist()

    def run_ours():
        out = ours.generate_ids(ids, list(range(len(ids))))
        return out, sum(len(x) for x in out)

    def run_hf():
        with torch.no_grad():
            ref = hf.generate(
                **batch,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                eos_token_id=stop,
                pad_token_id=tok.pad_token_id,
            )
        out = []
        for row in ref[:, batch["input_ids"].shape[1] :].tolist():
            end = next((i for i, t in enumerate(row) if t in stop), len(row))
            out.append(row[:end])
        return out, sum(len(x) for x in out)

    (a, _), (b, _) = run_ours(), run_hf()  # warm-up (compilation excluded)
    same = sum(x == y for x, y in zip(a, b))
    rates = {"ours": [], "hf": []}
    for _ in range(args.rounds):
        for name, fn in (("ours", run_ours), ("hf", run_hf)):
            start = time.perf_counter()
            _, tokens = fn()
            rates[name].append(tokens / (time.perf_counter() - start))
    ratio, lo, hi = median_ratio(rates["ours"], rates["hf"])
    print(
        json.dumps(
            {
                "batch": args.batch,
                "max_new_tokens": args.max_new_tokens,
                "prompt_tokens": [min(map(len, ids)), max(map(len, ids))],
                "ours_tokens_per_s": [round(r, 1) for r in rates["ours"]],
                "transformers_tokens_per_s": [round(r, 1) for r in rates["hf"]],
                "ratio_median": round(ratio, 2),
                "ratio_iqr": [round(lo, 2), round(hi, 2)],
                "greedy_rows_identical": f"{same}/{len(ids)}",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

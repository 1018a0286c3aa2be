"""Label-free adaptation to a MIRACL language: mine its corpus, distil the teacher, evaluate on
MIRACL dev.

  python -m querit_jax.train --config=configs/adapt_miracl.py[:VARIANT]

Variants:
  (none)  one MIRACL language in the MIRACL layout (ROOT/topics, ROOT/qrels, ROOT/corpus/*.jsonl.gz;
          set --config.mining.target=ROOT and eval.datasets=miracl:ROOT:LANG:dev), LLM queries from
          an OpenAI-compatible server, a cross-encoder teacher, a Qwen3-0.6B student.
  demo    CPU: MIRACL cannot be bundled, so the demo adapts to the bundled Chinese held-out XQuAD-R
          articles instead (data/xquad_r/zh/test), with adapt_beir's demo recipe.
"""

from querit_jax import config_lib

VARIANTS = (None, "demo")


def _load(name):
    return config_lib.load_sibling_config(__file__, name)


def get_config(arg=None):
    variant = arg or "default"
    if variant not in ("default", "demo"):
        raise ValueError(f"Unknown variant {variant!r}; use demo (or none).")
    c = _load("adapt_beir").get_config("demo" if variant == "demo" else None)
    c.name = f"adapt_miracl_{variant}"
    if variant == "demo":
        c.mining.target = "data/xquad_r/zh/test"
        c.mining.output = "workdirs/mined/xquad_r_zh_test_heuristic"
        c.eval.datasets = "data/xquad_r/zh/test"
    else:
        c.mining.target = "data/miracl/ja"
        c.mining.output = "workdirs/mined/miracl_ja"
        c.mining.prompt = "ja_msmarco"
        c.eval.datasets = "miracl:data/miracl/ja:ja:dev"
    return c

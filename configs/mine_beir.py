"""Mine label-free adaptation data from a BEIR corpus: synthetic queries, candidates, teacher
scores.

  python -m querit_jax.mine --config=configs/mine_beir.py[:VARIANT] [--config.mining.a=v ...]

Variants:
  (none)  a BEIR corpus with an LLM served by vLLM/TGI (OpenAI-compatible), a web-search prompt,
  BM25
          candidates and a cross-encoder teacher (set mining.target / endpoint / teacher).
  demo    CPU, a few minutes: the Spanish held-out XQuAD-R articles (data/xquad_r/es/test, corpus
  only),
          heuristic pseudo-queries, BM25 candidates, all-MiniLM-L6-v2 (../shared/models) as teacher.
"""

import ml_collections

VARIANTS = (None, "demo")


def mining_section(variant: str) -> ml_collections.ConfigDict:
    """The `mining` section (also used by configs/adapt_*.py)."""
    m = ml_collections.ConfigDict()
    # BEIR directory of the target corpus; only corpus.jsonl is read (never queries or qrels).
    m.target = "data/beir/scifact"
    # Where the soft-label shards and manifest.json go (an interrupted run resumes there).
    m.output = "workdirs/mined/scifact"
    # Query generator: heuristic (no LLM), jax (a Qwen3 causal LM checkpoint) or openai (HTTP
    # server).
    m.generator = "openai"
    # jax: the causal LM path; openai: the served model's name.
    m.generator_model = "Qwen/Qwen3-8B"
    # openai: base URL of the server, and the environment variable holding its API key.
    m.endpoint = "http://127.0.0.1:8000/v1"
    m.api_key_env = "OPENAI_API_KEY"
    # Prompt preset (web_search, fr_k12, ru_factoid, ja_msmarco) or a custom text with {content}.
    m.prompt = "web_search"
    m.prompt_text = ""
    # Queries asked for per document (0 = the preset's own); decoding settings of LLM generators.
    m.num_queries = 3
    m.max_new_tokens = 256
    m.temperature = 0.7
    m.top_p = 0.95
    # openai: requests in flight, per-request timeout (s), retries after the first attempt.
    m.concurrency = 8
    m.timeout_s = 60.0
    m.max_retries = 3
    # heuristic: pseudo-query length in words (characters for Chinese/Japanese/Thai).
    m.heuristic_min_len = 4
    m.heuristic_max_len = 10
    # Source documents (0 = all, else a seeded sample), characters kept per document, documents per
    # shard.
    m.max_docs = 0
    m.max_doc_chars = 4000
    m.shard_size = 64
    m.seed = 0
    # Filters: query length in characters, share of words copied from the document (1 = off),
    # dedupe.
    m.min_query_chars = 8
    m.max_query_chars = 300
    m.max_copy_overlap = 0.9
    m.dedupe = True
    # First stage over the target corpus (bm25 or an embedder path), its analyser, the candidate
    # depth, and the round-trip filter (the source must be in the top k; 0 = off).
    m.first_stage = "bm25"
    m.bm25_tokenizer = "unicode"
    # An embedder first stage: documents per saved embedding part, and where the index lives
    # (global: split over every process's devices, searched together; process: whole on each).
    m.dense_part_size = 65536
    m.dense_scope = "global"
    m.candidates = 30
    m.round_trip_k = 20
    # Teacher scoring every (query, candidate): a reranker or an embedder path.
    m.teacher = "checkpoints/bge-reranker-v2-m3"
    m.teacher_batch_size = 64
    m.teacher_max_length = 0
    # Negatives kept per group, and >1 to spread them over that many teacher-score bins.
    m.num_negatives = 15
    m.score_bins = 16
    # Share of source documents whose queries are held out as a synthetic dev set (<output>/dev),
    # for label-free selection (training length, fusion weight, merge t); 0 = none.
    m.dev_share = 0.0
    # Diagnostics (<output>/diagnostics.md): a sample of real queries to compare the synthetic ones
    # with (a BEIR dir or queries.jsonl, read for the report only), its size, and an embedder for
    # embedding similarity ("" = lexical statistics only).
    m.real_queries = ""
    m.diagnostics_sample = 200
    m.diagnostics_embedder = ""
    if variant == "demo":
        m.target = "data/xquad_r/es/test"
        m.output = "workdirs/mined/xquad_r_es_test_heuristic"
        m.generator = "heuristic"
        m.generator_model = ""
        m.num_queries = 3
        m.shard_size = 32
        m.min_query_chars = 8
        m.max_copy_overlap = 1.0  # heuristic queries are spans of their document by design
        m.candidates = 20
        m.round_trip_k = 20
        m.teacher = "../shared/models/all-MiniLM-L6-v2"
        m.num_negatives = 7
        m.score_bins = 0
    return m


def get_config(arg=None):
    variant = arg or "default"
    if variant not in ("default", "demo"):
        raise ValueError(f"Unknown variant {variant!r}; use demo (or none).")
    c = ml_collections.ConfigDict()
    c.mining = mining_section(variant)
    return c

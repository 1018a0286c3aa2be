"""The `mining` section: label-free training data from a target corpus (querit_jax.mining.miner)."""

import dataclasses

from querit_jax.config_lib.parse import require, split_list
from querit_jax.data.prompts import PRESETS
from querit_jax.errors import ConfigError
from querit_jax.inference.teacher import parse_mix


@dataclasses.dataclass(frozen=True)
class MiningConfig:
    """Label-free training data from a target corpus (querit_jax.mining.miner)."""

    target: str = ""  # BEIR dir: only its corpus is read (never its queries or qrels)
    output: str = ""  # directory of soft-label shards + manifest.json
    generator: str = "heuristic"  # heuristic | jax | openai
    generator_model: str = ""  # jax: Qwen3 causal LM (checkpoint or HF dir); openai: the model name
    # openai: base URLs, comma-separated (e.g. one server per host); process i uses endpoint
    # i % count. `endpoint` (one URL) is the older spelling of a single entry.
    endpoints: str = ""
    endpoint: str = ""
    api_key_env: str = "OPENAI_API_KEY"  # openai: environment variable holding the key
    enable_thinking: bool = False  # chat templates with a thinking switch (Qwen3) render it off
    prompt: str = "web_search"  # prompt preset (data/prompts.py)
    prompt_text: str = ""  # a custom prompt with {content} (overrides the preset)
    num_queries: int = 0  # queries asked for per document; 0 = the prompt preset's own count
    max_new_tokens: int = 256  # LLM generators: tokens generated per document at most
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.95  # nucleus sampling (1 = off)
    top_k: int = 0  # keep only the k most likely tokens before top_p (0 = off)
    generator_batch_size: int = 32  # jax: rows decoded together (finished rows are refilled)
    generator_check_every: int = 16  # jax: decode steps on device between host checks
    # jax: prompts are left-padded to lengths doubling from generator_prompt_min up to
    # generator_prompt_step, then to multiples of it (each length one prefill program)
    generator_prompt_min: int = 32
    generator_prompt_step: int = 256
    concurrency: int = 4  # openai: requests in flight
    timeout_s: float = 60.0  # openai: per request
    max_retries: int = 3  # openai: attempts after the first
    heuristic_min_len: int = 4  # heuristic: span length in words (characters for CJK)
    heuristic_max_len: int = 10  # heuristic: longest span
    max_docs: int = 0  # documents used as query sources (0 = all; a seeded sample otherwise)
    max_doc_chars: int = 4000  # longer documents are cut (counted) before generation
    shard_size: int = 64  # documents per output shard (the unit of work and of resumption)
    seed: int = 0  # source sample and generation seeds
    min_query_chars: int = 3  # filters: query length in characters
    max_query_chars: int = 300
    max_copy_overlap: float = 1.0  # drop queries copying more than this share of words (1 = off)
    dedupe: bool = True  # drop repeated queries (normalised), the first in shard order kept
    first_stage: str = "bm25"  # bm25 or an embedder path: candidates for each synthetic query
    bm25_tokenizer: str = "unicode"  # BM25 analyser: unicode or a tokenizer directory
    # Docstore and first-stage indexes of the target corpus, built once and shared by every
    # process and run over the same corpus ("" = <output>/index). Must be visible to every host.
    index_dir: str = ""
    dense_part_size: int = 65536  # embedder first stage: documents per saved embedding part
    # Embedder first stage: where its index lives. "global": split over every process's devices
    # (each host holds 1/P of it; processes mine their shards in rounds, searching together);
    # "process": the whole index on each process's devices (no rounds; P times the memory).
    dense_scope: str = "global"
    # How the generator, teacher and embedder are laid over each process's devices: dp (replicated
    # parameters, batch split: small models) or fsdp (parameters split too: large models).
    model_sharding: str = "fsdp"
    candidates: int = 20  # first-stage depth for candidates
    round_trip_k: int = 20  # keep a query only if its source is in the top k (0 = off)
    # Scores every (query, candidate): a reranker or embedder location, or a weighted mix of such
    # and `bm25` (the first stage's own scores), each min-max normalised per query:
    # "workdirs/stage1/model:0.6,bm25:0.4" (inference/teacher.py parse_mix).
    teacher: str = ""
    teacher_batch_size: int = 64  # pairs per teacher call (split over the process's devices)
    teacher_max_length: int = 0  # 0 = the teacher's own
    # Several pairs (or texts, for an embedder teacher) per row, told apart by segment ids
    # (data/packing.py): the same scores as one per padded row, with a fraction of the padding.
    teacher_pack: bool = True
    num_negatives: int = 15  # negatives per training group
    score_bins: int = 0  # >1: pick negatives spread over this many teacher-score bins
    # Share of source documents whose queries are held out as the synthetic dev set (<output>/dev:
    # label-free selection of training length, fusion weight and merge t; 0 = none).
    dev_share: float = 0.0
    # Diagnostics (<output>/diagnostics.md): a sample of real queries to compare the synthetic ones
    # with (a BEIR dir or queries.jsonl; read for the report only), its size, and an embedder for
    # the embedding similarity ("" = lexical statistics only).
    real_queries: str = ""
    diagnostics_sample: int = 200
    diagnostics_embedder: str = ""

    def validate(self) -> None:
        require(bool(self.target), "mining.target", "give the BEIR directory of the target corpus.")
        require(bool(self.output), "mining.output", "give a directory for the mined shards.")
        self._validate_generator()
        require(
            self.num_queries >= 0 and self.shard_size >= 1 and self.candidates >= 2,
            "mining.num_queries/shard_size/candidates",
            "num_queries >= 0 (0 = the prompt's own), shard_size >= 1, candidates >= 2.",
        )
        require(
            1 <= self.heuristic_min_len <= self.heuristic_max_len,
            "mining.heuristic_min_len",
            "need 1 <= min <= max.",
        )
        require(
            0 <= self.round_trip_k <= self.candidates,
            "mining.round_trip_k",
            "must be in [0, candidates].",
        )
        require(0 < self.max_copy_overlap <= 1.0, "mining.max_copy_overlap", "must be in (0, 1].")
        require(
            bool(self.teacher), "mining.teacher", "a teacher model path is required (soft labels)."
        )
        try:
            parse_mix(self.teacher)
        except ValueError as e:
            raise ConfigError(f"mining.teacher: {e}") from None
        require(0 <= self.dev_share < 1, "mining.dev_share", "must be in [0, 1).")
        require(self.diagnostics_sample >= 0, "mining.diagnostics_sample", "must be >= 0.")
        require(self.num_negatives >= 1, "mining.num_negatives", "must be >= 1.")
        require(
            self.concurrency >= 1 and self.max_retries >= 0 and self.timeout_s > 0,
            "mining.concurrency/max_retries/timeout_s",
            "concurrency >= 1, max_retries >= 0, timeout_s > 0.",
        )
        require(
            self.teacher_batch_size >= 1 and self.max_doc_chars >= 1,
            "mining.teacher_batch_size/max_doc_chars",
            "must be >= 1.",
        )
        require(
            self.temperature >= 0 and 0 < self.top_p <= 1 and self.top_k >= 0,
            "mining.temperature/top_p/top_k",
            "temperature >= 0, top_p in (0, 1], top_k >= 0.",
        )
        require(
            self.max_new_tokens >= 1
            and self.generator_batch_size >= 1
            and self.generator_check_every >= 1,
            "mining.max_new_tokens/generator_batch_size/generator_check_every",
            "must be >= 1.",
        )
        lo, hi = self.generator_prompt_min, self.generator_prompt_step
        require(
            1 <= lo <= hi and hi % lo == 0 and (hi // lo).bit_count() == 1,
            "mining.generator_prompt_min/generator_prompt_step",
            "the step must be the smallest length times a power of two (e.g. 32 and 256).",
        )
        require(
            self.model_sharding in ("dp", "fsdp"),
            "mining.model_sharding",
            "dp (replicated parameters) or fsdp (parameters split over the devices).",
        )
        require(self.dense_part_size >= 1, "mining.dense_part_size", "must be >= 1.")
        require(
            self.dense_scope in ("global", "process"),
            "mining.dense_scope",
            "global (the index split over every process's devices) or process (whole per process).",
        )

    def endpoint_list(self) -> tuple[str, ...]:
        """The openai servers, in order (process i uses entry i % count)."""
        return split_list(self.endpoints or self.endpoint)

    def _validate_generator(self) -> None:
        """The query generator has what it needs, and the prompt exists and has a {content} slot."""
        require(
            self.generator in ("heuristic", "jax", "openai"),
            "mining.generator",
            "heuristic, jax or openai.",
        )
        require(
            self.generator != "jax" or bool(self.generator_model),
            "mining.generator_model",
            "the jax generator needs a causal LM path.",
        )
        require(
            not (self.endpoint and self.endpoints),
            "mining.endpoints",
            "give the servers in endpoints (comma-separated) or one in endpoint, not both.",
        )
        require(
            self.generator != "openai" or bool(self.endpoint_list() and self.generator_model),
            "mining.endpoints",
            "the openai generator needs endpoints and a model name (generator_model).",
        )
        require(
            bool(self.prompt_text) or self.prompt in PRESETS,
            "mining.prompt",
            f"unknown prompt; presets: {sorted(PRESETS)}.",
        )
        require(
            not self.prompt_text or "{content}" in self.prompt_text,
            "mining.prompt_text",
            "needs a {content} slot.",
        )


def validate_mining(c: MiningConfig) -> MiningConfig:
    """Checks a MiningConfig made in code (e.g. with `dataclasses.replace`); returns it."""
    c.validate()
    return c

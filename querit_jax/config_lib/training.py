"""The training sections: `data` (groups and batches), `optim`, `train` (steps, losses) and
`eval`."""

import dataclasses

from querit_jax.config_lib.parse import require
from querit_jax.errors import ConfigError

# train.loss names (training/losses.py implements each).
LOSS_NAMES = ("listwise_ce", "kl", "margin_mse", "bce")


def parse_losses(spec: str) -> dict[str, float]:
    """'listwise_ce:0.5,kl' -> {"listwise_ce": 0.5, "kl": 1.0}."""
    out = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, _, weight = part.partition(":")
        if name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {name!r}; choose from {LOSS_NAMES}.")
        try:
            out[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"weight {weight!r} of {name} is not a number.") from None
    return out


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...] = ()  # "DIR[:split]" (BEIR) or "FILE.jsonl" (groups)
    negatives: str = "bm25"  # how BEIR sources get negatives: "bm25" or "random"
    num_negatives: int = 15  # negatives mined per query (the sampler draws group_size - 1 of them)
    negative_depth: int = 30  # BM25 depth hard negatives come from
    group_size: int = 8  # 1 positive + group_size - 1 negatives
    batch_size: int = 8  # query groups per step, over all processes
    max_length: int = 128
    max_query_tokens: int = 48
    bm25_tokenizer: str = ""  # "" = the model's tokenizer
    strict: bool = True  # False: skip malformed rows, count them in the data manifest
    num_threads: int = 2
    seed: int = 0
    # Packing (data/packing.py): several pairs per row, told apart by segment ids. Each step takes
    # the smallest of a few row counts that holds its pairs (estimated from the first batches); a
    # step that needs more takes the most rows any step can need, so no batch stops a run.
    pack: bool = False
    pack_rows: int = 0  # one row count for every step (over all processes); 0 = a few, estimated
    # Tokens per packed row (>= max_length); 0 = the shortest of 1-4 x max_length that packs the
    # first batches to >= 0.94 real tokens (longer rows cost attention in proportion to length).
    pack_length: int = 0
    pack_max_pairs: int = 8  # pairs per row at most

    def validate(self) -> None:
        require(
            bool(self.train),
            "data.train",
            "no training data; give BEIR dirs (DIR[:split]) or group files (.jsonl).",
        )
        require(
            self.negatives in ("bm25", "random"), "data.negatives", "must be 'bm25' or 'random'."
        )
        require(
            self.group_size >= 2,
            "data.group_size",
            "a listwise group needs a positive and at least one negative.",
        )
        require(self.num_negatives >= 1, "data.num_negatives", "must be >= 1.")
        require(self.batch_size >= 1, "data.batch_size", "must be >= 1.")
        require(self.max_length >= 8, "data.max_length", "must be >= 8.")
        require(
            self.pack_rows >= 0 and self.pack_max_pairs >= 1,
            "data.pack_rows/pack_max_pairs",
            "pack_rows must be >= 0 (0 = estimate) and pack_max_pairs >= 1.",
        )
        require(
            self.pack_length == 0 or self.pack_length >= self.max_length,
            "data.pack_length",
            "0 (chosen from the data) or at least data.max_length (a row holds a whole pair).",
        )
        require(
            0 < self.max_query_tokens < self.max_length,
            "data.max_query_tokens",
            "must be in (0, max_length).",
        )


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-4
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0
    # Parameters whose dotted name contains one of these are not trained.
    freeze: tuple[str, ...] = ()

    def validate(self) -> None:
        require(self.learning_rate > 0, "optim.learning_rate", "must be > 0.")
        require(
            self.schedule in ("cosine", "linear", "constant"),
            "optim.schedule",
            "cosine, linear or constant.",
        )
        require(0 <= self.end_lr_ratio <= 1, "optim.end_lr_ratio", "must be in [0, 1].")
        require(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0.")
        require(self.clip_norm >= 0, "optim.clip_norm", "must be >= 0 (0 disables clipping).")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    num_steps: int = 1000
    # Comma list of loss[:weight]: listwise_ce (hard labels, positive first), kl (listwise KL to the
    # teacher's softmax), margin_mse, bce (soft targets). KD losses need teacher scores in the data.
    loss: str = "listwise_ce"
    temperature: float = 1.0  # student scores are divided by it in the listwise losses (ce, kl)
    # Teacher scores are divided by it in every distillation loss (kl, margin_mse, bce).
    teacher_temperature: float = 1.0
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the start and the end
    save_every: int = 200
    keep_checkpoints: int = 2
    async_checkpoints: bool = True
    # Steps with a non-finite loss or gradients are skipped; this many in a row stop the run.
    max_nonfinite_steps: int = 5
    # Keep compiled programs in <workdir>/compilation_cache (works on gs://): a relaunched run on
    # the same devices loads them instead of compiling again (training/compile_cache.py).
    compilation_cache: bool = True
    seed: int = 0
    # Label-free selection: synthetic dev sets ("DIR[:split]", e.g. a mining run's <output>/dev)
    # scored at the start, every select_every steps and at the end; the best step (nDCG@10 fused
    # with the first stage at the alpha chosen there) becomes <workdir>/model, with that alpha
    # recorded as its fusion. Never real test questions.
    select_on: tuple[str, ...] = ()
    select_every: int = 0

    def validate(self) -> None:
        require(self.num_steps >= 1, "train.num_steps", "must be >= 1.")
        require(
            not self.select_on or self.select_every >= 1,
            "train.select_every",
            "selection on synthetic dev sets (train.select_on) needs select_every >= 1.",
        )
        try:
            weights = parse_losses(self.loss)
        except ValueError as err:
            raise ConfigError(f"train.loss: {err}") from None
        require(bool(weights), "train.loss", "no loss configured.")
        require(self.teacher_temperature > 0, "train.teacher_temperature", "must be > 0.")
        require(self.temperature > 0, "train.temperature", "must be > 0.")
        require(self.log_every >= 1, "train.log_every", "must be >= 1.")
        require(
            self.save_every >= 0 and self.eval_every >= 0,
            "train.save_every/eval_every",
            "must be >= 0.",
        )
        require(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1.")
        require(self.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", "must be >= 1.")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    datasets: tuple[str, ...] = ()  # "DIR[:split]" BEIR datasets reranked during and after training
    top_k: int = 100  # first-stage depth that is reranked
    batch_size: int = 64  # pairs per scoring call
    first_stage: str = "bm25"
    # BM25's analyser: "unicode" (built in, any language), a tokenizer directory, or "model" (the
    # evaluated model's tokenizer). The first stage must not depend on the model: keep "unicode".
    bm25_tokenizer: str = "unicode"
    max_queries: int = 0  # 0 = all
    # Models (e.g. the teacher) evaluated once for comparison.
    reference_models: tuple[str, ...] = ()

    def validate(self) -> None:
        require(self.top_k >= 1 and self.batch_size >= 1, "eval.top_k/batch_size", "must be >= 1.")
        require(self.first_stage == "bm25", "eval.first_stage", "only 'bm25' is available.")
        require(bool(self.bm25_tokenizer), "eval.bm25_tokenizer", "'unicode', 'model' or a path.")

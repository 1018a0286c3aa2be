"""Experiment configuration: `ml_collections.ConfigDict` at the edge, frozen dataclasses inside.

Config files (`configs/*.py`) return a ConfigDict so that `--config.a.b=v` overrides work; the trainer
calls `from_config_dict` once, which rejects unknown keys, checks every field, and returns frozen
dataclasses. Library code never sees a ConfigDict. Checks that need the device count (batch divisible
by the data axes) run in `validate_for_devices` before anything is compiled.
"""

import dataclasses
import json
import os
import typing
from typing import Any

import ml_collections

from querit_jax.errors import ConfigError
from querit_jax.models.decoder_config import DECODER_PRESETS, DecoderConfig, dtype_of
from querit_jax.models.encoder_config import ENCODER_PRESETS, EncoderConfig
from querit_jax.models.heads import HeadConfig
from querit_jax.models.layers import remat_name
from querit_jax.models.templates import TEMPLATES, make_template
from querit_jax.sharding import axes, axis_size
from querit_jax.sharding import rules as rules_lib
from querit_jax.sharding.hybrid import ici_shape
from querit_jax.sharding.mesh import resolve_mesh_shape

FAMILY_NAMES = ("qwen3", "qwen3_moe", "bert", "xlm_roberta")
# train.loss names (training/losses.py implements each).
LOSS_NAMES = ("listwise_ce", "kl", "margin_mse", "bce")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    expert: int = 1
    # Multislice: the data axis spans this many TPU slices (over DCN); the rest stays in a slice.
    dcn_data: int = 1

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.data, self.fsdp, self.tensor, self.expert)


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    preset: str = "fsdp"
    mesh: MeshConfig = MeshConfig()
    rule_overrides: tuple[tuple[str, Any], ...] = ()

    def rules(self):
        return rules_lib.resolve_rules(self.preset, dict(self.rule_overrides))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str = "qwen3"
    preset: str = "tiny"
    overrides: tuple[tuple[str, Any], ...] = ()
    init_from: str = ""  # checkpoint dir or Hugging Face dir; "" = random initialisation
    head: str = "score"
    yes_token: str = "yes"
    no_token: str = "no"
    tokenizer: str = ""  # "" = the tokenizer stored with init_from
    template: str = "qwen3_pair"
    instruction: str = ""
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    # With remat: full | dots_saveable | dots_with_no_batch_dims_saveable.
    remat_policy: str = "full"
    # Run the layers with jax.lax.scan: compile one layer instead of N, for one extra stacked copy of
    # the layer weights during the step. The parameter layout is unchanged.
    scan_layers: bool = False
    seed: int = 0

    @property
    def remat_mode(self) -> bool | str:
        """The backbone's `remat` value: False, or the policy name."""
        return self.remat and self.remat_policy

    def backbone_config(self, **extra):
        """The preset's DecoderConfig (qwen3) or EncoderConfig (bert, xlm_roberta) with overrides."""
        fields = {
            **dict(self.overrides),
            "dtype": self.dtype,
            "param_dtype": self.param_dtype,
            "remat": self.remat_mode,
            "scan_layers": self.scan_layers,
            **extra,
        }
        if self.family in ("qwen3", "qwen3_moe"):
            return DecoderConfig.from_preset(self.preset, **fields)
        return EncoderConfig.from_preset(self.preset, **{"family": self.family, **fields})


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
    # Packing (data/packing.py): several pairs per row of max_length tokens, told apart by segment ids.
    pack: bool = False
    pack_rows: int = 0  # rows per step over all processes; 0 = estimated from the first batches
    pack_max_pairs: int = 8  # pairs per row at most


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
    freeze: tuple[
        str, ...
    ] = ()  # parameters whose dotted name contains one of these are not trained


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
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    datasets: tuple[str, ...] = ()  # "DIR[:split]" BEIR datasets reranked during and after training
    top_k: int = 100  # first-stage depth that is reranked
    batch_size: int = 64  # pairs per scoring call
    first_stage: str = "bm25"
    max_queries: int = 0  # 0 = all
    reference_models: tuple[
        str, ...
    ] = ()  # models (e.g. the teacher) evaluated once for comparison


@dataclasses.dataclass(frozen=True)
class MiningConfig:
    """Label-free training data from a target corpus (querit_jax.mining.miner)."""

    target: str = ""  # BEIR dir: only its corpus is read (never its queries or qrels)
    output: str = ""  # directory of soft-label shards + manifest.json
    generator: str = "heuristic"  # heuristic | jax | openai
    generator_model: str = ""  # jax: Qwen3 causal LM (checkpoint or HF dir); openai: the model name
    endpoint: str = ""  # openai: base URL, e.g. http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # openai: environment variable holding the key
    prompt: str = "web_search"  # prompt preset (mining/prompts.py)
    prompt_text: str = ""  # a custom prompt with {content} (overrides the preset)
    num_queries: int = 0  # queries asked for per document; 0 = the prompt preset's own count
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    concurrency: int = 4  # openai: requests in flight
    timeout_s: float = 60.0  # openai: per request
    max_retries: int = 3  # openai: attempts after the first
    heuristic_min_len: int = 4  # heuristic: span length in words (characters for CJK)
    heuristic_max_len: int = 10
    max_docs: int = 0  # documents used as query sources (0 = all; a seeded sample otherwise)
    max_doc_chars: int = 4000  # longer documents are cut (counted) before generation
    shard_size: int = 64  # documents per output shard (the unit of resumption)
    seed: int = 0
    min_query_chars: int = 3
    max_query_chars: int = 300
    max_copy_overlap: float = 1.0  # drop queries copying more than this share of words (1 = off)
    dedupe: bool = True
    first_stage: str = "bm25"  # bm25 or an embedder path: candidates for each synthetic query
    bm25_tokenizer: str = "unicode"
    candidates: int = 20  # first-stage depth for candidates
    round_trip_k: int = 20  # keep a query only if its source is in the top k (0 = off)
    teacher: str = ""  # reranker or embedder path scoring every (query, candidate)
    teacher_batch_size: int = 64
    teacher_max_length: int = 0  # 0 = the teacher's own
    num_negatives: int = 15  # negatives per training group
    score_bins: int = 0  # >1: pick negatives spread over this many teacher-score bins


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    sharding: ShardingConfig = ShardingConfig()
    mining: MiningConfig | None = None  # adapt configs: mined first when its output is missing

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_sibling_config(config_file: str, name: str):
    """The config module `name`.py next to `config_file` (how one config file builds on another)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def _split_list(value) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)


def _build(cls, values: dict, where: str):
    """Instantiates a config dataclass from a plain dict, rejecting unknown keys."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(fields)}.")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if hint == MiningConfig | None:
            hint = MiningConfig
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, dict(value), f"{where}.{name}")
        elif hint == tuple[str, ...]:
            kwargs[name] = _split_list(value)
        elif name in ("overrides", "rule_overrides"):
            kwargs[name] = tuple(sorted(dict(value).items()))
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _require(cond: bool, field: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{field}: {message}")


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Field checks that need no devices. Returns cfg; raises ConfigError naming the field."""
    m, d, o, t, e, s = cfg.model, cfg.data, cfg.optim, cfg.train, cfg.eval, cfg.sharding
    decoder = m.family in ("qwen3", "qwen3_moe")
    _require(
        m.family in FAMILY_NAMES,
        "model.family",
        f"unknown family {m.family!r}; choose from {FAMILY_NAMES}.",
    )
    presets = DECODER_PRESETS if decoder else ENCODER_PRESETS
    _require(
        m.preset in presets,
        "model.preset",
        f"unknown {m.family} preset {m.preset!r}; choose from {presets}.",
    )
    heads = ("score", "yes_no") if decoder else ("score",)
    _require(
        m.head in heads,
        "model.head",
        f"a {m.family} reranker has a head in {heads}, not {m.head!r}.",
    )
    _require(
        m.template in TEMPLATES,
        "model.template",
        f"unknown template {m.template!r}; choose from {sorted(TEMPLATES)}.",
    )
    kind = "text" if decoder else "pair"
    _require(
        make_template(m.template).kind == kind,
        "model.template",
        f"{m.family} models read {kind} templates; {m.template!r} is not one.",
    )
    for field in ("dtype", "param_dtype"):
        try:
            dtype_of(getattr(m, field))
        except ValueError as err:
            raise ConfigError(f"model.{field}: {err}") from None
    try:
        remat_name(m.remat_policy)
    except ValueError as err:
        raise ConfigError(f"model.remat_policy: {err}") from None
    if not m.init_from:
        try:
            m.backbone_config()
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model.overrides: {err}") from None
        _require(
            bool(m.tokenizer),
            "model.tokenizer",
            "a randomly initialised model needs a tokenizer path.",
        )
    _require(
        bool(d.train),
        "data.train",
        "no training data; give BEIR dirs (DIR[:split]) or group files (.jsonl).",
    )
    _require(d.negatives in ("bm25", "random"), "data.negatives", "must be 'bm25' or 'random'.")
    _require(
        d.group_size >= 2,
        "data.group_size",
        "a listwise group needs a positive and at least one negative.",
    )
    _require(d.num_negatives >= 1, "data.num_negatives", "must be >= 1.")
    _require(d.batch_size >= 1, "data.batch_size", "must be >= 1.")
    _require(d.max_length >= 8, "data.max_length", "must be >= 8.")
    _require(
        d.pack_rows >= 0 and d.pack_max_pairs >= 1,
        "data.pack_rows/pack_max_pairs",
        "pack_rows must be >= 0 (0 = estimate) and pack_max_pairs >= 1.",
    )
    _require(
        0 < d.max_query_tokens < d.max_length,
        "data.max_query_tokens",
        "must be in (0, max_length).",
    )
    _require(o.learning_rate > 0, "optim.learning_rate", "must be > 0.")
    _require(
        o.schedule in ("cosine", "linear", "constant"),
        "optim.schedule",
        "cosine, linear or constant.",
    )
    _require(0 <= o.end_lr_ratio <= 1, "optim.end_lr_ratio", "must be in [0, 1].")
    _require(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0.")
    _require(o.clip_norm >= 0, "optim.clip_norm", "must be >= 0 (0 disables clipping).")
    _require(t.num_steps >= 1, "train.num_steps", "must be >= 1.")
    try:
        weights = parse_losses(t.loss)
    except ValueError as err:
        raise ConfigError(f"train.loss: {err}") from None
    _require(bool(weights), "train.loss", "no loss configured.")
    _require(t.teacher_temperature > 0, "train.teacher_temperature", "must be > 0.")
    _require(t.temperature > 0, "train.temperature", "must be > 0.")
    _require(t.log_every >= 1, "train.log_every", "must be >= 1.")
    _require(
        t.save_every >= 0 and t.eval_every >= 0, "train.save_every/eval_every", "must be >= 0."
    )
    _require(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1.")
    _require(t.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", "must be >= 1.")
    _require(e.top_k >= 1 and e.batch_size >= 1, "eval.top_k/batch_size", "must be >= 1.")
    _require(e.first_stage == "bm25", "eval.first_stage", "only 'bm25' is available.")
    try:
        s.rules()
    except ValueError as err:
        raise ConfigError(f"sharding: {err}") from None
    used = rules_lib.mesh_axes_used(dict(s.rules()))
    for axis, size in zip(axes.MESH_AXES, s.mesh.shape):
        _require(
            size == 1 or axis in used,
            f"sharding.mesh.{axis}",
            f"size {size} but preset {s.preset!r} maps nothing to '{axis}'; those devices would only repeat work.",
        )
    if not m.init_from:
        _validate_moe(m.backbone_config(), s)
    return cfg


def _validate_moe(backbone, sharding_cfg: ShardingConfig) -> None:
    """Experts must split evenly over the expert axis; the ep path needs an expert mesh axis."""
    experts = getattr(backbone, "num_experts", 0)
    target = dict(sharding_cfg.rules()).get(axes.EXPERT)
    if getattr(backbone, "moe_impl", "") == "ep":
        _require(
            isinstance(target, str),
            "model.overrides.moe_impl",
            f"'ep' needs a preset that maps experts to a mesh axis (fsdp+ep), not {sharding_cfg.preset!r}.",
        )
    _require_experts_split(experts, target, dict(zip(axes.MESH_AXES, sharding_cfg.mesh.shape)))


def _require_experts_split(experts: int, target, sizes: dict) -> None:
    """The experts split evenly over the mesh axis `target` (sizes: mesh axis -> size, -1 = rest)."""
    if experts and isinstance(target, str):
        size = sizes[target]
        _require(
            size == -1 or experts % size == 0,
            f"sharding.mesh.{target}",
            f"{experts} experts do not split over the {size} devices of the '{target}' axis.",
        )


def validate_for_devices(
    cfg: ExperimentConfig, num_devices: int, process_count: int = 1
) -> tuple[int, ...]:
    """Device-dependent checks; returns the resolved mesh shape."""
    try:
        shape = resolve_mesh_shape(cfg.sharding.mesh.shape, num_devices)
        ici_shape(shape, cfg.sharding.mesh.dcn_data)
    except ValueError as err:
        raise ConfigError(f"sharding.mesh: {err}") from None
    batch_axes = dict(cfg.sharding.rules())[axes.BATCH]
    split = axis_size(dict(zip(axes.MESH_AXES, shape)), batch_axes)
    if not cfg.model.init_from:
        _require_experts_split(
            getattr(cfg.model.backbone_config(), "num_experts", 0),
            dict(cfg.sharding.rules()).get(axes.EXPERT),
            dict(zip(axes.MESH_AXES, shape)),
        )
    _require(
        cfg.data.batch_size % split == 0,
        "data.batch_size",
        f"{cfg.data.batch_size} query groups do not split over the batch mesh axes {batch_axes} of size {split}.",
    )
    _require(
        cfg.data.batch_size % process_count == 0,
        "data.batch_size",
        f"{cfg.data.batch_size} does not split over {process_count} processes.",
    )
    return shape


# Fields a resumed run may change without invalidating the saved state.
# Fields a resume may change: they do not change which examples are read, in what order, or the model.
# (The packed row count can be raised after a packing overflow: packed and unpacked scores are equal.)
RESUMABLE_CHANGES = ("data.num_threads", "data.strict", "data.pack_rows", "data.pack_max_pairs")


def config_drift(saved: dict, current: dict) -> list[str]:
    """'section.field: saved -> current' for model/data fields that differ (what a resume must keep)."""
    saved, current = (
        json.loads(json.dumps(c)) for c in (saved, current)
    )  # tuples -> lists, as saved
    out = []
    for section, cls in (("model", ModelConfig), ("data", DataConfig)):
        # A field the saved run predates counts as its default (old checkpoints stay resumable).
        defaults = json.loads(json.dumps(dataclasses.asdict(cls())))
        a = {**defaults, **saved.get(section, {})}
        b = current.get(section, {})
        for key in sorted(set(a) | set(b)):
            name = f"{section}.{key}"
            if name not in RESUMABLE_CHANGES and a.get(key) != b.get(key):
                out.append(f"{name}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


def validate_mining(c: MiningConfig) -> MiningConfig:
    from querit_jax.data.prompts import PRESETS

    _require(bool(c.target), "mining.target", "give the BEIR directory of the target corpus.")
    _require(bool(c.output), "mining.output", "give a directory for the mined shards.")
    _require(
        c.generator in ("heuristic", "jax", "openai"),
        "mining.generator",
        "heuristic, jax or openai.",
    )
    _require(
        c.generator != "jax" or bool(c.generator_model),
        "mining.generator_model",
        "the jax generator needs a causal LM path.",
    )
    _require(
        c.generator != "openai" or bool(c.endpoint and c.generator_model),
        "mining.endpoint",
        "the openai generator needs an endpoint and a model name (generator_model).",
    )
    _require(
        bool(c.prompt_text) or c.prompt in PRESETS,
        "mining.prompt",
        f"unknown prompt; presets: {sorted(PRESETS)}.",
    )
    _require(
        not c.prompt_text or "{content}" in c.prompt_text,
        "mining.prompt_text",
        "needs a {content} slot.",
    )
    _require(
        c.num_queries >= 0 and c.shard_size >= 1 and c.candidates >= 2,
        "mining.num_queries/shard_size/candidates",
        "num_queries >= 0 (0 = the prompt's own), shard_size >= 1, candidates >= 2.",
    )
    _require(
        1 <= c.heuristic_min_len <= c.heuristic_max_len,
        "mining.heuristic_min_len",
        "need 1 <= min <= max.",
    )
    _require(
        0 <= c.round_trip_k <= c.candidates, "mining.round_trip_k", "must be in [0, candidates]."
    )
    _require(0 < c.max_copy_overlap <= 1.0, "mining.max_copy_overlap", "must be in (0, 1].")
    _require(bool(c.teacher), "mining.teacher", "a teacher model path is required (soft labels).")
    _require(c.num_negatives >= 1, "mining.num_negatives", "must be >= 1.")
    _require(
        c.concurrency >= 1 and c.max_retries >= 0 and c.timeout_s > 0,
        "mining.concurrency/max_retries/timeout_s",
        "concurrency >= 1, max_retries >= 0, timeout_s > 0.",
    )
    _require(
        c.teacher_batch_size >= 1 and c.max_doc_chars >= 1,
        "mining.teacher_batch_size/max_doc_chars",
        "must be >= 1.",
    )
    _require(
        c.temperature >= 0 and 0 < c.top_p <= 1,
        "mining.temperature/top_p",
        "temperature >= 0, top_p in (0, 1].",
    )
    return c


def mining_from_config_dict(config) -> MiningConfig:
    """The `mining` section of a config (what `python -m querit_jax.mine` reads)."""
    values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    if "mining" not in values:
        raise ConfigError("config: no `mining` section.")
    return validate_mining(_build(MiningConfig, dict(values["mining"]), "config.mining"))


def from_config_dict(config: ml_collections.ConfigDict | dict) -> ExperimentConfig:
    """ConfigDict -> validated, frozen ExperimentConfig."""
    values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    cfg = validate(_build(ExperimentConfig, values, "config"))
    if cfg.mining is not None:
        validate_mining(cfg.mining)
    return cfg


def head_config(model: ModelConfig, tokenizer) -> HeadConfig:
    """The head of a freshly initialised model; yes/no ids come from the tokenizer."""
    if model.head == "score":
        return HeadConfig(kind="score")
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (model.yes_token, model.no_token)]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ConfigError(
            f"model.yes_token/no_token: {model.yes_token!r}/{model.no_token!r} are not single tokens."
        )
    return HeadConfig(kind="yes_no", yes_token_id=ids[0], no_token_id=ids[1])

"""Model families and the model spec: everything needed to rebuild a model besides its parameters.

A `ModelSpec` names a family (its config class, reranker and embedder modules, the template kinds it
reads), the backbone config, the head, the template and the token budgets; it serialises to the
`model.json` of a model checkpoint (`models.checkpoint`). Shape-first helpers build abstract,
freshly initialised or placed parameter trees on a mesh. `LoadedModel` is a model ready to run.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from querit_jax import sharding
from querit_jax.errors import CheckpointError
from querit_jax.models.decoder_config import DecoderConfig
from querit_jax.models.embedder import DecoderEmbedder
from querit_jax.models.encoder import EncoderCrossEncoder, EncoderEmbedder
from querit_jax.models.encoder_config import EncoderConfig
from querit_jax.models.heads import HeadConfig
from querit_jax.models.reranker import DecoderCrossEncoder
from querit_jax.models.templates import EmbedTemplate, Template, template_from_dict

FORMAT = "querit_jax.model"
FORMAT_VERSION = 1


# Backbone fields that say how a model runs, not what its parameters are: a loaded or imported
# checkpoint may change them (a training config's `model.overrides` with `init_from`, load_model's
# spec fields). Any other backbone field is architecture.
RUNTIME_FIELDS = (
    "dtype",
    "param_dtype",
    "remat",
    "scan_layers",
    "moe_impl",
    "moe_capacity_factor",
    "attention_impl",
)


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family: its config class, its reranker and embedder modules, the template kinds it
    reads."""

    config: type
    reranker: type
    embedder: type
    pair_kinds: tuple[str, ...]
    text_kinds: tuple[str, ...]


FAMILIES = {
    "qwen3": Family(DecoderConfig, DecoderCrossEncoder, DecoderEmbedder, ("text",), ("text",)),
    "qwen3_moe": Family(DecoderConfig, DecoderCrossEncoder, DecoderEmbedder, ("text",), ("text",)),
    "bert": Family(EncoderConfig, EncoderCrossEncoder, EncoderEmbedder, ("pair",), ("native",)),
    "xlm_roberta": Family(
        EncoderConfig, EncoderCrossEncoder, EncoderEmbedder, ("pair",), ("native",)
    ),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model besides its parameters."""

    family: str
    backbone: Any  # DecoderConfig (qwen3) or EncoderConfig (bert, xlm_roberta)
    head: HeadConfig
    template: Template | EmbedTemplate  # EmbedTemplate for embedders
    max_length: int = 512  # token budget per pair (template included)
    max_query_tokens: int = 64  # queries are cut to this many tokens

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise CheckpointError(
                f"Unknown model family {self.family!r}; supported: {sorted(FAMILIES)}."
            )
        family = FAMILIES[self.family]
        embedder = self.head.kind == "embed"
        if isinstance(self.template, EmbedTemplate) != embedder:
            raise CheckpointError(
                f"Template {self.template.name!r} is for "
                f"{'embedders' if not embedder else 'pairs'}; a "
                f"{self.head.kind} head needs {'an embedding' if embedder else 'a pair'} template."
            )
        kinds = family.text_kinds if embedder else family.pair_kinds
        if self.template.kind not in kinds:
            raise CheckpointError(
                f"Template {self.template.name!r} ({self.template.kind}) does not fit the "
                f"{self.family} "
                f"family; it needs a {' or '.join(kinds)} template."
            )
        for name in ("yes_token_id", "no_token_id"):
            tid = getattr(self.head, name)
            if tid is not None and not 0 <= tid < self.backbone.vocab_size:
                raise CheckpointError(
                    f"head.{name}={tid} is outside the vocabulary of {self.backbone.vocab_size} "
                    "tokens."
                )

    def longest_input(self) -> int | None:
        """The most tokens one input may have (learned position table), or None (RoPE: no limit)."""
        table = getattr(self.backbone, "max_position_embeddings", None)
        if table is None or self.family.startswith("qwen3"):
            return None
        return table - getattr(self.backbone, "position_offset", 0)

    def check_length(self, max_length: int, field: str = "max_length") -> None:
        """Raises ValueError when `max_length` tokens run past the position table (NaN
        otherwise)."""
        limit = self.longest_input()
        if limit is not None and max_length > limit:
            raise ValueError(
                f"{field}={max_length} is longer than this {self.family} model's {limit} positions "
                f"(max_position_embeddings={self.backbone.max_position_embeddings}); use at most "
                f"{limit}."
            )

    def build(self, seed: int = 0) -> nnx.Module:
        family = FAMILIES[self.family]
        module = family.embedder if self.head.kind == "embed" else family.reranker
        return module(self.backbone, self.head, rngs=nnx.Rngs(seed))

    def replace(self, **fields) -> "ModelSpec":
        """A copy with spec fields and/or backbone fields (dtype, param_dtype, remat, ...)
        replaced."""
        backbone_fields = {f.name for f in dataclasses.fields(self.backbone)}
        backbone = {k: fields.pop(k) for k in list(fields) if k in backbone_fields}
        return dataclasses.replace(
            self, backbone=dataclasses.replace(self.backbone, **backbone), **fields
        )

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "backbone": self.backbone.to_dict(),
            "head": self.head.to_dict(),
            "template": self.template.to_dict(),
            "max_length": self.max_length,
            "max_query_tokens": self.max_query_tokens,
        }

    @classmethod
    def from_json(cls, d: dict, where: str = "model.json") -> "ModelSpec":
        if d.get("format") != FORMAT:
            raise CheckpointError(f"{where}: 'format' is {d.get('format')!r}, expected {FORMAT!r}.")
        for key in ("family", "backbone", "head", "template"):
            if key not in d:
                raise CheckpointError(f"{where}: missing key {key!r}.")
        family = d["family"]
        if family not in FAMILIES:
            raise CheckpointError(
                f"{where}: unknown family {family!r}; supported: {sorted(FAMILIES)}."
            )
        try:
            return cls(
                family,
                FAMILIES[family].config.from_dict(d["backbone"]),
                HeadConfig(**d["head"]),
                template_from_dict(d["template"]),
                int(d.get("max_length", 512)),
                int(d.get("max_query_tokens", 64)),
            )
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: {e}") from None


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {0: {"b": x}}} -> {"a.0.b": x}."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def check_shapes(have: dict[str, tuple], want: dict[str, tuple], where: str) -> None:
    """Compares flat {name: shape} maps. Raises CheckpointError naming missing/unexpected/mis-shaped
    keys."""
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        more = lambda names: "..." if len(names) > 5 else ""  # noqa: E731
        raise CheckpointError(
            f"{where}: parameter names do not match the model: missing "
            f"{missing[:5]}{more(missing)}, "
            f"unexpected {unexpected[:5]}{more(unexpected)}."
        )
    for name, shape in want.items():
        if tuple(have[name]) != tuple(shape):
            raise CheckpointError(
                f"{where}: parameter {name} has shape {tuple(have[name])}, the model expects "
                f"{tuple(shape)}."
            )


def abstract_params(spec: ModelSpec, mesh: Mesh | None = None, logical_rules=None):
    """(graphdef, pure dict of ShapeDtypeStruct [with shardings if a mesh is given])."""
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: spec.build())
    graphdef, state = nnx.split(abstract)
    if mesh is None:
        return graphdef, nnx.to_pure_dict(state)
    specs = nnx.to_pure_dict(sharding.param_specs(state, mesh, logical_rules))
    shapes = nnx.to_pure_dict(state)
    return graphdef, jax.tree.map(
        lambda s, p: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh, p)),
        shapes,
        specs,
    )


def init_params(spec: ModelSpec, mesh: Mesh, logical_rules, seed: int = 0):
    """(graphdef, sharded pure-dict params) for a freshly initialised model."""
    graphdef, state = sharding.init_sharded(lambda: spec.build(seed), mesh, logical_rules)
    return graphdef, nnx.to_pure_dict(state)


def place_params(params: dict, abstract: dict, where: str = "parameters") -> dict:
    """Puts host or device arrays onto the dtypes and shardings of `abstract`, checking names and
    shapes."""
    check_shapes(
        {k: np.shape(v) for k, v in flatten(params).items()},
        {k: a.shape for k, a in flatten(abstract).items()},
        where,
    )
    return jax.tree.map(
        lambda x, a: jax.device_put(jnp.asarray(x, a.dtype), a.sharding), params, abstract
    )


def yes_no_to_score(spec: ModelSpec, params: dict | None) -> tuple[ModelSpec, dict | None]:
    """Converts a yes/no head exactly into a linear score head: w = out[:, yes] - out[:, no].

    Both compute logit[yes] - logit[no] at the last token; the linear form is what
    transformers' Qwen3ForSequenceClassification runs. `params=None`: the spec only.
    """
    head = spec.head
    if params is None:
        return dataclasses.replace(spec, head=HeadConfig(kind="score")), None
    params = dict(params)
    if spec.backbone.tie_word_embeddings:
        matrix = jnp.asarray(params["model"]["embed_tokens"]["embedding"]).T
    else:
        matrix = jnp.asarray(params.pop("lm_head")["kernel"])
    w = matrix[:, head.yes_token_id].astype(jnp.float32) - matrix[:, head.no_token_id].astype(
        jnp.float32
    )
    params["score"] = {"kernel": w.astype(matrix.dtype)[:, None]}
    return yes_no_to_score(spec, None)[0], params


@dataclasses.dataclass
class LoadedModel:
    spec: ModelSpec
    graphdef: nnx.GraphDef
    params: dict
    tokenizer: Any
    path: str
    metadata: dict
    mesh: Mesh
    logical_rules: Any

    def module(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params)

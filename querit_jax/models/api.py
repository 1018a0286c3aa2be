"""Build, save and load models: the self-describing querit_jax model checkpoint.

A model checkpoint is a directory

    model.json   {"format": "querit_jax.model", "family", "backbone", "head", "template", "max_length", ...}
    params/      Orbax (OCDBT) checkpoint of the parameter tree
    tokenizer/   the tokenizer files (tokenizer.json, tokenizer_config.json, ...)

so `rerank`, `evaluate`, `merge` and `export_hf.py` need nothing but the path. `load_model` also accepts
a Hugging Face model directory (converted in memory, see `querit_jax.convert.hf_import`) and a training
workdir (its exported `model/`).
"""

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from querit_jax import sharding
from querit_jax.data.templates import Template
from querit_jax.models.config import DecoderConfig
from querit_jax.models.heads import HeadConfig
from querit_jax.models.reranker import DecoderCrossEncoder

FORMAT = "querit_jax.model"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A path that is not a usable model checkpoint; the message names the path and the key."""


FAMILIES = {"qwen3": (DecoderConfig, DecoderCrossEncoder)}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model besides its parameters."""

    family: str
    backbone: Any  # DecoderConfig (qwen3)
    head: HeadConfig
    template: Template
    max_length: int = 512

    def build(self, seed: int = 0) -> nnx.Module:
        if self.family not in FAMILIES:
            raise CheckpointError(
                f"Unknown model family {self.family!r}; supported: {sorted(FAMILIES)}."
            )
        return FAMILIES[self.family][1](self.backbone, self.head, rngs=nnx.Rngs(seed))

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "backbone": self.backbone.to_dict(),
            "head": self.head.to_dict(),
            "template": self.template.to_dict(),
            "max_length": self.max_length,
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
            backbone = FAMILIES[family][0].from_dict(d["backbone"])
            head = HeadConfig(**d["head"])
            template = Template.from_dict(d["template"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: {e}") from None
        return cls(family, backbone, head, template, int(d.get("max_length", 512)))


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


def place_params(host_params: dict, abstract: dict) -> dict:
    """Puts a tree of host arrays onto the shardings of `abstract`, checking names, shapes and dtypes.

    Raises:
      CheckpointError: naming the first missing, unexpected or mis-shaped parameter.
    """
    have, want = flatten(host_params), flatten(abstract)
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        raise CheckpointError(
            f"Parameter names do not match the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."
        )
    for name, a in want.items():
        if tuple(np.shape(have[name])) != tuple(a.shape):
            raise CheckpointError(
                f"Parameter {name}: shape {tuple(np.shape(have[name]))}, model expects {tuple(a.shape)}."
            )
    return jax.tree.map(
        lambda x, a: jax.device_put(np.asarray(x).astype(a.dtype), a.sharding),
        host_params,
        abstract,
    )


def save_model(
    path: str, spec: ModelSpec, params: dict, tokenizer, extra: dict | None = None
) -> str:
    """Writes a model checkpoint directory (overwriting `path`). Returns the path."""
    path = os.path.abspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(tmp, "params"), params)
    ckptr.wait_until_finished()
    tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
    meta = {**spec.to_json(), "tokenizer": "tokenizer", **(extra or {})}
    with open(os.path.join(tmp, "model.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
    if jax.process_index() == 0:
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return path


def is_model_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "model.json"))


def is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


@dataclasses.dataclass
class LoadedModel:
    spec: ModelSpec
    graphdef: nnx.GraphDef
    params: dict
    tokenizer: Any
    path: str
    metadata: dict

    def module(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params)


def read_spec(path: str) -> tuple[ModelSpec, dict]:
    meta_path = os.path.join(path, "model.json")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: invalid JSON ({e.msg}, line {e.lineno}).") from None
    return ModelSpec.from_json(meta, meta_path), meta


def resolve_model_path(path: str) -> str:
    """A model checkpoint, a Hugging Face dir, or a training workdir (-> its `model/`)."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such directory.")
    if is_model_checkpoint(path) or is_hf_dir(path):
        return path
    if is_model_checkpoint(os.path.join(path, "model")):
        return os.path.join(path, "model")
    raise CheckpointError(
        f"{path} is not a querit_jax model checkpoint (no model.json), a Hugging Face model directory "
        "(no config.json) or a training workdir (no model/model.json). Train a model, import one with "
        "tools/convert_hf/import_hf.py, or point to the right directory."
    )


def load_model(
    path: str, mesh: Mesh | None = None, logical_rules=None, tokenizer_path: str = ""
) -> LoadedModel:
    """Loads a model checkpoint, a Hugging Face directory or a training workdir onto `mesh`."""
    from transformers import AutoTokenizer

    path = resolve_model_path(path)
    mesh = mesh or sharding.single_device_mesh()
    logical_rules = logical_rules or sharding.rules.resolve_rules("fsdp")
    if not is_model_checkpoint(path):
        from querit_jax.convert import hf_import

        spec, host_params, tokenizer = hf_import.read_hf_dir(path)
        graphdef, abstract = abstract_params(spec, mesh, logical_rules)
        return LoadedModel(
            spec, graphdef, place_params(host_params, abstract), tokenizer, path, {"source": path}
        )
    spec, meta = read_spec(path)
    graphdef, abstract = abstract_params(spec, mesh, logical_rules)
    params_dir = os.path.join(path, "params")
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{path}: model.json present but the params/ directory is missing.")
    ckptr = ocp.StandardCheckpointer()
    try:
        stored = ckptr.metadata(params_dir).item_metadata.tree
    except Exception as e:
        raise CheckpointError(
            f"{params_dir}: not a readable Orbax checkpoint ({type(e).__name__}: {e})."
        ) from None
    have = {k: tuple(v.shape) for k, v in flatten(stored).items()}
    want = {k: tuple(v.shape) for k, v in flatten(abstract).items()}
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        raise CheckpointError(
            f"{params_dir}: parameters do not match {os.path.join(path, 'model.json')}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    for k, shape in want.items():
        if have[k] != shape:
            raise CheckpointError(
                f"{params_dir}: parameter {k} has shape {have[k]}, model.json implies {shape}."
            )
    try:
        params = ckptr.restore(params_dir, abstract)
    except Exception as e:
        raise CheckpointError(
            f"{params_dir}: restoring failed ({type(e).__name__}: {e})."
        ) from None
    tok_dir = tokenizer_path or os.path.join(path, meta.get("tokenizer", "tokenizer"))
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    return LoadedModel(spec, graphdef, params, tokenizer, path, meta)

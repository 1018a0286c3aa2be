"""Hugging Face model directory -> querit_jax model (in memory or as a model checkpoint).

Accepted: Qwen3ForSequenceClassification (score head), Qwen3ForCausalLM (yes/no head over the LM head;
or converted exactly to a score head w = lm_head[yes] - lm_head[no]), and Qwen3Model with or without
the `model.` prefix (a new score head is initialised). Weights are read only from safetensors; a
directory with only pickle files (pytorch_model.bin, *.pt) is refused. `trust_remote_code` is never used.
"""

import glob
import json
import os

import numpy as np

from querit_jax.convert import qwen3 as qwen3_table
from querit_jax.convert.safetensors_io import read_file
from querit_jax.data.templates import Template, make_template
from querit_jax.models.api import CheckpointError, ModelSpec, save_model, yes_no_to_score
from querit_jax.models.config import DecoderConfig
from querit_jax.models.heads import HeadConfig

PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
ARCHITECTURES = ("Qwen3ForSequenceClassification", "Qwen3ForCausalLM", "Qwen3Model")


def read_weights(hf_dir: str) -> dict[str, np.ndarray]:
    """All tensors of a (possibly sharded) safetensors checkpoint.

    Raises:
      CheckpointError: no safetensors (pickle files are named and refused), or a missing shard.
    """
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(
            os.path.basename(p) for p in glob.glob(os.path.join(hf_dir, "*.safetensors"))
        )
    if not files:
        pickles = sorted(
            {
                os.path.basename(p)
                for pat in PICKLE_PATTERNS
                for p in glob.glob(os.path.join(hf_dir, pat))
            }
        )
        if pickles:
            raise CheckpointError(
                f"{hf_dir} holds only pickle weights ({', '.join(pickles)}). Pickle files can run arbitrary "
                "code when loaded, so querit_jax never reads them. Convert the checkpoint to safetensors "
                "with a trusted tool first (e.g. in an isolated environment: "
                "`AutoModel.from_pretrained(dir).save_pretrained(out, safe_serialization=True)`)."
            )
        raise CheckpointError(f"{hf_dir}: no model.safetensors (or sharded *.safetensors) found.")
    weights = {}
    for name in files:
        path = os.path.join(hf_dir, name)
        if not os.path.exists(path):
            raise CheckpointError(f"{hf_dir}: shard {name} listed in the index is missing.")
        weights.update(read_file(path))
    return weights


def read_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(
            f"{hf_dir}: no config.json; not a Hugging Face model directory."
        ) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e.msg}).") from None


def architecture(config: dict, hf_dir: str) -> str:
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    if model_type != "qwen3":
        raise CheckpointError(
            f"{hf_dir}: model_type {model_type!r} (architectures {archs}) is not supported by this importer; "
            f"supported: {', '.join(ARCHITECTURES)}."
        )
    arch = archs[0] if archs else "Qwen3Model"
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{hf_dir}: architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}."
        )
    return arch


def _set(tree: dict, path: tuple, value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _head_config(
    arch: str, head: str, tokenizer, yes_token: str, no_token: str, where: str
) -> HeadConfig:
    """The head as stored: yes/no for a causal LM, a linear score head otherwise."""
    if head not in ("auto", "score", "yes_no"):
        raise CheckpointError(f"Unknown head {head!r}; use auto, score or yes_no.")
    if arch != "Qwen3ForCausalLM":
        if head == "yes_no":
            raise CheckpointError(
                f"{where}: a yes/no head needs a Qwen3ForCausalLM checkpoint, got {arch}."
            )
        return HeadConfig(kind="score")
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (yes_token, no_token)]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise CheckpointError(
            f"{where}: {yes_token!r}/{no_token!r} are not single tokens of the tokenizer."
        )
    return HeadConfig(kind="yes_no", yes_token_id=ids[0], no_token_id=ids[1])


def _gather(weights: dict, entries, where: str, params: dict, used: set) -> None:
    for e in entries:
        if e.hf_name not in weights:
            raise CheckpointError(
                f"{where}: tensor {e.hf_name!r} is missing from the safetensors files."
            )
        _set(params, e.path, e.to_jax(np.asarray(weights[e.hf_name])))
        used.add(e.hf_name)


def _head_params(arch, spec, weights, params, used, where, seed) -> None:
    if spec.head.kind == "yes_no":
        _gather(weights, qwen3_table.head_entries(spec.backbone, spec.head), where, params, used)
    elif arch == "Qwen3ForSequenceClassification":
        w = weights.get("score.weight")
        if w is None:
            raise CheckpointError(f"{where}: tensor 'score.weight' is missing.")
        if w.shape[0] != 1:
            raise CheckpointError(
                f"{where}: score.weight has {w.shape[0]} labels; rerankers here use num_labels=1."
            )
        _set(params, ("score", "kernel"), np.ascontiguousarray(np.asarray(w).T))
        used.add("score.weight")
    else:  # bare Qwen3Model: a new head, initialised like transformers (normal, std 0.02)
        rng = np.random.default_rng(seed)
        kernel = rng.standard_normal((spec.backbone.hidden_size, 1)) * 0.02
        _set(params, ("score", "kernel"), kernel.astype(np.float32))


def read_hf_dir(
    hf_dir: str,
    head: str = "auto",
    template: Template | None = None,
    tokenizer_path: str = "",
    yes_token: str = "yes",
    no_token: str = "no",
    max_length: int | None = None,
    seed: int = 0,
):
    """Reads a Hugging Face directory. Returns (ModelSpec, host parameter tree, tokenizer).

    Args:
      head: "auto" (score for seq-cls and bare models, yes_no for causal LMs), "score" (a causal LM's
        yes/no head is converted exactly into a linear head) or "yes_no".
      template, max_length: default to what a querit_jax export recorded in config.json ("querit_jax"),
        else to the architecture's usual template and the tokenizer's model_max_length (capped at 512).
    """
    from transformers import AutoTokenizer

    config = read_config(hf_dir)
    arch = architecture(config, hf_dir)
    try:
        backbone = DecoderConfig.from_hf_dict(config)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{hf_dir}/config.json: {e}") from None
    tok_dir = tokenizer_path or hf_dir
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"No usable tokenizer in {tok_dir} ({e}); pass a tokenizer directory."
        ) from None
    head_cfg = _head_config(arch, head, tokenizer, yes_token, no_token, hf_dir)
    recorded = config.get("querit_jax") or {}
    if template is None and "template" in recorded:
        template = Template.from_dict(recorded["template"])
    if template is None:
        template = make_template("qwen3_reranker" if arch == "Qwen3ForCausalLM" else "qwen3_pair")
    if max_length is None:
        max_length = int(
            recorded.get("max_length")
            or min(getattr(tokenizer, "model_max_length", 512) or 512, 512)
        )
    spec = ModelSpec(
        "qwen3", backbone, head_cfg, template, max_length, int(recorded.get("max_query_tokens", 64))
    )

    weights = read_weights(hf_dir)
    # Qwen3Model checkpoints may lack the "model." prefix.
    prefix = "model." if any(k.startswith("model.") for k in weights) else ""
    params: dict = {}
    used: set = set()
    _gather(weights, qwen3_table.backbone_entries(backbone, prefix), hf_dir, params, used)
    _head_params(arch, spec, weights, params, used, hf_dir, seed)
    leftover = [
        k for k in weights if k not in used and not k.endswith(qwen3_table.IGNORED_SUFFIXES)
    ]
    leftover = [k for k in leftover if not (k == "lm_head.weight" and backbone.tie_word_embeddings)]
    if leftover:
        raise CheckpointError(f"{hf_dir}: unexpected tensors {sorted(leftover)[:5]} for {arch}.")
    if head == "score" and spec.head.kind == "yes_no":
        spec, params = yes_no_to_score(spec, params)
    return spec, params, tokenizer


def import_hf(hf_dir: str, out: str, **kwargs) -> str:
    """Converts a Hugging Face directory into a model checkpoint at `out`."""
    spec, params, tokenizer = read_hf_dir(hf_dir, **kwargs)
    return save_model(out, spec, params, tokenizer, {"source": {"hf_dir": os.path.abspath(hf_dir)}})

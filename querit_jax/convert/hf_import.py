"""Hugging Face model directory -> querit_jax model (in memory or as a model checkpoint).

Accepted architectures:
  * Qwen3ForSequenceClassification (score head), Qwen3ForCausalLM (yes/no head over the LM head,
    or converted exactly to a score head w = lm_head[yes] - lm_head[no]), Qwen3Model with or without
    the `model.` prefix (a new score head, or an embedder with `head="embed"`);
  * BertForSequenceClassification / XLMRobertaForSequenceClassification (one-label rerankers) and
    BertModel / XLMRobertaModel (embedders; sentence-transformers folders give the pooling, the
    normalisation, the prompts and the token budget).
Weights are read only from safetensors; a directory with only pickle files (pytorch_model.bin, *.pt)
is refused. `trust_remote_code` is never used.
"""

import dataclasses
import json

import numpy as np

from querit_jax import storage
from querit_jax.convert import encoder_table
from querit_jax.convert import qwen3 as qwen3_table
from querit_jax.convert.safetensors_io import read_file
from querit_jax.errors import CheckpointError
from querit_jax.models.checkpoint import save_model
from querit_jax.models.heads import HeadConfig
from querit_jax.models.spec import ModelSpec, yes_no_to_score
from querit_jax.models.templates import (
    encoder_pair,
    encoder_text,
    make_template,
    template_from_dict,
)
from querit_jax.models.tokenizers import load_tokenizer_dir

PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
# Files of a Hugging Face directory that hold weights (what a reader of its configuration and
# tokenizer leaves behind when copying it from a bucket).
WEIGHT_PATTERNS = ("*.safetensors", *PICKLE_PATTERNS, "*.h5", "*.msgpack", "*.onnx", "*.ot")
ARCHITECTURES = {
    "qwen3": ("Qwen3ForSequenceClassification", "Qwen3ForCausalLM", "Qwen3Model"),
    "qwen3_moe": ("Qwen3MoeForSequenceClassification", "Qwen3MoeForCausalLM", "Qwen3MoeModel"),
    "bert": encoder_table.ARCHITECTURES["bert"],
    "xlm-roberta": encoder_table.ARCHITECTURES["xlm_roberta"],
}
HEADS = ("auto", "score", "yes_no", "embed")


def read_weights(hf_dir: str) -> dict[str, np.ndarray]:
    """All tensors of a (possibly sharded) safetensors checkpoint.

    Raises:
      CheckpointError: no safetensors (pickle files are named and refused), or a missing shard.
    """
    index = storage.join(hf_dir, "model.safetensors.index.json")
    if storage.exists(index):
        files = sorted(set(json.loads(storage.read_text(index))["weight_map"].values()))
    else:
        files = [storage.basename(p) for p in storage.glob(hf_dir, "*.safetensors")]
    if not files:
        pickles = sorted(
            {storage.basename(p) for pat in PICKLE_PATTERNS for p in storage.glob(hf_dir, pat)}
        )
        if pickles:
            raise CheckpointError(
                f"{hf_dir} holds only pickle weights ({', '.join(pickles)}). Pickle files can run "
                "arbitrary "
                "code when loaded, so querit_jax never reads them. Convert the checkpoint to "
                "safetensors "
                "with a trusted tool first (e.g. in an isolated environment: "
                "`AutoModel.from_pretrained(dir).save_pretrained(out, safe_serialization=True)`)."
            )
        raise CheckpointError(f"{hf_dir}: no model.safetensors (or sharded *.safetensors) found.")
    weights = {}
    for name in files:
        path = storage.contained(hf_dir, name, index)
        if not storage.exists(path):
            raise CheckpointError(f"{hf_dir}: shard {name} listed in the index is missing.")
        weights.update(read_file(path))
    return weights


def read_config(hf_dir: str) -> dict:
    path = storage.join(hf_dir, "config.json")
    try:
        return json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise CheckpointError(
            f"{hf_dir}: no config.json; not a Hugging Face model directory."
        ) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e.msg}).") from None


def architecture(config: dict, hf_dir: str) -> str:
    """The (supported) architecture named by config.json."""
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    supported = [a for names in ARCHITECTURES.values() for a in names]
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"{hf_dir}: model_type {model_type!r} (architectures {archs}) is not supported by this "
            "importer; "
            f"supported: {', '.join(supported)}."
        )
    arch = archs[0] if archs else ARCHITECTURES[model_type][-1]
    if arch not in ARCHITECTURES[model_type]:
        raise CheckpointError(
            f"{hf_dir}: architecture {arch!r} is not supported; supported: {', '.join(supported)}."
        )
    return arch


def _causal(arch: str) -> bool:
    return arch.endswith("ForCausalLM")


def _decoder(arch: str) -> bool:
    return arch.startswith("Qwen3")


def _set(tree: dict, path: tuple, value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _gather(weights: dict, entries, where: str, params: dict, used: set) -> None:
    for e in entries:
        names = getattr(e, "hf_names", None) or (e.hf_name,)
        for name in names:
            if name not in weights:
                raise CheckpointError(
                    f"{where}: tensor {name!r} is missing from the safetensors files."
                )
        arrays = [np.asarray(weights[n]) for n in names]
        _set(params, e.path, e.to_jax(arrays) if hasattr(e, "hf_names") else e.to_jax(arrays[0]))
        used.update(names)


def read_sentence_transformers(hf_dir: str) -> dict:
    """What a sentence-transformers folder says about pooling, normalisation, prompts and length."""
    out: dict = {}
    modules_path = storage.join(hf_dir, "modules.json")
    if not storage.exists(modules_path):
        return out
    modules = json.loads(storage.read_text(modules_path))
    for m in modules:
        kind = m.get("type", "")
        if kind.endswith("Pooling"):
            module_dir = storage.contained(hf_dir, m.get("path") or ".", modules_path)
            pooling = json.loads(storage.read_text(storage.join(module_dir, "config.json")))
            modes = {
                "pooling_mode_cls_token": "cls",
                "pooling_mode_mean_tokens": "mean",
                "pooling_mode_lasttoken": "last",
            }
            chosen = [name for key, name in modes.items() if pooling.get(key)]
            if "pooling_mode" in pooling:  # the sentence-transformers >= 6 format
                mode = pooling["pooling_mode"]
                chosen = (
                    [{"cls": "cls", "mean": "mean", "lasttoken": "last"}[mode]]
                    if mode in ("cls", "mean", "lasttoken")
                    else []
                )
            if len(chosen) != 1:
                raise CheckpointError(
                    f"{hf_dir}: unsupported sentence-transformers pooling {pooling}."
                )
            out["pooling"] = chosen[0]
        elif kind.endswith("Normalize"):
            out["normalize"] = True
    for name, key in (
        ("sentence_bert_config.json", "max_seq_length"),
        ("config_sentence_transformers.json", "prompts"),
    ):
        path = storage.join(hf_dir, name)
        if storage.exists(path):
            value = json.loads(storage.read_text(path)).get(key)
            if value:
                out[key] = value
    return out


def _head_config(arch, head, tokenizer, st, yes_token, no_token, where) -> HeadConfig:
    """The head as stored: yes/no for a causal LM, embed for bare models of ST folders, else
    score."""
    if head not in HEADS:
        raise CheckpointError(f"Unknown head {head!r}; use one of {HEADS}.")
    bare = arch.endswith("Model")
    if head == "auto":
        head = (
            "yes_no"
            if _causal(arch)
            else "embed"
            if bare and ("pooling" in st or not _decoder(arch))
            else "score"
        )
    if head == "embed":
        if not bare:
            raise CheckpointError(
                f"{where}: an embedder needs a bare model (Qwen3Model, BertModel, ...), got {arch}."
            )
        default = "last" if _decoder(arch) else "mean"
        return HeadConfig(
            kind="embed",
            pooling=st.get("pooling", default),
            normalize=st.get("normalize", _decoder(arch)),  # Qwen3-Embedding normalises
        )
    if head == "yes_no":
        if not _causal(arch):
            raise CheckpointError(
                f"{where}: a yes/no head needs a Qwen3(Moe)ForCausalLM checkpoint, got {arch}."
            )
        ids = [tokenizer.convert_tokens_to_ids(t) for t in (yes_token, no_token)]
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise CheckpointError(
                f"{where}: {yes_token!r}/{no_token!r} are not single tokens of the tokenizer."
            )
        return HeadConfig(kind="yes_no", yes_token_id=ids[0], no_token_id=ids[1])
    if _causal(arch):  # read as yes/no, converted to a linear head afterwards
        return _head_config(arch, "yes_no", tokenizer, st, yes_token, no_token, where)
    return HeadConfig(kind="score")


def _template(arch, head, recorded, st):
    if "template" in recorded:
        return template_from_dict(recorded["template"])
    if head.kind == "embed":
        prompts = st.get("prompts") or {}
        if _decoder(arch):
            return make_template("qwen3_embedding")
        return encoder_text(
            prompts.get("query", ""), prompts.get("document", prompts.get("passage", ""))
        )
    if _decoder(arch):
        return make_template("qwen3_reranker" if _causal(arch) else "qwen3_pair")
    return encoder_pair()


def _qwen3_entries(spec, arch, weights, where):
    cfg = spec.backbone
    prefix = (
        "model." if any(k.startswith("model.") for k in weights) else ""
    )  # Qwen3Model may lack it
    entries = qwen3_table.backbone_entries(cfg, prefix)
    if spec.head.kind == "yes_no" or arch.endswith("ForSequenceClassification"):
        entries += qwen3_table.head_entries(cfg, spec.head)
    score = weights.get("score.weight")
    if score is not None and score.shape[0] != 1:
        raise CheckpointError(
            f"{where}: score.weight has {score.shape[0]} labels; rerankers here use num_labels=1."
        )
    new_head = {}
    if arch.endswith("Model") and spec.head.kind == "score":
        new_head = {("score", "kernel"): (cfg.hidden_size, 1)}
    ignored = {k for k in weights if k.endswith(qwen3_table.IGNORED_SUFFIXES)}
    if cfg.tie_word_embeddings:
        ignored.add("lm_head.weight")
    return entries, new_head, ignored


def _encoder_entries(spec, arch, weights):
    cfg = spec.backbone
    bare = arch.endswith("Model")
    prefix = encoder_table.model_prefix(cfg)
    if bare and not any(k.startswith(prefix) for k in weights):
        prefix = (
            ""  # bare checkpoints (sentence-transformers) store BertModel keys at the top level
        )
    entries = encoder_table.backbone_entries(cfg, prefix)
    new_head = {}
    if not bare:
        entries += encoder_table.head_entries(cfg)
    elif spec.head.kind == "score":
        h = cfg.hidden_size
        new_head = {("out_proj", "kernel"): (h, 1), ("out_proj", "bias"): (1,)}
        pooler = [f"{prefix}pooler.dense.{n}" for n in ("weight", "bias")]
        if cfg.family == "bert" and all(k in weights for k in pooler):
            # As BertForSequenceClassification.from_pretrained: the pretrained pooler is the head's
            # dense layer; only the classifier is new.
            entries += [
                dataclasses.replace(
                    e, hf_name=f"{prefix}pooler.dense.{e.hf_name.rsplit('.', 1)[1]}"
                )
                for e in encoder_table.head_entries(cfg)
                if e.path[0] == "dense"
            ]
        else:  # XLM-R's classification head is new in transformers too
            new_head.update({("dense", "kernel"): (h, h), ("dense", "bias"): (h,)})
    ignored = {k for k in weights if k.endswith(encoder_table.IGNORED_SUFFIXES)}
    if bare:  # the pooler is not part of an embedder (nor of XLM-R's new head)
        used = {e.hf_name for e in entries}
        ignored |= {k for k in weights if k.startswith(f"{prefix}pooler.") and k not in used}
    return entries, new_head, ignored


def read_hf_dir(
    hf_dir: str,
    head: str = "auto",
    template=None,
    tokenizer_path: str = "",
    yes_token: str = "yes",
    no_token: str = "no",
    max_length: int | None = None,
    seed: int = 0,
    weights: bool = True,
):
    """Reads a Hugging Face directory. Returns (ModelSpec, host parameter tree, tokenizer); with
    `weights=False` no tensor is read and the tree is None (the spec and tokenizer only).

    Args:
      head: "auto" (by architecture: yes_no for causal LMs, embed for bare encoders and ST folders,
        score otherwise), "score" (a causal LM's yes/no head is converted exactly into a linear
        head; bare models get a new head), "yes_no" or "embed".
      template, max_length: default to what a querit_jax export recorded in config.json
      ("querit_jax"),
        then to a sentence-transformers folder's settings, then to the architecture's usual template
        and the tokenizer's model_max_length (capped at 512).
    """
    config = read_config(hf_dir)
    arch = architecture(config, hf_dir)
    try:
        if config["model_type"] in ("qwen3", "qwen3_moe"):
            backbone = qwen3_table.config_from_hf(config)
            family = backbone.family
        else:
            backbone = encoder_table.config_from_hf(config)
            family = backbone.family
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{hf_dir}/config.json: {e}") from None
    tok_dir = tokenizer_path or hf_dir
    try:
        tokenizer = load_tokenizer_dir(tok_dir)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"No usable tokenizer in {tok_dir} ({e}); pass a tokenizer directory."
        ) from None
    st = read_sentence_transformers(hf_dir)
    head_cfg = _head_config(arch, head, tokenizer, st, yes_token, no_token, hf_dir)
    recorded = config.get("querit_jax") or {}
    template = template or _template(arch, head_cfg, recorded, st)
    if max_length is None:
        max_length = int(
            recorded.get("max_length")
            or st.get("max_seq_length")
            or min(getattr(tokenizer, "model_max_length", 512) or 512, 512)
        )
    spec = ModelSpec(
        family, backbone, head_cfg, template, max_length, int(recorded.get("max_query_tokens", 64))
    )
    convert = head == "score" and spec.head.kind == "yes_no"
    if not weights:
        return (yes_no_to_score(spec, None)[0] if convert else spec), None, tokenizer
    weights = read_weights(hf_dir)
    if family in ("qwen3", "qwen3_moe"):
        weights = qwen3_table.unfuse_experts(weights, backbone)
        entries, new_head, ignored = _qwen3_entries(spec, arch, weights, hf_dir)
    else:
        entries, new_head, ignored = _encoder_entries(spec, arch, weights)
    params: dict = {}
    used: set = set()
    _gather(weights, entries, hf_dir, params, used)
    rng = np.random.default_rng(seed)
    for (
        path,
        shape,
    ) in new_head.items():  # a new head, initialised like transformers (normal 0.02, zero bias)
        value = rng.standard_normal(shape) * 0.02 if path[-1] == "kernel" else np.zeros(shape)
        _set(params, path, value.astype(np.float32))
    leftover = sorted(set(weights) - used - ignored)
    if leftover:
        raise CheckpointError(f"{hf_dir}: unexpected tensors {leftover[:5]} for {arch}.")
    if convert:
        spec, params = yes_no_to_score(spec, params)
    return spec, params, tokenizer


def import_hf(hf_dir: str, out: str, **kwargs) -> str:
    """Converts a Hugging Face directory into a model checkpoint at `out`."""
    spec, params, tokenizer = read_hf_dir(hf_dir, **kwargs)
    source = {"hf_dir": storage.absolute(hf_dir)}
    return save_model(out, spec, params, tokenizer, {"source": source})

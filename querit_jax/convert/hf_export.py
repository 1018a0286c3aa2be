"""querit_jax model -> a Hugging Face directory that transformers and sentence-transformers load.

Rerankers: config.json, the weights (Qwen3ForSequenceClassification, Qwen3ForCausalLM for yes/no
models on request, BertForSequenceClassification, XLMRobertaForSequenceClassification), the
tokenizer (decoders: with a `chat_template.jinja` rendering the pair template from ("query",
"document") messages), and the sentence-transformers CrossEncoder files with an identity activation,
so `CrossEncoder(dir).predict` returns the raw scores this project computes. Embedders: the bare
model (Qwen3Model, BertModel, XLMRobertaModel) with sentence-transformers' Pooling (and Normalize)
modules and the query/document prompts. The model card and the publishing checks are
`querit_jax.release`'s.

Weights are converted and written tensor by tensor, from memory (`LoadedModel`) or straight from a
model checkpoint (`checkpoint.StoredModel`: each tensor restored on its own), into safetensors
shards of at most 5 GB (`model.safetensors`, or `model-0000i-of-0000N.safetensors` with
`model.safetensors.index.json`, transformers' layout), optionally cast (bf16 for release).

Pooling contract: the score is read at the last real token. transformers'
Qwen3ForSequenceClassification reads the rightmost token whose id != pad_token_id, which is the same
token only if the pad id never occurs in real inputs. When the tokenizer's pad token is a token the
template emits (Qwen3-Embedding pads with the `<|endoftext|>` it appends), the export switches the
pad token to an unused special token.
"""

import copy
import dataclasses
import json

import numpy as np

from querit_jax import sharding, storage
from querit_jax.convert import encoder_table
from querit_jax.convert import qwen3 as qwen3_table
from querit_jax.convert.safetensors_io import (
    cast_floats,
    shard_names,
    shard_plan,
    write_file,
    write_index,
)
from querit_jax.data.io import write_json
from querit_jax.errors import CheckpointError
from querit_jax.models.decoder_config import DecoderConfig
from querit_jax.models.heads import HeadConfig
from querit_jax.models.spec import LoadedModel, flatten

MAX_SHARD_BYTES = 5 * 10**9  # transformers' max_shard_size="5GB"
ST_TRANSFORMER = "sentence_transformers.base.modules.transformer.Transformer"
ST_LOGIT_SCORE = "sentence_transformers.cross_encoder.modules.logit_score.LogitScore"
ST_POOLING = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
ST_NORMALIZE = "sentence_transformers.base.modules.normalize.Normalize"


def chat_template(template) -> str:
    """A Jinja chat template rendering prefix + query + middle + document + suffix.

    Every literal is emitted as a `{{- "..." -}}` string: transformers compiles templates with
    trim_blocks/lstrip_blocks, which would eat raw newlines at the template's edges.
    """
    lit = lambda s: json.dumps(s, ensure_ascii=False)  # noqa: E731
    return (
        "{%- set ns = namespace(query='', document='') -%}\n"
        "{%- for message in messages -%}\n"
        "{%- if message['content'] is string -%}{%- set text = message['content'] -%}\n"
        "{%- else -%}{%- set text = message['content'] | selectattr('text', 'defined') "
        "| map(attribute='text') | join('') -%}\n"
        "{%- endif -%}\n"
        "{%- if message['role'] == 'query' -%}{%- set ns.query = text -%}\n"
        "{%- elif message['role'] == 'document' -%}{%- set ns.document = text -%}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        f"{{{{- {lit(template.prefix)} + ns.query + {lit(template.middle)} + ns.document + "
        f"{lit(template.suffix)} -}}}}"
    )


def choose_pad_token(tokenizer, template, vocab_size: int) -> tuple[str, int]:
    """A pad token that never occurs in rendered inputs (see module docstring).

    Raises:
      CheckpointError: when every special token occurs in the template and the embedding has no free
      row.
    """
    rendered = set(
        tokenizer(template.prefix + template.middle + template.suffix, add_special_tokens=False)[
            "input_ids"
        ]
    )
    pad = tokenizer.pad_token
    if pad is not None and tokenizer.pad_token_id not in rendered and template.kind == "text":
        return pad, tokenizer.pad_token_id
    if template.kind == "pair" and pad is not None:
        return pad, tokenizer.pad_token_id
    candidates = [t for t in tokenizer.all_special_tokens if t and "pad" in t.lower()]
    candidates += [t for t in tokenizer.all_special_tokens if t not in candidates]
    for token in candidates:
        tid = tokenizer.convert_tokens_to_ids(token)
        if (
            tid is not None
            and tid not in rendered
            and tid < vocab_size
            and token not in (tokenizer.bos_token,)
        ):
            return token, tid
    if len(tokenizer) < vocab_size:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        return "<|pad|>", tokenizer.convert_tokens_to_ids("<|pad|>")
    raise CheckpointError(
        "No token is free to serve as the pad token (all special tokens occur in the template and "
        "the "
        "embedding has no spare row); add a pad token to the tokenizer before exporting."
    )


@dataclasses.dataclass(frozen=True)
class YesNoScoreEntry:
    """`score.weight` [1, H] of a yes/no model exported as a linear head: the yes row minus the no
    row of its output matrix (the tied embedding [V, H] or the LM head kernel [H, V]), exactly
    `spec.yes_no_to_score`, computed from that one tensor."""

    hf_name: str
    path: tuple
    yes: int
    no: int
    rows: bool  # True: token rows (embedding); False: token columns (kernel)

    def to_hf(self, matrix: np.ndarray) -> np.ndarray:
        m = matrix if self.rows else matrix.T
        w = m[self.yes].astype(np.float32) - m[self.no].astype(np.float32)
        return np.ascontiguousarray(w.astype(matrix.dtype)[None, :])

    def numel(self, shape) -> int:
        return int(shape[1] if self.rows else shape[0])


def export_entries(spec, head_format: str) -> tuple:
    """(the exported model's spec, its weight-table entries) for `head_format`."""
    if head_format == "causal_lm" and spec.head.kind != "yes_no":
        raise CheckpointError("Only a yes/no model has an LM head to export as Qwen3ForCausalLM.")
    cfg = spec.backbone
    if spec.family not in ("qwen3", "qwen3_moe"):
        if spec.head.kind == "embed":
            return spec, encoder_table.backbone_entries(cfg, "")
        prefix = encoder_table.model_prefix(cfg)
        return spec, encoder_table.backbone_entries(cfg, prefix) + encoder_table.head_entries(cfg)
    embed = spec.head.kind == "embed"
    entries = qwen3_table.backbone_entries(cfg, "" if embed else "model.")
    if head_format == "seq_cls" and spec.head.kind == "yes_no":
        tied = cfg.tie_word_embeddings
        path = ("model", "embed_tokens", "embedding") if tied else ("lm_head", "kernel")
        head = spec.head
        entries.append(
            YesNoScoreEntry("score.weight", path, head.yes_token_id, head.no_token_id, tied)
        )
        return dataclasses.replace(spec, head=HeadConfig(kind="score")), entries
    if not embed:
        entries += qwen3_table.head_entries(cfg, spec.head)
    return spec, entries


def _name(entry) -> str:
    return ".".join(str(p) for p in entry.path)


def entry_tensors(entry, read) -> list[tuple[str, np.ndarray]]:
    """The Hugging Face tensors of one entry; `read(flat name)` gives our tensor as numpy."""
    value = entry.to_hf(read(_name(entry)))
    return (
        list(zip(entry.hf_names, value)) if hasattr(entry, "hf_names") else [(entry.hf_name, value)]
    )


def _source(model):
    """(read(name) -> numpy, {name: shape}, {name: dtype}) of a LoadedModel (arrays in memory; a
    collective on multi-host meshes, in the same order everywhere) or a checkpoint.StoredModel."""
    if hasattr(model, "stored"):
        return model.read, model.stored.shapes, model.stored.dtypes
    flat = flatten(model.params)
    shapes = {k: tuple(np.shape(v)) for k, v in flat.items()}
    return (
        (lambda name: sharding.to_host(flat[name])),
        shapes,
        {k: v.dtype for k, v in flat.items()},
    )


def hf_tensors(model: LoadedModel, head_format: str) -> dict[str, np.ndarray]:
    """The transformers state dict for `head_format` ('seq_cls', 'causal_lm' or 'embed'), in
    memory."""
    _, entries = export_entries(model.spec, head_format)
    read = _source(model)[0]
    return {name: value for e in entries for name, value in entry_tensors(e, read)}


def write_weights(
    model, out_dir: str, head_format: str, dtype=None, max_shard_bytes: int = MAX_SHARD_BYTES
) -> str:
    """Writes the weights tensor by tensor into safetensors shards of at most `max_shard_bytes`
    (model.safetensors, or model-0000i-of-0000N.safetensors + model.safetensors.index.json), in
    `dtype` (None: as stored). Host memory holds one shard at most. Returns the dtype name."""
    _, entries = export_entries(model.spec, head_format)
    read, shapes, dtypes = _source(model)
    itemsize = lambda name: np.dtype(dtype or dtypes[name]).itemsize  # noqa: E731
    sizes = [
        (e.numel(shapes[_name(e)]) if hasattr(e, "numel") else int(np.prod(shapes[_name(e)])))
        * itemsize(_name(e))
        for e in entries
    ]
    shards = shard_plan(sizes, max_shard_bytes)
    files = shard_names(len(shards))
    weight_map, written = {}, None
    for file, shard in zip(files, shards):
        tensors = {}
        for i in shard:
            for name, value in entry_tensors(entries[i], read):
                tensors[name] = cast_floats(value, dtype)
        write_file(storage.join(out_dir, file), tensors, {"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
        written = written or str(np.dtype(next(iter(tensors.values())).dtype))
        del tensors
    if len(files) > 1:
        write_index(out_dir, weight_map, sum(sizes))
    return str(np.dtype(dtype)) if dtype is not None else written


def architecture_name(spec, head_format: str) -> str:
    moe = spec.family == "qwen3_moe"
    if head_format == "causal_lm":
        return "Qwen3MoeForCausalLM" if moe else "Qwen3ForCausalLM"
    names = {
        "qwen3": ("Qwen3ForSequenceClassification", "Qwen3Model"),
        "qwen3_moe": ("Qwen3MoeForSequenceClassification", "Qwen3MoeModel"),
    }
    names.update({k: v for k, v in encoder_table.ARCHITECTURES.items()})
    reranker, bare = names[spec.family]
    return bare if spec.head.kind == "embed" else reranker


def hf_config(backbone) -> dict:
    """The transformers config.json fields of a backbone config."""
    if isinstance(backbone, DecoderConfig):
        return qwen3_table.config_to_hf(backbone)
    return encoder_table.config_to_hf(backbone)


def check_head_format(spec, head_format: str | None) -> str:
    """The export's head format: rerankers "seq_cls" (default) or "causal_lm" (yes/no models);
    embedders "embed". Raises ValueError for one that does not fit the model."""
    embed = spec.head.kind == "embed"
    head_format = head_format or ("embed" if embed else "seq_cls")
    allowed = ("embed",) if embed else ("seq_cls", "causal_lm")
    if head_format not in allowed:
        raise ValueError(
            f"head_format must be one of {allowed} for a {spec.head.kind} model, got "
            f"{head_format!r}."
        )
    return head_format


def write_hf_dir(
    model,
    out_dir: str,
    head_format: str | None = None,
    max_length: int | None = None,
    readme: str | None = None,
    *,
    dtype=None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> str:
    """Writes a Hugging Face directory for `model` (and `readme` as its README.md). Returns out_dir.

    Args:
      model: a `spec.LoadedModel` (parameters in memory) or a `checkpoint.StoredModel` (tensors
        streamed from the checkpoint one by one).
      head_format: see `check_head_format`.
      max_length: the tokenizer's model_max_length (default: the model's token budget).
      dtype: the weights' dtype ("bfloat16", "float32", ...); None keeps the parameters' dtype.
      max_shard_bytes: the largest safetensors shard (5 GB, transformers' default).
    """
    spec, tokenizer = model.spec, copy.deepcopy(model.tokenizer)
    embed = spec.head.kind == "embed"
    head_format = check_head_format(spec, head_format)
    max_length = max_length or spec.max_length
    causal = head_format == "causal_lm"
    if not embed:
        pad_token, pad_id = choose_pad_token(tokenizer, spec.template, spec.backbone.vocab_size)
        tokenizer.pad_token = pad_token
    else:
        pad_id = tokenizer.pad_token_id
    tokenizer.padding_side = "left" if causal else "right"
    tokenizer.model_max_length = max_length
    if not embed and spec.template.kind == "text":
        tokenizer.chat_template = chat_template(spec.template)
    _check_replaceable(out_dir, model.path)
    writer = storage.DirectoryWriter(out_dir, "config.json")  # config.json last: the commit
    out = writer.staging
    with storage.temp_dir() as tmp:
        tokenizer.save_pretrained(tmp)
        storage.upload_tree(tmp, out)
    dtype = write_weights(model, out, head_format, dtype, max_shard_bytes)
    config = {
        **hf_config(spec.backbone),
        "architectures": [architecture_name(spec, head_format)],
        "pad_token_id": pad_id,
        "dtype": dtype,
        "transformers_version": _version("transformers"),
        "querit_jax": {
            "template": spec.template.to_dict(),
            "head": spec.head.to_dict(),
            "pooling": "last real token; pad_token_id never occurs in rendered inputs"
            if spec.family in ("qwen3", "qwen3_moe")
            else f"{spec.head.pooling if embed else 'cls'} token(s) of each sequence",
            "max_length": max_length,
            "max_query_tokens": spec.max_query_tokens,
            "trained_compute_dtype": spec.backbone.dtype,
        },
    }
    if head_format == "seq_cls":
        config.update({"num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}})
    if embed:
        _write_sentence_transformer(out, spec, max_length)
    else:
        _write_cross_encoder(out, spec, causal)
    if readme is not None:
        storage.write_text(storage.join(out, "README.md"), readme)
    return writer.commit(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def _check_replaceable(out_dir: str, model_path: str) -> None:
    """The export replaces out_dir: refuse when that would delete a model or unrelated files."""
    if not storage.listdir(out_dir):
        return
    if storage.same(out_dir, model_path) or not storage.isfile(
        storage.join(out_dir, "config.json")
    ):
        raise CheckpointError(
            f"{out_dir} exists and is not a previous export (no config.json, or it is the model "
            "being exported); choose an empty or new --out directory."
        )


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _write_cross_encoder(out_dir: str, spec, causal: bool) -> None:
    modality = {"text": {"method": "forward", "method_output_name": "logits"}}
    if spec.template.kind == "text":
        # Pairs become ("query", "document") chat messages rendered by chat_template.jinja.
        modality["message"] = {
            "method": "forward",
            "method_output_name": "logits",
            "format": "flat",
        }
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_TRANSFORMER}]
    if causal:
        modules.append({"idx": 1, "name": "1", "path": "1_LogitScore", "type": ST_LOGIT_SCORE})
        write_json(
            storage.join(out_dir, "1_LogitScore", "config.json"),
            {
                "true_token_id": spec.head.yes_token_id,
                "false_token_id": spec.head.no_token_id,
                "module_input_name": "causal_logits",
            },
        )
        bert = {
            "transformer_task": "text-generation",
            "modality_config": modality,
            "module_output_name": "causal_logits",
        }
    else:
        bert = {
            "transformer_task": "sequence-classification",
            "modality_config": modality,
            "module_output_name": "scores",
        }
    write_json(storage.join(out_dir, "modules.json"), modules)
    write_json(storage.join(out_dir, "sentence_bert_config.json"), bert)
    write_json(
        storage.join(out_dir, "config_sentence_transformers.json"),
        {
            "model_type": "CrossEncoder",
            "activation_fn": "torch.nn.modules.linear.Identity",
            "prompts": {},
            "default_prompt_name": None,
        },
    )


def _write_sentence_transformer(out_dir: str, spec, max_length: int) -> None:
    """Transformer -> Pooling (-> Normalize), with the query/document prompts of the template."""
    t = spec.template
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": ST_TRANSFORMER},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": ST_POOLING},
    ]
    if spec.head.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": ST_NORMALIZE})
        write_json(
            storage.join(out_dir, "2_Normalize", "config.json"),
            {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"},
        )
    mode = {"last": "lasttoken", "cls": "cls", "mean": "mean"}[spec.head.pooling]
    write_json(
        storage.join(out_dir, "1_Pooling", "config.json"),
        {
            "embedding_dimension": spec.backbone.hidden_size,
            "pooling_mode": mode,
            "include_prompt": True,
        },
    )
    write_json(storage.join(out_dir, "modules.json"), modules)
    write_json(
        storage.join(out_dir, "sentence_bert_config.json"),
        {
            "transformer_task": "feature-extraction",
            "max_seq_length": max_length,
            "modality_config": {
                "text": {"method": "forward", "method_output_name": "last_hidden_state"}
            },
            "module_output_name": "token_embeddings",
        },
    )
    write_json(
        storage.join(out_dir, "config_sentence_transformers.json"),
        {
            "model_type": "SentenceTransformer",
            "prompts": {"query": t.query_prefix, "document": t.document_prefix},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine" if spec.head.normalize else "dot",
        },
    )

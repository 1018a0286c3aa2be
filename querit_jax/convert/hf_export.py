"""querit_jax model -> a Hugging Face directory that transformers and sentence-transformers load.

Written files: config.json, model.safetensors, tokenizer files with a `chat_template.jinja` that renders
the model's pair template from ("query", "document") messages, and the sentence-transformers
CrossEncoder files (modules.json, sentence_bert_config.json, config_sentence_transformers.json with an
identity activation, so `CrossEncoder(dir).predict` returns the raw scores this project computes).

Pooling contract: the score is read at the last real token. transformers' Qwen3ForSequenceClassification
reads the rightmost token whose id != pad_token_id, which is the same token only if the pad id never
occurs in real inputs. When the tokenizer's pad token is a token the template emits (Qwen3-Embedding pads
with the `<|endoftext|>` it appends), the export switches the pad token to an unused special token.
"""

import copy
import json
import os
import shutil

import numpy as np

from querit_jax.convert import qwen3 as qwen3_table
from querit_jax.convert.safetensors_io import write_file
from querit_jax.data.io import write_json
from querit_jax.models.api import CheckpointError, LoadedModel, flatten, yes_no_to_score

ST_TRANSFORMER = "sentence_transformers.base.modules.transformer.Transformer"
ST_LOGIT_SCORE = "sentence_transformers.cross_encoder.modules.logit_score.LogitScore"


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
        f"{{{{- {lit(template.prefix)} + ns.query + {lit(template.middle)} + ns.document + {lit(template.suffix)} -}}}}"
    )


def choose_pad_token(tokenizer, template, vocab_size: int) -> tuple[str, int]:
    """A pad token that never occurs in rendered inputs (see module docstring).

    Raises:
      CheckpointError: when every special token occurs in the template and the embedding has no free row.
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
        "No token is free to serve as the pad token (all special tokens occur in the template and the "
        "embedding has no spare row); add a pad token to the tokenizer before exporting."
    )


def hf_tensors(model: LoadedModel, head_format: str) -> dict[str, np.ndarray]:
    """The transformers state dict for `head_format` ('seq_cls' or 'causal_lm')."""
    spec, params = model.spec, model.params
    if head_format == "causal_lm" and spec.head.kind != "yes_no":
        raise CheckpointError("Only a yes/no model has an LM head to export as Qwen3ForCausalLM.")
    if head_format == "seq_cls" and spec.head.kind == "yes_no":
        spec, params = yes_no_to_score(spec, params)  # exact: w = lm_head[yes] - lm_head[no]
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    entries = qwen3_table.backbone_entries(spec.backbone) + qwen3_table.head_entries(
        spec.backbone, spec.head
    )
    return {e.hf_name: e.to_hf(flat[".".join(str(p) for p in e.path)]) for e in entries}


def export_hf(
    model: LoadedModel, out_dir: str, head_format: str = "seq_cls", max_length: int | None = None
) -> str:
    """Writes a Hugging Face directory for `model`. Returns out_dir."""
    if head_format not in ("seq_cls", "causal_lm"):
        raise ValueError(f"head_format must be 'seq_cls' or 'causal_lm', got {head_format!r}.")
    spec, tokenizer = model.spec, copy.deepcopy(model.tokenizer)
    max_length = max_length or spec.max_length
    pad_token, pad_id = choose_pad_token(tokenizer, spec.template, spec.backbone.vocab_size)
    tokenizer.pad_token = pad_token
    causal = head_format == "causal_lm"
    tokenizer.padding_side = "left" if causal else "right"
    tokenizer.model_max_length = max_length
    if spec.template.kind == "text":
        tokenizer.chat_template = chat_template(spec.template)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    tokenizer.save_pretrained(out_dir)

    tensors = hf_tensors(model, head_format)
    write_file(os.path.join(out_dir, "model.safetensors"), tensors, {"format": "pt"})
    dtype = str(next(iter(tensors.values())).dtype)
    config = {
        **spec.backbone.to_hf_dict(),
        "architectures": ["Qwen3ForCausalLM" if causal else "Qwen3ForSequenceClassification"],
        "pad_token_id": pad_id,
        "dtype": "bfloat16" if dtype == "bfloat16" else dtype,
        "transformers_version": _version("transformers"),
        "querit_jax": {
            "template": spec.template.to_dict(),
            "head": spec.head.to_dict(),
            "pooling": "last real token; pad_token_id never occurs in rendered inputs",
            "max_length": max_length,
            "max_query_tokens": spec.max_query_tokens,
            "trained_compute_dtype": spec.backbone.dtype,
        },
    }
    if not causal:
        config.update({"num_labels": 1, "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}})
    write_json(os.path.join(out_dir, "config.json"), config)
    _write_sentence_transformers(out_dir, spec, causal)
    return out_dir


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _write_sentence_transformers(out_dir: str, spec, causal: bool) -> None:
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
            os.path.join(out_dir, "1_LogitScore", "config.json"),
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
    write_json(os.path.join(out_dir, "modules.json"), modules)
    write_json(os.path.join(out_dir, "sentence_bert_config.json"), bert)
    write_json(
        os.path.join(out_dir, "config_sentence_transformers.json"),
        {
            "model_type": "CrossEncoder",
            "activation_fn": "torch.nn.modules.linear.Identity",
            "prompts": {},
            "default_prompt_name": None,
        },
    )

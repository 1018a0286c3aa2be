"""Release export: a Hugging Face directory with its model card, ready to check and publish.

`convert.hf_export` writes the weights, config and tokenizer; this adds the card (README.md: Hub
metadata, intended use, loading snippets, the evaluation table, the merge recipe), which is built
before anything is written, so a bad report fails the export without touching `out_dir`.

Two entry points, one writer: `export_hf` for a model in memory (`LoadedModel`), `export_checkpoint`
for a model checkpoint, streamed tensor by tensor (each restored on its own from the Orbax
checkpoint, converted, cast and appended to the current safetensors shard), so host memory holds one
shard and one tensor, never the model.
"""

from querit_jax import storage
from querit_jax.convert import hf_export
from querit_jax.models.checkpoint import open_model
from querit_jax.release import model_card

MAX_SHARD_BYTES = hf_export.MAX_SHARD_BYTES


def export_hf(
    model,
    out_dir: str,
    head_format: str | None = None,
    max_length: int | None = None,
    eval_report: str | None = None,
    *,
    dtype: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    **card,
) -> str:
    """Writes a Hugging Face directory for `model`, model card included. Returns out_dir.

    Args:
      model: a `LoadedModel`, or a `checkpoint.StoredModel` (see `export_checkpoint`). head_format:
      rerankers: "seq_cls" (default) or "causal_lm" (yes/no models); embedders: "embed".
      eval_report: report.json for the card's evaluation table (default: the one beside the model).
      dtype: weights' dtype ("bfloat16" for release, "float32"); None: the parameters' own.
      max_shard_bytes: the largest safetensors file (5 GB); more weights go to numbered shards.
      card: model card fields (license, language, base_model, title), see model_card.render.
    """
    head_format = hf_export.check_head_format(model.spec, head_format)
    card["title"] = card.get("title") or storage.basename(out_dir)
    readme = model_card.card_text(model, head_format, eval_report, **card)
    return hf_export.write_hf_dir(
        model,
        out_dir,
        head_format,
        max_length,
        readme,
        dtype=dtype,
        max_shard_bytes=max_shard_bytes,
    )


def export_checkpoint(path: str, out_dir: str, *, dtype: str | None = "bfloat16", **kwargs) -> str:
    """`export_hf` for the model checkpoint at `path` (local or gs://), streamed from disk."""
    return export_hf(open_model(path), out_dir, dtype=dtype, **kwargs)


def parse_size(text: str) -> int:
    """'5GB' / '500MB' / '2GiB' / '1000000' -> bytes (transformers' max_shard_size spellings)."""
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9}
    raw = str(text).strip().upper()
    for unit, factor in units.items():
        if raw.endswith(unit):
            return int(float(raw[: -len(unit)]) * factor)
    return int(raw.rstrip("B"))

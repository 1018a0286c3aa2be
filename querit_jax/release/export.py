"""Release export: a Hugging Face directory with its model card, ready to check and publish.

`convert.hf_export` writes the weights, config and tokenizer; this adds the card (README.md: Hub
metadata, intended use, loading snippets, the evaluation table, the merge recipe), which is built
before anything is written, so a bad report fails the export without touching `out_dir`.
"""

from querit_jax import storage
from querit_jax.convert import hf_export
from querit_jax.models.spec import LoadedModel
from querit_jax.release import model_card


def export_hf(
    model: LoadedModel,
    out_dir: str,
    head_format: str | None = None,
    max_length: int | None = None,
    eval_report: str | None = None,
    **card,
) -> str:
    """Writes a Hugging Face directory for `model`, model card included. Returns out_dir.

    Args:
      head_format: rerankers: "seq_cls" (default) or "causal_lm" (yes/no models); embedders: "embed".
      eval_report: report.json for the card's evaluation table (default: the one beside the model).
      card: model card fields (license, language, base_model, title), see model_card.render.
    """
    head_format = hf_export.check_head_format(model.spec, head_format)
    card["title"] = card.get("title") or storage.basename(out_dir)
    readme = model_card.card_text(model, head_format, eval_report, **card)
    return hf_export.write_hf_dir(model, out_dir, head_format, max_length, readme)

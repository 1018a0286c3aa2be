"""The model card (README.md) of an exported Hugging Face directory.

Hub metadata (YAML front matter written by huggingface_hub's ModelCardData), what the model is for,
how to load it with sentence-transformers and with plain transformers (the snippets use the exported
prompt template and are executed by the tests), the evaluation table of a report written by
`querit_jax.eval.report` (`--eval_report`, or the trainer's `<workdir>/report.json` when the model
is that workdir's `model/`; a report.json elsewhere in a parent directory describes other models and
is never used), and the merge recipe when the checkpoint was produced by `querit_jax.merge` (its
manifest, read defensively: the card quotes its one-sentence summary and lists the method, the
inputs and `t`; whatever else the manifest holds stays in the manifest).
"""

import json
import re

from querit_jax import storage
from querit_jax.data.io import read_json
from querit_jax.eval import report as report_lib

TAGS = ["reranker", "cross-encoder", "querit_jax"]
DEFAULT_LICENSE = "apache-2.0"
MODEL_ID_PLACEHOLDER = "MODEL_ID"
# ISO 639-1 codes recognised in dataset names (`xquad_r/es/test` -> es) for the `language` metadata.
_LANGUAGES = set(
    "af am ar az be bg bn bs ca cs cy da de el en es et eu fa fi fr ga gl gu he hi hr hu hy id is "
    "it "
    "ja jv ka kk km kn ko lt lv mk ml mn mr ms my ne nl no pa pl ps pt ro ru si sk sl so sq sr sv "
    "sw "
    "ta te th tl tr uk ur uz vi yo zh".split()
)


def manifest_name() -> str:
    """The merge manifest's file name (querit_jax.merging.MANIFEST_NAME when that module exists)."""
    try:
        from querit_jax.merging import MANIFEST_NAME

        return MANIFEST_NAME
    except ImportError:
        return "merge_manifest.json"


def find_merge_manifest(model_path: str) -> dict | None:
    """The manifest `querit_jax.merge` writes into a merged checkpoint; None for other models."""
    path = storage.join(model_path, manifest_name())
    return read_json(path) if storage.isfile(path) else None


def languages_of(report: dict | None) -> list[str]:
    """Language codes that are a path component of the report's dataset names (`es/test`)."""
    found = []
    for name in (report or {}).get("datasets", {}):
        for part in re.split(r"[/:]", name.lower()):
            if part in _LANGUAGES and part not in found:
                found.append(part)
    return found


def base_model_of(metadata: dict) -> str | None:
    """The Hub id the model was initialised from, when it was one (not a local directory)."""
    init = metadata.get("training", {}).get("config", {}).get("model", {}).get("init_from") or ""
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", init) and not storage.exists(init):
        return init
    return metadata.get("base_model")


def metadata_yaml(
    kind: str, language: list[str], license: str, base_model: str | None, extra_tags=()
) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        library_name="sentence-transformers",
        pipeline_tag="text-ranking" if kind != "embed" else "sentence-similarity",
        tags=[*TAGS, *extra_tags] if kind != "embed" else ["embedder", "querit_jax", *extra_tags],
        language=language or None,
        license=license,
        base_model=base_model,
    )
    return data.to_yaml()


def _describe(spec, n_params: int, head_format: str) -> str:
    arch = {
        "qwen3": "Qwen3 decoder",
        "qwen3_moe": "Qwen3-MoE decoder",
        "bert": "BERT encoder",
        "xlmr": "XLM-RoBERTa encoder",
    }.get(spec.family, spec.family)
    head = {
        "score": "a linear score head",
        "yes_no": "the Qwen3-Reranker yes/no head (score = logit(yes) - logit(no))",
        "embed": "pooled embeddings",
    }.get(spec.head.kind, spec.head.kind)
    exported = {
        "seq_cls": "exported as a single-logit sequence classifier",
        "causal_lm": "exported as a causal LM read at the last position",
        "embed": "exported as a bare encoder with sentence-transformers pooling",
    }[head_format]
    return (
        f"A {arch} with {head} ({n_params / 1e6:.1f}M parameters, {spec.backbone.num_layers} "
        "layers, "
        f"hidden size {spec.backbone.hidden_size}), {exported}. Inputs up to {spec.max_length} "
        "tokens."
    )


def intended_use(kind: str) -> str:
    if kind == "embed":
        return (
            "First-stage retrieval: embed queries (with the `query` prompt) and documents, rank by "
            "similarity. Not a reranker."
        )
    return (
        "Reranking the top candidates (typically 20-100) of a first-stage retriever such as BM25 "
        "or a "
        "dense retriever, for multilingual search and retrieval-augmented generation. The model "
        "reads "
        "a (query, document) pair and returns one relevance score: higher is more relevant. Scores "
        "are raw logits, comparable between documents of the same query, not calibrated "
        "probabilities. Out of scope: generation, classification of single texts, and languages or "
        "domains far from the evaluation below without checking them first."
    )


def transformers_snippet(spec, head_format: str) -> str:
    """Runnable code scoring pairs with transformers alone (no querit_jax, no
    sentence-transformers)."""
    lines = [
        "import torch",
        "from transformers import AutoTokenizer, "
        + (
            "AutoModelForCausalLM"
            if head_format == "causal_lm"
            else "AutoModelForSequenceClassification"
        ),
        "",
        f'model_id = "{MODEL_ID_PLACEHOLDER}"',
        # The score is read at the last position: pad on the left.
        'tokenizer = AutoTokenizer.from_pretrained(model_id, padding_side="left")'
        if head_format == "causal_lm"
        else "tokenizer = AutoTokenizer.from_pretrained(model_id)",
    ]
    if head_format == "causal_lm":
        lines.append("model = AutoModelForCausalLM.from_pretrained(model_id).eval()")
    else:
        lines.append("model = AutoModelForSequenceClassification.from_pretrained(model_id).eval()")
    lines += [
        'pairs = [("How many points did the defense allow?", "The defense gave up just 308 '
        'points."),',
        '         ("¿Cuántos puntos permitió la defensa?", '
        '"La defensa permitió solo 308 puntos.")]',
    ]
    if spec.template.kind == "text":
        lines += [
            "# The exported chat template renders the prompt from a query and a document message.",
            "texts = [tokenizer.apply_chat_template(",
            '    [{"role": "query", "content": q}, {"role": "document", "content": d}], '
            "tokenize=False)",
            "    for q, d in pairs]",
            "batch = tokenizer(texts, add_special_tokens=False, padding=True, truncation=True,",
            '                  return_tensors="pt")',
        ]
    else:
        lines += [
            "queries, documents = zip(*pairs)",
            "batch = tokenizer(list(queries), list(documents), padding=True, truncation=True,",
            '                  return_tensors="pt")',
        ]
    lines.append("with torch.no_grad():")
    if head_format == "causal_lm":
        lines += [
            "    logits = model(**batch).logits[:, -1]",
            f"    scores = logits[:, {spec.head.yes_token_id}] - logits[:, {spec.head.no_token_id}]"
            "  # yes - no",
        ]
    else:
        lines.append("    scores = model(**batch).logits[:, 0]")
    lines.append("print(scores.tolist())")
    return "\n".join(lines)


def usage(spec, head_format: str) -> str:
    if spec.head.kind == "embed":
        return "\n".join(
            [
                "```python",
                "from sentence_transformers import SentenceTransformer",
                "",
                f'model = SentenceTransformer("{MODEL_ID_PLACEHOLDER}")',
                'q = model.encode(["How many points did the defense allow?"], prompt_name="query")',
                'd = model.encode(["The defense gave up just 308 points."], '
                'prompt_name="document")',
                "print(model.similarity(q, d))",
                "```",
            ]
        )
    t = spec.template
    prompt = (
        "Each pair is rendered as one sequence by the exported chat template:\n\n"
        f"```text\n{t.prefix}{{query}}{t.middle}{{document}}{t.suffix}\n```"
        if t.kind == "text"
        else "Pairs are encoded with the tokenizer's own pair encoding ([CLS] query [SEP] document "
        "[SEP])."
    )
    return "\n".join(
        [
            prompt,
            "",
            "### sentence-transformers",
            "",
            "```python",
            "from sentence_transformers import CrossEncoder",
            "",
            f'model = CrossEncoder("{MODEL_ID_PLACEHOLDER}")  # identity activation: raw scores',
            'scores = model.predict([("How many points did the defense allow?", '
            '"The defense gave up just 308 points.")])',
            'ranking = model.rank("How many points did the defense allow?", '
            '["doc one", "doc two"])',
            "```",
            "",
            "### transformers",
            "",
            "```python",
            transformers_snippet(spec, head_format),
            "```",
        ]
    )


def fusion_section(fusion: dict) -> str:
    """How to combine the reranker with its first stage, with the weight recorded in the model."""
    method = fusion.get("method", "none")
    where = fusion.get("chosen_on") or "held-out synthetic queries"
    if method == "rrf":
        rule = (
            f"reciprocal-rank fusion, `1 / ({fusion.get('rrf_k', 60)} + rank)` summed over both "
            "rankings"
        )
        code = "fused = rrf(first_stage_ranking, reranker_ranking)"
    else:
        alpha = float(fusion.get("alpha", 1.0))
        rule = (
            f"`{alpha:.2f} * minmax(reranker) + {1 - alpha:.2f} * minmax(first stage)`, both "
            "scores "
            "min-max normalised over each query's candidates"
        )
        code = "\n".join(
            [
                "def minmax(xs):",
                "    lo, hi = min(xs), max(xs)",
                "    return [(x - lo) / (hi - lo) if hi > lo else 0.0 for x in xs]",
                "",
                f"fused = [{alpha:.2f} * r + {1 - alpha:.2f} * f "
                "for r, f in zip(minmax(reranker_scores), minmax(first_stage_scores))]",
            ]
        )
    return "\n".join(
        [
            "Rerank the first stage's candidates and combine both scores per query: "
            f"{rule}. The weight was chosen without labels on {where}, never on test questions; "
            "`python -m querit_jax.rerank` computes it (`fused_score`) when the input lines carry "
            "`first_stage_score`.",
            "",
            "```python",
            code,
            "```",
        ]
    )


def evaluation_section(report: dict) -> str:
    first = next(iter(report["datasets"].values()))
    bits = [f"{report['first_stage']} first stage"]
    if "top_k" in first:
        bits.append(f"top-{first['top_k']} candidates reranked")
    if "queries" in first:
        bits.append(f"{first['queries']} queries per dataset")
    return "\n".join(
        [
            f"{report['metric']} ({'; '.join(bits)}; every model reranks the same candidates):",
            "",
            report_lib.markdown_table(report),
        ]
    )


def _short(value, limit: int = 300) -> str | None:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else None


def _input_line(item) -> str:
    if not isinstance(item, dict):
        return f"  - `{str(item).rstrip('/').rsplit('/', 1)[-1]}`"
    name = item.get("path") or item.get("name") or item.get("model") or "?"
    extra = [item.get("role"), f"weight {item['weight']}" if "weight" in item else None]
    if item.get("sha256"):
        extra.append(f"sha256 `{item['sha256'][:16]}…`")
    extra = ", ".join(e for e in extra if e)
    # Base names only: a card must not publish local directory layouts.
    return f"  - `{str(name).rstrip('/').rsplit('/', 1)[-1]}`" + (f" ({extra})" if extra else "")


def merge_section(manifest: dict) -> str:
    """The manifest's one-sentence summary, then method, inputs, t (and filters, weights); the
    per-tensor details stay in the manifest."""
    summary = manifest.get("summary")
    summary = summary.strip() if isinstance(summary, str) else ""
    lines = []
    if "method" in manifest:
        lines.append(f"- method: `{manifest['method']}`")
    inputs = manifest.get("inputs") or manifest.get("models") or []
    if inputs:
        lines += ["- inputs:", *(_input_line(item) for item in inputs)]
    params = manifest.get("parameters") if isinstance(manifest.get("parameters"), dict) else {}
    fields = {**{k: manifest[k] for k in ("t", "filters") if k in manifest}, **params}
    for key in ("t", "step_t", "weights", "normalize_weights", "filters", "vocab_policy"):
        value = fields.get(key)
        if value not in (None, [], {}) and (text := _short(value)) is not None:
            lines.append(f"- {key}: `{text}`")
    if not lines:
        lines.append("- see the merge manifest of the checkpoint")
    return "\n".join(
        [
            "Consolidated by spherical linear interpolation of checkpoints (`python -m "
            "querit_jax.merge`).",
            *(["", summary] if summary else []),
            "",
            "Recipe (t is per tensor, 0 = the first (base) input):",
            "",
            *lines,
        ]
    )


def render(
    model,
    head_format: str,
    eval_report: dict | None = None,
    manifest: dict | None = None,
    license: str | None = None,
    language: list[str] | None = None,
    base_model: str | None = None,
    title: str = "querit_jax reranker",
    model_id: str | None = None,
) -> str:
    """The card's text. `model` is a querit_jax LoadedModel; `model_id` (a Hub repo id) goes into
    the loading snippets, which otherwise say MODEL_ID."""
    import jax
    import numpy as np

    spec = model.spec
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.params))
    metadata = getattr(model, "metadata", {}) or {}
    license = license or metadata.get("license") or DEFAULT_LICENSE
    language = language or languages_of(eval_report)
    base_model = base_model or base_model_of(metadata)
    extra_tags = ["merge", "slerp"] if manifest else []
    parts = [
        "---",
        metadata_yaml(spec.head.kind, language, license, base_model, extra_tags).rstrip(),
        "---",
        "",
        f"# {title}",
        "",
        _describe(spec, n_params, head_format),
        "",
        "## Intended use",
        "",
        intended_use(spec.head.kind),
        "",
        "## How to use",
        "",
        usage(spec, head_format),
    ]
    fusion = metadata.get("fusion") or {}
    if fusion.get("method", "none") != "none" and spec.head.kind != "embed":
        parts += ["", "### With the first stage", "", fusion_section(fusion)]
    if eval_report:
        parts += ["", "## Evaluation", "", evaluation_section(eval_report)]
    if manifest:
        parts += ["", "## Merge recipe", "", merge_section(manifest)]
    parts += ["", "Exported with querit_jax (JAX/Flax NNX).", ""]
    text = "\n".join(parts)
    return text.replace(MODEL_ID_PLACEHOLDER, model_id) if model_id else text


def card_text(
    model, head_format: str, eval_report_path: str | None = None, title: str = "", **kwargs
) -> str:
    """The card for `model`; the report defaults to the trainer's report of the training workdir
    holding the checkpoint (`report_lib.find_report`), the merge recipe comes from the checkpoint's
    merge manifest if it has one.

    Raises:
      FileNotFoundError, DataFormatError: when the report is missing or is not a report.
    """
    path = eval_report_path or report_lib.find_report(model.path)
    report = report_lib.load_report(path) if path else None
    manifest = find_merge_manifest(model.path)
    return render(model, head_format, report, manifest, title=title or "querit_jax model", **kwargs)

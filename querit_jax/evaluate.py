"""Rerank a first stage and report metrics, for one or several models side by side:

    python -m querit_jax.evaluate --model=PATH[,PATH...] --data=DATASET_DIR[,DIR...] [--run=bm25]
    [--top_k=100]

`--run` is a TREC or JSON run file (one, or one per dataset), or `bm25` to compute BM25 with an
analyser that does not depend on the models (`--bm25_tokenizer`, the built-in Unicode one by
default); every model reranks the same candidates. `--fusion` also reports each model fused with the
first stage: `model` (the weight recorded with each model, chosen label-free during adaptation),
`interpolate` (with `--alpha`) or `rrf`. Prints the first stage's and the reranked metrics (nDCG@10,
MRR@10, Recall@100) and writes them as JSON (`--output`, default `<dataset>_<split>.metrics.json` in
the current directory; one model on one dataset gives the summary itself, otherwise {"results":
[summary per model and dataset]}), plus a report (`report.json`, `report.md`, `report.png`: nDCG@10
per dataset, first stage vs each model) in `--report_dir` (default: beside the metrics JSON as
`<name>.report.{json,md,png}`), and the reranked run (`--rerank_output`, one model and dataset
only).
"""

import json

from absl import flags

from querit_jax import cli, storage
from querit_jax.data.io import write_json
from querit_jax.data.runs import write_trec
from querit_jax.data.sources import dataset_name
from querit_jax.errors import ConfigError, DataFormatError
from querit_jax.eval import report as report_lib
from querit_jax.eval.api import evaluate_models
from querit_jax.eval.fusion import Fusion
from querit_jax.training.writers import get_logger

_MODEL = flags.DEFINE_multi_string(
    "model",
    None,
    "Model checkpoint, training workdir or Hugging Face directory; several (comma-separated or "
    "repeated) are compared side by side.",
)
_DATA = flags.DEFINE_multi_string(
    "data", None, "BEIR-layout dataset directory (several: comma-separated or repeated)."
)
_SPLIT = flags.DEFINE_string("split", "test", "qrels split.")
_RUN = flags.DEFINE_string(
    "run", "bm25", "First-stage run (TREC or JSON; comma-separated: one per dataset), or 'bm25'."
)
_TOP_K = flags.DEFINE_integer("top_k", 100, "First-stage depth to rerank.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Pairs per forward pass.")
_MAX_LENGTH = flags.DEFINE_integer(
    "max_length", None, "Token budget per pair (default: the model's)."
)
_MAX_QUERIES = flags.DEFINE_integer(
    "max_queries", 0, "Evaluate only the first N judged queries (0 = all)."
)
_LABELS = flags.DEFINE_list("labels", None, "Column names of the models in the report.")
_OUTPUT = flags.DEFINE_string("output", None, "Metrics JSON path.")
_REPORT_DIR = flags.DEFINE_string(
    "report_dir", None, "Write report.{json,md,png} here (default: beside --output)."
)
_RERANK_OUTPUT = flags.DEFINE_string("rerank_output", None, "Where to write the reranked TREC run.")
_BM25_TOKENIZER = flags.DEFINE_string(
    "bm25_tokenizer", "unicode", "BM25 analyser: 'unicode' (built in) or a tokenizer directory."
)
_FUSION = flags.DEFINE_enum(
    "fusion",
    "model",
    ["none", "model", "interpolate", "rrf"],
    "Also report each model fused with the first stage: the fusion recorded with the model, an "
    "interpolation with --alpha, or reciprocal-rank fusion.",
)
_ALPHA = flags.DEFINE_float("alpha", 0.5, "--fusion=interpolate: the reranker's weight in [0, 1].")


def _split_list(values: list[str]) -> list[str]:
    return [v for value in values for v in value.split(",") if v]


def _fusion():
    if _FUSION.value in ("none", "model"):
        return None if _FUSION.value == "none" else "model"
    try:
        return Fusion(method=_FUSION.value, alpha=_ALPHA.value)
    except ValueError as e:
        raise ConfigError(f"--fusion/--alpha: {e}") from None


def main(argv):
    del argv
    log = get_logger().info
    models, data = _split_list(_MODEL.value), _split_list(_DATA.value)
    if _RERANK_OUTPUT.value and (len(models) > 1 or len(data) > 1):
        raise DataFormatError("--rerank_output needs a single --model and a single --data.")
    runs = _split_list([_RUN.value])
    summaries, reranked = evaluate_models(
        models,
        data,
        runs,
        _SPLIT.value,
        _TOP_K.value,
        _BATCH.value,
        _MAX_LENGTH.value,
        _MAX_QUERIES.value,
        labels=_LABELS.value,
        bm25_tokenizer=_BM25_TOKENIZER.value,
        fusion=_fusion(),
    )
    name = dataset_name(data[0], _SPLIT.value).replace("/", "_").replace(":", "_")
    output = _OUTPUT.value or f"{name}.metrics.json"
    write_json(output, summaries[0] if len(summaries) == 1 else {"results": summaries})
    if _RERANK_OUTPUT.value:
        write_trec(next(iter(reranked.values())), _RERANK_OUTPUT.value, tag="querit_jax")
    first_stage = "BM25" if set(runs) == {"bm25"} else "first stage"
    report = report_lib.from_summaries(summaries, first_stage)
    if _REPORT_DIR.value:
        paths = report_lib.write_report(report, _REPORT_DIR.value)
    else:
        stem = storage.basename(output).removesuffix(".json").removesuffix(".metrics")
        paths = report_lib.write_report(report, storage.dirname(output), f"{stem}.report")
    for s in summaries:
        log(
            f"{s['label']} on {s['dataset']}: "
            + json.dumps({"first_stage": s["first_stage"], "reranked": s["reranked"]}, indent=2)
        )
    log(f"{report['metric']}\n{report_lib.markdown_table(report)}")
    log(f"Metrics written to {output}; report: {', '.join(paths.values())}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["model", "data"])
    cli.run(main)

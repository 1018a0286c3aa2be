"""Rerank a first stage and report metrics:

    python -m querit_jax.evaluate --model=PATH --data=DATASET_DIR --run=FIRST_STAGE_RUN [--top_k=100]

`--run` is a TREC or JSON run file, or `bm25` to compute BM25 with the model's tokenizer. Prints the
first stage's and the reranked metrics (nDCG@10, MRR@10, Recall@100) and writes them as JSON
(`--output`, default `<dataset>_<split>.metrics.json` in the current directory), plus the reranked run (`--rerank_output`).
"""

import json

from absl import flags

from querit_jax import cli
from querit_jax.data.io import write_json
from querit_jax.data.sources import dataset_name
from querit_jax.eval.api import evaluate_model
from querit_jax.eval.runs import write_trec
from querit_jax.training.writers import get_logger

_MODEL = flags.DEFINE_string(
    "model", None, "Model checkpoint, training workdir or Hugging Face directory."
)
_DATA = flags.DEFINE_string("data", None, "BEIR-layout dataset directory.")
_SPLIT = flags.DEFINE_string("split", "test", "qrels split.")
_RUN = flags.DEFINE_string("run", "bm25", "First-stage run (TREC or JSON), or 'bm25'.")
_TOP_K = flags.DEFINE_integer("top_k", 100, "First-stage depth to rerank.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Pairs per forward pass.")
_MAX_LENGTH = flags.DEFINE_integer(
    "max_length", None, "Token budget per pair (default: the model's)."
)
_MAX_QUERIES = flags.DEFINE_integer(
    "max_queries", 0, "Evaluate only the first N judged queries (0 = all)."
)
_OUTPUT = flags.DEFINE_string("output", None, "Metrics JSON path.")
_RERANK_OUTPUT = flags.DEFINE_string("rerank_output", None, "Where to write the reranked TREC run.")


def main(argv):
    del argv
    log = get_logger().info
    summary, reranked = evaluate_model(
        _MODEL.value,
        _DATA.value,
        _RUN.value,
        _SPLIT.value,
        _TOP_K.value,
        _BATCH.value,
        _MAX_LENGTH.value,
        _MAX_QUERIES.value,
    )
    name = dataset_name(_DATA.value, _SPLIT.value).replace("/", "_").replace(":", "_")
    output = _OUTPUT.value or f"{name}.metrics.json"
    write_json(output, summary)
    if _RERANK_OUTPUT.value:
        write_trec(reranked, _RERANK_OUTPUT.value, tag="querit_jax")
    log(
        json.dumps(
            {"first_stage": summary["first_stage"], "reranked": summary["reranked"]}, indent=2
        )
    )
    log(f"Metrics written to {output}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["model", "data"])
    cli.run(main)

"""First-stage retrieval:

    python -m querit_jax.retrieve --model=PATH|bm25 --data=DATASET_DIR --top_k=100 --output=run.trec

PATH is an embedder (a model checkpoint, or a Hugging Face / sentence-transformers directory such as
all-MiniLM-L6-v2); `bm25` uses bm25s with the built-in multilingual analyser
(`--bm25_tokenizer=PATH` uses a Hugging Face tokenizer's subwords instead). The queries are those
judged in the qrels of `--split` (BEIR layout); writes a TREC run and prints its nDCG@10, MRR@10 and
Recall@100.
"""

import json

from absl import flags

from querit_jax import cli
from querit_jax.data import beir
from querit_jax.data.runs import write_trec
from querit_jax.eval import metrics
from querit_jax.loading import first_stage_run
from querit_jax.training.writers import get_logger

_MODEL = flags.DEFINE_string("model", None, "Embedder path, or 'bm25'.")
_DATA = flags.DEFINE_string("data", None, "BEIR-layout dataset directory.")
_SPLIT = flags.DEFINE_string("split", "test", "qrels split whose queries are retrieved.")
_TOP_K = flags.DEFINE_integer("top_k", 100, "Documents per query.")
_OUTPUT = flags.DEFINE_string("output", None, "TREC run file to write.")
_BM25_TOKENIZER = flags.DEFINE_string(
    "bm25_tokenizer", "unicode", "'unicode' or a tokenizer directory."
)
_BATCH = flags.DEFINE_integer("batch_size", 128, "Texts per forward pass (embedders).")
_MAX_LENGTH = flags.DEFINE_integer(
    "max_length", None, "Token budget per text (default: the model's)."
)


def main(argv):
    del argv
    log = get_logger().info
    dataset = beir.load_beir(_DATA.value, _SPLIT.value)
    run = first_stage_run(
        _MODEL.value, dataset, _TOP_K.value, _BM25_TOKENIZER.value, _BATCH.value, _MAX_LENGTH.value
    )
    write_trec(run, _OUTPUT.value, tag=_MODEL.value.rstrip("/").split("/")[-1])
    means, _ = metrics.evaluate(dataset.qrels, run)
    log(json.dumps({"queries": len(run), "documents": len(dataset.corpus), **means}, indent=2))
    log(f"Run written to {_OUTPUT.value}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["model", "data", "output"])
    cli.run(main)

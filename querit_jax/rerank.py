"""Score (query, document) pairs: `python -m querit_jax.rerank --model=PATH --input=pairs.jsonl --output=scores.jsonl`.

Input lines are `{"query": str, "document": str}` (optional `"id"`); output lines are `{"score": float}`
(with the `"id"` when given) in input order. PATH is a model checkpoint, a training workdir or a Hugging
Face directory.
"""

from absl import flags

from querit_jax import cli
from querit_jax.eval.api import rerank_file
from querit_jax.training.writers import get_logger

_MODEL = flags.DEFINE_string(
    "model", None, "Model checkpoint, training workdir or Hugging Face directory."
)
_INPUT = flags.DEFINE_string("input", None, "JSONL of {query, document[, id]}.")
_OUTPUT = flags.DEFINE_string("output", None, "JSONL of {score[, id]}, one line per input line.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Pairs per forward pass.")
_MAX_LENGTH = flags.DEFINE_integer(
    "max_length", None, "Token budget per pair (default: the model's)."
)


def main(argv):
    del argv
    scores = rerank_file(_MODEL.value, _INPUT.value, _OUTPUT.value, _BATCH.value, _MAX_LENGTH.value)
    get_logger().info(f"Scored {len(scores)} pairs -> {_OUTPUT.value}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["model", "input", "output"])
    cli.run(main)

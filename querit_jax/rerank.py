"""Score (query, document) pairs: `python -m querit_jax.rerank --model=PATH --input=pairs.jsonl
--output=scores.jsonl`.

Input lines are `{"query": str, "document": str}` (optional `"id"`); output lines are `{"score":
float}` (with the `"id"` when given) in input order. PATH is a model checkpoint, a training workdir,
a Hugging Face directory (local or gs://) or a Hub id.

When every input line also carries the first stage's score (`"first_stage_score"`, and `"qid"` to
group a query's candidates; the query text groups them otherwise), each output line also gets
`"fused_score"`: the reranker combined with the first stage (per-query min-max normalised
interpolation, or reciprocal-rank fusion), with the weight recorded in the model (chosen label-free
during adaptation) unless `--fusion`/`--alpha` say otherwise.
"""

from absl import flags

from querit_jax import cli
from querit_jax.errors import ConfigError
from querit_jax.eval.api import rerank_file
from querit_jax.eval.fusion import Fusion
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
_FUSION = flags.DEFINE_enum(
    "fusion", "model", ["none", "model", "interpolate", "rrf"], "How fused_score is computed."
)
_ALPHA = flags.DEFINE_float("alpha", 0.5, "--fusion=interpolate: the reranker's weight in [0, 1].")


def main(argv):
    del argv
    fusion = _FUSION.value
    if fusion in ("none", "interpolate", "rrf"):
        try:
            fusion = Fusion(method=fusion, alpha=_ALPHA.value)
        except ValueError as e:
            raise ConfigError(f"--fusion/--alpha: {e}") from None
    scores = rerank_file(
        _MODEL.value, _INPUT.value, _OUTPUT.value, _BATCH.value, _MAX_LENGTH.value, fusion
    )
    get_logger().info(f"Scored {len(scores)} pairs -> {_OUTPUT.value}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["model", "input", "output"])
    cli.run(main)

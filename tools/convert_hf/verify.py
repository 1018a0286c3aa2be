"""Check score parity between a querit_jax model and a Hugging Face directory.

  python tools/convert_hf/verify.py --checkpoint=CKPT --hf_dir=DIR [--pairs=pairs.jsonl]
  [--tolerance=1e-4]

Scores the same pairs (built-in multilingual samples, or {"query", "document"} JSONL) with JAX, with
transformers' AutoModelForSequenceClassification and with sentence-transformers' CrossEncoder,
prints the largest differences and exits non-zero above the tolerance.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import flags

from querit_jax import cli
from querit_jax.eval.api import read_pairs
from querit_jax.loading import load_model
from querit_jax.release.verify import SAMPLE_PAIRS, verify

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Model checkpoint, training workdir or HF directory."
)
_HF_DIR = flags.DEFINE_string("hf_dir", None, "Exported Hugging Face directory.")
_PAIRS = flags.DEFINE_string(
    "pairs", None, "JSONL of {query, document}; default: built-in samples."
)
_TOLERANCE = flags.DEFINE_float("tolerance", 1e-4, "Largest accepted absolute score difference.")
_ST = flags.DEFINE_bool(
    "sentence_transformers", True, "Also check sentence-transformers CrossEncoder."
)


def main(argv):
    del argv
    pairs = (
        [(r["query"], r["document"]) for r in read_pairs(_PAIRS.value)]
        if _PAIRS.value
        else SAMPLE_PAIRS
    )
    report = verify(load_model(_CHECKPOINT.value), _HF_DIR.value, pairs, _ST.value)
    print(json.dumps({k: v for k, v in report.items() if k != "jax_scores"}, indent=2))
    worst = max(v for k, v in report.items() if k.startswith("max_abs_diff"))
    if worst > _TOLERANCE.value:
        sys.exit(f"Score parity check failed: max |diff| {worst:.2e} > {_TOLERANCE.value:.0e}.")
    print("OK")


if __name__ == "__main__":
    flags.mark_flags_as_required(["checkpoint", "hf_dir"])
    cli.run(main)

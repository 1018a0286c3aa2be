"""querit_jax model (checkpoint, training workdir or HF dir) -> Hugging Face directory.

  python tools/convert_hf/export_hf.py --checkpoint=CKPT --out=DIR [--head_format=seq_cls|causal_lm] [--verify]

Writes config.json (pad_token_id set to a token that never occurs in inputs, so transformers pools the
same last token), model.safetensors, the tokenizer with a chat template rendering the pair template, and
the sentence-transformers CrossEncoder files (identity activation: raw scores). `--verify` reloads the
directory in transformers and sentence-transformers and compares scores (needs torch).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import flags

from querit_jax import cli
from querit_jax.convert import hf_export
from querit_jax.models import api

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Model checkpoint, training workdir or HF directory."
)
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_FORMAT = flags.DEFINE_enum(
    "head_format",
    "seq_cls",
    ["seq_cls", "causal_lm"],
    "seq_cls: Qwen3ForSequenceClassification; causal_lm: Qwen3ForCausalLM + LogitScore (yes/no models).",
)
_MAX_LENGTH = flags.DEFINE_integer(
    "max_length", None, "tokenizer model_max_length (default: the model's)."
)
_VERIFY = flags.DEFINE_bool(
    "verify", False, "Reload with transformers/sentence-transformers and compare scores."
)
_TOLERANCE = flags.DEFINE_float("tolerance", 1e-4, "Largest score difference --verify accepts.")


def main(argv):
    del argv
    model = api.load_model(_CHECKPOINT.value)
    out = hf_export.export_hf(
        model, _OUT.value, head_format=_FORMAT.value, max_length=_MAX_LENGTH.value
    )
    print(f"Wrote {out}")
    if _VERIFY.value:
        from querit_jax.convert.verify import verify

        report = verify(model, out)
        print(json.dumps({k: v for k, v in report.items() if k != "jax_scores"}, indent=2))
        worst = max(v for k, v in report.items() if k.startswith("max_abs_diff"))
        if worst > _TOLERANCE.value:
            sys.exit(f"Score parity check failed: max |diff| {worst:.2e} > {_TOLERANCE.value:.0e}.")


if __name__ == "__main__":
    flags.mark_flags_as_required(["checkpoint", "out"])
    cli.run(main)

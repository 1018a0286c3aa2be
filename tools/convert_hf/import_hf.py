"""Hugging Face directory -> querit_jax model checkpoint.

  python tools/convert_hf/import_hf.py --hf_dir=DIR --out=CKPT [--head=auto|score|yes_no]
  [--template=NAME]

Reads safetensors only (pickle is refused), Qwen3ForSequenceClassification / Qwen3ForCausalLM /
Qwen3Model (with or without the `model.` prefix). The checkpoint stores the model config, the pair
template and the tokenizer, so every other command needs only its path.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import flags

from querit_jax import cli
from querit_jax.convert import hf_import
from querit_jax.models.templates import make_template

_HF_DIR = flags.DEFINE_string(
    "hf_dir", None, "Hugging Face model directory (config.json + safetensors)."
)
_OUT = flags.DEFINE_string("out", None, "Output checkpoint directory.")
_HEAD = flags.DEFINE_enum(
    "head", "auto", ["auto", "score", "yes_no"], "Scoring head (auto: by architecture)."
)
_TEMPLATE = flags.DEFINE_string(
    "template", None, "Pair template (default: qwen3_reranker for causal LMs, else qwen3_pair)."
)
_INSTRUCTION = flags.DEFINE_string("instruction", None, "Task instruction for the template.")
_TOKENIZER = flags.DEFINE_string("tokenizer", "", "Tokenizer directory (default: hf_dir).")
_MAX_LENGTH = flags.DEFINE_integer(
    "max_length", None, "Token budget per pair stored with the model (default: recorded or 512)."
)


def main(argv):
    del argv
    template = (
        make_template(_TEMPLATE.value, instruction=_INSTRUCTION.value) if _TEMPLATE.value else None
    )
    out = hf_import.import_hf(
        _HF_DIR.value,
        _OUT.value,
        head=_HEAD.value,
        template=template,
        tokenizer_path=_TOKENIZER.value,
        max_length=_MAX_LENGTH.value,
    )
    print(f"Wrote {out}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["hf_dir", "out"])
    cli.run(main)

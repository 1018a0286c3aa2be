"""querit_jax model (checkpoint, training workdir or HF dir) -> Hugging Face directory.

  python tools/convert_hf/export_hf.py --checkpoint=CKPT --out=DIR [--head_format=seq_cls|causal_lm]
  [--verify]
      [--dtype=bfloat16|float32] [--max_shard_size=5GB]
      [--eval_report=report.json] [--license=apache-2.0] [--language=en,de] [--base_model=ORG/NAME]
      [--push_to_hub --repo_id=ORG/NAME [--private]]

Writes config.json (pad_token_id set to a token that never occurs in inputs, so transformers pools
the same last token), the weights in `--dtype` (bf16 by default) as safetensors shards of at most
`--max_shard_size` (model.safetensors, or model-0000i-of-0000N.safetensors +
model.safetensors.index.json), the tokenizer with a chat template rendering the pair template, and
the sentence-transformers CrossEncoder files (identity activation: raw scores). A model checkpoint
(or a training workdir) is streamed tensor by tensor from disk, so host memory holds one shard,
never the model; a Hugging Face directory or Hub id is loaded first. `--verify` reloads the
directory in transformers and sentence-transformers and compares scores with the JAX model (whose
parameters get the same bf16 rounding as the export; needs torch).

The directory also gets a model card (README.md: Hub metadata, intended use, loading snippets, the
evaluation table of the training workdir's report.json or `--eval_report`, the merge recipe of a
merged checkpoint) and is checked to hold no pickle files and no tokens. `--push_to_hub` uploads it
with the token huggingface_hub finds (HF_TOKEN or `hf auth login`). Without a token, or with
HF_HUB_OFFLINE set, it prints one "not pushed: ..." line and exits 0 (the export itself succeeded);
a push that fails with a token configured is an error (exit 2).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import flags

from querit_jax import cli
from querit_jax.loading import load_model, resolve_model_path
from querit_jax.models.checkpoint import is_model_checkpoint, open_model
from querit_jax.release import publish
from querit_jax.release.export import export_hf, parse_size

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Model checkpoint, training workdir or HF directory."
)
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_FORMAT = flags.DEFINE_enum(
    "head_format",
    "seq_cls",
    ["seq_cls", "causal_lm"],
    "seq_cls: Qwen3ForSequenceClassification; causal_lm: Qwen3ForCausalLM + LogitScore (yes/no "
    "models).",
)
_MAX_LENGTH = flags.DEFINE_integer(
    "max_length", None, "tokenizer model_max_length (default: the model's)."
)
_DTYPE = flags.DEFINE_enum(
    "dtype", "bfloat16", ["bfloat16", "float32", "float16"], "dtype of the exported weights."
)
_MAX_SHARD = flags.DEFINE_string(
    "max_shard_size", "5GB", "Largest safetensors file (e.g. 5GB, 500MB); more go to shards."
)
_VERIFY = flags.DEFINE_bool(
    "verify", False, "Reload with transformers/sentence-transformers and compare scores."
)
_TOLERANCE = flags.DEFINE_float("tolerance", 1e-4, "Largest score difference --verify accepts.")
_EVAL_REPORT = flags.DEFINE_string(
    "eval_report",
    None,
    "report.json for the model card's evaluation table (default: the training workdir's, if any).",
)
_LICENSE = flags.DEFINE_string(
    "license", None, "Model card license (default: the checkpoint's, else apache-2.0)."
)
_LANGUAGE = flags.DEFINE_list(
    "language", None, "Model card languages, ISO 639-1 (default: from the evaluation datasets)."
)
_BASE_MODEL = flags.DEFINE_string("base_model", None, "Hub id of the model it was trained from.")
_PUSH = flags.DEFINE_bool(
    "push_to_hub",
    False,
    "Upload the export to the Hugging Face Hub (token: HF_TOKEN or hf auth login).",
)
_REPO_ID = flags.DEFINE_string("repo_id", None, "Hub repository, e.g. org/querit-reranker.")
_PRIVATE = flags.DEFINE_bool("private", False, "Create the Hub repository as private.")


def push(out: str) -> None:
    """Uploads `out` when a token is configured; otherwise says why not and returns (exit 0)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        print("not pushed: HF_HUB_OFFLINE is set; unset it and rerun with --push_to_hub.")
        return
    if not publish.hub_token():
        print(
            "not pushed: no Hugging Face token configured; set HF_TOKEN (or run `hf auth login`) "
            "and rerun with --push_to_hub."
        )
        return
    url = publish.push_to_hub(out, _REPO_ID.value, private=_PRIVATE.value)
    print(f"Pushed {out} to {url}")


def main(argv):
    del argv
    if _PUSH.value and not _REPO_ID.value:
        raise publish.PublishError("--push_to_hub needs --repo_id=ORG/NAME.")
    path = resolve_model_path(_CHECKPOINT.value)
    # A model checkpoint streams from disk; a Hugging Face directory is converted in memory.
    model = open_model(path) if is_model_checkpoint(path) else load_model(_CHECKPOINT.value)
    out = export_hf(
        model,
        _OUT.value,
        dtype=_DTYPE.value,
        max_shard_bytes=parse_size(_MAX_SHARD.value),
        head_format=_FORMAT.value,
        max_length=_MAX_LENGTH.value,
        eval_report=_EVAL_REPORT.value,
        license=_LICENSE.value,
        language=_LANGUAGE.value,
        base_model=_BASE_MODEL.value,
        title=_REPO_ID.value or os.path.basename(os.path.normpath(_OUT.value)),
        model_id=_REPO_ID.value,
    )
    files = publish.check_publishable(out)
    print(f"Wrote {out} ({len(files)} files; no pickle files, no tokens or secrets)")
    if _VERIFY.value:
        from querit_jax.release.verify import verify

        if not hasattr(model, "graphdef"):  # streamed: the JAX side needs the model in memory
            model = load_model(path)
        report = verify(model, out)
        print(json.dumps({k: v for k, v in report.items() if k != "jax_scores"}, indent=2))
        worst = max(v for k, v in report.items() if k.startswith("max_abs_diff"))
        if worst > _TOLERANCE.value:
            sys.exit(f"Score parity check failed: max |diff| {worst:.2e} > {_TOLERANCE.value:.0e}.")
    if _PUSH.value:
        push(out)


if __name__ == "__main__":
    flags.mark_flags_as_required(["checkpoint", "out"])
    cli.run(main)

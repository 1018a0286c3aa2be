"""Merge task-adapted checkpoints into one model by spherical linear interpolation (SLERP).

  python -m querit_jax.merge --config=configs/merge_slerp.py[:VARIANT] [--config.merge.a=v ...]

Inputs are model checkpoints or training workdirs (their `model/`); the output is a model checkpoint
with a merge_manifest.json recording the inputs (with content hashes), the recipe and the t of every
tensor. The semantics are mergekit's (slerp / multislerp), so a mergekit recipe carries over.

Variants:
  (none)  TPU/GPU host: the Qwen3-0.6B rerankers adapted by configs/adapt_beir.py and
  adapt_miracl.py,
          merged with mergekit's classic recipe (attention and MLP on opposite depth gradients).
  demo    CPU, under a minute: the two demo adaptations of the MiniLM cross-encoder (Spanish,
          adapt_beir.py:demo, and Chinese, adapt_miracl.py:demo) merged half-way into one model.
  tiny    tests: two checkpoints given with --config.merge.models=A,B, t=0.5, no progress bar.
"""

import ml_collections

VARIANTS = (None, "demo", "tiny")


def get_config(arg=None):
    variant = arg or "default"
    if variant not in ("default", "demo", "tiny"):
        raise ValueError(f"Unknown variant {variant!r}; use demo or tiny (or none).")
    c = ml_collections.ConfigDict()
    m = c.merge = ml_collections.ConfigDict()
    # slerp (2 models, the first is the base at t=0), sequential_slerp (fold N models left to right,
    # m = slerp(m, model_k, t_k)) or multislerp (weighted spherical barycentre of N models).
    m.method = "slerp"
    # Model checkpoints or training workdirs, comma-separated (or a list); the first is the base:
    # its architecture, dtype and tokenizer are the output's.
    m.models = "workdirs/adapt_beir/model,workdirs/adapt_miracl/model"
    # Where the merged model checkpoint goes (written to <output>.tmp, renamed when complete).
    m.output = "workdirs/merged/slerp"
    # Interpolation factor in [0, 1]: a number, a depth gradient [t_first_layer, ..., t_last_layer]
    # (embeddings read it at 0, final norm and head at 1), or mergekit filter rules [{"filter":
    # substring, "value": number or gradient}, ..., {"value": default}] (first match wins).
    m.t = (
        [
            {"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]},
            {"filter": "mlp", "value": [1.0, 0.5, 0.7, 0.3, 0.0]},
            {"value": 0.5},
        ]
        if variant == "default"
        else 0.5
    )
    # sequential_slerp: one t spec per step (len(models) - 1); empty = merge.t for every step.
    # t_k = 1 / (k + 2) for step k gives every model about the same share.
    m.step_t = []
    # multislerp: one weight per model (empty = equal) and whether to normalise them to sum to 1.
    m.weights = []
    m.normalize_weights = True
    # multislerp: a common ancestor; if set, the models' differences to it (task vectors) are merged
    # and added back to it, and it provides the output's architecture and tokenizer.
    m.base_model = ""
    # Vocabulary sizes that differ: refuse, or rectify (other models' embedding/LM-head rows are cut
    # or padded with the base's rows to the base's vocabulary).
    m.vocab_policy = "refuse"
    # Where tensors live while merging, as in training's `sharding` section: a rule preset (fsdp,
    # fsdp+tp, fsdp+ep, dp), a mesh (data, fsdp, tensor, expert; one axis -1 = all other devices;
    # every axis of size != 1 must be used by the preset, e.g. dp needs data=-1, fsdp=1) and logical
    # axis -> mesh axis overrides of the preset, e.g. {"vocab": "tensor"}.
    m.sharding = ml_collections.ConfigDict()
    m.sharding.preset = "fsdp"
    m.sharding.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1, "expert": 1})
    m.sharding.rule_overrides = ml_collections.ConfigDict()
    # Merged tensors held before they are appended to the output checkpoint (MiB): bounds host
    # memory.
    m.flush_mb = 256
    # Show a progress bar over tensors.
    m.progress = True
    if variant == "demo":
        m.models = "workdirs/adapt_beir_demo,workdirs/adapt_miracl_demo"
        m.output = "workdirs/merged_demo"
    elif variant == "tiny":
        m.models = "workdirs/tiny_a,workdirs/tiny_b"
        m.output = "workdirs/merged_tiny"
        m.flush_mb = 1
        m.progress = False
    return c

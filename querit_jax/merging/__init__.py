"""Merging checkpoints: mergekit-style SLERP, sequential SLERP and Multi-SLERP over Orbax
checkpoints.

  python -m querit_jax.merge --config=configs/merge_slerp.py[:VARIANT]

The recipe is `config_lib.MergeConfig` (the config's `merge` section, re-exported here). `slerp`
holds the per-tensor math (pure jnp), `plan` how each tensor's t is chosen (scalar, depth gradient,
name filters), `checkpoints` the streaming reader/writer and compatibility checks, `merger` the
loop. The merged model is a normal model checkpoint (model.json + params/ + tokenizer/) with a
`merge_manifest.json` beside them that records the recipe and the t of every tensor.
"""

from querit_jax.config_lib import MergeConfig, merge_from_config_dict  # noqa: F401
from querit_jax.merging.merger import MANIFEST_FORMAT, MANIFEST_NAME, merge  # noqa: F401

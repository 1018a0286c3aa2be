"""Merge model checkpoints tensor by tensor: SLERP, sequential SLERP and Multi-SLERP.

For each parameter, in depth order: restore it from every input onto its sharding (Orbax partial
restore), merge it with one jitted function (fp32 compute; norms and dots are cross-shard
reductions), cast it to the base's dtype and hand it to the writer, which appends it to the output
checkpoint. Peak host memory is therefore about the inputs of the largest tensor plus at most
`flush_mb` of merged tensors waiting to be written, not whole models.

Methods (mergekit's semantics; see querit_jax/merging/slerp.py):
  slerp             two models; the first is the base (t=0), t may vary by depth and by name.
  sequential_slerp  N models folded left to right: m = slerp(m, model_k, t_k); the running merge is
                    kept in float32 between steps and cast once at the end.
  multislerp        the weighted spherical barycentre of N models, optionally of their task vectors
                    relative to `base_model`.
Mixture-of-Experts weights stacked as [experts, ...] are merged expert by expert (each expert its
own tensor, as mergekit sees the Hugging Face layout).
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from querit_jax import sharding, storage
from querit_jax.config_lib import MergeConfig
from querit_jax.errors import ConfigError
from querit_jax.merging import checkpoints, plan, slerp
from querit_jax.models.spec import abstract_params, flatten

MANIFEST_NAME = "merge_manifest.json"
MANIFEST_FORMAT = "querit_jax.merge_manifest"


@functools.partial(jax.jit, static_argnames=("experts",))
def _dot(a, b, experts: bool):
    return jax.vmap(slerp.dot)(a, b) if experts else slerp.dot(a, b)


_coefficients = jax.jit(slerp.slerp_coefficients)


@functools.partial(jax.jit, static_argnames=("out_dtype", "experts"))
def _slerp_apply(v0, v1, t, linear, s0, s1, out_dtype, experts: bool):
    fn = slerp.slerp_apply
    if experts:
        fn = jax.vmap(fn, in_axes=(0, 0, None, 0, 0, 0))
    return fn(v0, v1, t, linear, s0, s1).astype(out_dtype)


def _slerp_pair(v0, v1, t, out_dtype, experts: bool):
    """SLERP of one tensor (per expert if `experts`) in two jitted passes: reductions, then one
    elementwise pass that casts as it writes. Returns (result, number of linear-branch slices)."""
    # One reduction per call: in one computation XLA:CPU would materialise float32 copies of bf16
    # inputs shared by the three reductions (two extra tensors' worth of host memory).
    dots = _dot(v0, v0, experts), _dot(v1, v1, experts), _dot(v0, v1, experts)
    linear, s0, s1 = _coefficients(*dots, t)
    merged = _slerp_apply(v0, v1, t, linear, s0, s1, out_dtype, experts)
    return merged, jnp.sum(linear.astype(jnp.int32))


@functools.partial(jax.jit, static_argnames=("normalize", "experts"))
def _multislerp(arrays, weights, base, normalize: bool, experts: bool):
    stacked = jnp.stack(arrays)  # inside jit: no stacked copy lives outside the computation
    fn = functools.partial(slerp.multislerp, normalize_weights=normalize)
    if experts:
        fn = jax.vmap(fn, in_axes=(1, None, None if base is None else 0))
    merged, degenerate = fn(stacked, weights, base)
    return merged, jnp.sum(degenerate.astype(jnp.int32))


def _rectify(x: jax.Array, like: jax.Array, axes: tuple) -> jax.Array:
    """Cuts or pads `x` along its vocabulary dims to `like`'s size; padded rows are `like`'s own.

    mergekit keeps the largest common submatrix, which would shrink the output vocabulary below the
    base tokenizer's; keeping the base's rows for tokens the other model lacks keeps the output
    loadable with the base's tokenizer and leaves those tokens as the base had them.
    """
    for dim, name in enumerate(axes):
        if name != "vocab" or x.shape[dim] == like.shape[dim]:
            continue
        n = like.shape[dim]
        if x.shape[dim] > n:
            x = jax.lax.slice_in_dim(x, 0, n, axis=dim)
        else:
            tail = jax.lax.slice_in_dim(like, x.shape[dim], n, axis=dim).astype(x.dtype)
            x = jnp.concatenate([x, tail], axis=dim)
    return x


@dataclasses.dataclass
class _Tensor:
    """What the merge of one parameter needs besides data: its placement and its t per step."""

    name: str
    sharding: jax.sharding.Sharding
    dtype: str
    axes: tuple
    position: float
    steps: list  # [(t, filter)] per pairwise step


def _merge_one(cfg: MergeConfig, info: _Tensor, read, origin) -> tuple[jax.Array, dict]:
    """Merges one parameter. `read(i)` restores it from input i; returns (array, manifest entry)."""
    out_dtype = jnp.dtype(info.dtype)
    experts = bool(info.axes) and info.axes[0] == "expert"
    entry = {"position": round(info.position, 6), "per_expert": experts}
    if cfg.method == "multislerp":
        arrays = [read(i) for i in range(len(cfg.models))]
        entry["weights"] = list(cfg.weights)
        if len(arrays) == 1:
            return arrays[0].astype(out_dtype), entry
        base = None if origin is None else origin()
        merged, degenerate = _multislerp(
            tuple(arrays), jnp.asarray(cfg.weights), base, cfg.normalize_weights, experts
        )
        if int(degenerate) and len(arrays) > 2:
            raise ConfigError(
                f"merge.weights: the weighted mean direction of {info.name} is zero (antipodal "
                "inputs whose weights cancel); change the weights."
            )
        entry["degenerate"] = int(degenerate)
        return merged.astype(out_dtype), entry
    current = read(0)
    entry["t"], entry["filter"], entry["lerp"] = [], [], []
    for k, (t, name_filter) in enumerate(info.steps):
        entry["t"].append(round(t, 9))
        entry["filter"].append(name_filter)
        if t == 0.0:  # the endpoints exactly, without arithmetic
            entry["lerp"].append(None)
            continue
        other = read(k + 1)
        if t == 1.0:
            current, linear = other, None
        else:
            # The running merge stays float32 between steps; the last step casts inside the jitted
            # function, so no float32 copy of the tensor is materialised next to the result.
            last = k == len(info.steps) - 1
            step_dtype = out_dtype if last else jnp.dtype(jnp.float32)
            current, linear = _slerp_pair(current, other, t, step_dtype, experts)
            linear = int(linear)
        entry["lerp"].append(linear)
        del other
    if cfg.method == "slerp":
        entry = {
            **entry,
            "t": entry["t"][0],
            "filter": entry["filter"][0],
            "lerp": entry["lerp"][0],
        }
    return current.astype(out_dtype), entry


def _mesh(cfg: MergeConfig):
    try:
        return sharding.make_mesh(cfg.sharding.mesh.shape)
    except ValueError as e:
        raise ConfigError(f"merge.sharding.mesh: {e}") from None


def merge(cfg: MergeConfig, mesh=None, log=print) -> dict:
    """Runs a merge recipe and writes the merged model checkpoint to `cfg.output`.

    Args:
      cfg: the validated recipe.
      mesh: device mesh to place tensors on (default: from `cfg.sharding.mesh`, all devices).
    Returns:
      The merge manifest (also written to `<output>/merge_manifest.json`).
    Raises:
      CheckpointError / ConfigError: naming the input or field. Bad fields and incompatible inputs
        are refused before anything is written; an error during the merge itself (Multi-SLERP
        weights that cancel on some tensor, unreadable tensor data) or an interrupt removes
        `<output>.tmp` and leaves an existing `<output>` as it was.
    """
    start = time.time()
    mesh = mesh or _mesh(cfg)
    rules = cfg.sharding.rules()
    inputs = [checkpoints.open_input(p) for p in cfg.models]
    origin = checkpoints.open_input(cfg.base_model) if cfg.base_model else None
    base = origin or inputs[0]
    for x in inputs + ([origin] if origin else []):
        _check_no_overlap(cfg.output, x)
    axes = checkpoints.logical_axes(base.spec)
    for other in inputs + ([origin] if origin else []):
        if other is not base:
            checkpoints.check_compatible(base, other, axes, cfg.vocab_policy)
    _, abstract = abstract_params(base.spec, mesh, rules)
    flat_abstract = flatten(abstract)
    own_keys = {name: tuple(_key_path(abstract, name)) for name in flat_abstract}
    names = checkpoints.canonical_order(flat_abstract)
    num_layers = base.spec.backbone.num_layers
    tensors = []
    for name in names:
        position = plan.tensor_position(name, num_layers)
        steps = [
            plan.resolve(spec, name, position, f"merge.step_t[{k}]" if cfg.step_t else "merge.t")
            for k, spec in enumerate(cfg.step_specs())
        ]
        tensors.append(
            _Tensor(
                name,
                flat_abstract[name].sharding,
                base.dtypes[name],
                axes.get(name, ()),
                position,
                steps,
            )
        )
    # Recorded in the manifest, which process 0 writes: the others need not read every input twice.
    first = jax.process_index() == 0
    hashes = [checkpoints.content_hash(x.resolved) if first else None for x in inputs]
    origin_hash = checkpoints.content_hash(origin.resolved) if origin and first else None

    writer = checkpoints.OutputWriter(cfg.output, own_keys, cfg.flush_mb << 20)
    try:
        manifest = _write(cfg, inputs, hashes, origin, origin_hash, base, tensors, writer)
    except BaseException:  # errors and interrupts alike: no half-written <output>.tmp stays behind
        writer.abort()
        raise
    log(
        f"Merged {len(manifest['tensors'])} tensors ({manifest['totals']['parameters']:,} "
        f"parameters) with {cfg.method} in {time.time() - start:.1f}s into {writer.path}."
    )
    return manifest


def _check_no_overlap(output: str, x) -> None:
    """Refuses an input that is, contains or lies inside the output or its `.tmp` / `.old` siblings,
    which the writer deletes or replaces."""
    out, inp = storage.absolute(output), storage.absolute(x.resolved)
    for target in (out, f"{out}.tmp", f"{out}.old"):
        if storage.same(target, inp) or storage.inside(inp, target) or storage.inside(target, inp):
            raise ConfigError(
                f"merge.output={output} overlaps the input {x.path} (the merge writes {target}); "
                "write the merge elsewhere."
            )


def _write(cfg, inputs, hashes, origin, origin_hash, base, tensors, writer) -> dict:
    """Merges every tensor into `writer` and finalises the output; returns the manifest."""
    entries, params, lerps = {}, 0, 0
    bar = tqdm(tensors, desc="merging", unit="tensor", disable=not cfg.progress)
    for info in bar:
        bar.set_postfix_str(info.name[-40:], refresh=False)

        def read(i, info=info):
            x = inputs[i].read(info.name, info.sharding)
            if x.shape != base.shapes[info.name]:  # vocab rows, allowed by check_compatible
                like = base.read(info.name, info.sharding)
                x = _rectify(x, like, info.axes)
            return x

        def read_origin(info=info):
            return origin.read(info.name, info.sharding)

        merged, entry = _merge_one(cfg, info, read, read_origin if origin else None)
        writer.add(info.name, merged)
        entries[info.name] = {
            "shape": list(merged.shape),
            "dtype": str(merged.dtype),
            **entry,
        }
        params += int(np.prod(merged.shape))
        steps = entry.get("lerp", [])
        lerps += sum(v for v in (steps if isinstance(steps, list) else [steps]) if v)
        del merged
    manifest = _manifest(cfg, inputs, hashes, origin, origin_hash, base, entries, params, lerps)
    model_json = {
        **base.spec.to_json(),
        "tokenizer": "tokenizer",
        "merge": {"manifest": MANIFEST_NAME, "method": cfg.method, "models": list(cfg.models)},
    }
    tokenizer_dir = storage.contained(
        base.resolved,
        base.meta.get("tokenizer", "tokenizer"),
        storage.join(base.resolved, "model.json"),
    )
    writer.finish(model_json, tokenizer_dir, manifest, MANIFEST_NAME)
    return manifest


def _key_path(tree: dict, name: str) -> list:
    """The keys (with their real types, e.g. int layer indices) of flat `name` in a nested dict."""
    node, keys = tree, []
    rest = name
    while isinstance(node, dict):
        for key in node:
            if rest == str(key) or rest.startswith(f"{key}."):
                keys.append(key)
                node, rest = node[key], rest[len(str(key)) + 1 :]
                break
        else:
            raise KeyError(name)
    return keys


def _manifest(cfg, inputs, hashes, origin, origin_hash, base, entries, params, lerps) -> dict:
    roles = ["base"] + ["model"] * (len(inputs) - 1) if cfg.method != "multislerp" else None
    described = []
    for i, (x, h) in enumerate(zip(inputs, hashes)):
        role = roles[i] if roles else "model"
        described.append(_describe(x, h, role, cfg.weights[i] if cfg.weights else None))
    if origin:
        described.append(_describe(origin, origin_hash, "origin", None))
    return {
        "format": MANIFEST_FORMAT,
        "format_version": 1,
        "method": cfg.method,
        "summary": _summary(cfg),
        "output": storage.absolute(cfg.output),
        "inputs": described,
        "output_spec_from": base.path,
        "parameters": {
            "t": [r.to_json() for r in cfg.t] if cfg.method != "multislerp" else None,
            "step_t": [[r.to_json() for r in s] for s in cfg.step_t] or None,
            "weights": list(cfg.weights) or None,
            "normalize_weights": cfg.normalize_weights if cfg.method == "multislerp" else None,
            "vocab_policy": cfg.vocab_policy,
            "dot_threshold": slerp.DOT_THRESHOLD,
            "eps": slerp.EPS,
        },
        "filters": sorted({r.filter for s in cfg.step_specs() for r in s if r.filter}),
        "position_rule": (
            "layer i of n -> i/(n-1) (1 when n = 1); names containing 'embed' -> 0; everything "
            "else (final "
            "norm, heads) -> 1; a gradient list is read piecewise-linearly at that position"
        ),
        "sharding": {
            "preset": cfg.sharding.preset,
            "mesh": dataclasses.asdict(cfg.sharding.mesh),
        },
        "totals": {"tensors": len(entries), "parameters": params, "lerp_fallbacks": lerps},
        "tensors": entries,
    }


def _describe(x, h, role, weight) -> dict:
    d = {
        "role": role,
        "path": x.path,
        "resolved_path": storage.absolute(x.resolved),
        "family": x.spec.family,
        "vocab_size": x.spec.backbone.vocab_size,
        **(h or {}),  # None on processes other than 0 (they do not write the manifest)
    }
    if weight is not None:
        d["weight"] = weight
    return d


def _t_text(rules) -> str:
    def one(r):
        value = list(r.value) if isinstance(r.value, tuple) else r.value
        return f"{r.filter}: {value}" if r.filter else f"{value}"

    return "; ".join(one(r) for r in rules)


def _summary(cfg: MergeConfig) -> str:
    """One sentence describing the recipe (the model card quotes it in its merge section)."""
    names = [_short_name(p) for p in cfg.models]
    if cfg.method == "slerp":
        return f"SLERP of {names[0]} (base, t=0) and {names[1]} (t=1) with t = {_t_text(cfg.t)}."
    if cfg.method == "sequential_slerp":
        steps = ", ".join(f"+{n} (t = {_t_text(s)})" for n, s in zip(names[1:], cfg.step_specs()))
        return f"Sequential SLERP starting from {names[0]}: {steps}."
    weights = ", ".join(f"{n} x {w:g}" for n, w in zip(names, cfg.weights))
    origin = f", task vectors relative to {_short_name(cfg.base_model)}" if cfg.base_model else ""
    return f"Multi-SLERP (spherical barycentre) of {weights}{origin}."


def _short_name(path: str) -> str:
    """workdirs/adapt_beir/model -> adapt_beir; /ckpts/merged -> merged."""
    parts = storage.absolute(path).rstrip("/").split("/")
    return parts[-2] if parts[-1] == "model" and len(parts) > 1 else parts[-1]

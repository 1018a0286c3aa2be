"""Per-device memory plan of a training run: parameters, optimiser state, gradients, activations.

Parameters, optimiser state and gradients are counted exactly from shapes and shardings
(shape-first: `jax.eval_shape`, nothing is allocated): the bytes of each leaf's shard on the most
loaded device. Activations come from one of two sources, and the plan says which:

  * "estimate" (any mesh, also an `AbstractMesh` of a pod planned from a laptop; no compilation):
    the residuals JAX saves for the backward pass (`saved_residuals` of the loss, remat policies
    honoured), split into the part that grows with the batch (sharded over the batch mesh axes) and
    the part that does not (weights cast to the compute dtype, sharded like the parameters), plus
    one layer's full residuals when remat recomputes them in the backward pass;
  * "compile": `memory_analysis()` of the compiled train step on the mesh's devices (temporary bytes
    minus the gradients: activations plus XLA's workspace). Deep models are compiled at two small
    depths and extrapolated linearly in the layer count. On TPU/GPU this is the figure the run will
    see; XLA:CPU does not apply rematerialisation and adds layout copies, so CPU compilations
    overstate what an accelerator needs (measured: remat changes nothing in a CPU memory_analysis).

`plan(cfg, mesh)` is what the trainer calls before compiling; `MemoryPlan.check()` refuses a run
that cannot fit, naming the config fields to change. `python -m querit_jax.plan` prints it for any
mesh.
"""

import contextlib
import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax._src.ad_checkpoint import saved_residuals  # public only as print_saved_residuals
from jax.sharding import AbstractMesh, Mesh, NamedSharding

from querit_jax import config_lib, sharding, storage
from querit_jax.convert import hf_import
from querit_jax.convert import qwen3 as qwen3_table
from querit_jax.data import packing
from querit_jax.errors import ConfigError
from querit_jax.models.checkpoint import is_model_checkpoint, read_spec
from querit_jax.models.decoder_config import dtype_of
from querit_jax.models.heads import HeadConfig
from querit_jax.models.spec import RUNTIME_FIELDS, ModelSpec, abstract_params
from querit_jax.models.templates import make_template
from querit_jax.sharding import axes
from querit_jax.training import guards, losses, optim, steps
from querit_jax.training.state import TrainState, state_shardings

GIB = 1024**3
MODES = ("auto", "compile", "estimate")


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device (the most loaded device) of one training step."""

    model: str  # e.g. "qwen3_4b (4.02B parameters)"
    mesh: dict  # mesh axis -> size
    params: int
    optimizer: int
    gradients: int
    activations: int  # saved activations + XLA workspace (compiled) or their estimate
    batch: int
    capacity: int | None  # device memory in bytes, None when unknown
    method: str  # how the activations were obtained
    hints: tuple[str, ...] = ()  # config fields that would lower the biggest terms

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.gradients + self.activations + self.batch

    @property
    def fits(self) -> bool | None:
        return None if self.capacity is None else self.total <= self.capacity

    def line(self) -> str:
        """One log line: the terms in GiB and the verdict."""
        mesh = ",".join(f"{k}={v}" for k, v in self.mesh.items())
        terms = ", ".join(
            f"{name} {value / GIB:.2f}"
            for name, value in (
                ("params", self.params),
                ("optimizer", self.optimizer),
                ("gradients", self.gradients),
                ("activations", self.activations),
                ("batch", self.batch),
            )
        )
        verdict = (
            "capacity unknown"
            if self.capacity is None
            else f"{'fits' if self.fits else 'does NOT fit'} in {self.capacity / GIB:.1f} GiB"
        )
        return (
            f"Memory plan per device [{mesh}] {self.model}: {self.total / GIB:.2f} GiB ({terms}) "
            f"{verdict}; activations from {self.method}."
        )

    def check(self) -> None:
        """Raises ConfigError naming what to change when the plan does not fit."""
        if self.fits is False:
            raise ConfigError(
                f"{self.line()} Change: {'; '.join(self.hints) or 'use devices with more memory'}."
            )


# ----- the model, the optimiser and the batch the run will use, without reading any tensor
# ----------


def planned_spec(cfg: config_lib.ExperimentConfig) -> tuple[ModelSpec, str]:
    """The spec a run trains: `init_from`'s model.json or config.json (no tensors read) with the
    config's numerics and runtime overrides, else the preset. Returns (spec, where it came from)."""
    m, d = cfg.model, cfg.data
    runtime = {k: v for k, v in dict(m.overrides).items() if k in RUNTIME_FIELDS}
    compute = dict(
        dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat_mode, scan_layers=m.scan_layers
    )
    budgets = dict(max_length=d.max_length, max_query_tokens=d.max_query_tokens)
    template = make_template(m.template, instruction=m.instruction or None)
    where = m.init_from
    if where and storage.isdir(where) and is_model_checkpoint(where):
        spec, _ = read_spec(where)
        head = HeadConfig() if m.head == "score" and spec.head.kind == "yes_no" else spec.head
        spec = spec.replace(head=head, template=template, **budgets, **compute, **runtime)
        return spec, f"{where}/model.json"
    if where and storage.isfile(storage.join(where, "config.json")):
        hf = hf_import.read_config(where)
        if hf.get("model_type") in ("qwen3", "qwen3_moe"):
            backbone = qwen3_table.config_from_hf(hf, **compute, **runtime)
            spec = ModelSpec(backbone.family, backbone, HeadConfig(), template, **budgets)
            return spec, f"{where}/config.json"
    backbone = m.backbone_config()
    head = HeadConfig(kind="yes_no", yes_token_id=0, no_token_id=1) if m.head == "yes_no" else None
    spec = ModelSpec(backbone.family, backbone, head or HeadConfig(), template, **budgets)
    note = f" ({where} not found: planned from the preset)" if where else ""
    return spec, f"preset {m.preset}{note}"


def abstract_batch(cfg: config_lib.ExperimentConfig, rows_multiple: int = 1) -> dict:
    """ShapeDtypeStructs of one global training batch (what the input pipeline yields).

    Packed batches: the largest step a run can take (`packing.largest_step`: the most rows any
    batch can need at the longest row length the pipeline may choose, or `data.pack_rows` if more),
    in multiples of `rows_multiple`. Most steps take fewer rows; this is the one that must fit.
    """
    d = cfg.data
    q, g, t = d.batch_size, d.group_size, d.max_length
    i32 = jnp.int32
    out = {
        "teacher": jax.ShapeDtypeStruct((q, g), jnp.float32),
        "has_teacher": jax.ShapeDtypeStruct((q,), jnp.bool_),
    }
    if not d.pack:
        tokens = jax.ShapeDtypeStruct((q, g, t), i32)
        return {**out, "input_ids": tokens, "segment_ids": tokens, "token_type_ids": tokens}
    rows, length = packing.largest_step(d, q * g, rows_multiple, jax.process_count())
    tokens = jax.ShapeDtypeStruct((rows, length), i32)
    return {
        **out,
        "input_ids": tokens,
        "segment_ids": tokens,
        "token_type_ids": tokens,
        "slot_valid": jax.ShapeDtypeStruct((rows, d.pack_max_pairs), jnp.bool_),
        "pair_row": jax.ShapeDtypeStruct((q, g), i32),
        "pair_slot": jax.ShapeDtypeStruct((q, g), i32),
    }


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the most loaded device)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return total


def _with_shardings(tree, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
    )


# ----- activations
# ----------------------------------------------------------------------------------


def _loss_fn(graphdef, spec: ModelSpec):
    """A training loss of the model's scores (and router logits): what the backward pass
    differentiates."""

    def loss(params, batch):
        if spec.family != "qwen3_moe":
            return losses.listwise_ce(steps.group_scores(graphdef, params, batch))
        scores, aux = steps.group_scores(graphdef, params, batch, return_aux=True)
        mask = batch["segment_ids"] > 0
        balance = losses.load_balancing_loss(
            aux["router_logits"], mask, spec.backbone.num_experts_per_tok
        )
        return losses.listwise_ce(scores) + balance

    return loss


def _residual_bytes(spec, mesh, rules, batch) -> int:
    """Global bytes of what the backward pass keeps (`saved_residuals`, remat policies honoured),
    inputs and parameters excluded."""
    graphdef, abstract = abstract_params(spec)
    with _rules_context(mesh, rules):
        saved = saved_residuals(_loss_fn(graphdef, spec), abstract, batch)
    return sum(
        math.prod(aval.shape) * jnp.dtype(aval.dtype).itemsize
        for aval, where in saved
        if not where.startswith("from the argument")
    )


def _double_batch(batch: dict) -> dict:
    return {
        k: jax.ShapeDtypeStruct((2 * a.shape[0], *a.shape[1:]), a.dtype) for k, a in batch.items()
    }


def residual_activations(spec, mesh, rules, batch, shard_factor: float) -> tuple[int, str]:
    """Activation bytes per device from the residuals JAX saves for the backward pass.

    Traced with the batch and twice the batch, which splits the residuals into a part that grows
    with the batch (activations: split over the batch mesh axes) and one that does not (weights cast
    to the compute dtype: split like the parameters, `shard_factor`). Deep models are traced at two
    small depths and extrapolated (residuals are linear in the number of identical layers). With
    remat, one layer's full residual set is added: the backward pass recomputes one layer at a time.
    """
    batch = {k: jax.ShapeDtypeStruct(a.shape, a.dtype) for k, a in batch.items()}
    split = sharding.axis_size(mesh, dict(rules)[axes.BATCH])
    layers = spec.backbone.num_layers
    p = _layer_period(spec)
    depths = (layers,) if layers <= 2 * p else (p, 2 * p)

    def at_depth(b):
        found = [_residual_bytes(spec.replace(num_layers=n), mesh, rules, b) for n in depths]
        if len(found) == 1:
            return found[0]
        return found[0] + (found[1] - found[0]) * (layers - depths[0]) / (depths[1] - depths[0])

    once, twice = at_depth(batch), at_depth(_double_batch(batch))
    grows = max(twice - once, 0)
    total = grows / split + max(once - grows, 0) / shard_factor
    note = "saved_residuals of the loss (what the backward pass keeps)"
    if len(depths) == 2:
        note += f" at {depths[0]} and {depths[1]} layers, extrapolated to {layers}"
    if spec.backbone.remat:
        plain = spec.replace(remat=False)
        one, two = (
            _residual_bytes(plain.replace(num_layers=n), mesh, rules, batch) for n in (1, 2)
        )
        total += max(two - one, 0) / split
        note += ", + one layer recomputed under remat"
    return int(total), f"{note}; no compilation"


def _rules_context(mesh, rules):
    if isinstance(mesh, AbstractMesh):
        return _abstract_rules(mesh, rules)
    return sharding.use_rules(mesh, rules)


@contextlib.contextmanager
def _abstract_rules(mesh, rules):
    with jax.sharding.use_abstract_mesh(mesh), nnx.logical_axis_rules(rules):
        yield


def _layer_period(spec: ModelSpec) -> int:
    return max(1, getattr(spec.backbone, "decoder_sparse_step", 1))


def _compiled_temp(cfg, spec, mesh, rules, batch) -> tuple[int, int]:
    """(temporary bytes of the compiled train step, its gradient bytes) on `mesh`."""
    graphdef, abstract = abstract_params(spec, mesh, rules)
    tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
    tx = guards.skip_nonfinite(tx, cfg.train.max_nonfinite_steps)
    shardings = state_shardings(abstract, tx, mesh)
    state = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)), abstract)
    batch_sharding = NamedSharding(mesh, sharding.logical_to_spec((axes.BATCH,), rules))
    step = steps.jit_train_step(cfg, spec, graphdef, tx, schedule, shardings, batch_sharding)
    with sharding.use_rules(mesh, rules):
        compiled = step.lower(_with_shardings(state, shardings), batch).compile()
    stats = compiled.memory_analysis()
    if stats is None:
        raise NotImplementedError("this backend gives no memory_analysis()")
    return int(stats.temp_size_in_bytes), shard_bytes(abstract)


def compiled_activations(cfg, spec, mesh, rules, batch, max_layers: int = 4) -> tuple[int, str]:
    """Activation bytes from compiled train steps: the model itself when it has at most `max_layers`
    layers, else two shallower copies extrapolated linearly in depth. Returns (bytes, method)."""
    where = f"compiled memory_analysis() on {mesh.size} {mesh.devices.flat[0].platform} devices"
    layers = spec.backbone.num_layers
    if layers <= max_layers:
        temp, grads = _compiled_temp(cfg, spec, mesh, rules, batch)
        return max(temp - grads, 0), where
    p = _layer_period(spec)
    depths = (p, 2 * p) if 2 * p <= layers else (1, 2)
    acts = []
    for depth in depths:
        temp, grads = _compiled_temp(cfg, spec.replace(num_layers=depth), mesh, rules, batch)
        acts.append(max(temp - grads, 0))
    per_layer = max(acts[1] - acts[0], 0) / (depths[1] - depths[0])
    total = int(acts[0] + per_layer * (layers - depths[0]))
    return total, f"{where} at {depths[0]} and {depths[1]} layers, extrapolated to {layers}"


# ----- the plan
# -------------------------------------------------------------------------------------


def device_capacity(mesh) -> int | None:
    """Memory of one device of `mesh` (its allocator's limit), or None when the backend says
    nothing."""
    if isinstance(mesh, AbstractMesh):
        return None
    try:
        stats = mesh.devices.flat[0].memory_stats()
    except Exception:  # backends without memory stats raise various errors
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def _hints(cfg, mesh_sizes: dict, state: int, acts: int) -> tuple[str, ...]:
    """Config changes that shrink the largest terms, most effective first."""
    out = []
    devices = math.prod(mesh_sizes.values())
    if state >= acts:
        if cfg.sharding.preset == "dp":
            out.append("sharding.preset=fsdp with sharding.mesh.fsdp=-1, data=1 (shard the state)")
        elif mesh_sizes.get("fsdp", 1) < devices:
            out.append(
                "sharding.mesh.fsdp=-1 and data=1 (parameters and optimiser state over all devices)"
            )
        if cfg.model.param_dtype == "float32":
            out.append("model.param_dtype=bfloat16 (halves parameters and gradients)")
    if not cfg.model.remat:
        out.append("model.remat=True (keep only each layer's input)")
    if cfg.data.batch_size > 1:
        out.append(f"data.batch_size={cfg.data.batch_size // 2} (activations halve)")
    if cfg.model.dtype == "float32":
        out.append("model.dtype=bfloat16")
    if state < acts and cfg.sharding.preset == "dp":
        out.append("sharding.preset=fsdp with sharding.mesh.fsdp=-1, data=1")
    return tuple(out)


def state_bytes(cfg, spec: ModelSpec, mesh, rules) -> tuple[int, int, int]:
    """(parameter bytes, optimiser-state bytes) on the most loaded device of `mesh`, and the
    parameter count: shapes and shardings only (the trainer's optimiser and state shardings)."""
    _, abstract = abstract_params(spec, mesh, rules)
    tx, _ = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
    tx = guards.skip_nonfinite(tx, cfg.train.max_nonfinite_steps)
    opt = jax.eval_shape(tx.init, abstract)
    opt = _with_shardings(opt, state_shardings(abstract, tx, mesh).opt_state)
    count = sum(math.prod(a.shape) for a in jax.tree.leaves(abstract))
    return shard_bytes(abstract), shard_bytes(opt), count


def plan(
    cfg: config_lib.ExperimentConfig,
    mesh: Mesh | AbstractMesh,
    spec: ModelSpec | None = None,
    *,
    batch: dict | None = None,
    capacity: int | None = None,
    mode: str = "auto",
    max_compiled_layers: int = 4,
) -> MemoryPlan:
    """The per-device memory plan of training `cfg` on `mesh`.

    Args:
      spec: the model (default: `planned_spec(cfg)`, from init_from's metadata or the preset).
      batch: global ShapeDtypeStructs of one batch (default: `abstract_batch(cfg)`).
      capacity: device memory in bytes (default: the device's allocator limit, if it reports one).
      mode: "compile" (memory_analysis of the compiled step; needs a mesh of devices), "estimate"
        (saved residuals, no compilation, any mesh) or "auto" (compile on TPU/GPU devices, else
        estimate: XLA:CPU ignores remat, so CPU compilations overstate accelerator activations).
      max_compiled_layers: deeper models are compiled at two small depths and extrapolated.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; choose from {MODES}.")
    rules = cfg.sharding.rules()
    spec, source = (spec, "given spec") if spec is not None else planned_spec(cfg)
    split = sharding.axis_size(mesh, dict(rules)[axes.BATCH])
    if cfg.data.batch_size % split:
        raise ConfigError(
            f"data.batch_size: {cfg.data.batch_size} query groups do not split over the "
            f"{split} devices of the batch mesh axes; use a multiple of {split}."
        )
    batch = batch or abstract_batch(cfg, rows_multiple=mesh.size)
    batch_sharding = NamedSharding(mesh, sharding.logical_to_spec((axes.BATCH,), rules))
    batch = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=batch_sharding), batch
    )
    params, optimizer, n_params = state_bytes(cfg, spec, mesh, rules)
    full = n_params * jnp.dtype(dtype_of(spec.backbone.param_dtype)).itemsize
    concrete = not isinstance(mesh, AbstractMesh)
    if mode == "compile" and not concrete:
        raise ValueError("mode='compile' needs a mesh of devices, not an AbstractMesh.")
    platform = mesh.devices.flat[0].platform if concrete else None
    if mode == "compile" or (mode == "auto" and platform not in (None, "cpu")):
        acts, method = compiled_activations(cfg, spec, mesh, rules, batch, max_compiled_layers)
        if platform == "cpu":
            method += " (XLA:CPU applies no remat and adds layout copies: above TPU/GPU figures)"
    else:
        acts, method = residual_activations(spec, mesh, rules, batch, full / max(params, 1))
    sizes = dict(mesh.shape)
    return MemoryPlan(
        model=f"{source} ({n_params / 1e9:.2f}B parameters)",
        mesh=sizes,
        params=params,
        optimizer=optimizer,
        gradients=params,
        activations=int(acts),
        batch=shard_bytes(batch),
        capacity=capacity if capacity is not None else device_capacity(mesh),
        method=method,
        hints=_hints(cfg, sizes, 2 * params + optimizer, int(acts)),
    )

"""The trainer: the one place that wires config, mesh, data, model, optimiser, checkpoints and eval.

`run(config, workdir)` trains `config.train.num_steps` steps, resuming from the newest checkpoint in
`<workdir>/checkpoints` if there is one, evaluates nDCG@10 (reranking a BM25 first stage) before
training, every `eval_every` steps and at the end, and exports the final model to `<workdir>/model`
(a self-describing checkpoint that `rerank`, `evaluate` and `export_hf.py` take as is).

The workdir is a local path or a gs:// URL; everything in it is written through `storage` (or by
Orbax, which takes URLs). With several processes every one runs this same code: each feeds its rows
of every batch, all take part in every collective in the same order (steps, evaluations, saves), and
process 0 alone writes the files that are not collective (results, metrics, TensorBoard, data,
reports).
"""

import dataclasses
import functools
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from querit_jax import config_lib, sharding, storage
from querit_jax.data import packing
from querit_jax.data.io import read_json, write_json
from querit_jax.eval.selection import reference_scorer
from querit_jax.eval.suite import EvalSuite, format_table
from querit_jax.inference.runners import Scorer
from querit_jax.loading import load_model, load_teacher
from querit_jax.models.checkpoint import save_model
from querit_jax.models.spec import RUNTIME_FIELDS, ModelSpec, abstract_params, init_params
from querit_jax.models.templates import make_template
from querit_jax.models.tokenizers import load_tokenizer_dir
from querit_jax.sharding import axes, hybrid
from querit_jax.training import (
    compile_cache,
    guards,
    inputs,
    memory,
    optim,
    preemption,
    selection,
    steps,
)
from querit_jax.training.checkpointing import Checkpointer, abstract_like
from querit_jax.training.state import TrainState, init_state, state_shardings
from querit_jax.training.writers import MetricWriter, Progress, get_logger, metrics_collection


def build_model(cfg: config_lib.ExperimentConfig, mesh, logical_rules, log, weights: bool = True):
    """(spec, graphdef, params, tokenizer): from `model.init_from` or freshly initialised;
    `weights=False` (a run about to restore a checkpoint) neither reads nor initialises any weight,
    the params are ShapeDtypeStructs with their shardings.

    With `init_from`, the architecture comes from the checkpoint; the config's head (a yes/no head
    is converted exactly to a linear one if `head="score"`), tokenizer, template, token budgets,
    dtypes and remat are applied to it, and so are the `model.overrides` that say how it runs
    (`models.spec.RUNTIME_FIELDS`, e.g. `moe_impl: ep`); any other override is a ConfigError.
    """
    m, d = cfg.model, cfg.data
    template = make_template(m.template, instruction=m.instruction or None)
    budgets = dict(template=template, max_length=d.max_length, max_query_tokens=d.max_query_tokens)
    compute = dict(
        dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat_mode, scan_layers=m.scan_layers
    )
    if m.init_from:
        for name, _ in m.overrides:
            if name not in RUNTIME_FIELDS:
                raise config_lib.ConfigError(
                    f"model.overrides.{name}: the architecture comes from init_from "
                    f"({m.init_from}); only how the model runs can be overridden there "
                    f"({', '.join(RUNTIME_FIELDS)})."
                )
        # The config's own dtype/remat fields win over overrides of the same name, as without
        # init_from (ModelConfig.backbone_config).
        compute = {**dict(m.overrides), **compute}
        loaded = load_model(
            m.init_from,
            mesh,
            logical_rules,
            tokenizer_path=m.tokenizer,
            head=m.head,
            yes_token=m.yes_token,
            no_token=m.no_token,
            weights=weights,
            **budgets,
            **compute,
        )
        if weights:
            log(f"Initialised from {loaded.path} ({loaded.spec.family}, {loaded.spec.head.kind}).")
        return loaded.spec, loaded.graphdef, loaded.params, loaded.tokenizer
    tokenizer = load_tokenizer_dir(m.tokenizer)
    backbone = m.backbone_config(
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if len(tokenizer) > backbone.vocab_size:
        raise config_lib.ConfigError(
            f"model.overrides.vocab_size: the tokenizer has {len(tokenizer)} tokens but the model "
            "only "
            f"{backbone.vocab_size} embedding rows."
        )
    spec = ModelSpec(backbone.family, backbone, config_lib.head_config(m, tokenizer), **budgets)
    if not weights:
        return spec, *abstract_params(spec, mesh, logical_rules), tokenizer
    graphdef, params = init_params(spec, mesh, logical_rules, seed=m.seed)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    log(
        f"Initialised a {m.preset} {m.family} model with {n / 1e6:.2f}M parameters (seed {m.seed})."
    )
    return spec, graphdef, params, tokenizer


@dataclasses.dataclass
class Session:
    """Everything `run` sets up before the first step."""

    cfg: config_lib.ExperimentConfig
    workdir: str
    mesh: Mesh
    rules: Any
    spec: ModelSpec
    graphdef: Any
    tokenizer: Any
    data_iter: Any
    data_manifest: dict
    state: TrainState
    train_step: Any
    batch_sharding: NamedSharding
    checkpointer: Checkpointer
    start: int
    suite: EvalSuite
    scorer: Scorer | None
    log: Any
    results: dict  # results.json as this run knows it (written by process 0)
    dev_suite: EvalSuite | None = None  # synthetic dev sets for label-free selection

    @property
    def results_path(self) -> str:
        return storage.join(self.workdir, "results.json")

    def evaluate(self, key: str, score_fn=None, fusion=None) -> dict | None:
        """Runs the eval suite (the current parameters, or `score_fn`) and records it under `key`;
        with `fusion` (a teacher mix), its fused numbers are the ones recorded."""
        if not self.suite:
            return None
        t = time.time()
        with sharding.use_rules(self.mesh, self.rules):
            res = self.suite.evaluate(
                score_fn or functools.partial(self.scorer.score, self.state.params), fusion
            )
        for r in [*res["datasets"].values(), res["mean"]] if fusion else []:
            r["reranked"] = r.pop("fused")
        self.log(
            f"{key}: mean nDCG@10 {res['mean']['reranked']['ndcg@10']:.4f} "
            f"(BM25 {res['mean']['first_stage']['ndcg@10']:.4f}) [{time.time() - t:.0f} s]"
        )
        self.results[key] = res
        if jax.process_index() == 0:
            write_json(self.results_path, self.results)
        return res

    def evaluate_reference(self, path: str) -> dict | None:
        """A comparison model (e.g. the teacher): reranker scores or embedder similarities.

        Every process loads it onto its own first device and scores everything (no collectives), so
        the processes get the same numbers; process 0 writes them.
        """
        name = path.rstrip("/").rsplit("/", 1)[-1]  # a directory, gs:// URL or Hub id's last part
        return self.evaluate(f"reference: {name}", *reference_scorer(load_teacher(path)))


def setup(cfg: config_lib.ExperimentConfig, workdir: str, devices=None) -> Session:
    """Builds the mesh, model, data, optimiser state (restored if a checkpoint exists) and eval
    suite."""
    log = _process0_log()
    workdir = storage.absolute(workdir)
    storage.makedirs(workdir)
    devices = list(devices) if devices is not None else jax.devices()
    mesh_shape = config_lib.validate_for_devices(cfg, len(devices), jax.process_count())
    mesh = hybrid.make_hybrid_mesh(mesh_shape, cfg.sharding.mesh.dcn_data, devices)
    rules = cfg.sharding.rules()
    log(
        f"Mesh {dict(zip(axes.MESH_AXES, mesh_shape))} over {len(devices)} {devices[0].platform} "
        f"devices, preset {cfg.sharding.preset}."
    )
    # Before any weight is loaded or program compiled: a run that cannot fit stops here, naming
    # what to change (the device's memory is unknown on CPU: nothing is refused there).
    plan = memory.plan(cfg, mesh, mode="estimate")
    log(plan.line())
    plan.check()

    ckpt = Checkpointer(
        storage.join(workdir, "checkpoints"),
        cfg.train.keep_checkpoints,
        cfg.train.async_checkpoints,
    )
    # With checkpoints the weights come from one: none are initialised, nor read from init_from.
    resuming = bool(ckpt.all_steps())
    spec, graphdef, params, tokenizer = build_model(cfg, mesh, rules, log, weights=not resuming)
    data_iter, manifest, bm25_tokenizer = inputs.input_pipeline(cfg, spec, tokenizer, workdir, log)
    tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
    tx = guards.skip_nonfinite(tx, cfg.train.max_nonfinite_steps)
    abstract = params if resuming else abstract_params(spec, mesh, rules)[1]
    shardings = state_shardings(abstract, tx, mesh)
    target = abstract_like(
        jax.eval_shape(lambda p: init_state(p, tx, shardings), abstract), shardings
    )

    def check_config(saved: dict) -> None:
        drift = config_lib.config_drift(saved, cfg.to_dict())
        if drift:
            raise config_lib.ConfigError(
                f"{workdir} holds a run with a different config ({'; '.join(drift)}); use a new "
                "--workdir "
                "or the original config."
            )

    # The newest checkpoint that restores (older ones if it is unreadable, with a warning), onto
    # this run's shardings; never a silent fresh start while checkpoints exist.
    start, state = ckpt.restore_latest(target, data_iter, check_config, get_logger().warning)
    if start:
        log(f"Resumed from step {start} ({ckpt.directory}).")
    else:  # weights built now if the checkpoints went away since they were listed
        params = build_model(cfg, mesh, rules, log)[2] if resuming else params
        state = init_state(params, tx, shardings)
    del params
    batch_sharding = NamedSharding(
        mesh, sharding.logical_to_spec((axes.BATCH,), rules)
    )  # dim 0 of all
    if cfg.data.pack and jax.process_count() > 1:
        packing.check_process_rows(batch_sharding, jax.device_count())
    train_step = steps.jit_train_step(cfg, spec, graphdef, tx, schedule, shardings, batch_sharding)
    suite = EvalSuite(cfg.eval, bm25_tokenizer, storage.join(workdir, "eval"), cfg.data.strict, log)
    dev = selection.dev_suite(cfg, storage.join(workdir, "eval"), log)
    scorer = (
        Scorer(
            spec,
            graphdef,
            tokenizer,
            mesh,
            rules,
            cfg.eval.batch_size,
            cfg.data.max_length,
            cfg.data.max_query_tokens,
            pack=cfg.data.pack,
        )
        if suite or dev
        else None
    )
    results_path = storage.join(workdir, "results.json")
    return Session(
        cfg,
        workdir,
        mesh,
        rules,
        spec,
        graphdef,
        tokenizer,
        data_iter,
        manifest,
        state,
        train_step,
        batch_sharding,
        ckpt,
        start,
        suite,
        scorer,
        log,
        read_json(results_path) if storage.exists(results_path) else {},
        dev,
    )


def _train(s: Session, end: int) -> int:
    """Steps `s.start + 1 .. end`: logging, checkpoints and periodic evaluation.

    Returns the last step run: `end`, or an earlier step after a preemption notice (saved, then
    exit).
    """
    cfg = s.cfg
    writer = MetricWriter(s.workdir, s.start)
    config_json = cfg.to_dict()
    progress = Progress(cfg.train.num_steps, s.start)
    pending, pairs, tokens, collection = None, 0, 0, None
    stopper = preemption.StopRequest(s.log)  # SIGTERM/SIGINT/maintenance -> save and stop
    monitor = guards.Monitor(cfg.train.max_nonfinite_steps, s.log)
    shapes = set()  # packed step shapes seen: each is a train-step program (data/packing.py)
    try:
        saved = None
        with sharding.use_rules(s.mesh, s.rules):
            for step in range(s.start + 1, end + 1):
                local = next(s.data_iter)
                if cfg.data.pack and local["input_ids"].shape not in shapes:
                    shapes.add(local["input_ids"].shape)
                    rows, length = local["input_ids"].shape
                    s.log(
                        f"Step {step}: {rows * jax.process_count()} packed rows of {length} tokens,"
                        " a new step shape (a train-step program of its own)."
                    )
                pairs += local["teacher"].size * jax.process_count()  # [Q, G], packed or not
                tokens += int((local["segment_ids"] > 0).sum()) * jax.process_count()
                batch = {
                    k: jax.make_array_from_process_local_data(s.batch_sharding, v)
                    for k, v in local.items()
                }
                s.state, metrics = s.train_step(s.state, batch)
                collection = collection or metrics_collection(metrics)
                update = collection.single_from_model_output(**metrics)
                pending = update if pending is None else pending.merge(update)
                if step % cfg.train.log_every == 0 or step == end:
                    summary = {k: float(v) for k, v in pending.compute().items()}
                    summary.update(monitor.check(s.state.opt_state, step))
                    writer.write(step, summary)
                    s.log(progress.line(step, summary, pairs, tokens))
                    pending, pairs, tokens, collection = None, 0, 0, None
                if cfg.train.save_every and step % cfg.train.save_every == 0 and step != end:
                    monitor.check(s.state.opt_state, step)
                    s.checkpointer.save(step, s.state, s.data_iter, config_json)
                    writer.flush()  # the rows of every saved step are in the workdir
                    saved = step
                if (
                    cfg.train.eval_every
                    and step % cfg.train.eval_every == 0
                    and step != cfg.train.num_steps
                ):
                    res = s.evaluate(f"step_{step}")
                    if res:
                        writer.write(
                            step,
                            {
                                f"eval/ndcg@10/{k}": v["reranked"]["ndcg@10"]
                                for k, v in res["datasets"].items()
                            },
                        )
                        writer.flush()
                if (
                    s.dev_suite
                    and step % cfg.train.select_every == 0
                    and step != cfg.train.num_steps
                ):
                    selection.score_step(s, step, _extra(s))
                preemption.inject_fault("step", step)
                if stopper.should_stop(step):
                    end = step
                    break
        if end > s.start and saved != end:
            monitor.check(s.state.opt_state, end)
            s.checkpointer.save(end, s.state, s.data_iter, config_json)
        s.checkpointer.close()  # waits for the save to finish
    except BaseException:
        # A non-finite abort, a data error or a second Ctrl-C: let a save in flight (a good
        # checkpoint from before) finish rather than abandoning it, then re-raise the original
        # error.
        try:
            s.checkpointer.wait()
        except Exception as err:  # the original error is the one to report
            s.log(f"WARNING: a checkpoint save in flight failed too: {err}")
        raise
    finally:
        stopper.close()  # restores the previous signal handlers
        writer.close()
    return end


def run(
    cfg: config_lib.ExperimentConfig, workdir: str, stop_at_step: int | None = None, devices=None
) -> dict:
    """Trains and evaluates; returns the results dict also written to `<workdir>/results.json`.

    Args:
      stop_at_step: end this run after that step (saving a checkpoint) as if preempted; a later
      `run`
        with the same workdir continues from there.
      devices: the devices of the mesh (default: all).
    """
    workdir = storage.absolute(workdir)
    log = _process0_log()
    with compile_cache.persistent_cache(workdir, cfg.train.compilation_cache, log) as cache:
        s = setup(cfg, workdir, devices)
        if s.start == 0:
            if s.dev_suite:
                selection.score_step(s, 0, _extra(s))
            s.evaluate("untrained")
            for path in cfg.eval.reference_models:
                s.evaluate_reference(path)
        end = (
            cfg.train.num_steps if stop_at_step is None else min(stop_at_step, cfg.train.num_steps)
        )
        end = _train(s, end)
        if end == cfg.train.num_steps:
            _finish(s)
    # The step compiles once per run (one jit site), or once per packed step shape; more would
    # mean silent retracing.
    diagnostics = {
        "train_step_compilations": s.train_step._cache_size(),
        "steps_run": end - s.start,
        "compilation_cache_hits": cache.hits,
        "compilation_cache_writes": cache.writes,
    }
    s.log(
        f"Train step compiled {diagnostics['train_step_compilations']} time(s) for {end - s.start} "
        "steps."
    )
    if cache.directory:
        s.log(f"Compilation cache: {cache.hits} program(s) loaded from it, {cache.writes} stored.")
    if end < cfg.train.num_steps:
        s.log(f"Stopped after step {end} as asked; run again with the same workdir to continue.")
    return {**s.results, **diagnostics}


def _finish(s: Session) -> None:
    """Writes the final model (every process: a collective save) and evaluates it."""
    cfg = s.cfg
    # Runtime choices are not part of the saved model.
    spec = s.spec.replace(remat=False, scan_layers=False)
    if getattr(spec.backbone, "moe_impl", "") == "ep":
        spec = spec.replace(moe_impl="grouped")
    extra = _extra(s)
    model_dir = storage.join(s.workdir, "model")
    if s.dev_suite:
        selection.finish(s, model_dir, spec, extra)
    else:
        save_model(model_dir, spec, s.state.params, s.tokenizer, extra)
    if s.evaluate("final"):
        shown = {k: v for k, v in s.results.items() if k.startswith("reference: ")}
        shown.update({k: s.results[k] for k in ("untrained", "final") if k in s.results})
        s.log(f"nDCG@10 (rerank BM25 top-{cfg.eval.top_k})\n{format_table(shown)}")
    s.log(f"Model written to {model_dir}.")


def _extra(s: Session) -> dict:
    """What model.json records about the training run."""
    cfg = s.cfg
    return {
        "training": {
            "workdir": s.workdir,
            "steps": cfg.train.num_steps,
            "config": cfg.to_dict(),
            "data": s.data_manifest,
        }
    }


def _process0_log():
    """The project logger's `info` on process 0, a no-op elsewhere (logs come from one process)."""
    logger = get_logger()  # on every process: it also turns down Orbax/absl chatter
    return logger.info if jax.process_index() == 0 else (lambda *a, **k: None)

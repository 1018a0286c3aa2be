"""The trainer: the one place that wires config, mesh, data, model, optimiser, checkpoints and eval.

`run(config, workdir)` trains `config.train.num_steps` steps, resuming from the newest checkpoint in
`<workdir>/checkpoints` if there is one, evaluates nDCG@10 (reranking a BM25 first stage) before
training, every `eval_every` steps and at the end, and exports the final model to `<workdir>/model`
(a self-describing checkpoint that `rerank`, `evaluate` and `export_hf.py` take as is).
"""

import dataclasses
import os
import time

import jax
import numpy as np
from jax.sharding import NamedSharding

from querit_jax import config_lib, sharding
from querit_jax.data import pipeline, sources, tfds_groups
from querit_jax.data.io import read_json, write_json
from querit_jax.data.templates import PairEncoder, make_template
from querit_jax.eval.scoring import Scorer
from querit_jax.eval.suite import EvalSuite, format_table
from querit_jax.models import api
from querit_jax.sharding import axes
from querit_jax.training import optim, steps
from querit_jax.training.checkpointing import Checkpointer, abstract_like
from querit_jax.training.state import init_state, state_shardings
from querit_jax.training.writers import MetricWriter, Progress, TrainMetrics, get_logger


def build_model(cfg: config_lib.ExperimentConfig, mesh, logical_rules, log):
    """(spec, graphdef, params, tokenizer): from `model.init_from` or freshly initialised."""
    from transformers import AutoTokenizer

    m = cfg.model
    template = make_template(m.template, instruction=m.instruction or None)
    if m.init_from:
        loaded = api.load_model(m.init_from, mesh, logical_rules, tokenizer_path=m.tokenizer)
        backbone = dataclasses.replace(loaded.spec.backbone, dtype=m.dtype, remat=m.remat)
        spec = dataclasses.replace(
            loaded.spec, backbone=backbone, template=template, max_length=cfg.data.max_length
        )
        graphdef, _ = api.abstract_params(spec, mesh, logical_rules)
        log(f"Initialised from {loaded.path} ({spec.family}, head {spec.head.kind}).")
        return spec, graphdef, loaded.params, loaded.tokenizer
    tokenizer = AutoTokenizer.from_pretrained(m.tokenizer)
    backbone = m.decoder_config(
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if len(tokenizer) > backbone.vocab_size:
        raise config_lib.ConfigError(
            f"model.overrides.vocab_size: the tokenizer has {len(tokenizer)} tokens but the model only "
            f"{backbone.vocab_size} embedding rows."
        )
    spec = api.ModelSpec(
        m.family, backbone, config_lib.head_config(m, tokenizer), template, cfg.data.max_length
    )
    graphdef, params = api.init_params(spec, mesh, logical_rules, seed=m.seed)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    log(
        f"Initialised a {m.preset} {m.family} model with {n / 1e6:.2f}M parameters (seed {m.seed})."
    )
    return spec, graphdef, params, tokenizer


def _to_global(batch: dict, batch_sharding: NamedSharding) -> dict:
    return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in batch.items()}


def _save_results(path: str, key: str, value: dict) -> dict:
    results = read_json(path) if os.path.exists(path) else {}
    results[key] = value
    if jax.process_index() == 0:
        write_json(path, results)
    return results


def run(
    cfg: config_lib.ExperimentConfig, workdir: str, stop_at_step: int | None = None, devices=None
) -> dict:
    """Trains and evaluates; returns the results dict also written to `<workdir>/results.json`.

    Args:
      stop_at_step: end this run after that step (saving a checkpoint) as if preempted; a later `run`
        with the same workdir continues from there.
      devices: the devices of the mesh (default: all).
    """
    log = get_logger().info if jax.process_index() == 0 else (lambda *a, **k: None)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    devices = list(devices) if devices is not None else jax.devices()
    mesh_shape = config_lib.validate_for_devices(cfg, len(devices), jax.process_count())
    mesh = sharding.make_mesh(mesh_shape, devices)
    rules = cfg.sharding.rules()
    log(
        f"Mesh {dict(zip(axes.MESH_AXES, mesh_shape))} over {len(devices)} {devices[0].platform} "
        f"devices, preset {cfg.sharding.preset}."
    )

    spec, graphdef, params, tokenizer = build_model(cfg, mesh, rules, log)
    groups_path, data_manifest = sources.prepare_train_groups(
        cfg.data, tokenizer, os.path.join(workdir, "data"), log
    )
    builder = tfds_groups.prepare_groups(
        {"train": groups_path}, os.path.join(workdir, "data", "tfds")
    )
    encoder = PairEncoder(tokenizer, spec.template, cfg.data.max_length, cfg.data.max_query_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dataset = pipeline.train_dataset(
        builder.as_data_source("train"),
        encoder,
        pad_id,
        cfg.data.batch_size // jax.process_count(),
        cfg.data.group_size,
        cfg.data.seed,
        jax.process_index(),
        jax.process_count(),
    )
    data_iter = pipeline.make_iterator(dataset, num_threads=cfg.data.num_threads)

    tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
    _, abstract = api.abstract_params(spec, mesh, rules)
    shardings = state_shardings(abstract, tx, mesh)
    state = init_state(params, tx, shardings)
    del params
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        cfg.train.keep_checkpoints,
        cfg.train.async_checkpoints,
    )
    start = ckpt.latest_step() or 0
    if start:
        state = ckpt.restore(start, abstract_like(state, shardings), data_iter)
        log(f"Resumed from step {start} ({ckpt.directory}).")

    batch_sharding = NamedSharding(
        mesh, sharding.logical_to_spec((axes.BATCH,), rules)
    )  # dim 0 of every entry
    train_step = jax.jit(
        steps.make_train_step(graphdef, tx, schedule, cfg.train.temperature),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, None),
        donate_argnums=(0,),
    )
    results_path = os.path.join(workdir, "results.json")
    suite = EvalSuite(cfg.eval, tokenizer, os.path.join(workdir, "eval"), cfg.data.strict, log)
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
        )
        if suite
        else None
    )
    if suite and start == 0:
        t = time.time()
        with sharding.use_rules(mesh, rules):
            res = suite.evaluate(scorer, state.params)
        log(
            f"Untrained model: mean nDCG@10 {res['mean']['reranked']['ndcg@10']:.4f} "
            f"(BM25 {res['mean']['first_stage']['ndcg@10']:.4f}) [{time.time() - t:.0f} s]"
        )
        _save_results(results_path, "untrained", res)

    writer = MetricWriter(workdir)
    config_json = cfg.to_dict()
    progress = Progress(cfg.train.num_steps, start, cfg.data.batch_size * cfg.data.group_size)
    end = cfg.train.num_steps if stop_at_step is None else min(stop_at_step, cfg.train.num_steps)
    pending = None
    step = start
    with sharding.use_rules(mesh, rules):
        for step in range(start + 1, end + 1):
            batch = _to_global(next(data_iter), batch_sharding)
            state, metrics = train_step(state, batch)
            update = TrainMetrics.single_from_model_output(**metrics)
            pending = update if pending is None else pending.merge(update)
            if step % cfg.train.log_every == 0 or step == end:
                summary = {k: float(v) for k, v in pending.compute().items()}
                pending = None
                writer.write(step, summary)
                log(progress.line(step, summary))
            if cfg.train.save_every and step % cfg.train.save_every == 0 and step != end:
                ckpt.save(step, state, data_iter, config_json)
            if (
                suite
                and cfg.train.eval_every
                and step % cfg.train.eval_every == 0
                and step != cfg.train.num_steps
            ):
                res = suite.evaluate(scorer, state.params)
                writer.write(
                    step,
                    {
                        f"eval/ndcg@10/{k}": v["reranked"]["ndcg@10"]
                        for k, v in res["datasets"].items()
                    },
                )
                log(f"step {step}: mean nDCG@10 {res['mean']['reranked']['ndcg@10']:.4f}")
                _save_results(results_path, f"step_{step}", res)
    if end > start:
        ckpt.save(end, state, data_iter, config_json)
    ckpt.close()
    writer.close()
    # The step compiles once per run (fixed shapes, one jit site); more would mean silent retracing.
    diagnostics = {"train_step_compilations": train_step._cache_size(), "steps_run": end - start}
    log(
        f"Train step compiled {diagnostics['train_step_compilations']} time(s) for {end - start} steps."
    )
    if end < cfg.train.num_steps:
        log(f"Stopped after step {end} as asked; run again with the same workdir to continue.")
        return {**(read_json(results_path) if os.path.exists(results_path) else {}), **diagnostics}

    final_spec = dataclasses.replace(spec, backbone=dataclasses.replace(spec.backbone, remat=False))
    api.save_model(
        os.path.join(workdir, "model"),
        final_spec,
        state.params,
        tokenizer,
        {
            "training": {
                "workdir": workdir,
                "steps": int(cfg.train.num_steps),
                "config": config_json,
                "data": data_manifest,
            }
        },
    )
    results = read_json(results_path) if os.path.exists(results_path) else {}
    if suite:
        with sharding.use_rules(mesh, rules):
            res = suite.evaluate(scorer, state.params)
        results = _save_results(results_path, "final", res)
        shown = {k: results[k] for k in ("untrained", "final") if k in results}
        log(f"nDCG@10 (rerank BM25 top-{cfg.eval.top_k})\n{format_table(shown)}")
    log(f"Model written to {os.path.join(workdir, 'model')}.")
    return {**results, **diagnostics}

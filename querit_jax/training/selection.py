"""Label-free choice of the training length and of the fusion weight, on synthetic dev queries.

With `train.select_on` (synthetic dev sets, e.g. a mining run's `<output>/dev`), the model is scored
on them before training, every `train.select_every` steps and at the end
(`eval.selection.dev_score`: nDCG@10 fused with the first stage at the alpha chosen there). The best
step so far is saved to `<workdir>/selected` (a collective save); at the end it becomes
`<workdir>/model`, whose model.json records the fusion ({"fusion": {"method": "interpolate",
"alpha", "chosen_on"}}: the model card, `rerank` and `evaluate --fusion=model` use it) and the
selection ({"selection": {"step", "dev", ...}}). Every score is kept in results.json under
"selection", so a resumed run continues the comparison.
"""

import dataclasses
import functools
import json
import time

import jax
from jax.experimental import multihost_utils

from querit_jax import sharding, storage
from querit_jax.data.io import write_json
from querit_jax.eval.selection import better, dev_score, fusion_of
from querit_jax.eval.suite import EvalSuite
from querit_jax.models.checkpoint import MARKER, save_model

SELECTED = "selected"


def dev_suite(cfg, cache_dir: str, log) -> EvalSuite | None:
    """The synthetic dev sets (each reranked from its own first-stage run), or None."""
    if not cfg.train.select_on:
        return None
    dev_cfg = dataclasses.replace(cfg.eval, datasets=cfg.train.select_on, max_queries=0)
    return EvalSuite(dev_cfg, "unicode", cache_dir, cfg.data.strict, log)


def where(cfg) -> str:
    return "synthetic dev queries of " + ", ".join(cfg.train.select_on)


def score_step(s, step: int, extra: dict) -> dict:
    """Scores the current parameters on the dev sets; saves them to `selected` when they are the
    best so far (unless `step` is the last one: `finish` saves that itself)."""
    t = time.time()
    with sharding.use_rules(s.mesh, s.rules):
        res = dev_score(s.dev_suite, functools.partial(s.scorer.score, s.state.params))
    history = s.results.setdefault("selection", {"steps": {}, "best": None})
    best = history["steps"].get(str(history["best"])) if history["best"] is not None else None
    history["steps"][str(step)] = res
    s.log(
        f"dev (synthetic) at step {step}: fused nDCG@10 {res['score']:.4f} at alpha "
        f"{res['alpha']:.2f}, reranker {res['reranked']:.4f}, first stage "
        f"{res['first_stage']:.4f} [{time.time() - t:.0f} s]"
    )
    if better(best, res):
        history["best"] = step
        if step != s.cfg.train.num_steps:
            spec = s.spec.replace(remat=False, scan_layers=False)
            save_model(storage.join(s.workdir, SELECTED), spec, s.state.params, s.tokenizer,
                       {**extra, "selection_step": step})  # fmt: skip
    if jax.process_index() == 0:
        write_json(s.results_path, s.results)
    return res


def finish(s, model_dir: str, spec, extra: dict) -> dict:
    """At the end: score the final parameters, then write the best step's model to `model_dir`
    with its fusion and the selection recorded."""
    cfg = s.cfg
    score_step(s, cfg.train.num_steps, extra)
    history = s.results["selection"]
    best = history["best"]
    chosen = history["steps"][str(best)]
    record = {
        "fusion": fusion_of(chosen, where(cfg)).to_dict(),
        "selection": {
            "step": best,
            "of_steps": cfg.train.num_steps,
            "on": list(cfg.train.select_on),
            "dev": chosen,
            "criterion": "nDCG@10 fused at the dev-chosen alpha",
        },
    }
    if best == cfg.train.num_steps:
        save_model(model_dir, spec, s.state.params, s.tokenizer, {**extra, **record})
    else:
        selected = storage.join(s.workdir, SELECTED)
        if jax.process_index() == 0:
            # Committed by its marker, written last (an object store has no atomic rename).
            writer = storage.DirectoryWriter(model_dir, MARKER)
            for rel in storage.files(selected):
                if rel != MARKER:
                    storage.copy_file(
                        storage.join(selected, rel), storage.join(writer.staging, rel)
                    )
            meta = json.loads(storage.read_text(storage.join(selected, MARKER)))
            meta.pop("selection_step", None)
            meta["training"] = {**meta.get("training", {}), "selected_step": best}
            writer.commit(json.dumps({**meta, **record}, indent=2, ensure_ascii=False))
        multihost_utils.sync_global_devices(f"querit_jax selected model {model_dir}")
    s.log(
        f"Selected step {best} of {cfg.train.num_steps} on synthetic dev (fused nDCG@10 "
        f"{chosen['score']:.4f}, alpha {chosen['alpha']:.2f}); written to {model_dir}."
    )
    return record

"""The paper's whole loop, in-process, over the existing phases (see configs/loop.py):

  stage 1 (trainer) -> for each target: mining (miner, a stage-1 + BM25 teacher, a synthetic dev
  set) -> adaptation (trainer: training length and fusion alpha chosen on that dev set) -> SLERP
  merge (t and alpha chosen on the union of the dev sets) -> export -> evaluation of every stage on
  real held-out questions -> report.md / report.json.

Every stage is skipped when its output is complete (a committed model, a complete mining run, a
cached reranked run), and an interrupted training or mining run resumes, so running the same
command again continues where it stopped. All selections read synthetic dev queries only; real
test questions are read by the final evaluation alone. Every process runs this code: the phases
are multi-process already, evaluation and selection score on each process's first device and only
process 0 writes the shared files (reports, cached runs, model.json updates).
"""

import copy
import dataclasses
import functools
import json
import time

import jax
from jax.experimental import multihost_utils

from querit_jax import config_lib, merging, storage
from querit_jax.config_lib.training import EvalConfig
from querit_jax.data import beir
from querit_jax.data.io import read_json, write_json
from querit_jax.data.runs import read_run, write_trec
from querit_jax.data.sources import dataset_name
from querit_jax.eval import metrics as metrics_lib
from querit_jax.eval.fusion import interpolate
from querit_jax.eval.loop_report import to_markdown
from querit_jax.eval.rerank import judged_queries, rerank
from querit_jax.eval.selection import better, dev_score, fusion_of
from querit_jax.eval.suite import EvalSuite, bm25_run
from querit_jax.inference.runners import scorer_for
from querit_jax.loading import load_model, resolve_weights
from querit_jax.logs import get_logger
from querit_jax.mining import miner
from querit_jax.mining.devset import dev_dir
from querit_jax.models.checkpoint import MARKER, is_model_checkpoint
from querit_jax.training import compile_cache, trainer

METRIC = "ndcg@10"


def _list(value) -> list[str]:
    return [v.strip() for v in str(value).split(",")] if str(value).strip() else []


def _safe(name: str) -> str:
    return name.replace("/", "_").replace(":", "_").replace(" ", "_")


@dataclasses.dataclass
class Target:
    name: str  # e.g. es_test
    corpus: str  # BEIR dir: only its corpus.jsonl is read for mining
    evaluation: str  # BEIR dir whose real queries evaluate the adapted model
    real_queries: str  # "" or a sample of real queries for the mining diagnostics


def validate(config) -> None:
    """Checks every section of a loop config (configs/loop.py) before anything runs.

    Raises:
      ConfigError: naming the section and field.
    """
    lp = config.loop
    config_lib.from_config_dict(config.stage1)
    adapt = config.adapt.to_dict()
    mining = adapt.pop("mining")
    adapt["data"]["train"] = "<mining output>"  # set per target
    config_lib.from_config_dict(adapt)
    mining.update(target="<target>", output="<output>", teacher="<stage 1>:0.5,bm25:0.5")
    config_lib.validate_mining(config_lib.mining_from_config_dict({"mining": mining}))
    merge = {**config.merge.to_dict(), "models": "<a>,<b>", "output": "<merged>"}
    config_lib.merge_from_config_dict({"merge": merge}).validate()
    if not 0 < float(lp.teacher_weight) <= 1:
        raise config_lib.ConfigError("loop.teacher_weight: stage 1's weight must be in (0, 1].")
    if not all(0 <= float(t) <= 1 for t in lp.merge_t) or not len(lp.merge_t):
        raise config_lib.ConfigError("loop.merge_t: give one or more t in [0, 1].")
    if int(lp.top_k) < 1 or int(lp.batch_size) < 1:
        raise config_lib.ConfigError("loop.top_k/batch_size: must be >= 1.")
    if not _list(lp.targets):
        raise config_lib.ConfigError("loop.targets: give at least one target BEIR directory.")


class Loop:
    """The loop over `config` (configs/loop.py); `devices`: the training meshes' devices (default
    all), e.g. one device where a batch does not split over all of them."""

    def __init__(self, config, log=None, devices=None):
        validate(config)
        self.c, self.devices = config, devices
        self.lp = config.loop
        self.log = log or (get_logger().info if jax.process_index() == 0 else (lambda *a: None))
        self.w = storage.absolute(self.lp.workdir)
        self.state_path = storage.join(self.w, "loop.json")
        self.state = read_json(self.state_path) if storage.exists(self.state_path) else {}
        self.state.setdefault("seconds", {})
        corpora, evals = _list(self.lp.targets), _list(self.lp.target_evals)
        reals = _list(self.lp.real_queries) if "," in str(self.lp.real_queries) else []
        if not reals and str(self.lp.real_queries).strip():
            reals = [self.lp.real_queries]
        if evals and len(evals) != len(corpora):
            raise config_lib.ConfigError(
                f"loop.target_evals: {len(evals)} sets for {len(corpora)} targets; give one per "
                "target (or none: each target's own queries)."
            )
        reals += [""] * (len(corpora) - len(reals))
        self.targets = [
            Target(_safe(dataset_name(c, "test")), c, (evals or corpora)[i], reals[i])
            for i, c in enumerate(corpora)
        ]
        self.stage1 = storage.join(self.w, "stage1", "model")
        self.merged = storage.join(self.w, "merged")
        self._scorer = None  # (model path, its score function, the Scorer)

    # ----- bookkeeping ----------------------------------------------------------------------------
    def _save_state(self) -> None:
        if jax.process_index() == 0:
            write_json(self.state_path, self.state)

    def _timed(self, key: str, fn):
        start = time.time()
        out = fn()
        self.state["seconds"][key] = round(time.time() - start, 1) + self.state["seconds"].get(
            key, 0.0
        )
        self._save_state()
        return out

    # ----- stages ---------------------------------------------------------------------------------
    def run(self) -> dict:
        # One compilation cache for every stage: the second adaptation loads the train step the
        # first compiled (same model, same shapes).
        with compile_cache.shared(storage.join(self.w, "compilation_cache")):
            return self._run()

    def _run(self) -> dict:
        start = time.time()
        self._timed("stage1", self.train_stage1)
        for t in self.targets:
            self._timed(f"mine {t.name}", functools.partial(self.mine, t))
            self._timed(f"adapt {t.name}", functools.partial(self.adapt, t))
        self._timed("stage1 alpha", self.stage1_alpha)
        self._timed("merge", self.merge)
        report = self._timed("evaluate", self.evaluate)
        if self.lp.export:
            self._timed("export", functools.partial(self.export, report))
        self.state["seconds"]["this run"] = round(time.time() - start, 1)
        self._save_state()
        report["seconds"] = self.state["seconds"]
        self._write_report(report)
        return report

    def train_stage1(self) -> None:
        if is_model_checkpoint(self.stage1):
            self.log(f"Stage 1: {self.stage1} is complete; skipped.")
            return
        d = copy.deepcopy(self.c.stage1)
        d.model.init_from = resolve_weights(d.model.init_from, log=self.log) if (
            d.model.init_from
        ) else ""  # fmt: skip
        trainer.run(
            config_lib.from_config_dict(d), storage.dirname(self.stage1), devices=self.devices
        )

    def teacher(self) -> str:
        w = float(self.lp.teacher_weight)
        return f"{self.stage1}:{w:g},bm25:{1 - w:g}" if w < 1 else self.stage1

    def mining_config(self, t: Target):
        m = self.c.adapt.mining.to_dict()
        m.update(target=t.corpus, output=storage.join(self.w, "mined", t.name))
        m.update(teacher=self.teacher(), real_queries=t.real_queries)
        if m.get("diagnostics_embedder"):
            m["diagnostics_embedder"] = resolve_weights(m["diagnostics_embedder"], log=self.log)
        return config_lib.mining_from_config_dict({"mining": m})

    def mine(self, t: Target) -> None:
        miner.ensure_mined(self.mining_config(t), self.log)

    def adapted(self, t: Target) -> str:
        return storage.join(self.w, "adapt", t.name, "model")

    def adapt(self, t: Target) -> None:
        if is_model_checkpoint(self.adapted(t)):
            self.log(f"Adaptation to {t.name}: complete; skipped.")
            return
        d = copy.deepcopy(self.c.adapt).to_dict()
        d.pop("mining")
        output = storage.join(self.w, "mined", t.name)
        d["model"]["init_from"] = self.stage1
        d["data"]["train"] = output
        d["train"]["select_on"] = dev_dir(output)
        d["eval"]["datasets"] = ""
        trainer.run(
            config_lib.from_config_dict(d), storage.dirname(self.adapted(t)), devices=self.devices
        )

    # ----- label-free choices on the synthetic dev sets ------------------------------------------
    def dev_suite(self) -> EvalSuite:
        devs = tuple(dev_dir(storage.join(self.w, "mined", t.name)) for t in self.targets)
        cfg = EvalConfig(datasets=devs, top_k=int(self.lp.top_k))
        return EvalSuite(cfg, "unicode", storage.join(self.w, "eval", "dev"), log=self.log)

    def dev_result(self, key: str, model_path: str) -> dict:
        """`dev_score` of a model on the union of the dev sets (cached in loop.json)."""
        cached = self.state.setdefault("dev", {}).get(key)
        if cached and cached.get("model") == model_path:
            return cached
        res = dev_score(self.dev_suite(), self._score_fn(model_path))
        self.state["dev"][key] = {**res, "model": model_path}
        self._save_state()
        self.log(f"dev (synthetic, all targets) {key}: fused {res['score']:.4f} at alpha "
                 f"{res['alpha']:.2f}, reranker {res['reranked']:.4f}, BM25 "
                 f"{res['first_stage']:.4f}")  # fmt: skip
        return self.state["dev"][key]

    def _score_fn(self, model_path: str):
        """The score function of the model at `model_path`. The compiled scorer is reused across
        models of one architecture and tokenizer (stage 1, adapted, merged): only the parameters
        change, so nothing compiles again."""
        if self._scorer is not None and self._scorer[0] == model_path:
            return self._scorer[1]
        model = load_model(model_path)
        scorer = self._scorer[2] if self._scorer is not None else None
        if scorer is None or not _same_program(scorer, model):
            scorer = scorer_for(model, batch_size=int(self.lp.batch_size))
        self._scorer = (model_path, functools.partial(scorer.score, model.params), scorer)
        return self._scorer[1]

    def _where(self) -> str:
        return "synthetic dev queries of " + ", ".join(t.name for t in self.targets)

    def stage1_alpha(self) -> None:
        """Stage 1's fusion weight, chosen on the union of the synthetic dev sets."""
        res = self.dev_result("stage1", self.stage1)
        _update_model_json(self.stage1, {"fusion": fusion_of(res, self._where()).to_dict()})

    def merge(self) -> None:
        """SLERP of the adapted models for each t of loop.merge_t; the best on dev -> merged/."""
        models = [self.adapted(t) for t in self.targets]
        if len(models) == 1:
            self.log("One target: nothing to merge; the adapted model is the merged one.")
            self.merged = models[0]
            return
        best, best_t = None, None
        grid = [float(x) for x in self.lp.merge_t] if len(models) == 2 else [None]
        for t in grid:
            out = storage.join(self.w, "merge", "multislerp" if t is None else f"t_{t:.2f}")
            if not is_model_checkpoint(out):
                section = copy.deepcopy(self.c.merge)
                section.models = ",".join(models)
                section.output = out
                section.method = "slerp" if t is not None else "multislerp"
                section.t = t if t is not None else 0.5
                merging.merge(config_lib.merge_from_config_dict({"merge": section}), log=self.log)
            res = self.dev_result(f"merge t={t}", out)
            if better(best, res):
                best, best_t = res, t
        self.state["merge"] = {"t": best_t, "grid": grid, "dev": best}
        chosen = storage.join(
            self.w, "merge", "multislerp" if best_t is None else f"t_{best_t:.2f}"
        )
        done = (
            is_model_checkpoint(self.merged)
            and _read_model_json(self.merged).get("merge_selection", {}).get("t", "none") == best_t
        )
        if done:
            self.log(f"Merge: {self.merged} holds t={best_t} already; kept.")
            return
        if jax.process_index() == 0:
            storage.rmtree(self.merged)
            storage.copy_tree(chosen, self.merged)
        multihost_utils.sync_global_devices("querit_jax loop merged")
        _update_model_json(self.merged, {
            "fusion": fusion_of(best, self._where()).to_dict(),
            "merge_selection": {"t": best_t, "grid": grid, "dev": best, "on": self._where()},
        })  # fmt: skip
        self.log(f"Merge: t={best_t} chosen on synthetic dev (fused nDCG@10 {best['score']:.4f}, "
                 f"alpha {best['alpha']:.2f}) -> {self.merged}")  # fmt: skip

    # ----- the final evaluation on real held-out questions ---------------------------------------
    def _first_stage(self, path: str):
        ds = beir.load_beir(path, "test")
        key = _safe(dataset_name(path, "test"))
        cache = storage.join(self.w, "eval", f"{key}.bm25-unicode-100.trec")
        if storage.exists(cache):
            return ds, read_run(cache)
        run = bm25_run(ds, "unicode", max(int(self.lp.top_k), 100))
        if jax.process_index() == 0:
            write_trec(run, cache, tag="bm25")
        return ds, run

    def _reranked(self, label: str, model_path: str, path: str, ds, first) -> dict:
        cache = storage.join(self.w, "eval", f"{label}__{_safe(dataset_name(path, 'test'))}.trec")
        if storage.exists(cache):
            return read_run(cache)
        run = rerank(self._score_fn(model_path), ds, first, int(self.lp.top_k))
        if jax.process_index() == 0:
            write_trec(run, cache, tag=label)
        return run

    def evaluate(self) -> dict:
        alphas = {
            "stage1": self.dev_result("stage1", self.stage1)["alpha"],
            "merged": _read_model_json(self.merged).get("fusion", {}).get("alpha", 1.0),
        }
        for t in self.targets:
            alphas[f"adapted {t.name}"] = _read_model_json(self.adapted(t))["fusion"]["alpha"]
        sets = list(dict.fromkeys(_list(self.lp.evaluate) + [t.evaluation for t in self.targets]))
        firsts = {path: self._first_stage(path) for path in sets}
        # Model by model (each loaded once): stage 1 and the merged model on every set, each
        # adapted model on its target's set.
        jobs = [(label, model_path, path)
                for label, model_path in (("stage1", self.stage1), ("merged", self.merged))
                for path in sets]  # fmt: skip
        jobs += [(f"adapted {t.name}", self.adapted(t), t.evaluation) for t in self.targets]
        runs = {(label, path): self._reranked(_safe(label), model_path, path, *firsts[path])
                for label, model_path, path in jobs}  # fmt: skip
        rows = {}
        for path in sets:
            ds, first = firsts[path]
            qids = judged_queries(ds)
            qrels = {q: ds.qrels[q] for q in qids}
            name = dataset_name(path, "test")
            top = {q: dict(sorted(first[q].items(), key=lambda x: -x[1])[: int(self.lp.top_k)])
                   for q in qids if q in first}  # fmt: skip
            row = {"BM25": _ndcg(qrels, top)}
            for label, _, job_path in jobs:
                if job_path != path:
                    continue
                run = runs[(label, path)]
                row[label] = _ndcg(qrels, run)
                row[f"{label} fused"] = _ndcg(qrels, interpolate(first, run, alphas[label]))
                if label == "stage1" and any(path == t.evaluation for t in self.targets):
                    w = float(self.lp.teacher_weight)
                    row["teacher"] = _ndcg(qrels, interpolate(first, run, w))
            rows[name] = row
            self.log(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
        return {
            "metric": "nDCG@10",
            "top_k": int(self.lp.top_k),
            "rows": rows,
            "alphas": alphas,
            "targets": [dataclasses.asdict(t) for t in self.targets],
            "teacher": self.teacher(),
            "selection": self._selection(),
        }

    def _selection(self) -> dict:
        out = {"stage1": _strip(self.state.get("dev", {}).get("stage1")),
               "merge": self.state.get("merge"), "adaptation": {}, "mining": {}}  # fmt: skip
        for t in self.targets:
            meta = _read_model_json(self.adapted(t))
            out["adaptation"][t.name] = meta.get("selection")
            manifest = storage.join(self.w, "mined", t.name, "manifest.json")
            if storage.exists(manifest):
                out["mining"][t.name] = read_json(manifest).get("totals")
        return out

    def export(self, report: dict) -> None:
        from querit_jax.eval import report as report_lib
        from querit_jax.release.export import export_checkpoint

        out = storage.join(self.w, "export")
        if storage.exists(storage.join(out, "config.json")):
            self.log(f"Export: {out} exists; skipped.")
            return
        report_path = storage.join(self.w, "eval", "merged_report.json")
        if jax.process_index() == 0:
            rows = report["rows"]
            first = {n: {METRIC: r["BM25"]} for n, r in rows.items()}
            models = {"merged": {n: {METRIC: r["merged"]} for n, r in rows.items()}}
            report_lib.write_report(
                report_lib.build_report(first, models, "BM25", {}), storage.dirname(report_path),
                "merged_report",
            )  # fmt: skip
        export_checkpoint(self.merged, out, dtype="float32", eval_report=report_path)
        self.log(f"Exported the merged model to {out}.")

    def _write_report(self, report: dict) -> None:
        if jax.process_index() != 0:
            return
        write_json(storage.join(self.w, "report.json"), report)
        storage.write_text(storage.join(self.w, "report.md"), to_markdown(report))
        self.log(to_markdown(report))


# ----- helpers ------------------------------------------------------------------------------------
def _same_program(scorer, model) -> bool:
    """Whether `scorer` (compiled for another model) scores `model` exactly: same architecture and
    token budgets, same graph and mesh, same tokenizer vocabulary."""
    return (
        scorer.spec == model.spec
        and scorer.graphdef == model.graphdef
        and scorer.mesh == model.mesh
        and type(scorer.tokenizer) is type(model.tokenizer)
        and scorer.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    )


def _ndcg(qrels, run) -> float:
    means, _ = metrics_lib.evaluate(qrels, run, [METRIC])
    return round(float(means[METRIC]), 4)


def _strip(res: dict | None) -> dict | None:
    return {k: v for k, v in res.items() if k != "alphas"} if res else res


def _read_model_json(path: str) -> dict:
    return json.loads(storage.read_text(storage.join(path, MARKER)))


def _update_model_json(path: str, fields: dict) -> None:
    """Adds `fields` to a committed checkpoint's model.json (process 0; one-piece write)."""
    if jax.process_index() == 0:
        meta = _read_model_json(path)
        meta.update(fields)
        storage.write_text(
            storage.join(path, MARKER), json.dumps(meta, indent=2, ensure_ascii=False)
        )
    multihost_utils.sync_global_devices(f"querit_jax model.json {path}")

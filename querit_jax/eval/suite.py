"""The evaluation suite run during and after training: datasets reranked from a cached first stage.

The first stage is BM25 with an analyser that does not depend on the model being evaluated (the
built-in Unicode analyser by default, `eval.bm25_tokenizer`), so every model of a comparison reranks
the same candidates. Runs are cached under the workdir (written by process 0). A dataset directory
that carries its own first-stage run (`first_stage.trec`, e.g. a mining run's synthetic dev set) is
reranked from that run.
"""

import hashlib

import jax
import numpy as np

from querit_jax import storage
from querit_jax.data import beir
from querit_jax.data.runs import Run, read_run, write_trec
from querit_jax.data.sources import dataset_name, load_dataset, parse_source
from querit_jax.eval import metrics as metrics_lib
from querit_jax.eval.rerank import evaluate_rerank
from querit_jax.retrieval.analyzers import analyzer_for
from querit_jax.retrieval.bm25 import BM25Retriever

OWN_RUN = "first_stage.trec"  # a dataset's own first-stage run, used instead of BM25


def bm25_run(dataset: beir.BeirDataset, analyzer, depth: int) -> Run:
    """BM25's top `depth` for every query of `dataset`; `analyzer`: "unicode", a tokenizer directory
    or a loaded tokenizer (see retrieval.analyzers.analyzer_for)."""
    doc_ids = sorted(dataset.corpus)
    texts = [dataset.doc_text(d) for d in doc_ids]
    return BM25Retriever(doc_ids, texts, analyzer_for(analyzer)).search(dataset.queries, depth)


def analyzer_name(analyzer) -> str:
    if isinstance(analyzer, str):
        return analyzer or "unicode"
    return f"{getattr(analyzer, 'name_or_path', '')}|{len(analyzer)}"


class EvalSuite:
    """Loads the configured datasets once and caches their first-stage runs under `cache_dir`.

    Args:
      tokenizer: the model's tokenizer, used for BM25 only when `eval.bm25_tokenizer` is "model".
    """

    def __init__(self, eval_cfg, tokenizer, cache_dir: str, strict: bool = True, log=print):
        self.cfg = eval_cfg
        self.datasets, self.runs = {}, {}
        depth = max(eval_cfg.top_k, 100)
        analyzer = getattr(eval_cfg, "bm25_tokenizer", "unicode") or "unicode"
        analyzer = tokenizer if analyzer == "model" else analyzer
        self.first_stage_name = f"BM25 ({analyzer_name(analyzer).split('|')[0] or 'model'})"
        for spec in eval_cfg.datasets:
            kind, path, split = parse_source(spec, default_split="test")
            name = dataset_name(path, split)
            if name in self.datasets:  # e.g. two mining runs' dev/ sets: the full location
                name = f"{storage.absolute(path)}:{split}"
            ds = load_dataset(kind, path, split, strict)
            # The cached run is only valid for the analyser and depth it was computed with.
            key = hashlib.sha256(f"{analyzer_name(analyzer)}|{depth}".encode())
            safe = name.replace(":", "_").replace("/", "_")
            run_path = storage.join(cache_dir, f"{safe}.bm25-{key.hexdigest()[:8]}.trec")
            if storage.exists(storage.join(path, OWN_RUN)):
                run_path = storage.join(path, OWN_RUN)
                run = read_run(run_path)
            elif storage.exists(run_path):
                run = read_run(run_path)
            else:
                run = bm25_run(ds, analyzer, depth)
                if jax.process_index() == 0:
                    write_trec(run, run_path, tag="bm25")
            self.datasets[name], self.runs[name] = ds, run
            log(
                f"Eval dataset {name}: {len(ds.qrels)} queries, {len(ds.corpus)} documents, "
                f"BM25 run {run_path}."
            )

    def __bool__(self) -> bool:
        return bool(self.datasets)

    def evaluate(self, score_fn, fusion=None) -> dict:
        """`score_fn(queries, documents)` reranks every dataset's first stage (and, with an active
        `eval.fusion.Fusion`, fuses it with the first stage).

        Returns {"datasets": {name: summary}, "mean": {"first_stage": {...}, "reranked": {...}
        [, "fused": {...}]}}.
        """
        out = {}
        for name, ds in self.datasets.items():
            out[name], _ = evaluate_rerank(
                score_fn,
                ds,
                self.runs[name],
                self.cfg.top_k,
                max_queries=self.cfg.max_queries,
                fusion=fusion,
            )
        sides = ["first_stage", "reranked"] + (["fused"] if fusion and fusion.active else [])
        mean = {
            side: {
                m: float(np.mean([r[side][m] for r in out.values()]))
                for m in metrics_lib.DEFAULT_METRICS
            }
            for side in sides
        }
        return {"datasets": out, "mean": mean}


def format_table(results: dict[str, dict], metric: str = "ndcg@10") -> str:
    """A Markdown table: rows = datasets (+ mean), columns = BM25 then each named result."""
    names = list(results)
    first = next(iter(results.values()))
    rows = [*first["datasets"], "mean"]
    header = f"| dataset | BM25 | {' | '.join(names)} |"
    lines = [header, "|" + "---|" * (len(names) + 2)]
    for row in rows:
        pick = (lambda r: r["mean"]) if row == "mean" else (lambda r, row=row: r["datasets"][row])
        cells = [f"{pick(first)['first_stage'][metric]:.4f}"] + [
            f"{pick(r)['reranked'][metric]:.4f}" for r in results.values()
        ]
        lines.append(f"| {row} | {' | '.join(cells)} |")
    return "\n".join(lines)

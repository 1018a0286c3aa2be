"""nDCG@10 and Recall@100 of first stages on XQuAD-R, one full sentence pool per language.

  python tools/xquad_r_first_stage.py --src=../shared/data/xquad-r \\
      --models=bm25,../shared/models/all-MiniLM-L6-v2 [--out=workdirs/xquad_r_first_stage]

Converts every language file found in --src (LAReQA's sentence-level task: all 1190 questions
against all ~1200 sentences of the language), runs each first stage with
`querit_jax.retrieval.dense`, and prints a Markdown table (also written to <out>/table.md with the
runs and a JSON of the numbers).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from querit_jax import cli
from querit_jax.data import beir, xquad_r
from querit_jax.data.runs import write_trec
from querit_jax.eval import metrics
from querit_jax.loading import embedding_function, first_stage_run
from querit_jax.retrieval.dense import DenseRetriever

_SRC = flags.DEFINE_string(
    "src", "../shared/data/xquad-r", "Directory of XQuAD-R <lang>.json files."
)
_MODELS = flags.DEFINE_list(
    "models", ["bm25", "../shared/models/all-MiniLM-L6-v2"], "First stages."
)
_OUT = flags.DEFINE_string("out", "workdirs/xquad_r_first_stage", "Output directory.")
_BM25_TOKENIZER = flags.DEFINE_string(
    "bm25_tokenizer", "unicode", "'unicode' or a tokenizer directory."
)


def main(argv):
    del argv
    data_dir = os.path.join(_OUT.value, "data")
    langs = xquad_r.convert(_SRC.value, data_dir, test_every=0)
    results: dict = {}
    for model in _MODELS.value:
        name = "BM25" if model == "bm25" else os.path.basename(model.rstrip("/"))
        embed = None if model == "bm25" else embedding_function(model)  # loaded once for all
        for lang in langs:
            ds = beir.load_beir(os.path.join(data_dir, lang), "test")
            start = time.time()
            if embed is None:
                run = first_stage_run("bm25", ds, 100, _BM25_TOKENIZER.value, progress=False)
            else:
                ids = list(ds.corpus)
                retriever = DenseRetriever(embed, progress=False)
                run = retriever.index(ids, [ds.doc_text(d) for d in ids]).search(ds.queries, 100)
            write_trec(run, os.path.join(_OUT.value, "runs", f"{name}.{lang}.trec"), tag=name)
            means, _ = metrics.evaluate(ds.qrels, run, ["ndcg@10", "recall@100"])
            results.setdefault(name, {})[lang] = {**means, "seconds": round(time.time() - start, 1)}
            print(
                f"{name} {lang}: nDCG@10 {means['ndcg@10']:.4f} R@100 {means['recall@100']:.4f}",
                flush=True,
            )
    names = list(results)
    lines = [
        "| language | " + " | ".join(f"{n} nDCG@10 | {n} R@100" for n in names) + " |",
        "|---|" + "---|" * (2 * len(names)),
    ]
    for lang in [*langs, "mean"]:
        cells = []
        for n in names:
            rows = results[n].values() if lang == "mean" else [results[n][lang]]
            cells += [
                f"{sum(r[m] for r in rows) / len(rows):.4f}" for m in ("ndcg@10", "recall@100")
            ]
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(_OUT.value, "table.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    with open(os.path.join(_OUT.value, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    cli.run(main)

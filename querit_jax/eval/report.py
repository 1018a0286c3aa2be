"""Evaluation reports: one JSON, a Markdown table and a PNG bar chart of the same numbers.

A report compares a first stage (BM25 or a run file) with one or several rerankers on one or several
datasets (typically one per language). Every reranker reranks the same first-stage candidates, so
the columns are comparable. Layout of `report.json`:

    {"metric": "ndcg@10", "metrics": [...], "first_stage": "BM25", "models": [label, ...],
     "datasets": {name: {"first_stage": {metric: v}, "models": {label: {metric: v}},
                         "queries": n, "top_k": k}},
     "mean": {"first_stage": {...}, "models": {label: {...}}}}        # macro mean over datasets

`report.md` renders the JSON values rounded to 4 decimals; `report.png` plots the main metric per
dataset (and the mean when there are several), first stage then each model side by side. The chart
uses matplotlib's Agg canvas directly (no pyplot), so it never needs a display nor changes the
process-wide backend.
"""

import numpy as np

from querit_jax import storage
from querit_jax.data.io import read_json, write_json
from querit_jax.errors import DataFormatError

MAIN_METRIC = "ndcg@10"
REPORT_NAMES = ("report.json", "report.md", "report.png")
TRAINED_LABEL = "trained"  # the final model's column in the trainer's report


def _mean(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def build_report(
    first_stage: dict[str, dict],
    models: dict[str, dict[str, dict]],
    first_stage_name: str = "BM25",
    details: dict[str, dict] | None = None,
    metric: str = MAIN_METRIC,
) -> dict:
    """The report dict from metric values.

    Args:
      first_stage: {dataset: {metric: value}} of the first stage.
      models: {model label: {dataset: {metric: value}}}, every model on every dataset.
      details: optional {dataset: {"queries": n, "top_k": k, ...}} copied into each dataset entry.
    Raises:
      ValueError: when a model lacks a dataset or there is nothing to report.
    """
    if not first_stage or not models:
        raise ValueError("A report needs at least one dataset and one model.")
    for label, per_ds in models.items():
        missing = sorted(set(first_stage) - set(per_ds))
        if missing:
            raise ValueError(f"Model {label!r} has no results for dataset(s) {missing}.")
    datasets = {}
    for name, fs in first_stage.items():
        entry = {
            "first_stage": dict(fs),
            "models": {label: dict(per_ds[name]) for label, per_ds in models.items()},
        }
        entry.update((details or {}).get(name, {}))
        datasets[name] = entry
    names = list(datasets)
    return {
        "metric": metric,
        "metrics": sorted({m for fs in first_stage.values() for m in fs}),
        "first_stage": first_stage_name,
        "models": list(models),
        "datasets": datasets,
        "mean": {
            "first_stage": _mean([datasets[n]["first_stage"] for n in names]),
            "models": {
                label: _mean([datasets[n]["models"][label] for n in names]) for label in models
            },
        },
    }


def from_summaries(summaries: list[dict], first_stage_name: str = "BM25") -> dict:
    """A report from `evaluate_rerank` summaries carrying "label" and "dataset" keys (evaluate CLI).

    A summary with fused metrics adds a column `<label> + <first stage> (<fusion>)` next to the
    model's.
    """
    first, models, details = {}, {}, {}
    for s in summaries:
        first.setdefault(s["dataset"], s["first_stage"])
        models.setdefault(s["label"], {})[s["dataset"]] = s["reranked"]
        if "fused" in s:
            models.setdefault(fused_label(s["label"], first_stage_name, s["fusion"]), {})[
                s["dataset"]
            ] = s["fused"]
        details[s["dataset"]] = {"queries": s["queries"], "top_k": s["top_k"]}
    return build_report(first, models, first_stage_name, details)


def fused_label(label: str, first_stage_name: str, fusion: dict) -> str:
    """The column of a model fused with the first stage, e.g. "merged + BM25 (α=0.40)"."""
    if fusion.get("method") == "rrf":
        return f"{label} + {first_stage_name} (RRF)"
    return f"{label} + {first_stage_name} (α={fusion.get('alpha', 1.0):.2f})"


def training_label(key: str) -> str | None:
    """Column label for a `results.json` entry: references, the untrained and the final model."""
    if key.startswith("reference: "):
        return f"{key[len('reference: ') :]} (reference)"
    return {"untrained": "untrained", "final": TRAINED_LABEL}.get(key)


def from_training_results(results: dict) -> dict | None:
    """A report from the trainer's `results.json` ({key: EvalSuite.evaluate result}).

    Columns: the reference models (e.g. the teacher), the untrained and the final model; periodic
    `step_N` evaluations are left out. None when there is nothing evaluated to report.
    """
    picked = {
        label: results[key]
        for key in sorted(
            results, key=lambda k: (not k.startswith("reference: "), k != "untrained")
        )
        if isinstance(results[key], dict)
        and "datasets" in results[key]
        and (label := training_label(key))
    }
    if not picked:
        return None
    base = next(iter(picked.values()))["datasets"]
    return build_report(
        {name: r["first_stage"] for name, r in base.items()},
        {
            label: {name: r["reranked"] for name, r in res["datasets"].items()}
            for label, res in picked.items()
        },
        details={n: {"queries": r["queries"], "top_k": r["top_k"]} for n, r in base.items()},
    )


def _rows(report: dict) -> list[tuple[str, dict]]:
    rows = list(report["datasets"].items())
    if len(rows) > 1:
        rows.append(("mean", report["mean"]))
    return rows


def markdown_table(report: dict, metric: str | None = None) -> str:
    """Rows = datasets (+ mean), columns = the first stage then each model."""
    metric = metric or report["metric"]
    cols = [report["first_stage"], *report["models"]]
    lines = [f"| dataset | {' | '.join(cols)} |", "|" + "---|" * (len(cols) + 1)]
    for name, entry in _rows(report):
        values = [entry["first_stage"][metric]] + [
            entry["models"][m][metric] for m in report["models"]
        ]
        lines.append(f"| {name} | {' | '.join(f'{v:.4f}' for v in values)} |")
    return "\n".join(lines)


def to_markdown(report: dict) -> str:
    """The whole report: the main metric's table first, then one table per other metric."""
    first = next(iter(report["datasets"].values()))
    depth = f" top-{first['top_k']}" if "top_k" in first else ""
    out = [
        "# Evaluation report",
        "",
        f"Reranking the {report['first_stage']}{depth} candidates of each dataset; every model "
        "reranks the same candidates. Mean = macro average over datasets.",
    ]
    metrics = [report["metric"], *[m for m in report["metrics"] if m != report["metric"]]]
    for metric in metrics:
        out += ["", f"## {metric}", "", markdown_table(report, metric)]
    return "\n".join(out) + "\n"


def plot(report: dict, path, metric: str | None = None):
    """Grouped bar chart (PNG) of `metric` per dataset: first stage, then each model. `path`: a
    local
    file name or a binary file object."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = metric or report["metric"]
    rows = _rows(report)
    series = [report["first_stage"], *report["models"]]
    values = np.array(
        [
            [e["first_stage"][metric]] + [e["models"][m][metric] for m in report["models"]]
            for _, e in rows
        ]
    )
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(6.0, 0.5 * len(rows) * (len(series) + 1) + 2), 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    for i, name in enumerate(series):
        bars = ax.bar(x - 0.4 + width * (i + 0.5), values[:, i], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(x, [name for name, _ in rows])
    ax.set_ylabel(metric)
    ax.set_ylim(0, min(1.0, float(values.max()) * 1.15 + 0.05) if values.size else 1.0)
    ax.set_title(f"{metric}: {report['first_stage']} vs reranker(s)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        ncol=min(len(series), 4),
        frameon=False,
    )
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def write_report(report: dict, out_dir: str, stem: str = "report") -> dict[str, str]:
    """Writes `<stem>.json`, `<stem>.md` and `<stem>.png` into out_dir. Returns {kind: path}."""
    paths = {k: storage.join(out_dir, f"{stem}.{k}") for k in ("json", "md", "png")}
    write_json(paths["json"], report)
    storage.write_text(paths["md"], to_markdown(report))
    with storage.atomic_writer(paths["png"], binary=True) as f:
        plot(report, f)
    return paths


def write_training_report(workdir: str) -> dict[str, str] | None:
    """Writes report.{json,md,png} into a training workdir from its results.json (None: nothing to
    do)."""
    results_path = storage.join(workdir, "results.json")
    if not storage.exists(results_path):
        return None
    report = from_training_results(read_json(results_path))
    return write_report(report, workdir) if report else None


def load_report(path: str) -> dict:
    """Reads a report.json, checking it is one (DataFormatError naming the file otherwise)."""
    if not storage.isfile(path):
        raise FileNotFoundError(
            f"{path}: no such evaluation report (python -m querit_jax.evaluate writes one)."
        )
    report = read_json(path)
    keys = ("metric", "first_stage", "models", "datasets")
    missing = [k for k in keys if k not in report] if isinstance(report, dict) else list(keys)
    if missing or not report["datasets"]:
        raise DataFormatError(
            f"{path}: not an evaluation report (missing {missing or 'datasets'}); pass the "
            "report.json written by querit_jax.evaluate or by training."
        )
    return report


def is_training_report(report) -> bool:
    """Whether a report is the one the trainer writes (it has the final model's "trained"
    column)."""
    return isinstance(report, dict) and TRAINED_LABEL in (report.get("models") or [])


def find_report(model_path: str) -> str | None:
    """The report.json of a model: in its own directory, or the trainer's report of the training
    workdir when the model is that workdir's `model/` (workdir/model + workdir/report.json).

    Any other report.json in the parent directory describes other models (e.g. a comparison written
    next to several merge outputs), so it is never picked up; pass it explicitly instead.
    """
    own = storage.join(model_path, "report.json")
    if storage.exists(own):
        return own
    if storage.basename(model_path) != "model":
        return None
    path = storage.join(storage.dirname(model_path), "report.json")
    try:
        return path if is_training_report(read_json(path)) else None
    except (OSError, ValueError, DataFormatError):  # missing or unreadable: not the trainer's
        return None

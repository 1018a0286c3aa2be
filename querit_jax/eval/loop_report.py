"""The loop's report (report.md): every stage on real held-out questions, the label-free choices
and the wall times (`querit_jax.workflow.Loop` writes it)."""

COLUMNS = ("BM25", "stage1", "stage1 fused", "teacher", "adapted", "adapted fused", "merged",
           "merged fused")  # fmt: skip


def to_markdown(report: dict) -> str:
    a = report["alphas"]
    lines = [
        f"# The loop on real held-out questions ({report['metric']}, BM25 top {report['top_k']})",
        "",
        f"Fusion: min-max interpolation, alpha (the reranker's weight) chosen on synthetic dev "
        f"queries: stage 1 {a['stage1']:.2f}, merged {a['merged']:.2f}"
        + "".join(
            f", adapted {k.split(' ', 1)[1]} {v:.2f}"
            for k, v in a.items()
            if k.startswith("adapted")
        )
        + f". Teacher: `{report['teacher']}` (stage 1 fused with BM25 at its weight).",
        "",
        "| dataset | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for name, row in report["rows"].items():
        cells = []
        for col in COLUMNS:
            key = next((k for k in row if k.startswith("adapted") and
                        k.endswith(" fused") == col.endswith(" fused")), None) \
                if col.startswith("adapted") else col  # fmt: skip
            cells.append(f"{row[key]:.4f}" if key in row else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sel = report.get("selection", {})
    lines += ["", "## Label-free choices (synthetic dev queries only)", ""]
    for name, s in (sel.get("adaptation") or {}).items():
        if s:
            lines.append(
                f"- adaptation {name}: step {s['step']} of {s['of_steps']} "
                f"(dev fused {s['dev']['score']:.4f}, alpha {s['dev']['alpha']:.2f}, "
                f"reranker {s['dev']['reranked']:.4f}, BM25 {s['dev']['first_stage']:.4f})"
            )
    if sel.get("merge"):
        m = sel["merge"]
        lines.append(f"- merge: t={m['t']} of {m['grid']} (dev fused {m['dev']['score']:.4f}, "
                     f"alpha {m['dev']['alpha']:.2f})")  # fmt: skip
    if sel.get("stage1"):
        s = sel["stage1"]
        lines.append(f"- stage 1 alpha {s['alpha']:.2f} (dev fused {s['score']:.4f}, reranker "
                     f"{s['reranked']:.4f}, BM25 {s['first_stage']:.4f})")  # fmt: skip
    if report.get("seconds"):
        lines += ["", "## Wall time (s)", ""]
        lines += [f"- {k}: {v}" for k, v in report["seconds"].items()]
    return "\n".join(lines) + "\n"

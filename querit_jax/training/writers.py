"""Metric output without TensorFlow: TensorBoard event files (tensorboardX), a JSONL log, a progress line.

clu's `metric_writers` import TensorFlow (../shared/notes/libraries.md §2), so the writer is ours; the
per-interval averaging uses `clu.metrics`, which does not.
"""

import json
import logging
import os
import time

import jax
import numpy as np
import tensorboardX
from clu import metrics as clu_metrics


def metrics_collection(names) -> type[clu_metrics.Collection]:
    """A clu Collection averaging every train-step metric over a logging interval (the learning rate:
    its last value). Built from the names the step returns, so MoE runs get their extra metrics."""
    fields = {
        name: (
            clu_metrics.LastValue if name == "learning_rate" else clu_metrics.Average
        ).from_output(name)
        for name in names
    }
    return clu_metrics.Collection.create(**fields)


class MetricWriter:
    """Writes scalars to TensorBoard and `<workdir>/metrics.jsonl` from process 0 only."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
        for k, v in clean.items():
            self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._tb.close()
            self._jsonl.close()


class Progress:
    """The progress line: step, loss, accuracy, lr, pairs/s, real tokens/s and ETA."""

    def __init__(self, total_steps: int, start_step: int):
        self.total = total_steps
        self._t, self._step = time.time(), start_step

    def line(self, step: int, m: dict[str, float], pairs: int, tokens: int) -> str:
        """`pairs`/`tokens`: processed since the previous line (tokens: real, not padding)."""
        now = time.time()
        elapsed = max(now - self._t, 1e-9)
        rate = (step - self._step) / elapsed
        self._t, self._step = now, step
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        return (
            f"step {step}/{self.total} | loss {m['loss']:.4f} | acc {m['accuracy']:.3f} | "
            f"lr {m['learning_rate']:.2e} | {pairs / elapsed:.0f} pairs/s | {tokens / elapsed:.0f} tok/s | "
            f"ETA {_fmt(eta)}"
        )


def _fmt(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def get_logger() -> logging.Logger:
    """The project logger (INFO, process 0 prints); Orbax/TFDS absl INFO chatter is turned down."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    logger = logging.getLogger("querit_jax")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger

"""Metric output without TensorFlow: TensorBoard event files (tensorboardX), a JSONL log, a progress
line.

clu's `metric_writers` import TensorFlow (../shared/notes/libraries.md §2), so the writer is ours;
the per-interval averaging uses `clu.metrics`, which does not.

TensorBoard events for a gs:// workdir are written into a local directory and uploaded whole at each
sync. tensorboardX has a gs:// writer of its own, but it goes through a second client
(google-cloud-storage, besides gcsfs), uploads on its own 120 s timer and again from `__del__` at
interpreter exit, where it retries for two minutes when the bucket cannot be reached.
"""

import json
import logging
import sys
import time

import jax
import numpy as np
from clu import metrics as clu_metrics

from querit_jax import logs, storage


def _import_tensorboardx():
    """tensorboardX without the optional packages it imports at module level when they are
    installed: torch (only to recognise torch tensors, which we never pass) and google-cloud-storage
    (for its own gs:// writer, which we do not use). Those imports cost every training process
    seconds of start-up and hundreds of MB; one already imported is left alone."""
    blocked = [m for m in ("torch", "google.cloud.storage") if m not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # `import name` raises ImportError, which tensorboardX handles
    try:
        import tensorboardX
    finally:
        for name in blocked:
            del sys.modules[name]
    return tensorboardX


tensorboardX = _import_tensorboardx()


def metrics_collection(names) -> type[clu_metrics.Collection]:
    """A clu Collection averaging every train-step metric over a logging interval (the learning
    rate:
    its last value). Built from the names the step returns, so MoE runs get their extra metrics."""
    fields = {
        name: (
            clu_metrics.LastValue if name == "learning_rate" else clu_metrics.Average
        ).from_output(name)
        for name in names
    }
    return clu_metrics.Collection.create(**fields)


class MetricWriter:
    """Writes scalars to TensorBoard and `<workdir>/metrics.jsonl` from process 0 only.

    The workdir may be a bucket. Object stores cannot append, so both outputs are synced whole
    (`storage.GrowingFile`, `storage.UploadedDir`): at most every `sync_seconds`, at every `flush()`
    (the trainer flushes before each checkpoint save, so the rows of every saved step are kept) and
    at `close()`. Locally the JSONL rows are appended as they come. A resumed run (`start_step` > 0)
    drops the rows of later steps (it logs them again) and tells TensorBoard to hide its old events
    from `start_step + 1` on.
    """

    def __init__(self, workdir: str, start_step: int = 0, sync_seconds: float = 60.0):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        self.sync_seconds, self._synced = sync_seconds, time.time()
        self._tb_dir = storage.UploadedDir(storage.join(workdir, "tensorboard"))
        self._tb = tensorboardX.SummaryWriter(
            self._tb_dir.local,
            purge_step=start_step + 1 if start_step else None,
            # One file per launch: the time in the name has whole seconds.
            filename_suffix=f".from_step_{start_step}",
        )
        self._jsonl = storage.GrowingFile(
            storage.join(workdir, "metrics.jsonl"), keep=lambda line: _step(line) <= start_step
        )

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(np.asarray(v)) for k, v in scalars.items()}
        for k, v in clean.items():
            self._tb.add_scalar(k, v, step)
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        if time.time() - self._synced >= self.sync_seconds:
            self.flush()

    def flush(self) -> None:
        """Makes everything written so far visible in the workdir."""
        if not self.enabled:
            return
        self._tb.flush()
        self._tb_dir.sync()
        self._jsonl.sync()
        self._synced = time.time()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._tb_dir.close()
            self._jsonl.close()


def _step(line: str) -> float:
    """The step of a metrics.jsonl row (infinity for a line a crash cut short)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


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
            f"lr {m['learning_rate']:.2e} | {pairs / elapsed:.0f} pairs/s | {tokens / elapsed:.0f} "
            "tok/s | "
            f"ETA {_fmt(eta)}"
        )


def _fmt(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def get_logger() -> logging.Logger:
    """The project logger (querit_jax.logs: INFO, absl/Orbax chatter turned down)."""
    return logs.get_logger()

"""The project logger and progress lines for long loops (evaluation, teacher scoring, mining).

`get_logger()` is the "querit_jax" logger: INFO to stderr on every process (callers decide whether a
process logs: usually process 0 only), with absl/Orbax chatter turned down. `log_to_file(location)`
also copies every line into a log file (local, or gs:// through the storage layer, rewritten at each
flush since object stores cannot append). `Progress` prints "<what>: done/total <unit> | rate/s |
ETA" at most every `every_s` seconds and once at the end, like training's progress line.
`compile_clock()` measures the time spent compiling programs inside a block.
"""

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import jax

from querit_jax import storage

NAME = "querit_jax"


def get_logger() -> logging.Logger:
    """The project logger (INFO); Orbax/TFDS absl INFO chatter is turned down."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    logger = logging.getLogger(NAME)
    if not any(getattr(h, "_querit_stream", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler._querit_stream = True
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class _FileHandler(logging.Handler):
    """Every record into one file: appended locally, the whole text re-uploaded on an object store
    (at most every `flush_s` seconds, and on close)."""

    def __init__(self, location: str, flush_s: float = 30.0):
        super().__init__()
        self.location, self.flush_s = storage.absolute(location), flush_s
        self._lines: list[str] = []
        self._written, self._last = 0, 0.0
        self._lock_io = threading.Lock()
        if storage.exists(self.location):  # a resumed run continues its log
            self._lines = storage.read_text(self.location).splitlines(keepends=True)
            self._written = len(self._lines)
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_io:
            self._lines.append(self.format(record) + "\n")
            if time.time() - self._last >= self.flush_s or not storage.is_remote(self.location):
                self._flush()

    def _flush(self) -> None:
        if self._written == len(self._lines):
            return
        storage.write_text(self.location, "".join(self._lines))
        self._written, self._last = len(self._lines), time.time()

    def close(self) -> None:
        with self._lock_io:
            self._flush()
        super().close()


def log_to_file(location: str) -> logging.Handler:
    """Copies the project logger's lines into `location` (until `stop_logging_to_file`)."""
    logger = get_logger()
    for h in logger.handlers:
        if isinstance(h, _FileHandler) and h.location == storage.absolute(location):
            return h
    handler = _FileHandler(location)
    logger.addHandler(handler)
    return handler


def stop_logging_to_file(handler: logging.Handler) -> None:
    get_logger().removeHandler(handler)
    handler.close()


class Progress:
    """A progress line for a loop of known size: `update(n)` after each chunk of work."""

    def __init__(self, total: int, what: str, unit: str = "pairs", log=None, every_s: float = 10):
        self.total, self.what, self.unit, self.every_s = total, what, unit, every_s
        self.log = log or _process_zero_info()
        self.done, self._start = 0, time.time()
        self._last = self._start

    def update(self, n: int) -> None:
        self.done += n
        now = time.time()
        if self.done >= self.total or now - self._last >= self.every_s:
            self._last = now
            self.log(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.time()) - self._start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = "done" if self.done >= self.total else f"ETA {_fmt(left)}"
        return (
            f"{self.what}: {self.done}/{self.total} {self.unit} | {rate:.0f} {self.unit}/s | "
            f"{eta} ({_fmt(elapsed)} so far)"
        )


def _process_zero_info():
    """The logger's info on process 0, nothing elsewhere (every process runs the same loops)."""
    import jax

    return get_logger().info if jax.process_index() == 0 else (lambda *a, **k: None)


def _fmt(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


_COMPILE_EVENTS = (  # JAX's durations of tracing, lowering and compiling one program
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


@contextlib.contextmanager
def compile_clock() -> Iterator[list[float]]:
    """Seconds spent tracing, lowering and compiling programs inside (JAX's duration events), in
    the one-element list it yields: a fixed cost per process and program, to tell apart from the
    time a long run's throughput depends on."""
    total = [0.0]

    def listen(event: str, duration: float, **kwargs) -> None:
        del kwargs
        if event in _COMPILE_EVENTS:
            total[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield total
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)

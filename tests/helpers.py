"""Helpers shared by tests (importable as tests.helpers)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA flags of every test process and of every process a test starts (conftest adds them to
# $XLA_FLAGS unless the caller set the option): LLVM at optimisation level 1 compiles the suite's
# hundreds of small programs faster than the default 2 (test_encoders + test_compute:
# 178 s -> 144 s)
# and still runs the real-weight models at speed (level 0 compiled the 8-device train steps 32%
# faster but made those models slower than it saved). Results are compared only between runs under
# the same flags.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=1"


def with_test_flags(flags: str, devices: int | None = None) -> str:
    """`flags` (an $XLA_FLAGS) with the tests' own flags (unless it sets the option itself) and
    `devices` fake CPU devices in place of any fake-device count it had (none if not given)."""
    kept = [f for f in flags.split() if not f.startswith("--xla_force_host_platform_device_count")]
    if "xla_backend_optimization_level" not in flags:
        kept.append(TEST_XLA_FLAGS)
    if devices:
        kept.append(f"--xla_force_host_platform_device_count={devices}")
    return " ".join(kept)


def xla_flags(devices: int | None = None) -> str:
    """$XLA_FLAGS for a process a test starts: the test process's flags without its 8 fake
    devices; `devices` fake CPU devices if given."""
    return with_test_flags(os.environ.get("XLA_FLAGS", ""), devices)


def config_module(path: str):
    """Imports a config file given relative to the repository root."""
    full = os.path.join(ROOT, path)
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], full)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(path: str, arg: str | None = None):
    """`get_config(arg)` of a config file given relative to the repository root."""
    return config_module(path).get_config(arg)


def shared_root(tmp_path_factory) -> str:
    """A directory shared by every xdist worker of this test run (the run's own under plain
    pytest)."""
    base = tmp_path_factory.getbasetemp()
    return str(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


class SharedOutput:
    """An output built once per test run for every xdist worker (a trained workdir, say): the first
    worker to ask takes a file lock and builds it with `start(path)` (synchronously, or in the
    background when it returns a Popen, which `wait()` finishes); the others wait on the lock in
    `wait()`. A build that failed is built again by the next worker that waits."""

    def __init__(self, root: str, name: str, start):
        from filelock import FileLock, Timeout

        self.path, self.start = os.path.join(root, name), start
        self.lock = FileLock(self.path + ".lock")
        self.proc, self.log = None, ""
        if self.done():
            return
        try:
            self.lock.acquire(timeout=0)
        except Timeout:  # another worker is building it
            return
        if self.done():
            self.lock.release()
        else:
            self._build()

    def done(self) -> bool:
        return os.path.exists(self.path + ".done")

    def _build(self) -> None:
        import shutil

        try:
            shutil.rmtree(self.path, ignore_errors=True)  # what a failed build left
            result = self.start(self.path)
        except BaseException:
            self.lock.release()
            raise
        self.proc = result if hasattr(result, "communicate") else True
        if self.proc is True:
            self._finish()

    def _finish(self) -> None:
        proc, self.proc = self.proc, None
        try:
            if proc is not True:
                out, _ = proc.communicate(timeout=600)
                self.log = out or ""
                with open(self.path + ".log", "w", encoding="utf-8") as f:
                    f.write(self.log)
                assert proc.returncode == 0, self.log[-3000:]
            with open(self.path + ".done", "w"):
                pass
        finally:
            self.lock.release()

    def wait(self) -> str:
        """The built output's path (built here if the worker that started it failed)."""
        if self.proc is not None:
            self._finish()
        elif not self.done():
            self.lock.acquire()
            if self.done():
                self.lock.release()
            else:
                self._build()
                if self.proc is not None:
                    self._finish()
        if not self.log and os.path.exists(self.path + ".log"):
            with open(self.path + ".log", encoding="utf-8") as f:
                self.log = f.read()
        return self.path

    def close(self) -> None:
        """At the fixture's end: a build still running is finished (other workers wait for it)."""
        if self.proc is not None:
            try:
                self._finish()
            except AssertionError:
                pass

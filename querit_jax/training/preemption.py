"""Preemption: stop at a step boundary, save, exit 0; the next launch resumes from that step.

Triggers:
  * SIGTERM (what TPU/GCE preemption and `kill` send) and SIGINT (Ctrl-C). A second SIGINT stops
    at once. With several processes a Ctrl-C is passed on as SIGTERM to JAX's preemption sync
    manager.
  * A TPU VM host-maintenance event: with QUERIT_WATCH_MAINTENANCE=1 (the launch scripts set it) a
    thread long-polls the GCE metadata server's `instance/maintenance-event` and turns any value
    other than NONE into a SIGTERM to this process, so both go through the same path.

With several processes every host must save the same step. There, JAX's preemption sync manager
(started by `jax.distributed.initialize`) catches SIGTERM on whichever host gets it and agrees on a
step with the others; `multihost_utils.reached_preemption_sync_point(step)`, called by every host at
every step, turns True on that step everywhere. We then install no SIGTERM handler of our own (it
would hide the signal from JAX). One process has no such service, so our own handler sets a flag the
loop reads.

`inject_fault` is a testing hook (QUERIT_TEST_FAULT) that kills the process at a chosen point, to
test that kill -9 at any time loses nothing; it does nothing unless that variable is set.
"""

import os
import signal
import threading
import time
import urllib.request

import jax

METADATA_URL = (
    "http://metadata.google.internal/computeMetadata/v1/instance/maintenance-event"
    "?wait_for_change=true"
)


def _sync_manager_running() -> bool:
    try:
        from jax._src import distributed

        return distributed.global_state.preemption_sync_manager is not None
    except (ImportError, AttributeError):
        return False


class StopRequest:
    """Says at each step boundary whether to stop (and save) because of a preemption notice."""

    def __init__(self, log):
        self.log = log
        self.signal_name = None
        self.during_step = None
        self.last_step = 0
        self.multihost = jax.process_count() > 1 and _sync_manager_running()
        self._previous = {}
        signums = [signal.SIGINT] if self.multihost else [signal.SIGTERM, signal.SIGINT]
        if threading.current_thread() is threading.main_thread():
            for signum in signums:
                self._previous[signum] = signal.signal(signum, self._handle)
        if os.environ.get("QUERIT_WATCH_MAINTENANCE"):
            start_maintenance_watch(os.environ.get("QUERIT_METADATA_URL", METADATA_URL), log)

    def _handle(self, signum, frame):
        del frame
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signal_name = signal.Signals(signum).name
        self.during_step = self.last_step + 1
        if self.multihost:
            # A flag on this host alone would make it stop (and enter a collective save) while the
            # others keep stepping: hand the notice to JAX's preemption sync manager as a SIGTERM,
            # so every process stops at the same step.
            os.kill(os.getpid(), signal.SIGTERM)

    def should_stop(self, step: int) -> bool:
        """Called once per step by every process, after `step` was dispatched."""
        self.last_step = step
        if self.multihost:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.log(f"Preemption notice: all processes stop and save at step {step}.")
                return True
            return False  # a local signal counts only once every process has agreed on a step
        if self.signal_name is not None:
            self.log(
                f"{self.signal_name} received during step {self.during_step}: saving a checkpoint "
                f"at step {step} and exiting; run the same command again to resume."
            )
            return True
        return False

    def close(self) -> None:
        """Restores the previous signal handlers (later signals act as usual)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def start_maintenance_watch(url: str, log) -> threading.Thread:
    """A daemon thread turning a host-maintenance event into SIGTERM to this process."""

    def watch():
        while True:
            try:
                request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
                with urllib.request.urlopen(request, timeout=3600) as response:
                    event = response.read().decode().strip()
            except OSError:
                time.sleep(5)  # metadata server unreachable: retry quietly
                continue
            if event and event != "NONE":
                log(f"Maintenance event {event}: treating it as a preemption notice.")
                os.kill(os.getpid(), signal.SIGTERM)
                return

    thread = threading.Thread(target=watch, name="maintenance-watch", daemon=True)
    thread.start()
    return thread


def inject_fault(point: str, step: int) -> None:
    """Testing hook. QUERIT_TEST_FAULT="kill@STEP" kills -9 after that step, "kill_in_save@STEP"
    right
    after that step's async save starts; QUERIT_TEST_STEP_DELAY=S sleeps S seconds per step."""
    delay = os.environ.get("QUERIT_TEST_STEP_DELAY")
    if delay and point == "step":
        time.sleep(float(delay))
    fault = os.environ.get("QUERIT_TEST_FAULT", "")
    if fault and fault == f"{'kill' if point == 'step' else 'kill_in_save'}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)

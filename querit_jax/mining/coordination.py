"""How the processes of a mining run meet: waits, process 0's decisions, and stopping on SIGTERM.

Mining processes work independently (each on its own shards) and meet only a few times per run
(indexes built, run checked, all shards mined, manifest written). They meet through the key-value
store of JAX's coordination service (`jax.distributed`): each process sets a key and polls for the
others' keys. Polling, unlike a device collective or a blocking barrier, has no timeout to outlast
(a process may wait hours for a slower one) and lets a waiting process notice SIGTERM. With one
process every wait returns at once. Keys carry how many times the process met under that name, so
several runs in one launch (the loop's targets) never collide.

SIGTERM (TPU/GCE preemption, `kill`) or SIGINT: the current shard is finished and recorded, then the
process exits 0 (`StopSignal.check`); the next launch resumes from the records. Training's handler
(`training/preemption.py`) agrees on a step across hosts for a collective checkpoint; mining needs
no agreement, since each shard is recorded alone, except with a dense index split over the
processes: they then mine in rounds, searching together, and stop together at a round's start
(`Miner._mine_in_rounds`; their meetings before the rounds do not stop a process alone).
"""

import collections
import os
import signal
import sys
import threading
import time

import jax

PREFIX = "querit_jax/mining"


def process() -> tuple[int, int]:
    """(this process's index, number of processes)."""
    return jax.process_index(), jax.process_count()


def _client():
    from jax._src import distributed

    return distributed.global_state.client


class StopSignal:
    """Turns SIGTERM / SIGINT into a flag read between shards (installed in the main thread)."""

    def __init__(self, log=print):
        self.log, self.received = log, None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        del frame
        if signum == signal.SIGINT and self.received == "SIGINT":
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signal.Signals(signum).name

    def check(self, where: str, anywhere: bool = False) -> None:
        """Exits 0 if a signal came, to this process or (`anywhere`) to another one (call it only
        when everything done so far is recorded)."""
        if self.received is None and not anywhere:
            return
        self.log(
            f"{self.received or 'A stop signal to another process'} received: stopping {where}; "
            "every finished shard is recorded, run the same command again to resume."
        )
        self.close()
        if jax.process_count() > 1 and not anywhere:
            # jax.distributed's shutdown would wait for the other processes (still mining, or
            # gone): leave at once, the records are on storage.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        # Alone, or every process stopping together: jax.distributed's shutdown at exit is their
        # last meeting (process 0, which hosts the coordination service, must not leave first).
        raise SystemExit(0)

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class Meeting:
    """Named meeting points of one run's processes (names must be unique within a launch)."""

    def __init__(self, stop: StopSignal | None = None, poll_s: float | None = None):
        # Every waiting process polls the coordinator: less often the more processes there are.
        self.stop = stop
        self.poll_s = poll_s if poll_s is not None else 0.2 * max(1.0, process()[1] / 8)

    def wait_for_all(self, name: str) -> None:
        """Returns once every process has called `wait_for_all(name)`."""
        index, count = process()
        if count == 1:
            return
        client, prefix = _client(), _numbered(name)
        client.key_value_set(f"{prefix}/{index}", "1")
        while len(client.key_value_dir_get(f"{prefix}/")) < count:
            if self.stop is not None:
                self.stop.check(f"while waiting for the other processes ({name})")
            time.sleep(self.poll_s)

    def decide(self, name: str, value_fn) -> str:
        """Process 0 computes `value_fn()` (a string), every process returns it."""
        index, count = process()
        if count == 1:
            return value_fn()
        client, key = _client(), _numbered(f"decide/{name}")
        if index == 0:
            value = value_fn()
            client.key_value_set(key, value)
            return value
        while True:
            value = _try_get(client, key)
            if value is not None:
                return value
            if self.stop is not None:
                self.stop.check(f"while waiting for process 0 ({name})")
            time.sleep(self.poll_s)


_MET = collections.Counter()  # meetings per name so far in this process (the same in every one)


def _numbered(name: str) -> str:
    """The key prefix of this process's next meeting called `name`."""
    _MET[name] += 1
    return f"{PREFIX}/{name}/{_MET[name]}"


def _try_get(client, key: str) -> str | None:
    try:
        return client.key_value_try_get(key)
    except Exception as e:  # the runtime's NOT_FOUND status, until process 0 has set it
        if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
            return None
        raise

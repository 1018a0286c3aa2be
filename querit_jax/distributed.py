"""Multi-host start-up: `jax.distributed.initialize()` only when the environment asks for it.

On a TPU VM pod slice set QUERIT_JAX_INIT=1 (JAX then discovers the coordinator itself); elsewhere
set QUERIT_COORDINATOR (host:port), QUERIT_NUM_PROCESSES and QUERIT_PROCESS_ID (launch/local.py
does, for N CPU processes on one machine). Without any of these a single process runs, so CPU
machines and tests need nothing. The same code path then serves 1 or N processes: data is read per
process, checkpoints are written collectively by Orbax, logs and files come from process 0.

It must run before anything touches a JAX backend (some libraries do at import: bm25s runs a top_k),
so the entry points call it before importing the rest of the package. Calling it again is a no-op.
"""

import collections
import itertools
import os

import jax


def _initialized() -> bool:
    from jax._src import distributed

    return distributed.global_state.client is not None


def _backend_started() -> bool:
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def maybe_initialize() -> bool:
    """Initialises jax.distributed if asked to by the environment; returns whether it is
    initialised."""
    coordinator = os.environ.get("QUERIT_COORDINATOR")
    if not coordinator and not os.environ.get("QUERIT_JAX_INIT"):
        return False
    if _initialized():
        return True
    if _backend_started():
        raise RuntimeError(
            "QUERIT_COORDINATOR/QUERIT_JAX_INIT is set but a JAX backend was already started "
            "before "
            "jax.distributed.initialize(); call querit_jax.distributed.maybe_initialize() first."
        )
    if coordinator:
        missing = [v for v in ("QUERIT_NUM_PROCESSES", "QUERIT_PROCESS_ID") if v not in os.environ]
        if missing:
            raise RuntimeError(f"QUERIT_COORDINATOR is set but {', '.join(missing)} is not.")
        # Cross-process collectives on CPU go through gloo; the setting does nothing on TPU/GPU.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ["QUERIT_NUM_PROCESSES"]),
            process_id=int(os.environ["QUERIT_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()
    return True


_ROUNDS = collections.defaultdict(itertools.count)  # per name: calls so far in this process


def gather_ints(name: str, value: int, timeout_s: float = 3600.0) -> list[int]:
    """Every process's `value`, in process order, through the key-value store of JAX's coordination
    service: host to coordinator, so unlike a device collective it never waits for the devices'
    queued work. Every process must call it for `name` the same number of times; it waits for the
    others at most `timeout_s` (then TimeoutError)."""
    index, count = jax.process_index(), jax.process_count()
    if count == 1:
        return [int(value)]
    from jax._src import distributed

    client, n = distributed.global_state.client, next(_ROUNDS[name])
    client.key_value_set(f"querit_jax/{name}/{n}/{index}", str(int(value)))
    try:
        values = [
            int(client.blocking_key_value_get(f"querit_jax/{name}/{n}/{p}", int(timeout_s * 1000)))
            for p in range(count)
        ]
    except Exception as e:  # the runtime's DEADLINE_EXCEEDED
        raise TimeoutError(
            f"Process {index}: the other processes did not reach {name} #{n} within "
            f"{timeout_s:.0f} s ({e}); look for a process that failed or stopped."
        ) from None
    if n >= 2:  # every process has read round n - 2 (it has set its value for round n - 1)
        client.key_value_delete(f"querit_jax/{name}/{n - 2}/{index}")
    return values

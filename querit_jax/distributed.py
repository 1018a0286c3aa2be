"""Multi-host start-up: `jax.distributed.initialize()` only when the environment asks for it.

On a TPU VM pod slice set QUERIT_JAX_INIT=1 (JAX then discovers the coordinator itself); elsewhere set
QUERIT_COORDINATOR (host:port), QUERIT_NUM_PROCESSES and QUERIT_PROCESS_ID. Without any of these a
single process runs, so CPU machines and tests need nothing.
"""

import os

import jax


def maybe_initialize() -> bool:
    """Initialises jax.distributed if asked to by the environment; returns whether it did."""
    coordinator = os.environ.get("QUERIT_COORDINATOR")
    if coordinator:
        # Cross-process collectives on CPU go through gloo; the setting does nothing on TPU/GPU.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=int(os.environ["QUERIT_NUM_PROCESSES"]),
            process_id=int(os.environ["QUERIT_PROCESS_ID"]),
        )
        return True
    if os.environ.get("QUERIT_JAX_INIT"):
        jax.distributed.initialize()
        return True
    return False

"""Non-finite guard: a step whose loss or gradients are not finite changes nothing, and too many
abort.

The check runs inside the jitted step (no host round-trip): `skip_nonfinite` wraps the optimiser so
that a bad step returns zero updates and leaves the inner optimiser state (moments, step count,
hence the learning-rate schedule) exactly as it was. `TrainState.step` still advances: it counts
batches consumed, so checkpoints and the data iterator stay aligned with the loop. The counters live
in the optimiser state (and so in checkpoints); after `max_consecutive` bad steps in a row the guard
trips and keeps refusing updates until the host sees it (`check`, at every log line and before every
save) and stops the run with `NonFiniteError`. Unlike `optax.apply_if_finite` it never "gives up and
accepts" a non-finite update.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from querit_jax.errors import NonFiniteError


class GuardState(NamedTuple):
    inner: Any
    consecutive: jax.Array  # int32: bad steps in a row, reset by a good one
    total: jax.Array  # int32: bad steps skipped since the start of training
    tripped: jax.Array  # bool: `consecutive` reached the limit at some point (sticky)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def skip_nonfinite(
    inner: optax.GradientTransformation, max_consecutive: int
) -> optax.GradientTransformationExtraArgs:
    """`inner`, with non-finite steps skipped. `update(..., loss=loss)` also checks the loss."""

    def init(params):
        zero = jnp.zeros((), jnp.int32)
        return GuardState(inner.init(params), zero, zero, jnp.zeros((), bool))

    def update(grads, state: GuardState, params=None, loss=None, **extra):
        del extra
        ok = _all_finite(grads) if loss is None else _all_finite(grads) & jnp.isfinite(loss)
        apply = ok & ~state.tripped
        new_updates, new_inner = inner.update(grads, state.inner, params)
        updates = jax.tree.map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), new_updates)
        kept = jax.tree.map(lambda n, o: jnp.where(apply, n, o), new_inner, state.inner)
        consecutive = jnp.where(ok, 0, state.consecutive + 1)
        return updates, GuardState(
            kept,
            consecutive,
            state.total + (~ok).astype(jnp.int32),
            state.tripped | (consecutive >= max_consecutive),
        )

    return optax.GradientTransformationExtraArgs(init, update)


def update(tx, grads, opt_state, params, loss):
    """`tx.update`, passing the loss to the guard when `tx` is one (the train step's one call)."""
    if isinstance(opt_state, GuardState):
        return tx.update(grads, opt_state, params, loss=loss)
    return tx.update(grads, opt_state, params)


def counts(opt_state) -> tuple[int, int, bool] | None:
    """(consecutive, total, tripped) read from the device, or None without a guard."""
    if not isinstance(opt_state, GuardState):
        return None
    return int(opt_state.consecutive), int(opt_state.total), bool(opt_state.tripped)


class Monitor:
    """Host side: logs newly skipped steps and raises once the guard has tripped."""

    def __init__(self, max_consecutive: int, log):
        self.max_consecutive, self.log, self.seen = max_consecutive, log, None

    def check(self, opt_state, step: int) -> dict:
        """Metrics {"nonfinite_skipped": total}; raises NonFiniteError if the guard tripped."""
        got = counts(opt_state)
        if got is None:
            return {}
        consecutive, total, tripped = got
        if self.seen is None:
            self.seen = total  # restored runs start from the checkpoint's count
        if total > self.seen:
            self.log(
                f"Skipped {total - self.seen} update(s) with a non-finite loss or gradients by "
                "step "
                f"{step} ({total} in total, {consecutive} in a row now; parameters unchanged)."
            )
            self.seen = total
        if tripped:
            raise NonFiniteError(
                f"train.max_nonfinite_steps: {self.max_consecutive} consecutive steps had a "
                "non-finite "
                f"loss or gradients (by step {step}); stopping without saving. Resume from the "
                "last "
                "checkpoint with a lower optim.learning_rate or after checking the data, or raise "
                "train.max_nonfinite_steps."
            )
        return {"nonfinite_skipped": float(total)}

"""Pure training and evaluation steps. No I/O, no Python side effects; the trainer jits them once."""

import jax
import optax
from flax import nnx

from querit_jax.training import losses
from querit_jax.training.state import TrainState


def group_scores(graphdef, params, batch) -> jax.Array:
    """Scores every (query, document) of a batch of groups: [Q, G, T] inputs -> [Q, G]."""
    ids, seg = batch["input_ids"], batch["segment_ids"]
    q, g, t = ids.shape
    types = batch.get("token_type_ids")
    types = None if types is None else types.reshape(q * g, t)
    model = nnx.merge(graphdef, params)
    return model(ids.reshape(q * g, t), seg.reshape(q * g, t), token_type_ids=types)[:, 0].reshape(
        q, g
    )


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule, temperature: float):
    """Returns `train_step(state, batch) -> (state, metrics)` for the listwise loss."""

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        def loss_fn(params):
            scores = group_scores(graphdef, params, batch)
            return losses.listwise_ce(scores, temperature), scores

        (loss, scores), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": losses.positive_first_accuracy(scores),
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(state.step),
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step

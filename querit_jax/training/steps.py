"""Pure training and evaluation steps. No I/O, no Python side effects; the trainer jits them
once."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from querit_jax import config_lib
from querit_jax.training import guards, losses
from querit_jax.training.state import TrainState


def group_scores(graphdef, params, batch, return_aux: bool = False):
    """Scores every (query, document) of a batch of groups: [Q, G, T] inputs -> [Q, G].

    With `return_aux`, also the model's auxiliary outputs (MoE router logits, [Q*G, T, E] per
    layer).
    """
    if "pair_row" in batch:  # packed rows (data.pack)
        return packed_group_scores(graphdef, params, batch, return_aux)
    ids, seg = batch["input_ids"], batch["segment_ids"]
    q, g, t = ids.shape
    types = batch.get("token_type_ids")
    types = None if types is None else types.reshape(q * g, t)
    model = nnx.merge(graphdef, params)
    kwargs = {"return_aux": True} if return_aux else {}
    out = model(ids.reshape(q * g, t), seg.reshape(q * g, t), token_type_ids=types, **kwargs)
    scores, aux = out if return_aux else (out, {})
    scores = scores[:, 0].reshape(q, g)
    return (scores, aux) if return_aux else scores


def packed_group_scores(graphdef, params, batch, return_aux: bool = False):
    """Scores of packed groups (`data.packing.PackGroups`): the model scores every slot of the
    [R, L] rows ([R, S], S = slot_valid.shape[1]) and pair_row/pair_slot [Q, G] gather them back."""
    num_slots = batch["slot_valid"].shape[1]
    model = nnx.merge(graphdef, params)
    kwargs = {"return_aux": True} if return_aux else {}
    out = model(
        batch["input_ids"],
        batch["segment_ids"],
        num_segments=num_slots,
        token_type_ids=batch.get("token_type_ids"),
        **kwargs,
    )
    slot_scores, aux = out if return_aux else (out, {})
    scores = slot_scores[batch["pair_row"], batch["pair_slot"]]  # [Q, G]
    return (scores, aux) if return_aux else scores


def make_train_step(
    graphdef,
    tx: optax.GradientTransformation,
    schedule,
    temperature: float,
    moe=None,
    loss_weights: dict[str, float] | None = None,
    teacher_temperature: float = 1.0,
):
    """Returns `train_step(state, batch) -> (state, metrics)`.

    Args:
      loss_weights: {loss name: weight} (`losses.combined_loss`); default: listwise CE alone. KD
        losses read `batch["teacher"]` [Q, G].
      moe: the backbone config of a sparse model (adds its load-balancing and z losses with their
        coefficients, and logs them and the per-layer expert load), or None.
    """
    loss_weights = loss_weights or {"listwise_ce": 1.0}
    sparse_layers = [i for i in range(moe.num_layers) if moe.is_sparse(i)] if moe else []

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        def loss_fn(params):
            if moe is not None:
                scores, aux = group_scores(graphdef, params, batch, return_aux=True)
            else:
                scores, aux = group_scores(graphdef, params, batch), {}
            loss, parts = losses.combined_loss(
                loss_weights, scores, batch.get("teacher"), temperature, teacher_temperature
            )
            extra = {f"loss/{k}": v for k, v in parts.items()} if len(parts) > 1 else {}
            logits = aux.get("router_logits") or ()
            if moe is not None and logits:
                mask = batch["segment_ids"] > 0
                extra["aux_loss"] = losses.load_balancing_loss(
                    logits, mask, moe.num_experts_per_tok
                )
                extra["z_loss"] = losses.router_z_loss(logits, mask)
                loss = (
                    loss
                    + moe.router_aux_loss_coef * extra["aux_loss"]
                    + moe.router_z_loss_coef * extra["z_loss"]
                )
                dropped = aux.get("moe_dropped") or ()
                if dropped:  # token copies over an expert's capacity (ep with a capacity factor)
                    extra["moe_dropped"] = jnp.mean(jnp.stack(dropped))
                load = losses.expert_load(logits, mask, moe.num_experts_per_tok)
                extra.update(
                    {  # named by model layer (dense layers have no router)
                        f"expert_load_max/layer_{layer}": jnp.max(row)
                        for layer, row in zip(sparse_layers, load)
                    }
                )
            return loss, (scores, extra)

        (loss, (scores, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        # Non-finite loss/gradients: zero updates, optimiser state kept (training/guards.py).
        updates, opt_state = guards.update(tx, grads, state.opt_state, state.params, loss)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": losses.positive_first_accuracy(scores),
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(state.step),
            **extra,
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def jit_train_step(cfg, spec, graphdef, tx, schedule, shardings, batch_sharding):
    """The jitted train step of an experiment config (state donated), as the trainer runs it and
    the memory plan compiles it."""
    return jax.jit(
        make_train_step(
            graphdef,
            tx,
            schedule,
            cfg.train.temperature,
            moe=spec.backbone if spec.family == "qwen3_moe" else None,
            loss_weights=config_lib.parse_losses(cfg.train.loss),
            teacher_temperature=cfg.train.teacher_temperature,
        ),
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, None),
        donate_argnums=(0,),
    )

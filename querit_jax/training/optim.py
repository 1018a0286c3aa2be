"""optax AdamW with linear warmup, cosine/linear/constant decay and global-norm clipping."""

import jax
import optax


def learning_rate_schedule(cfg, num_steps: int) -> optax.Schedule:
    """Warmup from 0 to the peak over `warmup_steps`, then decay to `end_lr_ratio * peak`."""
    peak, end = cfg.learning_rate, cfg.learning_rate * cfg.end_lr_ratio
    warmup = min(cfg.warmup_steps, max(num_steps - 1, 0))
    decay_steps = max(num_steps - warmup, 1)
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_ratio)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _decay_mask(params):
    # No weight decay on norm scales and biases (1-D tensors), the common transformer practice.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def frozen_labels(params, patterns) -> dict:
    """'frozen' for every parameter whose dotted path contains one of `patterns`, else 'trained'."""

    def label(path, _):
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        return "frozen" if any(p in name for p in patterns) else "trained"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW (+ clipping); parameters matching `cfg.freeze` substrings get no updates and no
    moments."""
    schedule = learning_rate_schedule(cfg, num_steps)
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=_decay_mask,
        )
    )
    tx = optax.chain(*parts)
    if cfg.freeze:
        tx = optax.multi_transform(
            {"trained": tx, "frozen": optax.set_to_zero()}, lambda p: frozen_labels(p, cfg.freeze)
        )
    return tx, schedule

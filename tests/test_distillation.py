"""Distillation losses against direct numpy implementations; masking; zero gradient at the
teacher."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from querit_jax.training import losses

RNG = np.random.default_rng(0)
S = RNG.standard_normal((5, 6)).astype(np.float32) * 2
T = RNG.standard_normal((5, 6)).astype(np.float32) * 2
MASK = np.ones((5, 6), bool)
MASK[1, 4:] = False
MASK[3, 2:] = False


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_kl(s, t, temp, mask):
    out = []
    for si, ti, mi in zip(s, t, mask):
        p, q = _softmax(ti[mi] / temp), _softmax(si[mi] / temp)
        out.append(np.sum(p * (np.log(p) - np.log(q))))
    return np.mean(out) * temp**2


def _np_margin(s, t, mask):
    errs = [
        ((si[0] - si[j]) - (ti[0] - ti[j])) ** 2
        for si, ti, mi in zip(s, t, mask)
        for j in range(1, len(si))
        if mi[j]
    ]
    return np.mean(errs)


def _np_bce(s, t, temp, mask):
    y = 1 / (1 + np.exp(-t / temp))
    p = 1 / (1 + np.exp(-s))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return bce[mask].mean()


@pytest.mark.parametrize("temp", [1.0, 0.5, 3.0])
def test_losses_match_numpy_with_and_without_mask(temp):
    for mask in (np.ones_like(MASK), MASK):
        np.testing.assert_allclose(
            losses.listwise_kl(S, T, temp, mask), _np_kl(S, T, temp, mask), rtol=1e-5
        )
        np.testing.assert_allclose(losses.margin_mse(S, T, mask), _np_margin(S, T, mask), rtol=1e-5)
        np.testing.assert_allclose(
            losses.pointwise_bce(S, T, temp, mask), _np_bce(S, T, temp, mask), rtol=1e-5
        )


def test_masked_positions_do_not_matter():
    noisy = S.copy()
    noisy[~MASK] = 1e3  # garbage in padded slots
    for fn in (
        lambda s: losses.listwise_kl(s, T, 1.0, MASK),
        lambda s: losses.margin_mse(s, T, MASK),
        lambda s: losses.pointwise_bce(s, T, 1.0, MASK),
    ):
        np.testing.assert_allclose(fn(noisy), fn(S), rtol=1e-6)
        grads = jax.grad(fn)(jnp.asarray(S))
        assert np.all(np.asarray(grads)[~MASK] == 0)


def test_kl_and_margin_mse_have_zero_gradient_at_the_teacher():
    for fn in (
        lambda s: losses.listwise_kl(s, T, 2.0, MASK),
        lambda s: losses.margin_mse(s, T, MASK),
    ):
        np.testing.assert_allclose(np.asarray(jax.grad(fn)(jnp.asarray(T))), 0.0, atol=1e-6)
    # KL is shift-invariant per list, as the teacher's softmax is.
    np.testing.assert_allclose(losses.listwise_kl(T + 3.0, T, 1.0), 0.0, atol=1e-6)


def test_combined_loss_weights_and_names():
    total, parts = losses.combined_loss({"listwise_ce": 0.5, "kl": 2.0}, S, T, 1.0, 1.0)
    np.testing.assert_allclose(total, 0.5 * parts["listwise_ce"] + 2.0 * parts["kl"], rtol=1e-6)
    with pytest.raises(ValueError, match="Unknown loss 'hinge'"):
        losses.combined_loss({"hinge": 1.0}, S, T)

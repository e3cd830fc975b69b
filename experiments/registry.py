"""The losses the experiments compare, each as (step kind, loss function, learnable
parameters, sampler). One place, so that every comparison uses the same definitions."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from metriclearn import losses
from metriclearn.losses import proxy


@dataclasses.dataclass(frozen=True)
class LossSpec:
  kind: str  # make_train_step kind: 'pair', 'batch' or 'proxy'
  fn: Callable[..., jax.Array]
  # (key, num_classes, dim) -> the loss's learnable arrays, passed by keyword
  params: Callable[[jax.Array, int, int], dict] = lambda key, c, d: {}
  sampler: str = "balanced"  # 'pair' (x1, x2, similar) or 'balanced' (P x K)


def _log_likelihood(x1, x2, similar, *, log_scale, bias):
  # the scale is learned through its log, so that it stays > 0
  return losses.sigmoid_pair_loss(x1, x2, similar, jnp.exp(log_scale), bias)


def _koch_l1(x1, x2, similar, *, alpha, bias):
  return losses.weighted_l1_loss(x1, x2, similar, alpha, bias)


def _proxies(key, c, d):
  return {"proxies": losses.init_proxies(key, c, d)}


def _linear_head(key, c, d):
  return {"weights": losses.init_proxies(key, c, d), "bias": jnp.zeros((c,))}


LOSSES: dict[str, LossSpec] = {
  "contrastive": LossSpec(
    "pair", functools.partial(losses.contrastive_loss, margin=1.0), sampler="pair"
  ),
  "log_likelihood": LossSpec(
    "pair",
    _log_likelihood,
    params=lambda key, c, d: {"log_scale": jnp.log(4.0), "bias": jnp.asarray(2.0)},
    sampler="pair",
  ),
  "koch_l1": LossSpec(
    "pair",
    _koch_l1,
    params=lambda key, c, d: {
      "alpha": -jnp.ones((d,)) / jnp.sqrt(d),
      "bias": jnp.asarray(2.0),
    },
    sampler="pair",
  ),
  "triplet": LossSpec(
    "batch", functools.partial(losses.batch_hard_triplet_loss, margin=0.2)
  ),
  "npair": LossSpec("batch", losses.npair_loss),
  "ntxent": LossSpec("batch", functools.partial(losses.ntxent_loss, temperature=0.1)),
  "supcon": LossSpec("batch", functools.partial(losses.supcon_loss, temperature=0.1)),
  "multi_similarity": LossSpec("batch", losses.multi_similarity_loss),
  "arcface": LossSpec(
    "proxy",
    functools.partial(proxy.arcface_loss, scale=30.0, margin=0.3),
    params=_proxies,
  ),
  "softmax": LossSpec("proxy", proxy.softmax_cross_entropy_loss, params=_linear_head),
}


def get(name: str) -> LossSpec:
  if name not in LOSSES:
    raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}.")
  return LOSSES[name]

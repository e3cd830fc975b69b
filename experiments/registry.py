"""Every loss of ``metriclearn.losses`` as something ``train.py`` can train: its step
kind, its learnable parameters and the sampler it needs, by name.

``--set loss=<name>``: a loss function's name without ``_loss`` (``supcon``,
``batch_all_triplet``, ``fastap``, ``vicreg``, ...), or one of the entries of
:data:`CURATED` (the options the loss comparison used: ``triplet`` is batch-hard with
margin 0.2, ``log_likelihood`` the sigmoid pair loss with a learned scale, ...).
``--set loss_kwargs.<option>=<value>`` sets any keyword option of the loss. One place,
so that every comparison uses the same definitions.

The two-view losses (``vicreg``, ``barlow_twins``, and ``simclr``: NT-Xent through
:func:`metriclearn.training.views_loss`) train on two views of each item (kind
``two_view``, sampler ``views``: half the batch size in items, each twice); the views
differ only through an augmentation (``--set augment=koch``), without which they are
the same image.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp

from metriclearn import distances, losses, training


@dataclasses.dataclass(frozen=True)
class LossSpec:
  kind: str  # make_train_step kind: 'batch', 'proxy', 'pair', 'triplet', 'two_view'
  fn: Callable[..., jax.Array]
  # (key, num_classes, dim, **init) -> the loss's learnable arrays, passed by
  # keyword; ``init``: the options of their initial values (``--set loss_init.<name>``)
  params: Callable[..., dict] = lambda key, c, d: {}
  sampler: str = "balanced"  # 'balanced' (P x K), 'pair', 'triplet' or 'views'
  reduction: str = "mean"  # 'total' for a loss that returns one global loss


def _log_likelihood(x1, x2, similar, *, log_scale, bias, **kw):
  # the scale is learned through its log, so that it stays > 0
  return losses.sigmoid_pair_loss(x1, x2, similar, jnp.exp(log_scale), bias, **kw)


def _literal_sigmoid(x1, x2, similar, *, distance="euclidean"):
  # y sigma(D) + (1 - y)(1 - sigma(D)), y = 1 for similar: a similar pair costs at
  # least sigma(0) = 1/2, however close its two items are
  p = jax.nn.sigmoid(distances.get_distance(distance)(x1, x2))
  return jnp.where(jnp.asarray(similar, bool), p, 1.0 - p)


def _koch_l1(x1, x2, similar, *, alpha, bias, **kw):
  return losses.weighted_l1_loss(x1, x2, similar, alpha, bias, **kw)


def _siglip(embeddings, labels, *, log_scale, bias, **kw):
  return losses.sigmoid_pairwise_loss(
    embeddings, labels, jnp.exp(log_scale), bias, **kw
  )


def _proxies(centers: int = 1, name: str = "proxies"):
  def init(key, c, d):
    return {name: losses.init_proxies(key, c, d, num_centers=centers)}

  return init


def _linear_head(key, c, d):
  return {"weights": losses.init_proxies(key, c, d), "bias": jnp.zeros((c,))}


def _pair_params(key, c, d, *, scale: float = 4.0, threshold: float = 0.5) -> dict:
  """The log-likelihood loss's initial s and b = s * threshold (the distance at which
  p = 1/2); ``--set loss_init.scale=10`` starts it sharper."""
  if scale <= 0 or threshold <= 0:
    raise ValueError(
      f"loss_init.scale and loss_init.threshold must be > 0, got {scale}, {threshold}."
    )
  return {"log_scale": jnp.log(scale), "bias": jnp.asarray(scale * threshold)}


CURATED: dict[str, LossSpec] = {
  "contrastive": LossSpec(
    "pair", functools.partial(losses.contrastive_loss, margin=1.0), sampler="pair"
  ),
  "log_likelihood": LossSpec(
    "pair", _log_likelihood, params=_pair_params, sampler="pair"
  ),
  # Hadsell et al. 2006 as written: (1 - Y) 1/2 D^2 + Y 1/2 max(0, m - D)^2
  "contrastive_hadsell": LossSpec(
    "pair",
    functools.partial(
      losses.contrastive_loss, margin=1.0, pos_weight=0.5, neg_weight=0.5
    ),
    sampler="pair",
  ),
  # L = y sigma(D) + (1 - y)(1 - sigma(D)) taken literally (no bias, no log): the
  # form whose floor sigma(0) = 1/2 the log-likelihood loss's bias removes
  "literal_sigmoid": LossSpec("pair", _literal_sigmoid, sampler="pair"),
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
    functools.partial(losses.arcface_loss, scale=30.0, margin=0.3),
    params=_proxies(),
  ),
  "softmax": LossSpec("proxy", losses.softmax_cross_entropy_loss, params=_linear_head),
  # NT-Xent on two augmented views of each item (SimCLR's form), not on labels
  "simclr": LossSpec(
    "two_view",
    training.views_loss(functools.partial(losses.ntxent_loss, temperature=0.1)),
    sampler="views",
  ),
}

# Losses whose learnable arrays or form the signature alone does not say.
_SPECIAL: dict[str, LossSpec] = {
  "sigmoid_pair": CURATED["log_likelihood"],
  "weighted_l1": CURATED["koch_l1"],
  "sigmoid_pairwise": LossSpec(
    "batch",
    _siglip,
    params=lambda key, c, d: {"log_scale": jnp.log(10.0), "bias": jnp.asarray(-10.0)},
  ),
  "margin": LossSpec(
    "batch", losses.margin_loss, params=lambda key, c, d: {"beta": jnp.asarray(1.2)}
  ),
  "histogram": LossSpec("batch", losses.histogram_loss, reduction="total"),
  "proxy_anchor": LossSpec(
    "proxy", losses.proxy_anchor_loss, params=_proxies(), reduction="total"
  ),
  "subcenter_arcface": LossSpec(
    "proxy", losses.subcenter_arcface_loss, params=_proxies(3)
  ),
  "soft_triple": LossSpec("proxy", losses.soft_triple_loss, params=_proxies(10)),
  "softmax_cross_entropy": CURATED["softmax"],
  "large_margin_softmax": LossSpec(
    "proxy", losses.large_margin_softmax_loss, params=_proxies(name="weights")
  ),
}
# Public names ending in _loss that are not a loss of one of the step's kinds (none
# today; an alias such as infonce_loss = ntxent_loss is reachable by either name).
_NOT_LOSSES: set[str] = set()


def _spec_of(fn: Callable) -> LossSpec | None:
  """The spec a loss function's signature implies (None: not a trainable loss)."""
  names = [
    p.name
    for p in inspect.signature(fn).parameters.values()
    if p.kind == p.POSITIONAL_OR_KEYWORD and p.default is p.empty
  ]
  if names == ["embeddings", "labels"]:
    return LossSpec("batch", fn)
  if names[:2] == ["embeddings", "labels"] and names[2:] in (["proxies"], ["weights"]):
    return LossSpec("proxy", fn, params=_proxies(name=names[2]))
  if names == ["x1", "x2", "similar"]:
    return LossSpec("pair", fn, sampler="pair")
  if names == ["anchor", "positive", "negative"]:
    return LossSpec("triplet", fn, sampler="triplet")
  if names == ["z1", "z2"]:
    return LossSpec("two_view", fn, sampler="views")
  return None


def _all_losses() -> dict[str, LossSpec]:
  out = {}
  for name in sorted(losses.__all__):
    if not name.endswith("_loss") or name in _NOT_LOSSES:
      continue
    short = name.removesuffix("_loss")
    spec = _SPECIAL.get(short) or _spec_of(getattr(losses, name))
    if spec is not None:
      out[short] = spec
  return {**out, **CURATED}


LOSSES: dict[str, LossSpec] = _all_losses()


def get(name: str, **options) -> LossSpec:
  """The spec of ``name``, its loss with ``options`` (``loss_kwargs``) bound."""
  if name not in LOSSES:
    raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}.")
  spec = LOSSES[name]
  if not options:
    return spec
  return dataclasses.replace(spec, fn=functools.partial(spec.fn, **options))

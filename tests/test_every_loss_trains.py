"""Every public loss of metriclearn.losses trains: built by the experiments' registry
(the way ``experiments/train.py --set loss=<name>`` builds it, learnable loss
parameters included), three steps of ``training.make_train_step`` on a tiny encoder
give finite losses and change the parameters.

The names are collected from ``metriclearn.losses.__all__``, so a new loss is trained
here (and must be in the registry) without anyone listing it."""

import functools
import pathlib
import sys

import jax
import numpy as np
import optax
import pytest

from metriclearn import losses, models, training

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))

import registry  # noqa: E402

# The public names of metriclearn.losses that are not losses: helpers and the engine's
# pieces. A new public name must end in _loss (and then be trained below) or be here.
NOT_LOSSES = {
  "Block",
  "CONTRASTIVE_VARIANTS",
  "PNP_VARIANTS",
  "Pass",
  "contrastive_pair_losses",
  "init_proxies",
  "pair_logit",
  "pair_statistics",
  "weighted_l1_logit",
}
PUBLIC_LOSSES = sorted(name for name in losses.__all__ if name.endswith("_loss"))


def _underlying(fn):
  while isinstance(fn, functools.partial):
    fn = fn.func
  return fn


def _to_train() -> list[str]:
  """Registry names, one per distinct loss function: every public loss (an alias such
  as infonce_loss = ntxent_loss once, under its function's own name), then the
  registry's own entries built on none of them (e.g. 'simclr': NT-Xent on two views)."""
  canonical_first = sorted(
    PUBLIC_LOSSES, key=lambda n: (getattr(losses, n).__name__ != n, n)
  )
  names = [n.removesuffix("_loss") for n in canonical_first] + sorted(registry.LOSSES)
  seen, out = set(), []
  for name in names:
    spec = registry.LOSSES.get(name)
    if spec is None:  # reported by test_the_registry_builds_every_public_loss
      continue
    if id(spec) in seen or _underlying(spec.fn) in seen:
      continue
    seen |= {id(spec), _underlying(spec.fn)}
    out.append(name)
  return out


def test_the_registry_builds_every_public_loss():
  unknown = sorted(set(losses.__all__) - set(PUBLIC_LOSSES) - NOT_LOSSES)
  assert not unknown, (
    f"new public names {unknown} in metriclearn.losses: a loss must be named *_loss "
    "(and be built by experiments/registry.py); anything else goes in NOT_LOSSES here"
  )
  missing = [n for n in PUBLIC_LOSSES if n.removesuffix("_loss") not in registry.LOSSES]
  assert not missing, f"experiments/registry.py cannot build {missing}"
  for name in ("vicreg", "barlow_twins", "simclr"):
    assert registry.LOSSES[name].kind == "two_view"
    assert registry.LOSSES[name].sampler == "views"


# ----------------------------------------------------------------------------------
# Three steps of each: 4 classes x 4 random 8 x 8 "images", a one-layer MLP and an
# 8-dimensional head (one encoder initialisation shared by every loss).

CLASSES, PER_CLASS, DIM = 4, 4, 8
MODEL = models.Encoder(models.MLPEncoder((16,)), models.EmbeddingHead(DIM))
TX = optax.sgd(0.1)
# Compiling is nearly all of a 3-step run: XLA's CPU backend optimisations (LLVM) off
# make it about three times faster, and change nothing that is checked here.
FAST_COMPILE = {
  "xla_backend_optimization_level": 0,
  "xla_llvm_disable_expensive_passes": True,
}


def _batches() -> dict[str, dict[str, np.ndarray]]:
  rng = np.random.default_rng(0)
  n = CLASSES * PER_CLASS
  x = rng.normal(size=(n, 8, 8)).astype(np.float32)
  labels = np.repeat(np.arange(CLASSES, dtype=np.int32), PER_CLASS)
  item = np.arange(n)
  same = (item // PER_CLASS) * PER_CLASS + (item + 1) % PER_CLASS  # same class, next
  other = (item + PER_CLASS) % n  # the next class
  labelled = {"image": x, "label": labels}
  return {
    "batch": labelled,
    "proxy": labelled,
    "pair": {
      "x1": x,
      "x2": np.where((item % 2 == 0)[:, None, None], x[same], x[other]),
      "similar": item % 2 == 0,
    },
    "triplet": {"anchor": x, "positive": x[same], "negative": x[other]},
    # two views of each item: the image and a noisy copy
    "two_view": {
      "view1": x,
      "view2": x + 0.1 * rng.normal(size=x.shape).astype(x.dtype),
    },
  }


BATCHES = _batches()


def _changed(before, after) -> bool:
  return any(
    bool(np.any(np.asarray(a) != np.asarray(b)))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
  )


@pytest.mark.parametrize("name", _to_train())
def test_every_loss_trains_three_steps(name):
  spec = registry.get(name)
  loss_params = spec.params(jax.random.PRNGKey(1), CLASSES, DIM)
  batch = BATCHES[spec.kind]
  state = training.create_train_state(
    jax.random.PRNGKey(0),
    MODEL,
    TX,
    BATCHES["batch"]["image"][:2],
    loss_params=loss_params,
  )
  step = training.make_train_step(
    MODEL, spec.fn, kind=spec.kind, reduction=spec.reduction
  )
  run = jax.jit(step).lower(state, batch).compile(FAST_COMPILE)
  start = state
  for k in range(3):
    state, metrics = run(state, batch)
    for metric in ("loss", "grad_norm"):
      value = float(metrics[metric])
      assert np.isfinite(value), f"{name}: step {k} {metric} = {value}"
  assert int(state.step) == 3
  assert _changed(start.params, state.params), f"{name}: the encoder did not change"
  for key in loss_params:
    assert _changed(start.loss_params[key], state.loss_params[key]), (
      f"{name}: its learnable {key!r} did not change"
    )

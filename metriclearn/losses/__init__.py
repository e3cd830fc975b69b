"""Loss functions: pure functions of arrays, one module per family."""

from metriclearn.losses.pair import (
  CONTRASTIVE_VARIANTS,
  contrastive_loss,
  pair_logit,
  sigmoid_pair_loss,
  weighted_l1_logit,
  weighted_l1_loss,
)

__all__ = [
  "CONTRASTIVE_VARIANTS",
  "contrastive_loss",
  "pair_logit",
  "sigmoid_pair_loss",
  "weighted_l1_logit",
  "weighted_l1_loss",
]

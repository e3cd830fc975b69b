"""metriclearn: metric learning in JAX and Flax.

Pure loss functions over embeddings (pair, triplet, in-batch, proxy), fixed-shape
miners, Flax encoders, a training step for one device or many, TFDS data and the
evaluation metrics that metric-learning papers publish.
"""

from metriclearn import (
  data,
  distances,
  evaluation,
  inference,
  losses,
  masks,
  miners,
  models,
  pairs,
  parallel,
  reduce,
  training,
)

__version__ = "0.1.0"

__all__ = [
  "data",
  "distances",
  "evaluation",
  "inference",
  "losses",
  "masks",
  "miners",
  "models",
  "pairs",
  "parallel",
  "reduce",
  "training",
  "__version__",
]

"""metriclearn: metric learning in JAX and Flax.

Pure loss functions over embeddings (pair, triplet, in-batch, proxy), fixed-shape
miners, Flax encoders, a training step for one device or many, TFDS data and the
evaluation metrics that metric-learning papers publish.

The submodules load on first use: ``import metriclearn.losses`` (or ``distances``,
``masks``, ``reduce``, ``miners``, ``pairs``) needs only JAX, never Flax, Orbax,
tensorflow-datasets or matplotlib; ``metriclearn.training`` loads them when it is
first touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
  "checkpoints",
  "data",
  "distances",
  "evaluation",
  "gradcache",
  "inference",
  "initializers",
  "losses",
  "masks",
  "miners",
  "models",
  "pairs",
  "parallel",
  "reduce",
  "regularizers",
  "summaries",
  "training",
  "__version__",
]

_SUBMODULES = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:  # what type checkers and IDEs see; nothing is imported at run time
  from metriclearn import (
    checkpoints,
    data,
    distances,
    evaluation,
    gradcache,
    inference,
    initializers,
    losses,
    masks,
    miners,
    models,
    pairs,
    parallel,
    reduce,
    regularizers,
    summaries,
    training,
  )


def __getattr__(name: str) -> Any:
  # PEP 562: `metriclearn.training` imports the submodule on first access.
  if name in _SUBMODULES:
    return importlib.import_module(f"metriclearn.{name}")
  raise AttributeError(f"module 'metriclearn' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(__all__)

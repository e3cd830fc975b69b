"""Loss functions: pure functions of arrays, one module per family.

- :mod:`~metriclearn.losses.pair`: one pair in, a scalar out (contrastive in every
  published form, the log-likelihood pair loss, Koch et al.'s weighted L1).
- :mod:`~metriclearn.losses.triplet`: one triplet, and batch-all / batch-hard /
  semi-hard from labels.
- :mod:`~metriclearn.losses.softmax`: N-pair, NT-Xent / InfoNCE, SupCon, soft nearest
  neighbour, sigmoid (SigLIP) pairwise.
- :mod:`~metriclearn.losses.pair_weighting`: contrastive over all pairs,
  multi-similarity, circle, lifted structure, margin loss.
- :mod:`~metriclearn.losses.proxy`: ArcFace, sub-center ArcFace, CosFace, normalized
  softmax, ProxyNCA(++), ProxyAnchor, SoftTriple, softmax cross-entropy baseline.

Batch-form losses take ``(embeddings [n, d], labels [n], *, ...)`` and return one value
per anchor ``[n]``; reduce them with :mod:`metriclearn.reduce`. Each in-batch loss is
written once and runs dense (``block_size=None``, the default) or blockwise
(``block_size=`` an int: memory n x block, the same values and gradients;
``ring=True``: candidates passed around the devices of ``axis_name``). A new in-batch
loss is a few :class:`Pass` es run by :func:`pair_statistics` on a
:class:`metriclearn.pairs.Relation`.
"""

from metriclearn.initializers import init_proxies
from metriclearn.losses._engine import Block, Pass, pair_statistics
from metriclearn.losses.pair import (
  CONTRASTIVE_VARIANTS,
  contrastive_loss,
  pair_logit,
  sigmoid_pair_loss,
  weighted_l1_logit,
  weighted_l1_loss,
)
from metriclearn.losses.pair_weighting import (
  batch_contrastive_loss,
  circle_loss,
  contrastive_pair_losses,
  lifted_structure_loss,
  margin_loss,
  multi_similarity_loss,
)
from metriclearn.losses.proxy import (
  arcface_loss,
  cosface_loss,
  normalized_softmax_loss,
  proxy_anchor_loss,
  proxy_nca_loss,
  proxy_nca_plus_plus_loss,
  soft_triple_loss,
  softmax_cross_entropy_loss,
  subcenter_arcface_loss,
)
from metriclearn.losses.softmax import (
  infonce_loss,
  npair_loss,
  ntxent_loss,
  sigmoid_pairwise_loss,
  soft_nearest_neighbor_loss,
  supcon_loss,
)
from metriclearn.losses.triplet import (
  batch_all_triplet_loss,
  batch_hard_triplet_loss,
  semi_hard_triplet_loss,
  triplet_margin_loss,
)

__all__ = [
  "Block",
  "Pass",
  "pair_statistics",
  "CONTRASTIVE_VARIANTS",
  "arcface_loss",
  "cosface_loss",
  "init_proxies",
  "normalized_softmax_loss",
  "proxy_anchor_loss",
  "proxy_nca_loss",
  "proxy_nca_plus_plus_loss",
  "soft_triple_loss",
  "softmax_cross_entropy_loss",
  "subcenter_arcface_loss",
  "batch_all_triplet_loss",
  "batch_contrastive_loss",
  "batch_hard_triplet_loss",
  "circle_loss",
  "contrastive_loss",
  "contrastive_pair_losses",
  "infonce_loss",
  "lifted_structure_loss",
  "margin_loss",
  "multi_similarity_loss",
  "npair_loss",
  "ntxent_loss",
  "pair_logit",
  "semi_hard_triplet_loss",
  "sigmoid_pair_loss",
  "sigmoid_pairwise_loss",
  "soft_nearest_neighbor_loss",
  "supcon_loss",
  "triplet_margin_loss",
  "weighted_l1_logit",
  "weighted_l1_loss",
]

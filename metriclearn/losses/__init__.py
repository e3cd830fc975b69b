"""Loss functions: pure functions of arrays, one module per family.

- :mod:`~metriclearn.losses.pair`: one pair in, a scalar out (contrastive in every
  published form, the log-likelihood pair loss, Koch et al.'s weighted L1).
- :mod:`~metriclearn.losses.triplet`: one triplet, and batch-all / batch-hard /
  semi-hard from labels.
- :mod:`~metriclearn.losses.softmax`: N-pair, NT-Xent / InfoNCE, SupCon, multi-label
  SupCon, decoupled contrastive (DCL, DCLW), instance loss, soft nearest neighbour,
  sigmoid (SigLIP) pairwise.
- :mod:`~metriclearn.losses.pair_weighting`: contrastive over all pairs,
  multi-similarity, circle, lifted structure, margin loss.
- :mod:`~metriclearn.losses.pair_triplet`: angular, tuplet margin, intra-pair
  variance, SNR contrastive, centroid triplet, threshold-consistent margin, dynamic
  soft margin, manifold loss (and ``swap=`` on the triplet losses).
- :mod:`~metriclearn.losses.ranking`: FastAP, Smooth-AP, PNP, histogram loss, ranked
  list loss.
- :mod:`~metriclearn.losses.classification`: ArcFace, sub-center ArcFace, CosFace,
  normalized softmax, softmax cross-entropy baseline, L-Softmax, SphereFace, P2SGrad.
- :mod:`~metriclearn.losses.proxy`: ProxyNCA(++), ProxyAnchor, SoftTriple.
- :mod:`~metriclearn.losses.self_supervised`: VICReg, Barlow Twins (two views in, one
  scalar out, statistics over the global batch).

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
from metriclearn.losses.classification import (
  arcface_loss,
  cosface_loss,
  large_margin_softmax_loss,
  normalized_softmax_loss,
  p2sgrad_loss,
  softmax_cross_entropy_loss,
  sphereface_loss,
  subcenter_arcface_loss,
)
from metriclearn.losses.pair import (
  CONTRASTIVE_VARIANTS,
  contrastive_loss,
  pair_logit,
  sigmoid_pair_loss,
  weighted_l1_logit,
  weighted_l1_loss,
)
from metriclearn.losses.pair_triplet import (
  angular_loss,
  centroid_triplet_loss,
  dynamic_soft_margin_loss,
  intra_pair_variance_loss,
  manifold_loss,
  snr_contrastive_loss,
  threshold_consistent_margin_loss,
  tuplet_margin_loss,
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
  proxy_anchor_loss,
  proxy_nca_loss,
  proxy_nca_plus_plus_loss,
  soft_triple_loss,
)
from metriclearn.losses.ranking import (
  PNP_VARIANTS,
  fastap_loss,
  histogram_loss,
  pnp_loss,
  ranked_list_loss,
  smooth_ap_loss,
)
from metriclearn.losses.self_supervised import barlow_twins_loss, vicreg_loss
from metriclearn.losses.softmax import (
  decoupled_contrastive_loss,
  infonce_loss,
  instance_loss,
  multi_supcon_loss,
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
  "PNP_VARIANTS",
  "fastap_loss",
  "histogram_loss",
  "pnp_loss",
  "ranked_list_loss",
  "smooth_ap_loss",
  "decoupled_contrastive_loss",
  "instance_loss",
  "large_margin_softmax_loss",
  "multi_supcon_loss",
  "p2sgrad_loss",
  "sphereface_loss",
  "angular_loss",
  "centroid_triplet_loss",
  "dynamic_soft_margin_loss",
  "intra_pair_variance_loss",
  "manifold_loss",
  "snr_contrastive_loss",
  "threshold_consistent_margin_loss",
  "tuplet_margin_loss",
  "barlow_twins_loss",
  "vicreg_loss",
]

"""Data for metric learning: loading, class-disjoint splits, samplers, augmentation.

- Loading into host memory (:class:`ImageDataset`): :func:`load` by name;
  :func:`load_digits` (bundled with scikit-learn, no download); Omniglot at 28 x 28
  from the bundled pack, no download (:func:`load_omniglot_pack`,
  :func:`load_omniglot_pack_runs`; also ``load("omniglot", split)`` and
  :func:`load_omniglot` / :func:`load_omniglot_runs` without a path); the original
  archives with :func:`load_omniglot`, :func:`load_omniglot_runs` (the 20 official
  one-shot runs) and :func:`load_mnist`; any TFDS image dataset with :func:`load_tfds`
  or :func:`tfds_source` (``tfds.data_source``, no TensorFlow).
- Class-disjoint splits: :func:`class_split`, :func:`class_disjoint_indices`.
- NumPy samplers (seeded, endless, fixed shapes): :func:`balanced_batches` (P x K),
  :func:`hierarchical_batches` (G super-classes x P x K), :func:`pair_batches`,
  :func:`triplet_batches`; :func:`padded_batches` for evaluation.
- JAX augmentation (jit, one key per batch): :func:`random_affine` (``KOCH_AFFINE``),
  :func:`random_crop`, :func:`random_flip`, :func:`compose`, :func:`two_views`.
- Devices: :func:`prefetch_to_device` (placement: :mod:`metriclearn.parallel`).
"""

from metriclearn.data.archives import (
  OMNIGLOT_ALPHABETS,
  OneShotRuns,
  load_digits,
  load_mnist,
  load_omniglot,
  load_omniglot_runs,
)
from metriclearn.data.augment import (
  KOCH_AFFINE,
  affine_transform,
  compose,
  random_affine,
  random_crop,
  random_flip,
  to_float,
  two_views,
)
from metriclearn.data.dataset import ImageDataset, default_cache_dir, resize_images
from metriclearn.data.loaders import load
from metriclearn.data.pack import (
  OMNIGLOT_PACK_IMAGE_SIZE,
  load_omniglot_pack,
  load_omniglot_pack_runs,
  omniglot_pack_file,
)
from metriclearn.data.prefetch import Prefetcher, prefetch_to_device
from metriclearn.data.samplers import (
  balanced_batches,
  hierarchical_batches,
  padded_batches,
  pair_batches,
  triplet_batches,
)
from metriclearn.data.splits import class_disjoint_indices, class_split
from metriclearn.data.tfds_data import load_tfds, tfds_source

__all__ = [
  "KOCH_AFFINE",
  "OMNIGLOT_ALPHABETS",
  "OMNIGLOT_PACK_IMAGE_SIZE",
  "ImageDataset",
  "OneShotRuns",
  "Prefetcher",
  "affine_transform",
  "balanced_batches",
  "class_disjoint_indices",
  "class_split",
  "compose",
  "default_cache_dir",
  "hierarchical_batches",
  "load",
  "load_digits",
  "load_mnist",
  "load_omniglot",
  "load_omniglot_pack",
  "load_omniglot_pack_runs",
  "load_omniglot_runs",
  "load_tfds",
  "omniglot_pack_file",
  "padded_batches",
  "pair_batches",
  "prefetch_to_device",
  "random_affine",
  "random_crop",
  "random_flip",
  "resize_images",
  "tfds_source",
  "to_float",
  "triplet_batches",
  "two_views",
]

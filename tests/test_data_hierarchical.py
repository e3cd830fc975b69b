"""hierarchical_batches: G groups x P classes x K images, fixed shapes, seeded."""

import itertools

import numpy as np
import pytest

from metriclearn.data import ImageDataset, hierarchical_batches


def _dataset():
  # groups (super-classes) 0..4 with 3, 2, 4, 1 and 2 classes; class sizes 1..5,
  # so that some classes have fewer than K = 3 images
  classes_per_group = [3, 2, 4, 1, 2]
  labels, groups = [], []
  c = 0
  for g, count in enumerate(classes_per_group):
    for _ in range(count):
      size = 1 + c % 5
      labels += [c] * size
      groups += [10 + g] * size  # group ids need not start at 0
      c += 1
  order = np.random.default_rng(0).permutation(len(labels))  # rows in any order
  labels, groups = np.array(labels)[order], np.array(groups)[order]
  images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1)
  return ImageDataset(images, labels, groups=groups, name="toy")


def test_batches_hold_g_groups_p_classes_k_images():
  ds = _dataset()
  g, p, k = 2, 2, 3
  seen_groups = set()
  for batch in itertools.islice(hierarchical_batches(ds, g, p, k, seed=1), 60):
    assert set(batch) == {"image", "label", "group", "index"}
    assert batch["image"].shape == (g * p * k, 1, 1, 1)
    for key in ("label", "group", "index"):
      assert batch[key].shape == (g * p * k,) and batch[key].dtype == np.int32
    rows = batch["index"]
    np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], rows)
    np.testing.assert_array_equal(batch["label"], ds.labels[rows])
    np.testing.assert_array_equal(batch["group"], ds.groups[rows])
    # grouped by group (P * K rows), then by class (K rows)
    by_group = batch["group"].reshape(g, p * k)
    assert np.all(by_group == by_group[:, :1]) and len(set(by_group[:, 0])) == g
    by_class = batch["label"].reshape(g * p, k)
    assert np.all(by_class == by_class[:, :1]) and len(set(by_class[:, 0])) == g * p
    for cls in by_class[:, 0]:
      taken = rows[batch["label"] == cls]
      available = np.flatnonzero(ds.labels == cls)
      if available.size >= k:
        assert len(set(taken)) == k  # without replacement
      else:
        assert set(taken) == set(available)  # each image once, then repeats
    seen_groups |= set(by_group[:, 0])
  # the group with one class never qualifies for P = 2; the others all appear
  assert seen_groups == {10, 11, 12, 14}


def test_seeded_and_deterministic():
  ds = _dataset()

  def take(seed):
    return [
      b["index"]
      for b in itertools.islice(hierarchical_batches(ds, 2, 2, 2, seed=seed), 5)
    ]

  np.testing.assert_array_equal(take(3), take(3))
  assert any(np.any(a != b) for a, b in zip(take(3), take(4), strict=True))


def test_one_group_per_batch_and_all_groups():
  ds = _dataset()
  batch = next(hierarchical_batches(ds, 1, 4, 2, seed=0))  # only group 12 has 4
  assert set(batch["group"]) == {12} and len(set(batch["label"])) == 4
  batch = next(hierarchical_batches(ds, 5, 1, 1, seed=0))
  assert sorted(batch["group"]) == [10, 11, 12, 13, 14]


def test_errors_name_the_argument():
  ds = _dataset()
  with pytest.raises(ValueError, match="groups_per_batch=5 exceeds the 4 groups"):
    hierarchical_batches(ds, 5, 2, 2, seed=0)
  with pytest.raises(ValueError, match="groups_per_batch=2 exceeds the 1 groups"):
    hierarchical_batches(ds, 2, 4, 2, seed=0)
  for args, name in (
    ((0, 2, 2), "groups_per_batch"),
    ((1, 0, 2), "classes_per_group"),
    ((1, 2, 1.5), "samples_per_class"),
  ):
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
      hierarchical_batches(ds, *args, seed=0)
  no_groups = ImageDataset(ds.images, ds.labels, name="plain")
  with pytest.raises(ValueError, match="needs a dataset with groups; 'plain'"):
    hierarchical_batches(no_groups, 1, 1, 1, seed=0)
  groups = ds.groups.copy()
  groups[np.flatnonzero(ds.labels == 4)[0]] = 13  # class 4 now in two groups
  split = ImageDataset(ds.images, ds.labels, groups=groups, name="split")
  with pytest.raises(ValueError, match="groups must be the same for every row"):
    hierarchical_batches(split, 1, 1, 1, seed=0)

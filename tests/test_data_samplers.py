"""Samplers and class-disjoint splits: properties over random datasets (hypothesis)."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metriclearn import data


@st.composite
def datasets(draw, min_classes=2):
  """Classes of 1-6 images, in 1-4 groups; image i holds the value i (so a batch's
  images can be traced back to rows), labels are sparse ids, rows are shuffled."""
  sizes = draw(st.lists(st.integers(1, 6), min_size=min_classes, max_size=12))
  class_ids = np.array(draw(st.permutations(range(100, 100 + 3 * len(sizes), 3))))
  groups_of_class = np.array([draw(st.integers(0, 3)) for _ in sizes])
  labels = np.repeat(class_ids, sizes)
  groups = np.repeat(groups_of_class, sizes)
  order = np.random.default_rng(draw(st.integers(0, 9))).permutation(labels.size)
  n = labels.size
  return data.ImageDataset(
    np.arange(n, dtype=np.int32).reshape(n, 1, 1, 1),
    labels[order],
    groups[order],
    name="synthetic",
  )


def _take(iterator, n=3):
  return list(itertools.islice(iterator, n))


def _check_rows(ds, images, labels, index):
  """The batch's images and labels are those of the rows it names."""
  np.testing.assert_array_equal(images[:, 0, 0, 0], index)
  np.testing.assert_array_equal(labels, ds.labels[index])


@given(datasets(), st.data())
def test_balanced_batches_are_p_by_k(ds, draw):
  p = draw.draw(st.integers(1, ds.num_classes))
  k = draw.draw(st.integers(1, 5))
  seed = draw.draw(st.integers(0, 2**31))
  by_group = draw.draw(st.booleans())
  batches = _take(data.balanced_batches(ds, p, k, seed=seed, by_group=by_group))
  again = _take(data.balanced_batches(ds, p, k, seed=seed, by_group=by_group))
  count = dict(zip(*np.unique(ds.labels, return_counts=True), strict=True))
  for batch, repeat in zip(batches, again, strict=True):
    assert batch["image"].shape == (p * k, 1, 1, 1)
    assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int32
    _check_rows(ds, batch["image"], batch["label"], batch["index"])
    # Exactly P classes, K rows each, K consecutive rows per class.
    per_class = batch["label"].reshape(p, k)
    assert np.all(per_class == per_class[:, :1])
    assert np.unique(per_class[:, 0]).size == p
    for row in batch["index"].reshape(p, k):
      n = count[ds.labels[row[0]]]
      # Without replacement when the class is big enough, else every image once.
      assert np.unique(row).size == min(n, k)
    for key in batch:  # the same seed gives the same batches
      np.testing.assert_array_equal(batch[key], repeat[key])


@pytest.mark.parametrize("p, max_groups", [(1, 1), (5, 1), (6, 2), (10, 2), (11, 3)])
def test_balanced_batches_by_group_use_few_groups(p, max_groups):
  # 4 groups of 5 classes (3 images each): P <= 5 fits in the first group taken,
  # 5 < P <= 10 in two, 10 < P <= 15 in three.
  labels = np.repeat(np.arange(20), 3)
  ds = data.ImageDataset(np.zeros((60, 1, 1, 1), np.uint8), labels, labels // 5)
  seen = set()
  for batch in _take(data.balanced_batches(ds, p, 2, seed=3, by_group=True), 20):
    groups = np.unique(batch["label"] // 5)
    assert groups.size <= max_groups
    seen.update(groups.tolist())
  assert seen == {0, 1, 2, 3}  # every group is drawn in its turn
  plain = _take(data.balanced_batches(ds, 5, 2, seed=3), 20)
  assert max(np.unique(b["label"] // 5).size for b in plain) > 1


def test_balanced_batches_by_group_needs_groups():
  ds = data.ImageDataset(np.zeros((4, 1, 1, 1), np.uint8), np.array([0, 0, 1, 1]))
  with pytest.raises(ValueError, match="by_group=True needs a dataset with groups"):
    data.balanced_batches(ds, 2, 2, seed=0, by_group=True)


@given(datasets(min_classes=3), st.data())
def test_pair_batches(ds, draw):
  b = draw.draw(st.integers(1, 12))
  fraction = draw.draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]))
  same_group = draw.draw(st.booleans())
  seed = draw.draw(st.integers(0, 2**31))
  counts = np.unique(ds.labels, return_counts=True)[1]
  class_groups = np.unique(np.stack([ds.labels, ds.groups]), axis=1)[1]
  group_sizes = np.unique(class_groups, return_counts=True)[1]  # classes per group
  needs_pair = round(b * fraction) > 0 and counts.max() < 2
  needs_group = same_group and round(b * fraction) < b and group_sizes.max() < 2
  if needs_pair or needs_group:
    with pytest.raises(ValueError, match="similar_fraction|same_group|similar pairs"):
      data.pair_batches(ds, b, similar_fraction=fraction, same_group=same_group, seed=0)
    return
  kwargs = {"similar_fraction": fraction, "same_group": same_group, "seed": seed}
  batches = _take(data.pair_batches(ds, b, **kwargs))
  again = _take(data.pair_batches(ds, b, **kwargs))
  for batch, repeat in zip(batches, again, strict=True):
    assert batch["x1"].shape == batch["x2"].shape == (b, 1, 1, 1)
    assert batch["similar"].dtype == bool
    assert int(batch["similar"].sum()) == round(b * fraction)
    _check_rows(ds, batch["x1"], batch["label1"], batch["index1"])
    _check_rows(ds, batch["x2"], batch["label2"], batch["index2"])
    np.testing.assert_array_equal(batch["similar"], batch["label1"] == batch["label2"])
    similar = batch["similar"]
    assert np.all(batch["index1"][similar] != batch["index2"][similar])
    if same_group:
      groups = ds.groups
      np.testing.assert_array_equal(groups[batch["index1"]], groups[batch["index2"]])
    for key in batch:
      np.testing.assert_array_equal(batch[key], repeat[key])


@given(datasets(), st.integers(1, 10), st.booleans(), st.integers(0, 2**31))
def test_triplet_batches(ds, b, same_group, seed):
  try:
    it = data.triplet_batches(ds, b, same_group=same_group, seed=seed)
  except ValueError as e:  # no class with two images (and another class in its group)
    assert "triplets need" in str(e) or "same_group" in str(e)
    return
  for batch in _take(it):
    assert batch["anchor"].shape == (b, 1, 1, 1)
    _check_rows(ds, batch["anchor"], batch["label"], batch["anchor_index"])
    _check_rows(ds, batch["positive"], batch["label"], batch["positive_index"])
    _check_rows(ds, batch["negative"], batch["negative_label"], batch["negative_index"])
    assert np.all(batch["anchor_index"] != batch["positive_index"])
    assert np.all(batch["label"] != batch["negative_label"])
    if same_group:
      groups = ds.groups
      np.testing.assert_array_equal(
        groups[batch["anchor_index"]], groups[batch["negative_index"]]
      )


@given(datasets(min_classes=4), st.sampled_from(["label", "group"]), st.integers(0, 99))
def test_class_split_is_disjoint_and_samplers_stay_inside(ds, by, seed):
  units = ds.labels if by == "label" else ds.groups
  # (The strategy puts each class in one group, as a group split requires.)
  assert np.unique(np.stack([ds.labels, ds.groups]), axis=1).shape[1] == ds.num_classes
  if np.unique(units).size < 3:
    with pytest.raises(ValueError, match="too few"):
      data.class_split(ds, (0.5, 0.25, 0.25), seed=seed, by=by)
    return
  parts = data.class_split(ds, (0.5, 0.25, 0.25), seed=seed, by=by)
  # Every image lands in exactly one part; no class (or group) is in two parts.
  assert sum(len(p) for p in parts) == len(ds)
  field = "labels" if by == "label" else "groups"
  seen = [set(getattr(p, field).tolist()) for p in parts]
  labels = [set(p.labels.tolist()) for p in parts]
  for i, j in itertools.combinations(range(3), 2):
    assert not seen[i] & seen[j] and not labels[i] & labels[j]
  assert all(len(p) for p in parts)
  # A sampler on the training part never yields a class of another part.
  train = parts[0]
  for batch in _take(data.balanced_batches(train, 1, 2, seed=seed), 5):
    assert set(batch["label"].tolist()) <= labels[0]
  # Same seed, same split.
  again = data.class_split(ds, (0.5, 0.25, 0.25), seed=seed, by=by)
  for p, q in zip(parts, again, strict=True):
    np.testing.assert_array_equal(p.labels, q.labels)


def test_class_split_fractions_are_of_classes():
  labels = np.repeat(np.arange(10), [1, 1, 1, 1, 1, 1, 1, 1, 1, 91])
  ds = data.ImageDataset(np.zeros((100, 1, 1, 1), np.uint8), labels)
  parts = data.class_disjoint_indices(labels, (0.8, 0.2), seed=0)
  assert [np.unique(labels[p]).size for p in parts] == [8, 2]
  train, test = data.class_split(ds, (0.8, 0.2), seed=0)
  assert train.num_classes == 8 and test.num_classes == 2


def test_padded_batches_cover_the_dataset_once():
  ds = data.ImageDataset(np.arange(1, 8).reshape(7, 1, 1, 1), np.arange(7) % 3)
  batches = list(data.padded_batches(ds, 3))
  assert [b["image"].shape for b in batches] == [(3, 1, 1, 1)] * 3
  index = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(index, [0, 1, 2, 3, 4, 5, 6, -1, -1])
  np.testing.assert_array_equal(batches[-1]["label"], [0, -1, -1])
  np.testing.assert_array_equal(batches[-1]["image"][:, 0, 0, 0], [7, 0, 0])


def test_sampler_errors():
  ds = data.ImageDataset(np.zeros((4, 1, 1, 1), np.uint8), np.array([0, 0, 1, 2]))
  with pytest.raises(ValueError, match="classes_per_batch=4 exceeds the 3 classes"):
    data.balanced_batches(ds, 4, 2, seed=0)
  with pytest.raises(ValueError, match="samples_per_class"):
    data.balanced_batches(ds, 2, 0, seed=0)
  with pytest.raises(ValueError, match="batch_size"):
    data.pair_batches(ds, 2.5, seed=0)
  with pytest.raises(ValueError, match="similar_fraction"):
    data.pair_batches(ds, 4, similar_fraction=1.5, seed=0)
  with pytest.raises(ValueError, match="same_group=True needs a dataset with groups"):
    data.triplet_batches(ds, 4, same_group=True, seed=0)
  with pytest.raises(ValueError, match="by='group'"):
    data.class_split(ds, (0.5, 0.5), seed=0, by="group")
  with pytest.raises(ValueError, match="sum to 1"):
    data.class_split(ds, (0.5, 0.4), seed=0)
  with pytest.raises(ValueError, match="labels must be"):
    data.ImageDataset(np.zeros((4, 1, 1, 1)), np.zeros(3, np.int32))
  # A class with a single image: P x K still holds, the image is repeated.
  batch = next(data.balanced_batches(ds, 3, 4, seed=0))
  assert batch["label"].size == 12
  assert np.all(batch["index"][batch["label"] == 2] == 3)

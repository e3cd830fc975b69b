"""tensorflow-datasets through tfds.data_source (no TensorFlow), with mock data."""

import socket
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from metriclearn import data


def _mock(num_examples=24):
  # MockPolicy.AUTO falls back to USE_CODE here (the installed package ships no
  # metadata files for these datasets): examples are generated from the builder's
  # features, and download_and_prepare is a no-op. The builder still reports itself
  # as not prepared, so these calls pass download=True (nothing is fetched).
  return tfds.testing.mock_data(num_examples=num_examples)


def test_mnist_through_tfds_mock():
  with _mock():
    ds = data.load("mnist", "train", download=True)
    source = data.tfds_source("mnist", "test", download=True)
    example = source[3]
  assert ds.images.shape == (24, 28, 28, 1) and ds.images.dtype == np.uint8
  assert ds.labels.dtype == np.int32 and ds.labels.min() >= 0 and ds.labels.max() < 10
  assert ds.groups is None and ds.name == "mnist/train"
  assert len(source) == 24
  assert example["image"].shape == (28, 28, 1) and set(example) == {"image", "label"}


def test_omniglot_through_tfds_mock():
  with _mock(30):
    ds = data.load("omniglot", "test", download=True)
    resized = data.load_tfds("omniglot", "small1", download=True, image_size=28)
  # TFDS's omniglot: three channels; label < 1623; alphabet (-> groups) < 50.
  assert ds.images.shape == (30, 105, 105, 3) and ds.images.dtype == np.uint8
  assert 0 <= ds.labels.min() and ds.labels.max() < 1623
  assert ds.groups is not None and 0 <= ds.groups.min() and ds.groups.max() < 50
  assert resized.images.shape == (30, 28, 28, 3)
  # The in-memory dataset feeds the samplers like any other.
  batch = next(data.pair_batches(ds, 8, similar_fraction=0.0, seed=0))
  assert batch["x1"].shape == (8, 105, 105, 3)


def test_tfds_feature_names_are_checked():
  with _mock(4), pytest.raises(ValueError, match="'digit'"):
    data.load_tfds("mnist", download=True, label_key="digit")


class MetriclearnTinyDigits(tfds.core.GeneratorBasedBuilder):
  """40 of scikit-learn's digits as a real TFDS dataset, prepared without TensorFlow.

  (``tfds.features.Image`` needs TensorFlow to encode PNGs; a uint8 ``Tensor``
  feature does not.)
  """

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    features = {
      "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
      "label": tfds.features.ClassLabel(names=[f"digit {i}" for i in range(10)]),
    }
    return tfds.core.DatasetInfo(
      builder=self, features=tfds.features.FeaturesDict(features)
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    digits = data.load_digits()
    for i in range(40):
      yield i, {"image": digits.images[i], "label": int(digits.labels[i])}


def test_real_tfds_data_source_without_tensorflow(tmp_path):
  builder = MetriclearnTinyDigits(data_dir=tmp_path, file_format="array_record")
  builder.download_and_prepare()
  ds = data.load_tfds("metriclearn_tiny_digits", data_dir=tmp_path)
  digits = data.load_digits()
  # TFDS may reorder examples (it shuffles by key): compare as sets of (image, label).
  got = sorted(
    (im.tobytes(), int(lb)) for im, lb in zip(ds.images, ds.labels, strict=True)
  )
  want = sorted(
    (im.tobytes(), int(lb))
    for im, lb in zip(digits.images[:40], digits.labels[:40], strict=True)
  )
  assert got == want
  assert ds.images.dtype == np.uint8 and ds.class_names[3] == "digit 3"
  head = data.load_tfds("metriclearn_tiny_digits", "train[:10]", data_dir=tmp_path)
  assert len(head) == 10
  source = data.tfds_source("metriclearn_tiny_digits", data_dir=tmp_path)
  assert len(source) == 40 and source[0]["image"].shape == (8, 8, 1)


def _within(seconds, fn):
  """Runs fn in a thread; fails if it has not returned after ``seconds`` (a guard
  against retry loops, not a timing measurement)."""
  outcome = {}

  def run():
    try:
      outcome["value"] = fn()
    except BaseException as e:  # noqa: BLE001
      outcome["error"] = e

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f"still running after {seconds} s (retrying?)"
  return outcome


def test_unprepared_dataset_fails_fast_with_advice(tmp_path):
  outcome = _within(60, lambda: data.load("mnist", data_dir=tmp_path))
  error = outcome["error"]
  assert isinstance(error, FileNotFoundError)
  for part in ("'mnist'", "not prepared", str(tmp_path), "download=True", "path="):
    assert part in str(error)
  assert not list(tmp_path.iterdir())  # nothing written


def test_download_without_network_fails_fast(tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise socket.gaierror("no network in this test")

  monkeypatch.setattr(socket, "getaddrinfo", no_network)
  outcome = _within(
    60, lambda: data.load_tfds("mnist", data_dir=tmp_path, download=True)
  )
  error = outcome["error"]
  assert isinstance(error, RuntimeError), error
  assert "'mnist'" in str(error) and "download failed" in str(error)


def test_unknown_name(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'no_such_dataset'"):
    data.load("no_such_dataset", data_dir=tmp_path)
  with pytest.raises(ValueError, match="unknown dataset 'omniglott'"):
    data.tfds_source("omniglott", data_dir=tmp_path)

"""The original archives in ../shared/data: Omniglot zips and runs, MNIST idx files."""

import gzip
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from metriclearn import data
from metriclearn.data import archives


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  # A fresh cache per test session: every archive is decoded once, then read back.
  return tmp_path_factory.mktemp("metriclearn_cache")


@pytest.fixture(scope="module")
def omniglot(shared_data):
  return shared_data / "omniglot"


@pytest.fixture(scope="module")
def background(omniglot, cache_dir):
  return data.load_omniglot(omniglot, "background", cache_dir=cache_dir)


@pytest.fixture(scope="module")
def evaluation(omniglot, cache_dir):
  return data.load_omniglot(omniglot, "evaluation", cache_dir=cache_dir)


def _check_omniglot(ds, images, characters, alphabets, first_label):
  assert ds.images.shape == (images, 105, 105, 1) and ds.images.dtype == np.uint8
  # Binary: ink 255 on 0 (np.unique or bincount over 212 MB would take seconds).
  assert not np.any((ds.images != 0) & (ds.images != 255))
  assert ds.images.max() == 255 and ds.images.min() == 0
  assert ds.num_classes == characters
  assert np.unique(ds.groups).size == alphabets
  # Labels are Lake's ids - 1, consecutive over the split.
  np.testing.assert_array_equal(
    ds.classes, np.arange(first_label, first_label + characters)
  )
  assert np.all(np.bincount(ds.labels - first_label) == 20)
  assert sorted(np.unique(ds.meta["drawer"]).tolist()) == list(range(1, 21))
  # TFDS's label names are "<alphabet>_<alphabet_char_id>".
  for i in (0, len(ds) // 2, len(ds) - 1):
    alphabet = data.OMNIGLOT_ALPHABETS[ds.groups[i]]
    assert (
      ds.class_names[ds.labels[i]] == f"{alphabet}_{ds.meta['alphabet_char_id'][i]}"
    )


def test_omniglot_background_counts(background):
  _check_omniglot(background, 19280, 964, 30, first_label=0)
  assert background.name == "omniglot/background"


def test_omniglot_evaluation_counts(evaluation):
  _check_omniglot(evaluation, 13180, 659, 20, first_label=964)
  # No alphabet is shared between the two halves (the standard split of Lake et al.).
  assert len(data.OMNIGLOT_ALPHABETS) == 50


def test_omniglot_background_and_evaluation_are_disjoint(background, evaluation):
  assert not set(background.groups.tolist()) & set(evaluation.groups.tolist())
  assert not set(background.labels.tolist()) & set(evaluation.labels.tolist())


def test_omniglot_pixels_and_ids_against_the_png(background, omniglot):
  # Paths quoted in public code (shared README): Arcadian/character01/0001_02 and
  # Tifinagh/character54/0963_05. Decode them here with PIL, independently.
  with zipfile.ZipFile(omniglot / "images_background.zip") as zf:
    for name, label, alphabet, char_id, drawer in [
      ("Arcadian/character01/0001_02.png", 0, "Arcadian", 0, 2),
      ("Tifinagh/character54/0963_05.png", 962, "Tifinagh", 53, 5),
    ]:
      png = np.asarray(Image.open(io.BytesIO(zf.read(f"images_background/{name}"))))
      row = np.flatnonzero(
        (background.labels == label) & (background.meta["drawer"] == drawer)
      )
      assert row.size == 1
      row = row[0]
      assert data.OMNIGLOT_ALPHABETS[background.groups[row]] == alphabet
      assert background.meta["alphabet_char_id"][row] == char_id
      # The file has 1 = white background; the dataset has ink = 255 on 0.
      np.testing.assert_array_equal(
        background.images[row, :, :, 0], np.where(png, 0, 255)
      )


def test_omniglot_cache_gives_the_same_arrays(omniglot, cache_dir, background):
  files = list(cache_dir.glob("images_background-105px-*.npz"))
  assert len(files) == 1
  again = data.load_omniglot(omniglot, "train", cache_dir=cache_dir)  # from the cache
  for field in ("images", "labels", "groups"):
    # np.array_equal: assert_array_equal takes seconds on 212 MB.
    assert np.array_equal(getattr(again, field), getattr(background, field))
  np.testing.assert_array_equal(again.meta["drawer"], background.meta["drawer"])


def test_omniglot_small_subsets_are_in_background(omniglot, cache_dir, background):
  keys = zip(background.labels, background.meta["drawer"], strict=True)
  where = {key: i for i, key in enumerate(keys)}
  for split, count, characters in [("small1", 2720, 136), ("small2", 3120, 156)]:
    small = data.load_omniglot(omniglot, split, cache_dir=cache_dir)
    assert len(small) == count and small.num_classes == characters
    assert np.unique(small.groups).size == 5
    rows = [where[key] for key in zip(small.labels, small.meta["drawer"], strict=True)]
    assert np.array_equal(small.images, background.images[rows])
    np.testing.assert_array_equal(small.groups, background.groups[rows])


def test_omniglot_resized(omniglot, cache_dir):
  small = data.load_omniglot(omniglot, "small1", image_size=28, cache_dir=cache_dir)
  full = data.load_omniglot(omniglot, "small1", cache_dir=cache_dir)
  assert small.images.shape == (2720, 28, 28, 1) and small.images.dtype == np.uint8
  np.testing.assert_array_equal(small.labels, full.labels)
  # Ink is preserved in proportion: 105 -> 28 keeps the mean intensity within 10%.
  np.testing.assert_allclose(small.images.mean(), full.images.mean(), rtol=0.1)


def test_omniglot_runs_and_answer_key(omniglot, evaluation):
  runs = data.load_omniglot_runs(omniglot)
  assert runs.train_images.shape == (20, 20, 105, 105, 1)
  assert runs.test_images.shape == (20, 20, 105, 105, 1)
  assert runs.answers.shape == (20, 20) and runs.answers.dtype == np.int32
  for answers in runs.answers:  # each run's key is a permutation of its 20 classes
    assert sorted(answers.tolist()) == list(range(20))
  # run01/class_labels.txt: item01 -> class08, item02 -> class09, item20 -> class16.
  assert runs.answers[0, [0, 1, 19]].tolist() == [7, 8, 15]
  # Every run image is an evaluation image (shared README), and each test item has the
  # character of the training image its answer names.
  pairs = zip(evaluation.images, evaluation.labels, strict=True)
  label_of = {image.tobytes(): label for image, label in pairs}
  train = np.vectorize(lambda r, c: label_of[runs.train_images[r, c].tobytes()])
  test = np.vectorize(lambda r, t: label_of[runs.test_images[r, t].tobytes()])
  r, t = np.meshgrid(np.arange(20), np.arange(20), indexing="ij")
  np.testing.assert_array_equal(test(r, t), train(r, runs.answers))
  # A run is 20-way: 20 distinct characters.
  assert all(np.unique(train(r, t)[i]).size == 20 for i in range(20))


def test_mnist(shared_data):
  train = data.load_mnist(shared_data / "mnist", "train")
  test = data.load("mnist", "test", path=shared_data / "mnist")
  assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
  assert test.images.shape == (10000, 28, 28, 1)
  for ds in (train, test):
    assert ds.labels.dtype == np.int32 and ds.classes.tolist() == list(range(10))
    assert ds.images.max() == 255 and ds.images.min() == 0
  # The first labels of LeCun's files.
  assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]
  assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]


def _write_png(ink: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(~ink).save(out, format="PNG")  # mode "1": True = white
  return out.getvalue()


def _tiny_omniglot(names):
  rng = np.random.default_rng(0)
  return {n: _write_png(rng.random((6, 6)) < 0.3) for n in names}


def test_omniglot_zip_and_extracted_folder_agree(tmp_path):
  files = _tiny_omniglot(
    [
      f"images_background/{a}/character{c:02d}/{first + c - 1:04d}_{d:02d}.png"
      for a, first in [("Arcadian", 1), ("Latin", 683)]
      for c in (1, 2)
      for d in (1, 2, 3)
    ]
  )
  with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as zf:
    for name, png in files.items():
      zf.writestr(name, png)
  folder = tmp_path / "extracted"
  for name, png in files.items():
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(png)
  zipped = data.load_omniglot(tmp_path, cache=False)
  extracted = data.load_omniglot(folder, cache=False)
  assert zipped.labels.tolist() == [0] * 3 + [1] * 3 + [682] * 3 + [683] * 3
  alphabets = [data.OMNIGLOT_ALPHABETS[g] for g in zipped.groups[::3]]
  assert alphabets == ["Arcadian", "Arcadian", "Latin", "Latin"]
  np.testing.assert_array_equal(zipped.images, extracted.images)
  np.testing.assert_array_equal(zipped.labels, extracted.labels)
  assert zipped.images.shape == (12, 6, 6, 1)


def test_missing_archives_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="images_evaluation.zip"):
    data.load_omniglot(tmp_path, "evaluation")
  with pytest.raises(FileNotFoundError, match="all_runs.zip"):
    data.load_omniglot_runs(tmp_path)
  with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
    data.load_mnist(tmp_path, "test")
  with pytest.raises(ValueError, match="'validation'"):
    data.load_omniglot(tmp_path, "validation")
  with pytest.raises(ValueError, match="'cifar10'"):
    data.load("cifar10", path=tmp_path)


def test_corrupt_archives_name_the_file(tmp_path, shared_data):
  bad = tmp_path / "images_background.zip"
  bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
  with pytest.raises(ValueError, match="images_background.zip.*corrupt"):
    data.load_omniglot(tmp_path, cache=False)
  # A truncated copy of the real zip.
  real = (shared_data / "omniglot" / "all_runs.zip").read_bytes()
  (tmp_path / "all_runs.zip").write_bytes(real[: len(real) // 2])
  with pytest.raises(ValueError, match="all_runs.zip"):
    data.load_omniglot_runs(tmp_path)
  # A valid zip holding a damaged PNG names the member.
  member = "images_evaluation/Angelic/character01/0965_01.png"
  with zipfile.ZipFile(tmp_path / "images_evaluation.zip", "w") as zf:
    zf.writestr(member, b"\x89PNG\r\n\x1a\n broken")
  with pytest.raises(ValueError, match="0965_01.png"):
    data.load_omniglot(tmp_path, "evaluation", cache=False)
  # A file that breaks Lake's numbering (id != first id of the alphabet + NN - 1).
  with zipfile.ZipFile(tmp_path / "images_background_small1.zip", "w") as zf:
    zf.writestr("x/Latin/character01/0001_01.png", _write_png(np.zeros((4, 4), bool)))
  with pytest.raises(ValueError, match="0001_01.png"):
    data.load_omniglot(tmp_path, "small1", cache=False)
  # MNIST: a truncated gzip, and a gzip whose header is not idx.
  raw = (shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()
  (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(raw[:100])
  (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0" * 64))
  with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
    data.load_mnist(tmp_path, "test")
  (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
  (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
    np.array([2051, 1, 2, 2], ">i4").tobytes() + b"\0" * 4
  )
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
    data.load_mnist(tmp_path, "test")


def test_unwritable_cache_only_warns(tmp_path, omniglot):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.warns(UserWarning, match="cache"):
    ds = data.load_omniglot(omniglot, "small1", cache_dir=blocker / "sub")
  assert len(ds) == 2720


def test_digits():
  ds = data.load("digits")
  assert ds.images.shape == (1797, 8, 8, 1) and ds.images.dtype == np.uint8
  assert ds.classes.tolist() == list(range(10)) and ds.images.max() == 255
  assert data.load("digits", image_size=4).images.shape == (1797, 4, 4, 1)
  with pytest.raises(ValueError, match="'test'"):
    data.load("digits", "test")


def test_alphabet_table_fills_the_ids():
  ranges = archives._ALPHABET_RANGES
  ids = sorted(i for first, last in ranges.values() for i in range(first, last + 1))
  assert ids == list(range(1, 1624))
  assert len(archives.OMNIGLOT_CLASS_NAMES) == 1623


def test_mnist_labels_out_of_range_are_refused(tmp_path):
  # Issue 15: a label of 200 in the labels file is an error naming the file.
  (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
    np.array([2051, 2, 2, 2], ">i4").tobytes() + b"\0" * 8
  )
  (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(
    np.array([2049, 2], ">i4").tobytes() + bytes([3, 200])
  )
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: MNIST labels are 0-9"):
    data.load_mnist(tmp_path, "test")

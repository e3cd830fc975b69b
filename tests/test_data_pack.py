"""The bundled Omniglot pack: counts, routes, no shared data, equal to the archives."""

import builtins
import importlib.util
import io
import pathlib
import shutil
import zipfile

import numpy as np
import pytest

from metriclearn import data
from metriclearn.data import archives, pack, tfds_data

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPLITS = {  # split: (images, characters, alphabets, first label)
  "background": (19280, 964, 30, 0),
  "evaluation": (13180, 659, 20, 964),
  "small1": (2720, 136, 5, None),
  "small2": (3120, 156, 5, None),
}
# The sample the archive side decodes: three background alphabets with original drawer
# ids (in small1 and/or small2), one with arbitrary ones, one evaluation alphabet.
SAMPLE_BACKGROUND = ("Latin", "Early_Aramaic", "Tagalog", "Blackfoot")
SAMPLE_EVALUATION = ("Angelic",)


@pytest.fixture(scope="module")
def script():
  spec = importlib.util.spec_from_file_location(
    "build_omniglot_pack", ROOT / "scripts" / "build_omniglot_pack.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def committed():
  with data.omniglot_pack_file().open("rb") as f, np.load(f, allow_pickle=False) as npz:
    return {k: npz[k] for k in npz.files}


def _alphabet_ids(prefixes):
  return [i for i, a in enumerate(data.OMNIGLOT_ALPHABETS) if a.startswith(prefixes)]


@pytest.fixture(scope="module")
def sample(shared_data, tmp_path_factory):
  """A folder with Lake's five archives cut down to the sample alphabets (the PNGs
  copied byte for byte, into a temporary folder only); all_runs.zip whole."""
  folder = tmp_path_factory.mktemp("omniglot_sample")
  source = shared_data / "omniglot"
  keep = {
    "images_background": SAMPLE_BACKGROUND,
    "images_background_small1": SAMPLE_BACKGROUND,
    "images_background_small2": SAMPLE_BACKGROUND,
    "images_evaluation": SAMPLE_EVALUATION,
  }
  for stem, alphabets in keep.items():
    with (
      zipfile.ZipFile(source / f"{stem}.zip") as zin,
      zipfile.ZipFile(folder / f"{stem}.zip", "w") as zout,
    ):
      for name in zin.namelist():
        parts = name.split("/")
        if name.endswith(".png") and parts[-3].startswith(alphabets):
          zout.writestr(name, zin.read(name))
  shutil.copy(source / "all_runs.zip", folder / "all_runs.zip")
  return folder


@pytest.fixture(scope="module")
def built(script, sample):
  return script.build_arrays(sample)


def _assert_same(a, b):
  assert a.name == b.name
  for field in ("images", "labels", "groups"):
    x, y = getattr(a, field), getattr(b, field)
    assert x.dtype == y.dtype and x.shape == y.shape, field
    np.testing.assert_array_equal(x, y, err_msg=field)
  assert sorted(a.meta) == sorted(b.meta) == ["alphabet_char_id", "drawer"]
  for key in a.meta:
    assert a.meta[key].dtype == b.meta[key].dtype
    np.testing.assert_array_equal(a.meta[key], b.meta[key], err_msg=key)
  assert tuple(a.class_names) == tuple(b.class_names)
  assert tuple(a.group_names) == tuple(b.group_names)


@pytest.mark.parametrize("split", list(SPLITS))
def test_pack_counts_and_format(split):
  images, characters, alphabets, first = SPLITS[split]
  ds = data.load_omniglot_pack(split)
  assert ds.images.shape == (images, 28, 28, 1) and ds.images.dtype == np.uint8
  assert ds.images.min() == 0 and ds.images.max() == 255
  assert (ds.images == 0).mean() > 0.5  # ink 255 on a 0 background
  assert ds.num_classes == characters and np.unique(ds.groups).size == alphabets
  assert np.all(np.bincount(ds.labels)[ds.classes] == 20)
  if first is not None:
    np.testing.assert_array_equal(ds.classes, np.arange(first, first + characters))
  np.testing.assert_array_equal(np.unique(ds.meta["drawer"]), np.arange(1, 21))
  order = np.lexsort((ds.meta["drawer"], ds.labels))  # by label, then drawer
  np.testing.assert_array_equal(order, np.arange(images))
  for i in (0, images - 1):  # TFDS's label names "<alphabet>_<alphabet_char_id>"
    alphabet = data.OMNIGLOT_ALPHABETS[ds.groups[i]]
    assert (
      ds.class_names[ds.labels[i]] == f"{alphabet}_{ds.meta['alphabet_char_id'][i]}"
    )
  assert ds.images.flags.writeable  # a copy: the process-wide cache stays intact


def test_pack_runs():
  runs = data.load_omniglot_pack_runs()
  assert runs.train_images.shape == runs.test_images.shape == (20, 20, 28, 28, 1)
  assert runs.train_images.dtype == runs.test_images.dtype == np.uint8
  assert runs.answers.shape == (20, 20) and runs.answers.dtype == np.int32
  for answers in runs.answers:  # each run's key is a permutation of its 20 classes
    assert sorted(answers.tolist()) == list(range(20))
  # run01/class_labels.txt: item01 -> class08, item02 -> class09, item20 -> class16.
  assert runs.answers[0, [0, 1, 19]].tolist() == [7, 8, 15]
  # Every run image is an evaluation image of the pack, the test item of the
  # character of the training image its answer names.
  evaluation = data.load_omniglot_pack("evaluation")
  pairs = zip(evaluation.images, evaluation.labels, strict=True)
  label_of = {image.tobytes(): label for image, label in pairs}
  train = np.vectorize(lambda r, c: label_of[runs.train_images[r, c].tobytes()])
  test = np.vectorize(lambda r, t: label_of[runs.test_images[r, t].tobytes()])
  r, t = np.meshgrid(np.arange(20), np.arange(20), indexing="ij")
  np.testing.assert_array_equal(test(r, t), train(r, runs.answers))


def test_no_path_reads_the_pack():
  for split, alias in [("background", "train"), ("evaluation", "test")]:
    reference = data.load_omniglot_pack(split)
    for ds in (
      data.load("omniglot", alias),
      data.load("omniglot", split, image_size=28),
      data.load_omniglot(split=alias),
    ):
      _assert_same(ds, reference)
  runs, reference = data.load_omniglot_runs(), data.load_omniglot_pack_runs()
  for field in ("train_images", "test_images", "answers"):
    np.testing.assert_array_equal(getattr(runs, field), getattr(reference, field))


def test_pack_with_the_shared_data_hidden(tmp_path, monkeypatch):
  # A fresh machine: no ../shared, no cache, no TFDS data, another working folder.
  # The pack must be read from inside the package, and from nowhere else.
  empty = tmp_path / "empty"
  empty.mkdir()
  for var in ("HOME", "METRICLEARN_CACHE", "XDG_CACHE_HOME", "TFDS_DATA_DIR"):
    monkeypatch.setenv(var, str(empty))
  monkeypatch.chdir(empty)
  package = pathlib.Path(data.__file__).resolve().parents[1]  # metriclearn/
  opened, real_open = [], io.open

  def guarded_open(file, *args, **kwargs):
    if isinstance(file, str | pathlib.Path):
      where = pathlib.Path(file).resolve()
      opened.append(where)
      assert where.is_relative_to(package), f"the pack loader opened {where}"
    return real_open(file, *args, **kwargs)

  def nowhere(*args, **kwargs):
    raise AssertionError(f"the pack loader looked elsewhere: {args}")

  monkeypatch.setattr(io, "open", guarded_open)
  monkeypatch.setattr(builtins, "open", guarded_open)
  monkeypatch.setattr(archives, "_archive", nowhere)
  monkeypatch.setattr(tfds_data, "load_tfds", nowhere)
  pack._array.cache_clear()  # really read the file here
  try:
    for split, (images, *_) in SPLITS.items():
      assert len(data.load("omniglot", split)) == images
    assert data.load_omniglot_runs().answers.shape == (20, 20)
  finally:
    pack._array.cache_clear()  # nothing read under the patches outlives the test
  assert opened and set(opened) == {pathlib.Path(data.omniglot_pack_file()).resolve()}


def test_other_sizes_and_splits_say_how_to_get_the_archives():
  for call, archive in [
    (lambda: data.load("omniglot", "train", image_size=105), "images_background.zip"),
    (lambda: data.load_omniglot(split="test", image_size=105), "images_evaluation.zip"),
    (
      lambda: data.load_omniglot_pack("small1", image_size=32),
      "images_background_small1.zip",
    ),
    (
      lambda: data.load_omniglot_runs(image_size=64),
      "one-shot-classification/all_runs.zip",
    ),
  ]:
    with pytest.raises(ValueError, match="image_size=") as error:
      call()
    message = str(error.value)
    assert "path=" in message and "28 x 28" in message
    assert archives._OMNIGLOT_URL + archive in message
  with pytest.raises(ValueError, match=r"'train\[:80%\]'.*data_dir="):
    data.load("omniglot", "train[:80%]")


def test_data_dir_and_download_still_go_to_tfds(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(tfds_data, "load_tfds", lambda *a, **k: calls.append((a, k)))
  data.load("omniglot", "train", data_dir=tmp_path)
  data.load("omniglot", "test", download=True)
  data.load("omniglot", "small1", data_dir=tmp_path, image_size=105)
  assert [(a, k["data_dir"], k["group_key"]) for a, k in calls] == [
    (("omniglot", "train"), tmp_path, "alphabet"),
    (("omniglot", "test"), None, "alphabet"),
    (("omniglot", "small1"), tmp_path, "alphabet"),
  ]


def test_pack_equals_the_archive_path_on_a_sample(sample, tmp_path):
  # The archive path with image_size=28 (the loaders the pack is built from) against
  # the pack, on the sample's alphabets: images 8-bit, no quantisation, so exactly.
  # Characters: Latin 26, Early_Aramaic 22 (small1 only), Tagalog 17 (small2 only),
  # Blackfoot 14 (neither), Angelic 20; 20 images each.
  for split, alphabets, count in [
    ("background", SAMPLE_BACKGROUND, (26 + 22 + 17 + 14) * 20),
    ("small1", SAMPLE_BACKGROUND, (26 + 22) * 20),
    ("small2", SAMPLE_BACKGROUND, (26 + 17) * 20),
    ("evaluation", SAMPLE_EVALUATION, 20 * 20),
  ]:
    archive = data.load("omniglot", split, path=sample, image_size=28, cache=False)
    bundled = data.load("omniglot", split)
    rows = np.isin(bundled.groups, _alphabet_ids(alphabets))
    assert len(archive) == rows.sum() == count
    _assert_same(archive, bundled.take(rows))
  runs = data.load_omniglot_runs(sample, image_size=28)
  bundled = data.load_omniglot_runs()
  for field in ("train_images", "test_images", "answers"):
    a, b = getattr(runs, field), getattr(bundled, field)
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b, err_msg=field)


def test_committed_pack_equals_the_script_output_on_a_sample(built, committed):
  assert set(built) == set(committed)
  for split, alphabets in [
    ("background", SAMPLE_BACKGROUND),
    ("evaluation", SAMPLE_EVALUATION),
  ]:
    rows = np.isin(committed[f"{split}_groups"], _alphabet_ids(alphabets))
    for field in ("images", "labels", "groups", "alphabet_char_id", "drawer"):
      key = f"{split}_{field}"
      assert built[key].dtype == committed[key].dtype, key
      np.testing.assert_array_equal(built[key], committed[key][rows], err_msg=key)
  # small1 / small2 are index arrays into background: compare what they point at.
  keys = ("labels", "drawer", "images")
  sample_rows = np.isin(
    committed["background_groups"], _alphabet_ids(SAMPLE_BACKGROUND)
  )
  for split in ("small1", "small2"):
    index = committed[f"{split}_index"]
    index = index[sample_rows[index]]
    for field in keys:
      np.testing.assert_array_equal(
        built[f"background_{field}"][built[f"{split}_index"]],
        committed[f"background_{field}"][index],
      )
  for key in ("runs_train_images", "runs_test_images", "runs_answers", "pack_version"):
    np.testing.assert_array_equal(built[key], committed[key], err_msg=key)
  np.testing.assert_array_equal(built["source_files"], committed["source_files"])


def test_committed_pack_is_the_scripts_own_bytes(script, committed):
  # Written again by the script's writer, the committed arrays give the committed file
  # byte for byte (fixed order, timestamps and attributes), and read back without
  # pickles.
  raw = data.omniglot_pack_file().read_bytes()
  assert len(raw) <= 8_000_000
  assert script.npz_bytes(committed) == raw
  with zipfile.ZipFile(io.BytesIO(raw)) as zf:
    assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert [n.removesuffix(".npy") for n in zf.namelist()] == list(committed)
  # The pack names its sources: the sha256 of the archives in ../shared/data.
  assert committed["source_sha256"][0].startswith("bc689cc78d41c4cb")


def test_a_damaged_pack_is_named(tmp_path, monkeypatch):
  """Bytes of the pack overwritten: a ValueError that names the file, not a number."""
  damaged = tmp_path / "omniglot28.npz"
  raw = bytearray(pack.omniglot_pack_file().read_bytes())
  raw[len(raw) // 2 : len(raw) // 2 + 4096] = b"\x00" * 4096
  damaged.write_bytes(bytes(raw))
  monkeypatch.setattr(pack, "omniglot_pack_file", lambda: damaged)
  pack._array.cache_clear()
  pack._verified.cache_clear()
  try:
    with pytest.raises(ValueError, match="omniglot28.npz is damaged"):
      pack.load_omniglot_pack("evaluation")
  finally:
    pack._array.cache_clear()
    pack._verified.cache_clear()

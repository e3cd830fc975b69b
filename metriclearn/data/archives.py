"""The archives users download, read directly: Omniglot's zips, MNIST's idx files.

No TensorFlow is needed (TFDS's own builders for these datasets extract with
``tf.io.gfile``, and refuse archives whose checksums differ from the originals).

Omniglot (Lake et al. 2015), from github.com/brendenlake/omniglot (``python/``):

- ``images_background.zip`` (30 alphabets, 964 characters, 19,280 images),
  ``images_evaluation.zip`` (20 alphabets, 659 characters, 13,180 images) and the
  subsets ``images_background_small1.zip`` / ``..._small2.zip``. Layout:
  ``images_<split>/<Alphabet>/characterNN/<id>_<drawer>.png``, 105 x 105, 1-bit.
- ``all_runs.zip`` (``python/one-shot-classification/``): the 20 official 20-way
  one-shot runs, ``runNN/training/classCC.png``, ``runNN/test/itemTT.png`` and the
  answer key ``runNN/class_labels.txt`` (lines ``runNN/test/itemTT.png
  runNN/training/classCC.png``).

Without a ``path``, both loaders read the bundled 28 x 28 pack
(:mod:`metriclearn.data.pack`), which holds exactly what they give here with
``image_size=28``.

Labels follow TFDS's ``omniglot``: ``label = id - 1`` where ``id`` (0001-1623) is Lake's
global character number in the file name (background 0..963, evaluation 964..1622);
``groups`` is TFDS's ``alphabet`` (the index of the alphabet among the 50 names sorted);
``meta["alphabet_char_id"]`` is ``NN - 1``; ``meta["drawer"]`` is the ``_<drawer>``
number. Images are inverted to ``ink = 255`` on a ``0`` background, so that zero
padding (crops, affine warps) adds background; TFDS's builder keeps the file's
polarity (background 255, three channels).

MNIST (LeCun et al. 1998): ``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
``t10k-labels-idx1-ubyte.gz`` (gunzipped copies, without ``.gz``, are read too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import os
import pathlib
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from metriclearn.data.dataset import (
  ImageDataset,
  as_dataset,
  cache_path,
  load_cached,
  resize_images,
  save_cached,
)

__all__ = [
  "OMNIGLOT_ALPHABETS",
  "OMNIGLOT_ALPHABET_IDS",
  "OMNIGLOT_NUM_CHARACTERS",
  "OMNIGLOT_SPLITS",
  "load_omniglot",
  "OneShotRuns",
  "load_omniglot_runs",
  "load_mnist",
  "load_digits",
]

PathLike = str | os.PathLike

# Lake's alphabets in the order of their global character ids: (name, first id).
# Ids are consecutive inside an alphabet; background is 1-964, evaluation 965-1623.
OMNIGLOT_ALPHABET_IDS = (
  ("Arcadian", 1),
  ("Armenian", 27),
  ("Asomtavruli_(Georgian)", 68),
  ("Balinese", 108),
  ("Bengali", 132),
  ("Blackfoot_(Canadian_Aboriginal_Syllabics)", 178),
  ("Braille", 192),
  ("Cyrillic", 218),
  ("Early_Aramaic", 251),
  ("Syriac_(Estrangelo)", 273),
  ("Anglo-Saxon_Futhorc", 296),
  ("Futurama", 325),
  ("Grantha", 351),
  ("Greek", 394),
  ("Gujarati", 418),
  ("Hebrew", 466),
  ("Japanese_(hiragana)", 488),
  ("Inuktitut_(Canadian_Aboriginal_Syllabics)", 540),
  ("Malay_(Jawi_-_Arabic)", 556),
  ("Japanese_(katakana)", 596),
  ("Korean", 643),
  ("Latin", 683),
  ("Alphabet_of_the_Magi", 709),
  ("Mkhedruli_(Georgian)", 729),
  ("Burmese_(Myanmar)", 770),
  ("N_Ko", 804),
  ("Ojibwe_(Canadian_Aboriginal_Syllabics)", 837),
  ("Sanskrit", 851),
  ("Tagalog", 893),
  ("Tifinagh", 910),
  ("Angelic", 965),
  ("Atemayar_Qelisayer", 985),
  ("Atlantean", 1011),
  ("Aurek-Besh", 1037),
  ("Avesta", 1063),
  ("Ge_ez", 1089),
  ("Glagolitic", 1115),
  ("Gurmukhi", 1160),
  ("Kannada", 1205),
  ("Keble", 1246),
  ("Malayalam", 1272),
  ("Manipuri", 1319),
  ("Mongolian", 1359),
  ("Old_Church_Slavonic_(Cyrillic)", 1389),
  ("Oriya", 1434),
  ("Syriac_(Serto)", 1480),
  ("Sylheti", 1503),
  ("Tengwar", 1531),
  ("Tibetan", 1556),
  ("ULOG", 1598),
)
OMNIGLOT_NUM_CHARACTERS = 1623
# TFDS's alphabet ids: the position in the sorted names.
OMNIGLOT_ALPHABETS = tuple(sorted(name for name, _ in OMNIGLOT_ALPHABET_IDS))
OMNIGLOT_SPLITS = {
  "background": "images_background",
  "train": "images_background",
  "evaluation": "images_evaluation",
  "test": "images_evaluation",
  "small1": "images_background_small1",
  "small2": "images_background_small2",
}
_OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
_MNIST_FILES = {"train": "train", "test": "t10k"}
_PNG = re.compile(r"(?:.*/)?([^/]+)/character(\d+)/(\d+)_(\d+)\.png")


def _omniglot_tables() -> tuple[dict[str, tuple[int, int]], tuple[str, ...]]:
  """alphabet -> (first id, last id), and the TFDS label names indexed by label."""
  firsts = [first for _, first in OMNIGLOT_ALPHABET_IDS]
  ends = [*firsts[1:], OMNIGLOT_NUM_CHARACTERS + 1]
  ranges = {
    name: (first, end - 1)
    for (name, first), end in zip(OMNIGLOT_ALPHABET_IDS, ends, strict=True)
  }
  names = tuple(
    f"{name}_{i - first}"
    for name, (first, last) in ranges.items()
    for i in range(first, last + 1)
  )
  return ranges, names


_ALPHABET_RANGES, OMNIGLOT_CLASS_NAMES = _omniglot_tables()


def _archive(path: PathLike, stem: str, what: str, url: str) -> pathlib.Path:
  """``path`` itself if it is ``stem.zip`` or ``stem/``, else ``path/stem.zip`` or
  ``path/stem/``; a missing archive raises naming the file and where to get it."""
  path = pathlib.Path(path).expanduser()
  if path.name in (f"{stem}.zip", stem) and path.exists():
    return path
  for candidate in (path / f"{stem}.zip", path / stem):
    if candidate.exists():
      return candidate
  raise FileNotFoundError(
    f"{what}: {path / (stem + '.zip')} does not exist (nor an extracted folder "
    f"{path / stem}). Download it from {url} into {path}."
  )


@contextlib.contextmanager
def _members(
  archive: pathlib.Path,
) -> Iterator[tuple[list[str], Callable[[str], bytes]]]:
  """The file names in a zip (or an extracted folder) and a function reading one."""
  if archive.is_dir():
    names = sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*"))
    yield names, lambda name: (archive / name).read_bytes()
    return
  try:
    zf = zipfile.ZipFile(archive)
  except (zipfile.BadZipFile, OSError) as e:
    raise ValueError(
      f"{archive} is not a readable zip archive (corrupt or truncated?): {e}. "
      "Download it again."
    ) from e
  with zf:
    yield zf.namelist(), zf.read


def _read_png(read: Callable[[str], bytes], name: str, archive: pathlib.Path):
  """One PNG as an ink mask (True = ink, i.e. the dark pixels of the file)."""
  try:
    image = Image.open(io.BytesIO(read(name)))
    pixels = np.asarray(image)
    if pixels.dtype == bool:
      return ~pixels
    return np.asarray(image.convert("L")) < 128
  except (zipfile.BadZipFile, zlib.error, OSError, ValueError) as e:
    raise ValueError(f"{archive}: cannot decode {name}: {e}") from e


def _ink_to_uint8(masks: list[np.ndarray]) -> np.ndarray:
  if not masks:
    return np.zeros((0, 105, 105, 1), np.uint8)
  return (np.stack(masks)[..., None].astype(np.uint8)) * np.uint8(255)


def _decode_omniglot(archive: pathlib.Path) -> dict[str, np.ndarray]:
  with _members(archive) as (names, read):
    return _decode_omniglot_members(archive, names, read)


def _decode_omniglot_members(archive, names, read) -> dict[str, np.ndarray]:
  entries = []
  for name in names:
    if not name.endswith(".png"):
      continue
    m = _PNG.fullmatch(name)
    if m is None:
      raise ValueError(
        f"{archive}: unexpected file {name} (not <Alphabet>/characterNN/"
        "<id>_<drawer>.png)."
      )
    alphabet, nn, char_id, drawer = m[1], int(m[2]), int(m[3]), int(m[4])
    first, last = _ALPHABET_RANGES.get(alphabet, (None, None))
    if first is None or char_id != first + nn - 1:
      raise ValueError(
        f"{archive}: {name} does not follow Lake's numbering (unknown alphabet "
        f"{alphabet!r}, or id {char_id} != first id of the alphabet + NN - 1)."
      )
    entries.append((char_id - 1, drawer, alphabet, nn - 1, name))
  if not entries:
    raise ValueError(f"{archive} holds no Omniglot PNG (<Alphabet>/characterNN/*.png).")
  entries.sort()
  return {
    "images": _ink_to_uint8([_read_png(read, e[-1], archive) for e in entries]),
    "labels": np.array([e[0] for e in entries], np.int32),
    "groups": np.array([OMNIGLOT_ALPHABETS.index(e[2]) for e in entries], np.int32),
    "meta_alphabet_char_id": np.array([e[3] for e in entries], np.int32),
    "meta_drawer": np.array([e[1] for e in entries], np.int32),
  }


def _cached(
  archive: pathlib.Path,
  variant: str,
  decode: Callable[[], dict[str, np.ndarray]],
  cache: bool,
  cache_dir: PathLike | None,
) -> dict[str, np.ndarray]:
  if not cache or archive.is_dir():
    return decode()
  where = cache_path(archive, variant, cache_dir)
  arrays = load_cached(where)
  if arrays is None:
    arrays = decode()
    save_cached(where, arrays)
  return arrays


def load_omniglot(
  path: PathLike | None = None,
  split: str = "background",
  *,
  image_size: int | None = None,
  cache: bool = True,
  cache_dir: PathLike | None = None,
) -> ImageDataset:
  """Omniglot from Lake's zips: images, character labels, alphabets, drawers.

  Args:
    path: the folder holding ``images_<split>.zip`` (or the extracted
      ``images_<split>/`` folder), or that zip itself. None (the default) reads the
      bundled 28 x 28 pack instead (:func:`metriclearn.data.load_omniglot_pack`: no
      files needed; then ``image_size`` must be None or 28, and the cache is unused).
    split: ``"background"`` (alias ``"train"``), ``"evaluation"`` (alias ``"test"``),
      ``"small1"`` or ``"small2"``.
    image_size: resize to ``image_size x image_size`` on load (Lanczos; 28 is common
      in the few-shot literature); None keeps 105 (the pack's 28 without ``path``).
    cache: keep the decoded arrays in ``cache_dir`` so the next load takes a fraction
      of a second (the key includes the zip's path, size and modification time; an
      extracted folder is decoded each time).
    cache_dir: default :func:`metriclearn.data.default_cache_dir`.

  Returns:
    An :class:`ImageDataset`: ``images`` uint8 ``[n, s, s, 1]`` (ink 255, background
    0), ``labels`` = global character id - 1, ``groups`` = alphabet id (an index into
    ``OMNIGLOT_ALPHABETS``), ``meta`` ``alphabet_char_id`` and ``drawer``; ordered by
    label, then drawer.

  >>> ds = load_omniglot("shared/data/omniglot", image_size=28)  # doctest: +SKIP
  >>> len(ds), ds.num_classes, np.unique(ds.groups).size  # doctest: +SKIP
  (19280, 964, 30)
  >>> load_omniglot(split="small1").images.shape  # the bundled pack
  (2720, 28, 28, 1)

  References:
    Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through
    probabilistic program induction", Science 2015.
  """
  if path is None:
    from metriclearn.data import pack

    return pack.load_omniglot_pack(split, image_size=image_size)
  if split not in OMNIGLOT_SPLITS:
    raise ValueError(
      f"unknown Omniglot split {split!r}; expected one of {sorted(OMNIGLOT_SPLITS)}."
    )
  stem = OMNIGLOT_SPLITS[split]
  archive = _archive(path, stem, f"Omniglot {split!r}", _OMNIGLOT_URL + stem + ".zip")
  variant = f"{image_size or 105}px"

  def decode():
    if image_size is None:
      return _decode_omniglot(archive)
    # Resize the full-size images, themselves decoded once and cached.
    full = load_omniglot(archive, split, cache=cache, cache_dir=cache_dir)
    arrays = {"labels": full.labels, "groups": full.groups}
    arrays.update({f"meta_{k}": v for k, v in full.meta.items()})
    arrays["images"] = resize_images(full.images, image_size)
    return arrays

  arrays = _cached(archive, variant, decode, cache, cache_dir)
  return as_dataset(
    arrays,
    class_names=OMNIGLOT_CLASS_NAMES,
    group_names=OMNIGLOT_ALPHABETS,
    name=f"omniglot/{stem.removeprefix('images_')}",
  )


@dataclasses.dataclass(frozen=True, eq=False)
class OneShotRuns:
  """Lake's official one-shot runs (``all_runs.zip``), stacked over runs.

  Attributes:
    train_images: uint8 [runs, ways, s, s, 1], ``runNN/training/classCC.png`` in
      class order (one image of each of ``ways`` characters).
    test_images: uint8 [runs, items, s, s, 1], ``runNN/test/itemTT.png`` in order.
    answers: int32 [runs, items], the 0-based class ``CC - 1`` of each test item, from
      ``runNN/class_labels.txt``.
  """

  train_images: np.ndarray
  test_images: np.ndarray
  answers: np.ndarray


def _run_index(name: str, kind: str) -> tuple[int, int]:
  m = re.fullmatch(rf"run(\d+)/{kind}(\d+)\.png", name)
  if m is None:
    raise ValueError(f"unexpected entry {name!r}")
  return int(m[1]) - 1, int(m[2]) - 1


def load_omniglot_runs(
  path: PathLike | None = None, *, image_size: int | None = None
) -> OneShotRuns:
  """The 20 official Omniglot one-shot runs with their answer key.

  Each run is a 20-way within-alphabet task on evaluation characters: one training
  image per class, 20 test images, and the class of each test image.

  Args:
    path: the folder holding ``all_runs.zip`` (or the extracted ``all_runs/``), or the
      zip itself. None (the default) reads the bundled 28 x 28 pack
      (:func:`metriclearn.data.load_omniglot_pack_runs`; ``image_size`` None or 28).
    image_size: resize as in :func:`load_omniglot`; None keeps 105 (the pack's 28
      without ``path``).

  Returns:
    :class:`OneShotRuns` (images ink 255 on 0, like :func:`load_omniglot`).

  >>> runs = load_omniglot_runs("shared/data/omniglot")  # doctest: +SKIP
  >>> runs.train_images.shape, runs.answers[0, :3].tolist()  # doctest: +SKIP
  ((20, 20, 105, 105, 1), [7, 8, 1])
  """
  if path is None:
    from metriclearn.data import pack

    return pack.load_omniglot_pack_runs(image_size=image_size)
  url = _OMNIGLOT_URL + "one-shot-classification/all_runs.zip"
  archive = _archive(path, "all_runs", "Omniglot one-shot runs", url)
  with _members(archive) as (names, read):
    # The runs' files, as runNN/... (a zip made from a folder may add all_runs/).
    prefix = "all_runs/" if all(n.startswith("all_runs/") for n in names) else ""
    files = lambda r, kind, i: f"{prefix}run{r + 1:02d}/{kind}{i + 1:02d}.png"
    pngs = [n.removeprefix(prefix) for n in names if n.endswith(".png")]
    try:
      train = {_run_index(n, "training/class") for n in pngs if "/training/" in n}
      test = {_run_index(n, "test/item") for n in pngs if "/test/" in n}
    except ValueError as e:
      raise ValueError(f"{archive}: {e} (expected runNN/training/classCC.png).") from e
    runs = len({r for r, _ in train})
    ways, items = len(train) // max(runs, 1), len(test) // max(runs, 1)
    grid = lambda count: {(r, i) for r in range(runs) for i in range(count)}
    if runs == 0 or train != grid(ways) or test != grid(items):
      raise ValueError(f"{archive}: the runs are incomplete or missing.")
    answers = np.full((runs, items), -1, np.int32)
    for r in range(runs):
      key = f"{prefix}run{r + 1:02d}/class_labels.txt"
      try:
        words = read(key).decode().split()
      except (KeyError, FileNotFoundError) as e:
        raise ValueError(f"{archive}: the answer key {key} is missing.") from e
      for test_name, train_name in zip(words[::2], words[1::2], strict=True):
        rt, t = _run_index(test_name.removeprefix(prefix), "test/item")
        rc, c = _run_index(train_name.removeprefix(prefix), "training/class")
        if rt != r or rc != r or not (0 <= t < items and 0 <= c < ways):
          raise ValueError(f"{archive}: bad line in {key}: {test_name} {train_name}")
        answers[r, t] = c
    if np.any(answers < 0):
      raise ValueError(f"{archive}: an answer key does not cover every test item.")

    def images(kind: str, count: int) -> np.ndarray:
      masks = [
        _read_png(read, files(r, kind, i), archive)
        for r in range(runs)
        for i in range(count)
      ]
      out = _ink_to_uint8(masks)
      if image_size is not None:
        out = resize_images(out, image_size)
      return out.reshape(runs, count, *out.shape[1:])

    return OneShotRuns(
      images("training/class", ways), images("test/item", items), answers
    )


def _idx_file(folder: pathlib.Path, stem: str) -> pathlib.Path:
  for candidate in (folder / f"{stem}.gz", folder / stem):
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(
    f"MNIST: {folder / (stem + '.gz')} does not exist. Download LeCun's idx files "
    f"(e.g. https://storage.googleapis.com/cvdf-datasets/mnist/{stem}.gz) into "
    f"{folder}."
  )


def _read_idx(file: pathlib.Path, magic: int) -> np.ndarray:
  """An idx array (big-endian header: magic, then one int32 per dimension)."""
  opener = gzip.open if file.suffix == ".gz" else open
  try:
    with opener(file, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise ValueError(f"{file} is not a readable (gzip) idx file: {e}") from e
  ndim = magic & 0xFF
  header: np.ndarray | list[int]
  header = np.frombuffer(raw[: 4 + 4 * ndim], ">i4") if len(raw) >= 4 else []
  shape = tuple(int(s) for s in header[1:])
  if len(header) != 1 + ndim or header[0] != magic:
    raise ValueError(f"{file}: not an idx file with magic number {magic}.")
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise ValueError(
      f"{file}: the header says {shape} but {data.size} bytes follow (truncated?)."
    )
  return data.reshape(shape)


def load_mnist(path: PathLike, split: str = "train") -> ImageDataset:
  """MNIST from LeCun's idx files.

  Args:
    path: the folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
    split: ``"train"`` (60,000 images) or ``"test"`` (10,000).

  Returns:
    An :class:`ImageDataset`: ``images`` uint8 ``[n, 28, 28, 1]`` (ink 255, as in the
    files), ``labels`` 0-9.

  >>> load_mnist("shared/data/mnist", "test").images.shape  # doctest: +SKIP
  (10000, 28, 28, 1)

  References:
    LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document
    recognition", Proc. IEEE 1998.
  """
  if split not in _MNIST_FILES:
    raise ValueError(f"unknown MNIST split {split!r}; expected 'train' or 'test'.")
  folder = pathlib.Path(path).expanduser()
  prefix = _MNIST_FILES[split]
  image_file = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
  label_file = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
  images = _read_idx(image_file, 2051)
  labels = _read_idx(label_file, 2049)
  if labels.shape[0] != images.shape[0]:
    raise ValueError(
      f"{image_file} holds {images.shape[0]} images but {label_file} holds "
      f"{labels.shape[0]} labels."
    )
  if labels.size and labels.max() > 9:
    bad = int(np.sum(labels > 9))
    raise ValueError(
      f"{label_file}: MNIST labels are 0-9, but {bad} label(s) are larger (up to "
      f"{int(labels.max())}); the file is damaged or not MNIST's."
    )
  return ImageDataset(
    images[..., None],
    labels.astype(np.int32),
    class_names=tuple(str(d) for d in range(10)),
    name=f"mnist/{split}",
  )


def load_digits() -> ImageDataset:
  """scikit-learn's bundled 8 x 8 digits (1,797 images, 10 classes): no download.

  The 17 grey levels (0-16) are scaled to uint8 ``round(v * 255 / 16)``.

  >>> ds = load_digits()
  >>> ds.images.shape, ds.images.dtype, ds.num_classes
  ((1797, 8, 8, 1), dtype('uint8'), 10)
  """
  from sklearn.datasets import load_digits as sklearn_digits

  bunch = sklearn_digits()
  images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return ImageDataset(
    images,
    bunch.target.astype(np.int32),
    class_names=tuple(str(d) for d in range(10)),
    name="digits",
  )

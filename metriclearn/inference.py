"""Keep a trained encoder and search what it embeds: export / load, and an exact index.

The end of a user's journey: :func:`export_encoder` writes a trained encoder to a folder
(its parameters and batch statistics, never the optimizer state, and what rebuilds it);
:func:`load_encoder` reads it back in any process, with nothing but the folder, and
returns a :class:`LoadedEncoder` whose ``embed`` turns raw images into embeddings.
An :class:`Index` holds a gallery of embeddings with optional ids and labels, finds the
exact k nearest of new queries (``search``), accepts or rejects them against a distance
threshold (``match``), and saves and loads itself; :func:`calibrate_threshold` picks
that threshold from held-out pairs for a target false-accept rate::

  export_encoder("run/encoder", model, state, input_shape=(28, 28, 1))  # uint8 images
  encoder = load_encoder("run/encoder")           # in a new process, no config needed
  index = Index(encoder.embed(gallery_images), labels=gallery_labels)
  distances, ids = index.search(encoder.embed(query_images), k=5)
  threshold = calibrate_threshold(pair_distances(e1, e2), similar, far=1e-3)
  index.match(encoder.embed(query_images), threshold).matched

>>> index = Index(np.array([[0.0, 0.0], [3.0, 4.0]]), ids=["origin", "far"])
>>> distances, ids = index.search(np.array([[0.0, 1.0]]), k=2)
>>> distances.tolist(), ids.tolist()
([[1.0, 4.242640495300293]], [['origin', 'far']])

**Folders.** An encoder is exported as ``variables.npz`` and ``manifest.json`` (see
:func:`export_encoder`), an index saved as ``index.npz`` and ``manifest.json`` (see
:meth:`Index.save`). Loading runs nothing: there is no pickle and no code in a folder,
a class name is looked up in the fixed :data:`MODULES` (an unknown name is an error,
never an import) and a preprocessing step in the fixed :data:`PREPROCESSING`. Every
file is checked against its SHA-256 in the manifest before it is used, and the arrays
against the rebuilt model; a damaged, truncated or edited file raises
:class:`InvalidExportError` naming it. The checksums detect damage and edits, not a
deliberate forgery: safety against a stranger's folder comes from there being nothing
in it that can run.
"""

from __future__ import annotations

import functools
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metriclearn import _files, data, distances, evaluation, models

__all__ = [
  "CANDIDATE_MARGIN",
  "DISTANCES",
  "MODULES",
  "PREPROCESSING",
  "Index",
  "InvalidExportError",
  "LoadedEncoder",
  "Match",
  "calibrate_threshold",
  "export_encoder",
  "load_encoder",
  "pair_distances",
]

ENCODER_FOLDER = _files.Format("metriclearn.encoder", 1, "variables.npz")
INDEX_FOLDER = _files.Format("metriclearn.index", 1, "index.npz")

#: The modules an exported description may name; anything else needs ``model=``.
MODULES: tuple[str, ...] = tuple(models.REGISTRY)
#: The preprocessing steps an export may list, applied in order inside the jitted call:
#: ``"to_float"`` (integer images to float32 in [0, 1], dividing by the dtype's
#: maximum, as :func:`metriclearn.data.to_float`; floats are cast to float32),
#: ``{"op": "cast", "dtype": "float32"}`` (a cast, no scaling) and
#: ``{"op": "standardize", "mean": m, "std": s}`` (``(x - m) / s`` in float32; ``m``
#: and ``s`` numbers or per-channel lists, broadcast over the last axis).
PREPROCESSING: tuple[str, ...] = ("to_float", "cast", "standardize")
#: The distances an :class:`Index` searches by.
DISTANCES: tuple[str, ...] = ("euclidean", "cosine")
#: Extra candidates :meth:`Index.search` takes from the matrix-product ranking and
#: re-ranks by directly computed distances.
CANDIDATE_MARGIN = 8

#: The dtypes ``embed`` takes: those a folder holds but uint64, bfloat16 and str.
_INPUT_DTYPES = tuple(
  d for d in _files.DTYPES if d not in ("uint64", "bfloat16", "str")
)

#: A file of an exported encoder or index that cannot be used (damaged, modified,
#: truncated, or describing something this version cannot rebuild); ``path`` names it.
InvalidExportError = _files.FileCheckError


def _json_metadata(metadata: Any) -> Any:
  try:
    return json.loads(json.dumps(metadata, allow_nan=False))
  except (TypeError, ValueError) as e:
    raise ValueError(f"metadata must be plain JSON (finite numbers), got: {e}") from e


def _written_by() -> dict[str, str]:
  return {"jax": jax.__version__, "flax": flax.__version__, "numpy": np.__version__}


def _build(description: Any, file: os.PathLike | str) -> nn.Module | nnx.Module:
  """:func:`metriclearn.models.build`, its ``ValueError`` naming ``file``."""
  try:
    return models.build(description)
  except ValueError as e:
    raise InvalidExportError(
      file, f"{e} For a model of your own, pass load_encoder(path, model=...)."
    ) from e


# ----------------------------------------------------------------------------------
# Preprocessing: a fixed vocabulary of steps.


def _number_or_list(value: Any, name: str, positive: bool = False) -> Any:
  items = value if isinstance(value, list | tuple) else [value]
  ok = bool(items) and all(
    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    for v in items
  )
  if not ok or (positive and not all(v > 0 for v in items)):
    what = "positive " if positive else ""
    raise ValueError(f"{name} must be a finite {what}number or a list of them.")
  return [float(v) for v in items] if isinstance(value, list | tuple) else float(value)


def _check_steps(preprocessing: Any) -> list[dict[str, Any]]:
  """Steps as JSON objects; raises ValueError for anything outside the vocabulary."""
  if isinstance(preprocessing, str | Mapping):
    preprocessing = [preprocessing]
  if not isinstance(preprocessing, Sequence):
    raise ValueError(
      f"preprocessing must be a list of steps from {PREPROCESSING}, got "
      f"{preprocessing!r}."
    )
  steps = []
  for step in preprocessing:
    step = {"op": step} if isinstance(step, str) else dict(step)
    op: Any = step.get("op")  # any JSON value: checked below
    allowed = {"to_float": {"op"}, "cast": {"op", "dtype"}}.get(
      op, {"op", "mean", "std"}
    )
    if op not in PREPROCESSING or set(step) != allowed:
      raise ValueError(
        f"preprocessing step {step!r} is not one of {PREPROCESSING} with its "
        "arguments (to_float; cast with dtype; standardize with mean and std)."
      )
    if op == "cast" and step["dtype"] not in models.FLOAT_DTYPES:
      raise ValueError(f"cast dtype must be one of {models.FLOAT_DTYPES}, got {step}.")
    if op == "standardize":
      step["mean"] = _number_or_list(step["mean"], "standardize mean")
      step["std"] = _number_or_list(step["std"], "standardize std", positive=True)
    steps.append(step)
  return steps


def _preprocess(x: jax.Array, steps: Sequence[Mapping[str, Any]]) -> jax.Array:
  for step in steps:
    if step["op"] == "to_float":
      x = data.to_float(x)
    elif step["op"] == "cast":
      x = x.astype(jnp.dtype(step["dtype"]))
    else:  # standardize
      if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
      mean = jnp.asarray(step["mean"], x.dtype)
      std = jnp.asarray(step["std"], x.dtype)
      x = (x - mean) / std
  return x


# ----------------------------------------------------------------------------------
# Export and load.


def _input_spec(input_shape: Any, input_dtype: Any) -> tuple[tuple[int, ...], str]:
  try:
    shape = tuple(int(s) for s in input_shape)
  except TypeError:
    raise ValueError(
      f"input_shape must be one example's shape, e.g. (28, 28, 1), got {input_shape!r}."
    ) from None
  if not shape or any(s < 1 for s in shape):
    raise ValueError(
      f"input_shape must be one example's shape (positive sizes, no batch axis), got "
      f"{input_shape!r}."
    )
  dtype = np.dtype(input_dtype).name
  if dtype not in _INPUT_DTYPES:
    raise ValueError(f"input_dtype must be one of {_INPUT_DTYPES}, got {input_dtype}.")
  return shape, dtype


def _abstract(model: Any, shape, dtype, steps) -> tuple[Any, Any]:
  """Shapes of the variables ``model.init`` makes, and of the output on one example."""
  model = models.as_linen(model)  # an NNX module through the Linen convention
  x = jax.ShapeDtypeStruct((1, *shape), np.dtype(dtype))
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}

  def init(x):
    return model.init(rngs, _preprocess(x, steps), train=False)

  def apply(variables, x):
    return model.apply(variables, _preprocess(x, steps), train=False)

  variables = jax.eval_shape(init, x)
  out = jax.eval_shape(apply, variables, x)
  return variables, out


def export_encoder(
  path: os.PathLike | str,
  model: nn.Module | nnx.Module,
  variables: Any = None,
  *,
  input_shape: Sequence[int],
  input_dtype: Any = "uint8",
  preprocessing: Any = ("to_float",),
  metadata: Any = None,
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes an encoder to a folder that :func:`load_encoder` reads in any process.

  The folder holds ``variables.npz`` (one array per variable, named by its flattened
  path; ``bfloat16`` stored as its ``uint16`` bits) and ``manifest.json``, with keys
  ``format`` (``"metriclearn.encoder"``), ``format_version``, ``metriclearn_version``,
  ``libraries`` (the jax, flax and numpy versions, for information), ``model``
  (:func:`metriclearn.models.describe`'s description, or null), ``model_class`` (the
  module's qualified name, for messages only: never imported), ``input`` (``{"shape":
  [h, w, c], "dtype": "uint8"}``), ``preprocessing`` (the steps), ``output``
  (``{"shape": [d], "dtype": "float32"}``), ``metadata``, ``arrays`` (name -> shape and
  dtype), ``files`` (the SHA-256 and size of ``variables.npz``) and ``manifest_sha256``
  (the SHA-256 of the rest of the manifest as ``json.dumps(m, sort_keys=True,
  separators=(",", ":"), ensure_ascii=False)`` in UTF-8). Never the optimizer state,
  no pickle, no code.

  A model built from :data:`MODULES` (e.g. ``Encoder(ConvEncoder(),
  EmbeddingHead(64))``) is described in the manifest and rebuilt from it; any other
  Flax Linen module (called as ``model.apply(variables, x, train=False)``) or
  ``flax.nnx.Module`` (``model(x)`` in ``eval()`` mode; its ``params`` and
  ``batch_stats`` as ``metriclearn.models.as_linen`` names them) is exported too, and
  loaded with ``load_encoder(path, model=...)``. Before writing, the variables
  are checked against ``model.init`` on one example of ``input_shape`` and the output
  must be ``[n, d]``.

  Args:
    path: the folder (created if needed).
    model: the encoder module.
    variables: its variables (``{"params": ..., "batch_stats": ...}``) or a
      ``metriclearn.training.TrainState`` (only ``params`` and ``batch_stats`` are
      taken); None for an NNX module's own.
    input_shape: one example's shape as ``embed`` will receive it, e.g. ``(28, 28, 1)``.
    input_dtype: the dtype ``embed`` receives (default ``uint8``, as metriclearn's
      datasets). Integer images must come in exactly this dtype; floating ones are
      cast to it.
    preprocessing: steps from :data:`PREPROCESSING` applied before the model, in
      order; the default ``("to_float",)`` is what ``metriclearn.data.to_float`` does
      in training (uint8 -> float32 / 255). ``()`` for none.
    metadata: any JSON-serialisable value stored as is (e.g. the run's config).
    overwrite: replace an existing export in ``path``.

  Returns:
    The folder's path.

  >>> import tempfile
  >>> model = models.Encoder(models.MLPEncoder(hidden=(8,)), models.EmbeddingHead(4))
  >>> variables = model.init(jax.random.key(0), np.zeros((1, 6), np.float32))
  >>> with tempfile.TemporaryDirectory() as tmp:
  ...   folder = export_encoder(
  ...     f"{tmp}/encoder", model, variables, input_shape=(6,),
  ...     input_dtype="float32", preprocessing=())
  ...   encoder = load_encoder(folder)  # in any process: the folder is all it needs
  >>> encoder.embed(np.ones((3, 6), np.float32)).shape
  (3, 4)
  """
  variables = models.as_variables(variables, model)
  shape, dtype = _input_spec(input_shape, input_dtype)
  steps = _check_steps(preprocessing)
  flat = {
    k: np.asarray(jax.device_get(v)) for k, v in _files.flatten(variables).items()
  }
  for name, array in flat.items():
    if array.dtype.kind not in "biuf" and array.dtype != jnp.bfloat16:
      raise TypeError(f"variable {name} has dtype {array.dtype}, not a number type.")
  abstract, out = _abstract(model, shape, dtype, steps)
  _files.check_shapes(flat, abstract, "variables", ValueError)
  if len(out.shape) != 2 or not jnp.issubdtype(out.dtype, jnp.floating):
    raise ValueError(
      f"the model must return [n, d] float embeddings, it returns {out.dtype} "
      f"{tuple(out.shape)} for one example of shape {shape}."
    )
  cls, description = type(model), models.describe(model)
  if description is not None:  # the description must rebuild the same model
    rebuilt = _build(description, pathlib.Path(path) / _files.MANIFEST)
    if models.describe(rebuilt) != description:
      raise RuntimeError(f"{cls.__name__} does not rebuild from {description}.")
  manifest = {
    "libraries": _written_by(),
    "model": description,
    "model_class": f"{cls.__module__}.{cls.__qualname__}",
    "input": {"shape": list(shape), "dtype": dtype},
    "preprocessing": steps,
    "output": {"shape": [int(out.shape[1])], "dtype": "float32"},
    "metadata": _json_metadata(metadata),
  }
  return _files.write_folder(path, ENCODER_FOLDER, manifest, flat, overwrite=overwrite)


def _bucket(n: int, block: int) -> int:
  """Rows are padded to this many: a power of two up to a block, then blocks."""
  if n <= block:
    return min(block, 1 << (n - 1).bit_length())
  return -(-n // block) * block


class LoadedEncoder:
  """An encoder read back from a folder; made by :func:`load_encoder`.

  Attributes:
    model: the Flax module (rebuilt from the manifest, or the one given; an NNX
      one is a new module holding the loaded variables, in ``eval()`` mode).
    variables: ``{"params": ..., "batch_stats": ...}`` on the default device.
    manifest: the folder's manifest as a dict.
    embedding_dim: d, the size of an embedding.
    input_shape: one example's shape (without the batch axis).
    input_dtype: the dtype ``embed`` expects (a NumPy dtype name).
    preprocessing: the stored preprocessing steps.
  """

  def __init__(self, model: Any, variables: Any, manifest: Mapping[str, Any]):
    self.model, self.variables = model, jax.device_put(variables)
    if isinstance(model, nnx.Module):
      self.model = models.with_variables(model, self.variables)
      self.model.eval()
    view = models.as_linen(self.model)
    self.manifest = dict(manifest)
    self.input_shape = tuple(manifest["input"]["shape"])
    self.input_dtype = manifest["input"]["dtype"]
    self.preprocessing = [dict(step) for step in manifest["preprocessing"]]
    self.embedding_dim = int(manifest["output"]["shape"][0])
    steps = [dict(step) for step in self.preprocessing]

    def forward(variables, x):
      y = view.apply(variables, _preprocess(x, steps), train=False)
      return y.astype(jnp.float32)

    self._forward = jax.jit(forward)

  def __repr__(self) -> str:
    return (
      f"LoadedEncoder({type(self.model).__name__}, input {self.input_dtype} "
      f"{self.input_shape}, preprocessing {self.preprocessing}, embedding_dim "
      f"{self.embedding_dim})"
    )

  def _check_images(self, images: Any) -> np.ndarray:
    x = np.asarray(images)
    want = np.dtype(self.input_dtype)
    if x.dtype != want:
      if x.dtype.kind != "f" or want.kind != "f":  # only floats are cast
        raise TypeError(
          f"images must be {want} (the encoder's input dtype; preprocessing "
          f"{self.preprocessing}), got {x.dtype}."
        )
      x = x.astype(want)
    if x.ndim == len(self.input_shape) and x.shape[1:] + (1,) == self.input_shape:
      x = x[..., None]  # grayscale [n, h, w] for a [h, w, 1] encoder
    if x.shape[1:] != self.input_shape:
      raise ValueError(
        f"images must be [n, {', '.join(map(str, self.input_shape))}], got shape "
        f"{x.shape}."
      )
    return x

  def embed(self, images: Any, *, batch_size: int = 256) -> np.ndarray:
    """Embeddings of images, computed in jitted batches on the default device.

    The stored preprocessing runs inside the compiled call. When there are more than
    ``batch_size`` images the last batch is padded to ``batch_size`` (one compiled
    shape for the whole array); a smaller call is padded to the next power of two
    (a few compiled shapes for any number of small calls).

    Args:
      images: ``[n, *input_shape]`` of ``input_dtype`` (``[n, h, w]`` is accepted for a
        ``(h, w, 1)`` input).
      batch_size: images per compiled call.

    Returns:
      [n, embedding_dim] float32 NumPy array.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
      raise TypeError(f"batch_size must be an int, got {batch_size!r}.")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    x = self._check_images(images)
    n = len(x)
    if n == 0:
      return np.zeros((0, self.embedding_dim), np.float32)
    size = min(batch_size, _bucket(n, batch_size))
    parts = []
    for start in range(0, n, size):
      chunk = x[start : start + size]
      if len(chunk) < size:
        pad = np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)
        chunk = np.concatenate([chunk, pad])
      parts.append((self._forward(self.variables, chunk), min(size, n - start)))
    return np.concatenate([np.asarray(y)[:m] for y, m in parts])


def load_encoder(
  path: os.PathLike | str, *, model: nn.Module | nnx.Module | None = None
) -> LoadedEncoder:
  """Reads an encoder written by :func:`export_encoder`.

  Every file is checked against its checksum, and the arrays against the variables of
  the rebuilt model; nothing in the folder is executed. Needs no config and nothing
  from the run that made the folder.

  Args:
    path: the export folder.
    model: the module to load the variables into, for a model metriclearn does not
      know (the manifest's ``model`` is null); when given it replaces the stored
      description. An NNX module (e.g. a new instance of the exported class) is not
      changed: the encoder's ``model`` is a copy holding the loaded variables.

  Returns:
    A :class:`LoadedEncoder`.

  Raises:
    InvalidExportError: a file is damaged, modified or does not fit the model; the
      message names it.
    ValueError: the export needs ``model=`` and none was given.
  """
  folder = pathlib.Path(path)
  file = folder / _files.MANIFEST
  manifest = _files.read_manifest(folder, ENCODER_FOLDER)
  required = ("model", "model_class", "input", "preprocessing", "output")
  missing = [key for key in required if key not in manifest]
  if missing:
    raise InvalidExportError(file, f"lacks {missing}.")
  try:
    spec = manifest["input"]
    shape, dtype = _input_spec(spec["shape"], spec["dtype"])
    steps = _check_steps(manifest["preprocessing"])
    out_dim = manifest["output"]["shape"][0]
  except (KeyError, IndexError, TypeError, ValueError) as e:
    raise InvalidExportError(file, f"bad input, output or preprocessing: {e!r}") from e
  if model is None:
    if manifest["model"] is None:
      raise ValueError(
        f"{folder} holds a model metriclearn cannot rebuild by itself "
        f"({manifest['model_class']}); pass load_encoder(path, model=<that module>)."
      )
    model = _build(manifest["model"], file)
  elif not isinstance(model, nn.Module | nnx.Module):
    raise TypeError(f"model must be a Flax Linen or NNX module, got {type(model)}.")
  flat = _files.read_arrays(folder, manifest, ENCODER_FOLDER)
  try:
    abstract, out = _abstract(model, shape, dtype, steps)
  except Exception as e:  # noqa: BLE001 - a model that cannot take the stored input
    raise InvalidExportError(
      file, f"the model cannot be initialised on the stored input {dtype} {shape}: {e}"
    ) from e
  bad = functools.partial(InvalidExportError, folder / ENCODER_FOLDER.array_file)
  _files.check_shapes(flat, abstract, "the arrays", bad)
  if tuple(out.shape) != (1, out_dim):
    raise InvalidExportError(
      file,
      f"output {manifest['output']} does not match the model's {out.dtype} "
      f"{tuple(out.shape[1:])}.",
    )
  return LoadedEncoder(model, _files.unflatten(flat), manifest)


# ----------------------------------------------------------------------------------
# Distances the index reports.


def _pair_distance(a: jax.Array, b: jax.Array, distance: str) -> jax.Array:
  """Row-wise distance of broadcast rows, computed directly (exactly 0 at a == b)."""
  a, b = jnp.broadcast_arrays(a, b)
  if distance == "cosine":  # for unit vectors 1 - cos(u, v) = |u - v|^2 / 2
    u, v = distances.l2_normalize(a), distances.l2_normalize(b)
    d = 0.5 * distances.squared_euclidean(u, v)
    # Equal rows may be normalised with different roundings (XLA vectorises rsqrt
    # differently at different positions): their distance is 0 by definition.
    return jnp.where(jnp.all(a == b, axis=-1), 0.0, d)
  return distances.euclidean(a, b)


@functools.partial(jax.jit, static_argnames=("distance",))
def _pair_distances(x1, x2, *, distance):
  return _pair_distance(x1, x2, distance)


@functools.partial(jax.jit, static_argnames=("distance", "block"))
def _refine(queries, gallery, indices, *, distance, block):
  """Direct distances of the found items, reordered by them (ties: smaller index)."""

  def one(args):
    q, idx = args
    return _pair_distance(q[None, :], gallery[idx], distance)

  d = jax.lax.map(one, (queries, indices), batch_size=block)
  order = jnp.lexsort((indices, d), axis=-1)
  return jnp.take_along_axis(d, order, 1), jnp.take_along_axis(indices, order, 1)


def _check_distance(distance: Any) -> str:
  if distance not in DISTANCES:
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}.")
  return distance


def _as_embeddings(
  x: Any, name: str, dim: int | None = None, distance: str = "euclidean"
) -> np.ndarray:
  """[n, d] float32 rows, finite (non-zero for cosine); errors name ``name``."""
  x = np.asarray(x)
  if x.dtype.kind not in "iuf" and x.dtype != jnp.bfloat16:
    raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}.")
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D [n, d], got shape {x.shape}.")
  if dim is not None and x.shape[1] != dim:
    raise ValueError(
      f"{name} have dimension {x.shape[1]} but the index holds {dim}-dimensional "
      f"embeddings (shape {x.shape})."
    )
  x = x.astype(np.float32)
  bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
  if len(bad):
    raise ValueError(
      f"{name} hold NaN or inf (or values beyond float32) in {len(bad)} row(s), "
      f"e.g. row {bad[:5].tolist()}."
    )
  if distance == "cosine" and len(x):
    zero = np.flatnonzero(np.sum(np.square(x, dtype=np.float64), axis=1) < 1e-24)
    if len(zero):
      raise ValueError(
        f"{name} hold zero vectors (rows {zero[:5].tolist()}), which have no cosine "
        "distance."
      )
  return x


def pair_distances(x1: Any, x2: Any, *, distance: str = "euclidean") -> np.ndarray:
  """The distance :class:`Index` reports, between rows of ``x1`` and ``x2`` paired.

  Use it on held-out pairs for :func:`calibrate_threshold`, so that the threshold is
  compared with distances computed the same way as in :meth:`Index.match`.

  Args:
    x1: [p, d] embeddings.
    x2: [p, d] embeddings.
    distance: ``"euclidean"`` (``||x1 - x2||``) or ``"cosine"`` (``1 - cos``, in
      [0, 2]).

  Returns:
    [p] float32 distances.

  >>> pair_distances(np.array([[0.0, 3.0]]), np.array([[4.0, 0.0]])).tolist()
  [5.0]
  """
  _check_distance(distance)
  x1 = _as_embeddings(x1, "x1", distance=distance)
  x2 = _as_embeddings(x2, "x2", distance=distance)
  if x1.shape != x2.shape:
    raise ValueError(f"x1 and x2 must have the same shape, got {x1.shape}, {x2.shape}.")
  return np.asarray(_pair_distances(x1, x2, distance=distance))


# ----------------------------------------------------------------------------------
# Verification.


def calibrate_threshold(distances: Any, similar: Any, *, far: float) -> float:
  """The most lenient distance threshold whose false-accept rate is at most ``far``.

  A pair is accepted when ``distance <= threshold``. On the calibration pairs the
  threshold's FAR (the fraction of dissimilar pairs accepted) is ``<= far`` and, with
  no tied distances, ``> far - 1 / n_dissimilar``. It is the operating point of
  :func:`metriclearn.evaluation.tar_at_far` (same ROC curve, same rule), so
  ``tar_at_far(distances, similar, far, is_distance=True)`` is its true-accept rate.

  Args:
    distances: [p] distances of held-out pairs (e.g. from :func:`pair_distances`).
    similar: [p] bool (or 0/1), True for pairs of the same kind; both kinds needed.
    far: the target false-accept rate, in [0, 1].

  Returns:
    The threshold, one of the ``distances`` (or ``-inf`` when even the closest pair
    is dissimilar and ``far`` allows none: then nothing is accepted).

  >>> # accepting d <= 0.2 takes both similar pairs and no dissimilar one (FAR 0);
  >>> # d <= 0.3 would accept the dissimilar 0.3 (FAR 1/2 > 0.25).
  >>> calibrate_threshold([0.1, 0.2, 0.3, 0.4], [True, True, False, False], far=0.25)
  0.2
  """
  if isinstance(far, bool) or not isinstance(far, int | float | np.number):
    raise TypeError(f"far must be a number in [0, 1], got {far!r}.")
  if not 0.0 <= float(far) <= 1.0:
    raise ValueError(f"far must lie in [0, 1], got {far}.")
  fars, _, thresholds = evaluation.roc_curve(distances, similar, is_distance=True)
  # fars rise from 0 (nothing accepted) to 1: the last point within the target.
  return float(thresholds[np.flatnonzero(fars <= far)[-1]])


class Match(NamedTuple):
  """What :meth:`Index.match` says of each query.

  Attributes:
    matched: [q] bool, whether the nearest gallery item is within the threshold
      (``distance <= threshold``).
    ids: [q] the id of the nearest gallery item, whether matched or not (mask with
      ``matched``).
    distances: [q] float32 distance to it.
    labels: [q] int64 its label, or None when the index has no labels.
  """

  matched: np.ndarray
  ids: np.ndarray
  distances: np.ndarray
  labels: np.ndarray | None


# ----------------------------------------------------------------------------------
# The index.


def _check_k(k: Any, size: int) -> int:
  if isinstance(k, bool) or not isinstance(k, int | np.integer):
    raise ValueError(f"k must be a positive int, got {k!r}.")
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}.")
  if k > size:
    raise ValueError(f"k must be <= the size of the index ({size}), got {k}.")
  return int(k)


def _check_unique(ids: np.ndarray) -> None:
  unique, counts = np.unique(ids, return_counts=True)
  if len(unique) != len(ids):
    repeated = unique[counts > 1][:5].tolist()
    raise ValueError(f"ids must be unique; repeated: {repeated}.")


def _check_ids(ids: Any, m: int) -> np.ndarray | None:
  """[m] int64 or str ids, unique, or None."""
  if ids is None:
    return None
  ids = np.asarray(ids)
  if ids.ndim != 1 or len(ids) != m:
    raise ValueError(
      f"ids must be 1-D with one id per embedding ({m}), got shape {ids.shape}."
    )
  if ids.dtype.kind in "iu":
    ids = ids.astype(np.int64)
  elif ids.dtype.kind != "U":
    if m == 0:
      return None
    raise TypeError(f"ids must be ints or strings, got dtype {ids.dtype}.")
  _check_unique(ids)
  return ids


def _check_item_labels(labels: Any, m: int) -> np.ndarray | None:
  """[m] int64 labels >= 0, or None."""
  if labels is None:
    return None
  labels = np.asarray(labels)
  if labels.shape != (m,):
    raise ValueError(
      f"labels must have shape ({m},) to match the embeddings, got {labels.shape}."
    )
  if labels.dtype.kind not in "iu" and m:
    raise TypeError(f"labels must be integers, got dtype {labels.dtype}.")
  if np.any(labels < 0):
    raise ValueError(
      "labels must be >= 0 (in metriclearn -1 marks padding, which an index has "
      "none of)."
    )
  return labels.astype(np.int64)


class Index:
  """An exact nearest-neighbour index over a gallery of embeddings.

  Items are kept in the order added; ties in distance go to the item added first.
  Ids identify items and must be unique: either all given (ints or strings) or, when
  none are given, the items' positions 0, 1, 2, ... Several items of one kind share a
  label (an int >= 0), not an id. Embeddings are stored as float32 and must be
  finite (and non-zero for ``cosine``).

  Args:
    embeddings: [n, d] gallery embeddings (n may be 0).
    ids: [n] unique ints or strings, or None for positions.
    labels: [n] ints >= 0, or None.
    distance: ``"euclidean"`` or ``"cosine"`` (``1 - cos``).
    query_block: queries compared at once (memory ``query_block * (k + ref_block)``).
    ref_block: gallery items compared at once.

  >>> index = Index(np.eye(3), labels=[5, 6, 7])
  >>> index.add(np.array([[0.0, 0.0, 2.0]]), labels=[7])
  >>> len(index), index.search(np.array([[0.0, 0.0, 1.5]]), k=2)[1].tolist()
  (4, [[2, 3]])
  >>> index.match(np.array([[0.9, 0.0, 0.0], [0.0, 5.0, 0.0]]), 0.5).matched.tolist()
  [True, False]
  """

  def __init__(
    self,
    embeddings: Any,
    ids: Any = None,
    labels: Any = None,
    *,
    distance: str = "euclidean",
    query_block: int = 512,
    ref_block: int = 8192,
  ):
    self.distance = _check_distance(distance)
    for value, name in ((query_block, "query_block"), (ref_block, "ref_block")):
      is_int = isinstance(value, int | np.integer) and not isinstance(value, bool)
      if not is_int or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    self.query_block, self.ref_block = int(query_block), int(ref_block)
    x = _as_embeddings(embeddings, "embeddings", distance=distance)
    self._embeddings = np.zeros((0, x.shape[1]), np.float32)
    self._ids: np.ndarray | None = None
    self._labels: np.ndarray | None = None
    self._device: jax.Array | None = None
    self.add(x, ids=ids, labels=labels)

  # -------------------------------------------------------------- contents

  def __len__(self) -> int:
    return self._embeddings.shape[0]

  def __repr__(self) -> str:
    return (
      f"Index({len(self)} x {self.dim}, distance={self.distance!r}, "
      f"ids={'given' if self._ids is not None else 'positions'}, "
      f"labels={self._labels is not None})"
    )

  @property
  def dim(self) -> int:
    """d, the embedding size."""
    return self._embeddings.shape[1]

  @property
  def embeddings(self) -> np.ndarray:
    """[n, d] float32 gallery (read-only)."""
    return self._embeddings

  @property
  def ids(self) -> np.ndarray:
    """[n] item ids (positions when none were given)."""
    if self._ids is None:
      return np.arange(len(self), dtype=np.int64)
    return self._ids

  @property
  def labels(self) -> np.ndarray | None:
    """[n] int64 labels, or None."""
    return self._labels

  def add(self, embeddings: Any, ids: Any = None, labels: Any = None) -> None:
    """Appends items to the gallery.

    Args:
      embeddings: [m, d] embeddings of the same d.
      ids: [m] unique new ids, given exactly when the index's items have ids (an empty
        index takes either form).
      labels: [m] ints >= 0, given exactly when the index's items have labels.
    """
    x = _as_embeddings(embeddings, "embeddings", self.dim, self.distance)
    m = x.shape[0]
    new_ids, new_labels = _check_ids(ids, m), _check_item_labels(labels, m)
    if m == 0:
      return
    if len(self) == 0:  # the first items set the index's form
      self._embeddings, self._ids, self._labels = x, new_ids, new_labels
    else:
      if (new_ids is None) != (self._ids is None):
        raise ValueError(
          "ids: this index's items have ids; give ids for the new ones."
          if new_ids is None
          else "ids: this index numbers its items by position (it was built without "
          "ids); add without ids, or build the index with ids."
        )
      if (new_labels is None) != (self._labels is None):
        raise ValueError(
          "labels: this index's items have labels; give the new ones' too."
          if new_labels is None
          else "labels: this index's items have no labels."
        )
      if new_ids is not None:
        assert self._ids is not None  # both have ids, or neither (checked above)
        if self._ids.dtype.kind != new_ids.dtype.kind:
          raise TypeError(
            f"ids must be of the index's kind ({self._ids.dtype}), got {new_ids.dtype}."
          )
        new_ids = np.concatenate([self._ids, new_ids])
        _check_unique(new_ids)
      if new_labels is not None:
        new_labels = np.concatenate([self._labels, new_labels])
      self._embeddings = np.concatenate([self._embeddings, x])
      self._ids, self._labels = new_ids, new_labels
    self._device = None
    for array in (self._embeddings, self._ids, self._labels):
      if array is not None:
        array.flags.writeable = False

  # -------------------------------------------------------------- search

  def _queries(self, queries: Any) -> np.ndarray:
    return _as_embeddings(queries, "queries", self.dim, self.distance)

  def _gallery(self) -> jax.Array:
    if self._device is None:
      self._device = jax.device_put(self._embeddings)
    return self._device

  def _nearest(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances [q, k] float32, positions [q, k] int64) for checked queries."""
    n = q.shape[0]
    if n == 0:
      return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    padded = np.zeros((_bucket(n, self.query_block), q.shape[1]), np.float32)
    padded[:n] = q
    gallery = self._gallery()
    # A few more candidates than asked for: items whose matrix-product distances are
    # within rounding of each other (near-duplicates) are re-ranked exactly below.
    found = evaluation.knn(
      padded,
      gallery,
      k=min(k + CANDIDATE_MARGIN, len(self)),
      distance=self.distance,
      query_block=self.query_block,
      ref_block=self.ref_block,
    )
    d, idx = _refine(
      padded, gallery, found.indices, distance=self.distance, block=self.query_block
    )
    d, idx = np.asarray(d)[:n, :k], np.asarray(idx)[:n, :k].astype(np.int64)
    if np.any(np.asarray(found.indices)[:n] < 0) or not np.isfinite(d).all():
      raise FloatingPointError(
        "distances overflowed float32: the embeddings are too large to compare."
      )
    return d, idx

  def search(self, queries: Any, *, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest gallery items of each query, nearest first.

    Exact: :func:`metriclearn.evaluation.knn` ranks the gallery block by block on the
    default device (memory ``query_block * (k + ref_block)`` beside the gallery), and
    its best ``k + CANDIDATE_MARGIN`` are re-ranked by distances computed directly,
    ``query_block`` queries at a time (``||q - g||``: the matrix-product form ``|q|^2 +
    |g|^2 - 2 q.g`` rounds to a few 1e-4 near 0 for unit vectors in float32). So an
    item is at distance exactly 0 from itself, and of identical items the one added
    first comes first. Each new gallery size, query bucket and ``k`` compiles once;
    queries are padded to a power of two up to ``query_block``, then to whole blocks.

    Args:
      queries: [q, d] embeddings.
      k: neighbours per query, ``1 <= k <= len(index)``.

    Returns:
      ``(distances [q, k] float32, ids [q, k])``; ties go to the item added first.
    """
    k = _check_k(k, len(self))
    d, positions = self._nearest(self._queries(queries), k)
    return d, self.ids[positions]

  def match(self, queries: Any, threshold: float) -> Match:
    """Verification: is each query's nearest gallery item within ``threshold``?

    Args:
      queries: [q, d] embeddings.
      threshold: a distance (e.g. from :func:`calibrate_threshold`); accepted when
        ``distance <= threshold``, compared in float64.

    Returns:
      A :class:`Match` ``(matched [q] bool, ids [q], distances [q], labels [q] or
      None)``.
    """
    try:
      t = float(threshold)
    except (TypeError, ValueError):
      raise TypeError(f"threshold must be a number, got {threshold!r}.") from None
    if math.isnan(t):
      raise ValueError("threshold must not be NaN.")
    if len(self) == 0:
      raise ValueError("the index is empty: there is nothing to match against.")
    d, positions = self._nearest(self._queries(queries), 1)
    d, positions = d[:, 0], positions[:, 0]
    return Match(
      matched=d.astype(np.float64) <= t,
      ids=self.ids[positions],
      distances=d,
      labels=None if self._labels is None else self._labels[positions],
    )

  # -------------------------------------------------------------- save / load

  def save(self, path: os.PathLike | str, *, overwrite: bool = False) -> pathlib.Path:
    """Writes the index to a folder: ``index.npz`` and a checksummed ``manifest.json``.

    ``index.npz`` holds ``embeddings`` (float32 [n, d]) and ``ids`` and ``labels`` when
    the index has them; the manifest (``format`` ``"metriclearn.index"``) records
    ``distance``, ``size``, ``dim``, ``ids`` (``"given"`` or ``"auto"``) and ``labels``
    (a bool) beside the checksums, as :func:`export_encoder`'s does.

    Args:
      path: the folder (created if needed).
      overwrite: replace an index already saved there.

    Returns:
      The folder's path.
    """
    arrays = {"embeddings": self._embeddings}
    if self._ids is not None:
      arrays["ids"] = self._ids
    if self._labels is not None:
      arrays["labels"] = self._labels
    manifest = {
      "distance": self.distance,
      "size": len(self),
      "dim": self.dim,
      "ids": "given" if self._ids is not None else "auto",
      "labels": self._labels is not None,
    }
    return _files.write_folder(
      path, INDEX_FOLDER, manifest, arrays, overwrite=overwrite
    )

  @classmethod
  def load(
    cls, path: os.PathLike | str, *, query_block: int = 512, ref_block: int = 8192
  ) -> Index:
    """Reads an index written by :meth:`save` (checksums verified, nothing executed).

    Args:
      path: the folder.
      query_block, ref_block: as in :class:`Index`.

    Returns:
      The index, with the same items, ids, labels and distance.
    """
    folder = pathlib.Path(path)
    manifest = _files.read_manifest(folder, INDEX_FOLDER)
    arrays = _files.read_arrays(folder, manifest, INDEX_FOLDER)
    file = folder / INDEX_FOLDER.array_file
    expected = {"embeddings"}
    expected |= {"ids"} if manifest.get("ids") == "given" else set()
    expected |= {"labels"} if manifest.get("labels") is True else set()
    if set(arrays) != expected:
      raise InvalidExportError(
        file, f"holds {sorted(arrays)}, the manifest calls for {sorted(expected)}."
      )
    try:
      index = cls(
        arrays["embeddings"],
        ids=arrays.get("ids"),
        labels=arrays.get("labels"),
        distance=cast(str, manifest.get("distance")),  # Index checks it
        query_block=query_block,
        ref_block=ref_block,
      )
    except (TypeError, ValueError) as e:
      raise InvalidExportError(file, f"not a valid index: {e}") from e
    if (len(index), index.dim) != (manifest.get("size"), manifest.get("dim")):
      raise InvalidExportError(
        file,
        f"holds {len(index)} x {index.dim} embeddings, the manifest says "
        f"{manifest.get('size')} x {manifest.get('dim')}.",
      )
    return index

"""Checksummed folders: named arrays in one ``.npz`` beside a JSON manifest.

A checksummed folder holds two files:

- an array file (e.g. ``variables.npz``): one ``.npy`` member per array, named by the
  array's name (which may hold ``/``), stored uncompressed with fixed member dates (the
  same arrays give the same bytes), written and read with ``allow_pickle=False``; a
  ``bfloat16`` array is stored as its ``uint16`` bit pattern;
- ``manifest.json``: ``format``, ``format_version``, ``metriclearn_version``, the
  writer's own keys, ``arrays`` (name -> ``{"shape": [...], "dtype": name}``, where a
  ``bfloat16`` array is named ``bfloat16``), ``files`` (``{array file: {"sha256",
  "bytes"}}``) and ``manifest_sha256``: the SHA-256 of the manifest without that key,
  serialised as ``json.dumps(m, sort_keys=True, separators=(",", ":"),
  ensure_ascii=False)`` in UTF-8.

The array file is written first and the manifest last, each through a temporary file
and ``os.replace``: a folder whose writing was interrupted has no manifest, or an old
one whose checksums no longer match. Reading checks the manifest (its format, version
and checksum), then the array file (its checksum, that it parses as ``.npz`` without
pickle, that it holds exactly the listed arrays with their shapes and dtypes); any
failure raises :class:`FileCheckError` naming the file. Nothing in a folder can run.
The checksums detect damage and edits, not a deliberate forgery: whoever changes a file
can recompute them. :func:`flatten` names the leaves of a tree of variables as the
array file does (``params/Dense_0/kernel``), :func:`unflatten` rebuilds the tree and
:func:`check_shapes` checks named arrays against the variables a model makes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

import metriclearn

__all__ = [
  "DTYPES",
  "MANIFEST",
  "FileCheckError",
  "Format",
  "check_shapes",
  "flatten",
  "read_arrays",
  "read_manifest",
  "unflatten",
  "write_folder",
]

MANIFEST = "manifest.json"
#: The dtypes an array file may hold (``str``: NumPy unicode strings).
DTYPES: tuple[str, ...] = (
  "bool",
  "uint8",
  "uint16",
  "uint32",
  "int8",
  "int16",
  "int32",
  "int64",
  "float16",
  "float32",
  "float64",
  "uint64",
  "bfloat16",
  "str",
)


class Format(NamedTuple):
  """A kind of checksummed folder.

  Attributes:
    name: the manifest's ``format``, e.g. ``"metriclearn.encoder"``.
    version: the manifest's ``format_version`` written (and the newest read).
    array_file: the name of the array file, e.g. ``"variables.npz"``.
  """

  name: str
  version: int
  array_file: str


class FileCheckError(ValueError):
  """A file of a checksummed folder that cannot be used: damaged, modified,
  truncated, or describing something this version cannot rebuild.

  Attributes:
    path: the offending file.
  """

  def __init__(self, path: os.PathLike | str, problem: str):
    self.path = pathlib.Path(path)
    super().__init__(f"{self.path}: {problem}")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested mappings to ``{"a/b/c": leaf}``, the names arrays have in a folder."""
  out = {}
  for key, value in tree.items():
    key = str(key)
    if "/" in key or not key:
      raise ValueError(f"variable names may not be empty or hold '/', got {key!r}.")
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "/"))
    else:
      out[name] = value
  return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """The nested dicts that :func:`flatten` flattened."""
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def check_shapes(
  arrays: Mapping[str, np.ndarray],
  abstract: Mapping[str, Any],
  where: str,
  error: Callable[[str], Exception],
) -> None:
  """Raises ``error(message)`` unless ``arrays`` are exactly the leaves of ``abstract``
  (e.g. ``jax.eval_shape(model.init, ...)``), flattened, with their shapes."""
  expected = {name: tuple(v.shape) for name, v in flatten(abstract).items()}
  missing = sorted(set(expected) - set(arrays))
  extra = sorted(set(arrays) - set(expected))
  if missing or extra:
    more = lambda names: f"{names[:4]}{' ...' if len(names) > 4 else ''}"
    problems = [f"lacks {more(missing)}"] if missing else []
    problems += [f"holds {more(extra)}, which the model does not have"] if extra else []
    raise error(f"{where} does not fit the model: {'; '.join(problems)}.")
  for name, shape in expected.items():
    if tuple(arrays[name].shape) != shape:
      raise error(
        f"{where}: {name} has shape {tuple(arrays[name].shape)} but the model "
        f"expects {shape}."
      )


def _canonical(manifest: Mapping[str, Any]) -> bytes:
  body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
  text = json.dumps(
    body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
  )
  return text.encode("utf-8")


def _dtype_name(dtype: np.dtype) -> str:
  dtype = np.dtype(dtype)
  name = "str" if dtype.kind == "U" else dtype.name
  if name not in DTYPES:
    raise TypeError(f"arrays of dtype {dtype} cannot be exported.")
  return name


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
  """A .npz with fixed member dates, so the same arrays give the same bytes."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
    for name in sorted(arrays):
      array = np.ascontiguousarray(arrays[name])
      if _dtype_name(array.dtype) == "bfloat16":
        array = array.view(np.uint16)
      info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
      with archive.open(info, "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)
  return buffer.getvalue()


def write_folder(
  path: os.PathLike | str,
  fmt: Format,
  manifest: Mapping[str, Any],
  arrays: Mapping[str, np.ndarray],
  *,
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes ``arrays`` to the array file of ``fmt``, then the manifest.

  Args:
    path: the folder (created if needed).
    fmt: the kind of folder.
    manifest: the writer's own JSON keys (finite numbers only).
    arrays: name -> array, of the :data:`DTYPES`.
    overwrite: replace a folder already written there.

  Returns:
    The folder's path.
  """
  folder = pathlib.Path(path)
  if (folder / MANIFEST).exists() and not overwrite:
    raise FileExistsError(
      f"{folder / MANIFEST} exists; pass overwrite=True to replace the export."
    )
  folder.mkdir(parents=True, exist_ok=True)
  blob = _npz_bytes(arrays)
  manifest = {
    "format": fmt.name,
    "format_version": fmt.version,
    "metriclearn_version": metriclearn.__version__,
    **manifest,
    "arrays": {
      name: {"shape": list(a.shape), "dtype": _dtype_name(a.dtype)}
      for name, a in sorted(arrays.items())
    },
    "files": {
      fmt.array_file: {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    },
  }
  manifest["manifest_sha256"] = hashlib.sha256(_canonical(manifest)).hexdigest()
  text = json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
  (folder / MANIFEST).unlink(missing_ok=True)
  for name, content in ((fmt.array_file, blob), (MANIFEST, text.encode("utf-8"))):
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(content)
    os.replace(tmp, folder / name)
  return folder


def read_manifest(folder: pathlib.Path, fmt: Format) -> dict[str, Any]:
  """The folder's manifest, with its format, version and checksum checked.

  Raises:
    FileNotFoundError: ``folder`` is not a folder or has no manifest.
    FileCheckError: the manifest is damaged, edited, or of another format or a newer
      version.
  """
  file = folder / MANIFEST
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder} is not a folder (an export is a folder).")
  if not file.is_file():
    raise FileNotFoundError(f"{file} is missing: {folder} is not a metriclearn export.")
  try:
    manifest = json.loads(file.read_bytes().decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise FileCheckError(file, f"not valid JSON ({e}); the file is damaged.") from e
  if not isinstance(manifest, dict):
    raise FileCheckError(file, "not a JSON object; the file is damaged.")
  if manifest.get("format") != fmt.name:
    raise FileCheckError(
      file, f"format is {manifest.get('format')!r}, expected {fmt.name!r}."
    )
  version = manifest.get("format_version")
  if not isinstance(version, int) or version > fmt.version:
    raise FileCheckError(
      file,
      f"format_version {version!r} is not one this metriclearn "
      f"({metriclearn.__version__}) reads (<= {fmt.version}); it was written by "
      f"metriclearn {manifest.get('metriclearn_version')!r}.",
    )
  try:
    expected = hashlib.sha256(_canonical(manifest)).hexdigest()
  except ValueError as e:  # NaN or inf where JSON allows none
    raise FileCheckError(file, f"cannot be checked ({e}).") from e
  if manifest.get("manifest_sha256") != expected:
    raise FileCheckError(
      file,
      "checksum mismatch (manifest_sha256): the manifest was damaged or edited "
      "after export.",
    )
  return manifest


def read_arrays(
  folder: pathlib.Path, manifest: Mapping[str, Any], fmt: Format
) -> dict[str, np.ndarray]:
  """The arrays of the folder's array file, checked against its (checked) manifest.

  Raises:
    FileNotFoundError: the array file is missing.
    FileCheckError: it is damaged, modified, or not what the manifest lists.
  """
  array_file = fmt.array_file
  file, where = folder / array_file, folder / MANIFEST
  files, entries = manifest.get("files"), manifest.get("arrays")
  if not isinstance(files, dict) or set(files) != {array_file}:
    raise FileCheckError(where, f"files must list exactly {array_file!r}.")
  if not isinstance(entries, dict):
    raise FileCheckError(where, "arrays must be an object.")
  if not file.is_file():
    raise FileNotFoundError(f"{file} is missing (listed in {where}).")
  blob = file.read_bytes()
  record = files[array_file]
  if not isinstance(record, dict) or record.get("sha256") != (
    hashlib.sha256(blob).hexdigest()
  ):
    raise FileCheckError(
      file,
      f"checksum mismatch (sha256 in {MANIFEST}; {len(blob)} bytes, "
      f"{record.get('bytes') if isinstance(record, dict) else '?'} expected): the "
      "file was damaged, truncated or modified after export.",
    )
  try:
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
      arrays = {name: npz[name] for name in npz.files}
  except Exception as e:  # noqa: BLE001 - any failure to parse is a damaged file
    raise FileCheckError(file, f"cannot be read as .npz ({e}).") from e
  if set(arrays) != set(entries):
    raise FileCheckError(
      file,
      f"holds arrays {sorted(arrays)} but {MANIFEST} lists {sorted(entries)}.",
    )
  out = {}
  for name, array in arrays.items():
    entry = entries[name]
    dtype = entry.get("dtype") if isinstance(entry, dict) else None
    if dtype == "bfloat16" and array.dtype == np.uint16:
      array = array.view(jnp.bfloat16)
    shape = entry.get("shape") if isinstance(entry, dict) else None
    try:
      stored = _dtype_name(array.dtype)
    except TypeError as e:
      raise FileCheckError(file, f"array {name!r}: {e}") from e
    if shape != list(array.shape) or dtype != stored:
      raise FileCheckError(
        file,
        f"array {name!r} is {array.dtype} {list(array.shape)} but {MANIFEST} says "
        f"{dtype} {shape}.",
      )
    out[name] = array
  return out

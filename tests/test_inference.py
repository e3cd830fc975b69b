"""Export / load of encoders and the exact index: embeddings equal the model's own, a
fresh process needs only the folder, damaged files are named, search equals a NumPy
brute force, save/load is exact, the calibrated threshold meets its FAR."""

import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metriclearn import data, inference, models, training
from metriclearn import evaluation as E
from metriclearn.inference import (
  MODULES,
  Index,
  InvalidExportError,
  calibrate_threshold,
  export_encoder,
  load_encoder,
  pair_distances,
)

# rbg keys: the default threefry keys compile a new program per random shape (slow).
KEY = jax.random.key(0, impl="rbg")


def _rehash(folder):
  """Rewrites manifest_sha256 by the documented rule (for well-formed edits)."""
  path = folder / "manifest.json"
  manifest = json.loads(path.read_text())
  body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
  canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
  manifest["manifest_sha256"] = hashlib.sha256(canon.encode("utf-8")).hexdigest()
  path.write_text(json.dumps(manifest, indent=2))


def _edit_manifest(folder, edit):
  path = folder / "manifest.json"
  manifest = json.loads(path.read_text())
  edit(manifest)
  path.write_text(json.dumps(manifest, indent=2))
  _rehash(folder)


# ----------------------------------------------------------------------------------
# Encoders.


def _conv4():
  return models.Encoder(models.ConvEncoder(filters=8), models.EmbeddingHead(16))


def _trained_variables(model, x):
  """Variables after one training-mode pass, so the running averages are not 0 / 1."""
  variables = jax.jit(model.init)(KEY, x)
  apply = functools.partial(model.apply, train=True, mutable=["batch_stats"])
  _, updates = jax.jit(apply)(variables, x)
  return {"params": variables["params"], **updates}


@pytest.fixture(scope="module")
def conv4_export(tmp_path_factory):
  """A Conv-4 encoder on uint8 28 x 28 images, exported once for the module."""
  images = np.random.default_rng(0).integers(0, 256, (10, 28, 28, 1), dtype=np.uint8)
  model = _conv4()
  variables = _trained_variables(model, data.to_float(images))
  folder = tmp_path_factory.mktemp("conv4") / "encoder"
  export_encoder(folder, model, variables, input_shape=(28, 28, 1))
  apply = jax.jit(functools.partial(model.apply, train=False))
  expected = np.asarray(apply(variables, data.to_float(images)))
  return folder, images, expected


def _copy(folder, tmp_path):
  out = tmp_path / "copy"
  out.mkdir()
  for name in ("manifest.json", "variables.npz"):
    (out / name).write_bytes((folder / name).read_bytes())
  return out


def test_conv4_export_load_equals_model_apply(conv4_export):
  folder, images, expected = conv4_export
  encoder = load_encoder(folder)
  # 10 images in batches of 4: the last batch is padded, the result is not.
  got = encoder.embed(images, batch_size=4)
  assert got.dtype == np.float32 and got.shape == (10, 16)
  np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
  np.testing.assert_allclose(encoder.embed(images), expected, atol=1e-6, rtol=0)
  # grayscale [n, h, w] is taken for a (h, w, 1) input
  np.testing.assert_allclose(encoder.embed(images[..., 0]), expected, atol=1e-6)
  assert encoder.embedding_dim == 16 and encoder.input_shape == (28, 28, 1)
  assert encoder.embed(images[:0]).shape == (0, 16)


def test_conv4_folder_format(conv4_export):
  folder, _, _ = conv4_export
  assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "variables.npz"]
  manifest = json.loads((folder / "manifest.json").read_text())
  assert manifest["format"] == "metriclearn.encoder"
  assert manifest["model"] == {
    "class": "Encoder",
    "fields": {
      "backbone": {
        "class": "ConvEncoder",
        "fields": {
          "filters": 8,
          "num_blocks": 4,
          "axis_name": None,
          "dtype": {"dtype": "float32"},
        },
      },
      "head": {
        "class": "EmbeddingHead",
        "fields": {"dim": 16, "normalize": True, "use_bias": True},
      },
    },
  }
  assert manifest["input"] == {"shape": [28, 28, 1], "dtype": "uint8"}
  assert manifest["preprocessing"] == [{"op": "to_float"}]
  assert manifest["output"] == {"shape": [16], "dtype": "float32"}
  blob = (folder / "variables.npz").read_bytes()
  assert (
    manifest["files"]["variables.npz"]["sha256"] == hashlib.sha256(blob).hexdigest()
  )
  with np.load(folder / "variables.npz", allow_pickle=False) as npz:
    names = set(npz.files)
  assert names == set(manifest["arrays"])
  assert "params/backbone/Conv_0/kernel" in names
  assert "batch_stats/backbone/BatchNorm_0/mean" in names
  assert all(n.startswith(("params/", "batch_stats/")) for n in names)


def test_fresh_process_needs_only_the_folder(conv4_export, tmp_path):
  folder, images, expected = conv4_export
  np.save(tmp_path / "x.npy", images)
  code = (
    "import sys, numpy as np\n"
    "from metriclearn.inference import load_encoder\n"
    "encoder = load_encoder(sys.argv[1])\n"
    "np.save(sys.argv[3], encoder.embed(np.load(sys.argv[2]), batch_size=4))\n"
  )
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = tmp_path / "out.npy"
  # -I: isolated (no current directory, no PYTHON* variables, no user site)
  args = [sys.executable, "-I", "-c", code, str(folder), str(tmp_path / "x.npy")]
  run = subprocess.run(
    [*args, str(out)], env=env, cwd=tmp_path, capture_output=True, text=True
  )
  assert run.returncode == 0, run.stderr
  np.testing.assert_allclose(np.load(out), expected, atol=1e-6, rtol=0)


def test_mlp_with_batch_norm_and_standardize(tmp_path):
  model = models.Encoder(
    models.MLPEncoder(hidden=(32, 16), batch_norm=True),
    models.EmbeddingHead(8, normalize=False),
  )
  x = np.random.default_rng(1).normal(size=(9, 12)).astype(np.float32)
  steps = [{"op": "standardize", "mean": 0.5, "std": 2.0}]
  variables = _trained_variables(model, (x - 0.5) / 2.0)
  export_encoder(
    tmp_path / "mlp",
    model,
    variables,
    input_shape=(12,),
    input_dtype="float32",
    preprocessing=steps,
    metadata={"run": "test", "steps": 1},
  )
  encoder = load_encoder(tmp_path / "mlp")
  apply = jax.jit(functools.partial(model.apply, train=False))
  expected = np.asarray(apply(variables, (x - 0.5) / 2.0))
  np.testing.assert_allclose(encoder.embed(x), expected, atol=1e-6, rtol=0)
  # float64 input is cast to the float32 input dtype
  got = encoder.embed(x.astype(np.float64), batch_size=4)
  np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
  assert encoder.manifest["metadata"] == {"run": "test", "steps": 1}
  assert encoder.preprocessing == steps
  assert isinstance(encoder.model.backbone, models.MLPEncoder)


def test_train_state_exports_without_optimizer(tmp_path):
  model = models.Encoder(
    models.MLPEncoder(hidden=(8,), batch_norm=True), models.EmbeddingHead(4)
  )
  x = np.ones((2, 5), np.float32)
  state = training.create_train_state(jax.random.PRNGKey(0), model, optax.adam(1e-3), x)
  export_encoder(
    tmp_path / "enc", model, state, input_shape=(5,), input_dtype="float32"
  )
  manifest = json.loads((tmp_path / "enc" / "manifest.json").read_text())
  assert {name.split("/")[0] for name in manifest["arrays"]} == {
    "params",
    "batch_stats",
  }
  assert "opt_state" not in json.dumps(manifest)
  with pytest.raises(FileExistsError, match="overwrite"):
    export_encoder(tmp_path / "enc", model, state, input_shape=(5,))
  export_encoder(
    tmp_path / "enc", model, state, input_shape=(5,), input_dtype="float32",
    overwrite=True,
  )  # fmt: skip
  load_encoder(tmp_path / "enc")


class TinyNet(nn.Module):
  """A user's own encoder: metriclearn cannot describe it."""

  width: int = 8

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(self.width)(x.reshape(x.shape[0], -1))
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(3)(nn.relu(x))


def test_user_module_round_trips_with_model_argument(tmp_path):
  model = TinyNet()
  x = np.random.default_rng(2).normal(size=(5, 6)).astype(np.float32)
  variables = _trained_variables(model, x)
  folder = export_encoder(
    tmp_path / "user", model, variables, input_shape=(6,), input_dtype="float32",
    preprocessing=(),
  )  # fmt: skip
  manifest = json.loads((folder / "manifest.json").read_text())
  assert manifest["model"] is None and manifest["model_class"].endswith("TinyNet")
  with pytest.raises(ValueError, match="model="):
    load_encoder(folder)
  encoder = load_encoder(folder, model=TinyNet())
  expected = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  np.testing.assert_allclose(encoder.embed(x), np.asarray(expected), atol=1e-6)
  with pytest.raises(InvalidExportError, match="variables.npz.*shape"):
    load_encoder(folder, model=TinyNet(width=4))


def test_flipped_bytes_in_arrays_are_named(conv4_export, tmp_path):
  folder = _copy(conv4_export[0], tmp_path)
  blob = bytearray((folder / "variables.npz").read_bytes())
  for i in range(len(blob) // 2, len(blob) // 2 + 8):
    blob[i] ^= 0xFF
  (folder / "variables.npz").write_bytes(bytes(blob))
  with pytest.raises(InvalidExportError, match=r"variables\.npz.*checksum") as info:
    load_encoder(folder)
  assert info.value.path.name == "variables.npz"


def test_truncated_arrays_are_named(conv4_export, tmp_path):
  folder = _copy(conv4_export[0], tmp_path)
  blob = (folder / "variables.npz").read_bytes()
  (folder / "variables.npz").write_bytes(blob[: len(blob) // 3])
  with pytest.raises(InvalidExportError, match=r"variables\.npz.*truncated"):
    load_encoder(folder)
  # a truncated file whose checksum was also updated is still not read
  digest = hashlib.sha256(blob[: len(blob) // 3]).hexdigest()
  _edit_manifest(
    folder, lambda m: m["files"]["variables.npz"].update(sha256=digest)
  )  # fmt: skip
  with pytest.raises(InvalidExportError, match=r"variables\.npz.*npz"):
    load_encoder(folder)


def test_edited_manifest_is_named(conv4_export, tmp_path):
  folder = _copy(conv4_export[0], tmp_path)
  text = (folder / "manifest.json").read_text()
  assert '"filters": 8' in text
  (folder / "manifest.json").write_text(text.replace('"filters": 8', '"filters": 9'))
  with pytest.raises(InvalidExportError, match=r"manifest\.json.*checksum"):
    load_encoder(folder)
  (folder / "manifest.json").write_bytes(text.encode()[:200])  # cut short
  with pytest.raises(InvalidExportError, match=r"manifest\.json.*JSON"):
    load_encoder(folder)


def test_arrays_that_do_not_fit_the_model_are_named(conv4_export, tmp_path):
  folder = _copy(conv4_export[0], tmp_path)
  # a well-formed manifest (checksum recomputed) describing a wider model
  _edit_manifest(
    folder, lambda m: m["model"]["fields"]["backbone"]["fields"].update(filters=16)
  )  # fmt: skip
  with pytest.raises(InvalidExportError, match=r"variables\.npz.*has shape.*expects"):
    load_encoder(folder)


@pytest.mark.parametrize("name", ["os.system", "Siamese", "builtins.eval"])
def test_unknown_class_name_is_refused(conv4_export, tmp_path, name):
  folder = _copy(conv4_export[0], tmp_path)
  _edit_manifest(
    folder, lambda m: m["model"]["fields"]["backbone"].update({"class": name})
  )  # fmt: skip
  with pytest.raises(InvalidExportError, match="unknown model class"):
    load_encoder(folder)
  assert name not in MODULES


class _Payload:
  """Unpickling this would create a file: the proof that something ran."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (open, (self.marker, "w"))


def test_pickled_arrays_never_run(conv4_export, tmp_path):
  folder = _copy(conv4_export[0], tmp_path)
  marker = tmp_path / "ran"
  array = np.empty(1, object)
  array[0] = _Payload(marker)
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as archive:
    with archive.open("params/backbone/Conv_0/kernel.npy", "w") as member:
      np.lib.format.write_array(member, array, allow_pickle=True)
  blob = buffer.getvalue()
  (folder / "variables.npz").write_bytes(blob)
  digest = hashlib.sha256(blob).hexdigest()  # a forger recomputes the checksums
  _edit_manifest(
    folder, lambda m: m["files"]["variables.npz"].update(sha256=digest)
  )  # fmt: skip
  with pytest.raises(InvalidExportError, match=r"variables\.npz.*npz"):
    load_encoder(folder)
  assert not marker.exists()


@pytest.mark.parametrize(
  "module",
  [
    models.MLPEncoder(hidden=(4, 2), batch_norm=True, dtype=jnp.bfloat16),
    models.ConvEncoder(filters=3, num_blocks=2, axis_name="batch"),
    models.KochTower((4, 4, 4, 4), (3, 3, 3, 3), hidden=8, padding="SAME"),
    models.Encoder(models.ResNet(stage_sizes=(1, 1), width=4), None),
    models.Encoder(models.MLPEncoder(), models.EmbeddingHead(3, normalize=False)),
  ],
)
def test_every_known_module_is_described_and_rebuilt(module):
  description = models.describe(module)
  assert description is not None
  json.dumps(description, allow_nan=False)  # plain JSON
  rebuilt = inference._build(json.loads(json.dumps(description)), "manifest.json")
  assert type(rebuilt) is type(module)
  assert models.describe(rebuilt) == description
  for field in models._fields(type(module)):
    if not isinstance(getattr(module, field), nn.Module | type(None)):
      assert getattr(rebuilt, field) == getattr(module, field), field
  # a subclass, or a known module around an unknown one, is a user's model
  assert models.describe(models.Encoder(TinyNet(), None)) is None


def test_unknown_preprocessing_is_refused(conv4_export, tmp_path):
  folder = _copy(conv4_export[0], tmp_path)
  _edit_manifest(folder, lambda m: m.update(preprocessing=[{"op": "eval"}]))
  with pytest.raises(InvalidExportError, match=r"manifest\.json.*preprocessing"):
    load_encoder(folder)
  model = _conv4()
  with pytest.raises(ValueError, match="preprocessing"):
    export_encoder(
      tmp_path / "x", model, {}, input_shape=(28, 28, 1), preprocessing="x"
    )


def test_embed_checks_its_input(conv4_export):
  folder, images, _ = conv4_export
  encoder = load_encoder(folder)
  with pytest.raises(TypeError, match="uint8"):
    encoder.embed(images.astype(np.float32) / 255)
  with pytest.raises(ValueError, match="28, 28, 1"):
    encoder.embed(images[:, :20])
  with pytest.raises(ValueError, match="batch_size"):
    encoder.embed(images, batch_size=0)


# ----------------------------------------------------------------------------------
# The index.


def np_knn(queries, gallery, k, distance):
  """Brute force in float64: every distance, a stable sort (ties: smaller index)."""
  q, g = queries.astype(np.float64), gallery.astype(np.float64)
  if distance == "cosine":
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    d = 1.0 - q @ g.T
  else:
    d = np.sqrt(np.sum((q[:, None, :] - g[None, :, :]) ** 2, axis=-1))
  order = np.argsort(d, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(d, order, axis=1), order


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_every_item_is_its_own_nearest_at_distance_zero(distance):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(60, 8)).astype(np.float32) * 3
  gallery = np.concatenate([x, x[[3, 7, 3]]])  # items 60, 61, 62 copy 3, 7, 3
  index = Index(gallery, distance=distance)
  # Nearest: itself at distance 0, or an identical copy added before it (ties go to
  # the smaller index).
  first = np.arange(63)
  first[[60, 61, 62]] = [3, 7, 3]
  d, ids = index.search(gallery, k=1)
  assert np.all(d == 0.0)
  np.testing.assert_array_equal(ids[:, 0], first)
  d, ids = index.search(gallery, k=3)
  assert np.all(d[:, 0] == 0.0)
  np.testing.assert_array_equal(ids[[3, 60, 62]], [[3, 60, 62]] * 3)
  assert np.all(d[[3, 60, 62]] == 0.0)
  np.testing.assert_array_equal(ids[[7, 61], :2], [[7, 61]] * 2)
  assert np.all(d[[7, 61], :2] == 0.0) and np.all(d[[7, 61], 2] > 0.0)
  rest = np.setdiff1d(np.arange(63), [3, 7, 60, 61, 62])
  np.testing.assert_array_equal(ids[rest, 0], rest)
  assert np.all(d[rest, 1] > 0.0)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_search_equals_brute_force(distance):
  rng = np.random.default_rng(4)
  gallery = rng.normal(size=(200, 8)).astype(np.float32)
  queries = rng.normal(size=(37, 8)).astype(np.float32)
  names = np.array([f"item{i}" for i in range(200)])
  # small blocks: 3 query blocks (37 padded to 48) and 4 gallery blocks
  index = Index(gallery, ids=names, distance=distance, query_block=16, ref_block=64)
  d, ids = index.search(queries, k=5)
  want_d, want_pos = np_knn(queries, gallery, 5, distance)
  np.testing.assert_array_equal(ids, names[want_pos])
  np.testing.assert_allclose(d, want_d, rtol=1e-5, atol=1e-6)
  assert d.dtype == np.float32 and d.shape == ids.shape == (37, 5)
  # k = the whole index
  d, ids = index.search(queries[:3], k=200)
  want_d, want_pos = np_knn(queries[:3], gallery, 200, distance)
  np.testing.assert_array_equal(ids, names[want_pos])
  # the reported distances are pair_distances'
  pairs = np.repeat(queries[:3], 200, 0), gallery[want_pos.ravel()]
  got = pair_distances(*pairs, distance=distance)
  np.testing.assert_allclose(d.ravel(), got, rtol=1e-6, atol=1e-7)


def test_add_equals_building_at_once():
  rng = np.random.default_rng(5)
  a, b = rng.normal(size=(30, 4)), rng.normal(size=(20, 4))
  q = rng.normal(size=(6, 4))
  one = Index(np.concatenate([a, b]), labels=np.arange(50) % 7)
  two = Index(a, labels=np.arange(30) % 7)
  two.add(b, labels=np.arange(30, 50) % 7)
  assert len(two) == 50
  for x, y in zip(one.search(q, k=4), two.search(q, k=4), strict=True):
    np.testing.assert_array_equal(x, y)
  empty = Index(np.zeros((0, 4)))
  assert len(empty) == 0
  empty.add(a, ids=[f"a{i}" for i in range(30)])
  assert empty.search(a[:1], k=1)[1].tolist() == [["a0"]]


@pytest.mark.parametrize(
  "ids, labels, distance",
  [
    (None, None, "euclidean"),
    ("strings", "labels", "cosine"),
    ("ints", None, "cosine"),
  ],
)
def test_save_load_round_trip_is_identical(tmp_path, ids, labels, distance):
  rng = np.random.default_rng(6)
  gallery, queries = rng.normal(size=(40, 6)), rng.normal(size=(9, 6))
  ids = {"strings": [f"id-{i}" for i in range(40)], "ints": np.arange(40) * 10}.get(ids)
  labels = np.arange(40) % 5 if labels else None
  index = Index(gallery, ids=ids, labels=labels, distance=distance)
  index.save(tmp_path / "index")
  loaded = Index.load(tmp_path / "index")
  assert len(loaded) == 40 and loaded.distance == distance
  np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
  np.testing.assert_array_equal(loaded.ids, index.ids)
  assert (loaded.labels is None) == (labels is None)
  for x, y in zip(loaded.search(queries, k=7), index.search(queries, k=7), strict=True):
    np.testing.assert_array_equal(x, y)
  a, b = loaded.match(queries, 3.0), index.match(queries, 3.0)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)


def test_saved_index_damage_is_named(tmp_path):
  index = Index(np.random.default_rng(7).normal(size=(10, 3)), ids=list("abcdefghij"))
  folder = index.save(tmp_path / "index")
  with pytest.raises(FileExistsError):
    index.save(folder)
  blob = bytearray((folder / "index.npz").read_bytes())
  blob[-40] ^= 0x01
  (folder / "index.npz").write_bytes(bytes(blob))
  with pytest.raises(InvalidExportError, match=r"index\.npz.*checksum"):
    Index.load(folder)
  index.save(folder, overwrite=True)
  _edit_manifest(folder, lambda m: m.update(distance="dot"))
  with pytest.raises(InvalidExportError, match=r"index\.npz.*distance"):
    Index.load(folder)
  with pytest.raises(InvalidExportError, match="format"):
    load_encoder(folder)  # an index is not an encoder


def test_match_returns_nearest_id_label_and_decision():
  gallery = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  index = Index(gallery, ids=["a", "b", "c"], labels=[1, 2, 3])
  queries = np.array([[0.5, 0.0], [10.0, 2.0], [5.0, 5.0]])
  # nearest: a at 0.5; b at 2; a, b and c all at sqrt(50) ~ 7.07 -> a (first added)
  got = index.match(queries, 2.0)
  assert got.matched.tolist() == [True, True, False]
  assert got.ids.tolist() == ["a", "b", "a"]
  assert got.labels.tolist() == [1, 2, 1]
  np.testing.assert_allclose(got.distances, [0.5, 2.0, np.sqrt(50)], rtol=1e-6)
  assert Index(gallery).match(queries, 1.0).labels is None


def test_calibrated_threshold_meets_its_far():
  rng = np.random.default_rng(8)
  n_sim, n_dis = 300, 400
  d = np.concatenate([rng.gamma(2.0, 0.5, n_sim), rng.gamma(4.0, 0.5, n_dis)])
  similar = np.r_[np.ones(n_sim, bool), np.zeros(n_dis, bool)]
  order = rng.permutation(len(d))
  d, similar = d[order], similar[order]
  assert len(np.unique(d)) == len(d)  # no ties: the FAR moves in steps of 1/n
  for far in (0.0, 0.01, 0.05, 0.2, 0.5, 1.0):
    t = calibrate_threshold(d, similar, far=far)
    achieved = np.count_nonzero(d[~similar] <= t) / n_dis
    assert far - 1 / n_dis < achieved <= far
    tar = np.count_nonzero(d[similar] <= t) / n_sim
    assert tar == pytest.approx(E.tar_at_far(d, similar, far, is_distance=True))


def test_calibrate_threshold_by_hand():
  d, similar = [0.1, 0.2, 0.3, 0.4], [True, True, False, True]
  # d <= 0.2: FAR 0 (the one dissimilar pair, 0.3, is rejected); d <= 0.4: FAR 1.
  assert calibrate_threshold(d, similar, far=0.0) == 0.2
  assert calibrate_threshold(d, similar, far=0.99) == 0.2
  assert calibrate_threshold(d, similar, far=1.0) == 0.4
  # the closest pair is dissimilar: FAR 0 accepts nothing
  assert calibrate_threshold([0.1, 0.2], [0, 1], far=0.0) == -np.inf
  with pytest.raises(ValueError, match="far"):
    calibrate_threshold(d, similar, far=1.5)
  with pytest.raises(ValueError, match="both"):
    calibrate_threshold(d, [True] * 4, far=0.1)


def test_index_errors():
  x = np.random.default_rng(9).normal(size=(5, 4))
  index = Index(x)
  with pytest.raises(ValueError, match="queries have dimension 3"):
    index.search(x[:, :3], k=1)
  with pytest.raises(ValueError, match="embeddings have dimension 3"):
    index.add(x[:, :3])
  with pytest.raises(ValueError, match="queries must be 2-D"):
    index.search(x[0], k=1)
  with pytest.raises(ValueError, match=r"k must be <= the size of the index \(5\)"):
    index.search(x, k=6)
  for k in (0, -1):
    with pytest.raises(ValueError, match="k must be >= 1"):
      index.search(x, k=k)
  for k in (1.0, True, None):
    with pytest.raises(ValueError, match="k must be a positive int"):
      index.search(x, k=k)
  bad = x.copy()
  bad[2, 1] = np.nan
  with pytest.raises(ValueError, match=r"queries hold NaN.*\[2\]"):
    index.search(bad, k=1)
  with pytest.raises(ValueError, match="threshold"):
    index.match(x, float("nan"))
  bad[2, 1] = np.inf
  with pytest.raises(ValueError, match="embeddings hold NaN or inf"):
    Index(bad)
  with pytest.raises(ValueError, match="embeddings hold NaN or inf"):
    index.add(bad)
  with pytest.raises(ValueError, match="ids must be 1-D with one id per embedding"):
    Index(x, ids=[1, 2, 3])
  with pytest.raises(ValueError, match=r"ids must be unique; repeated: \[2\]"):
    Index(x, ids=[1, 2, 2, 3, 4])
  named = Index(x, ids=list("abcde"))
  with pytest.raises(ValueError, match=r"ids must be unique; repeated: \['a'\]"):
    named.add(x[:1], ids=["a"])
  with pytest.raises(ValueError, match="give ids"):
    named.add(x[:1])
  with pytest.raises(ValueError, match="ids: this index numbers its items"):
    index.add(x[:1], ids=["z"])
  with pytest.raises(ValueError, match="labels must have shape"):
    Index(x, labels=[1, 2])
  with pytest.raises(ValueError, match="labels must be >= 0"):
    Index(x, labels=[0, 1, -1, 2, 3])
  with pytest.raises(ValueError, match="distance"):
    Index(x, distance="dot")
  with pytest.raises(ValueError, match="zero vectors"):
    Index(np.zeros((2, 4)), distance="cosine")
  with pytest.raises(ValueError, match="size of the index"):
    Index(np.zeros((0, 4))).search(x, k=1)
  assert len(index) == 5  # nothing above changed the index
